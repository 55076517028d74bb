"""Head Relevance Vectors: a pure torch/numpy core with no ComfyUI imports at module level."""
from .hrv_file import HRV, HRVFileError, load, save
from .layout import HeadLayout, LayoutError, known_layout

__all__ = ["HRV", "HRVFileError", "HeadLayout", "LayoutError", "known_layout", "load", "save"]
