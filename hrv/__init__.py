"""Head Relevance Vectors: a pure torch/numpy core with no ComfyUI imports at module level."""
from .format.hrv_file import HRV, HRVFileError, load, save
from .format.layout import HeadLayout, LayoutError, known_layout

__all__ = ["HRV", "HRVFileError", "HeadLayout", "LayoutError", "known_layout", "load", "save"]
