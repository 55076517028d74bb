"""Steering a prompt's words per head: factors from HRV rows, where the words sit in the prompt, and the
request a text encoder puts on its conditioning for the attention core."""
