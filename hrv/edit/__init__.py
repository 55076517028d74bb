"""Prompt-to-Prompt editing with head relevance vectors (P2P-HRV, arXiv 2412.02237 section 5.2) on the attention core.

align.py: which source token each target token takes its attention from; fused.py: the algebra that keeps ComfyUI's
fused attention; processor.py: the core processor (cross- and self-attention injection, local-blend maps);
sampling.py: shared noise for each (source, target) pair and the local blend; encode.py: prompts to conditioning
and request.
"""
