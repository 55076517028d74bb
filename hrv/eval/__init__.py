"""Evaluation helpers: CLIP image-text similarity (clip_score.py)."""
