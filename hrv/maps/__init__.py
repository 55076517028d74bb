"""Cross-attention heat maps from chosen heads (HRV top-k, HRV-weighted or all heads, DAAM-style) and the word
diagnosis built on them. Recorded by a processor of the attention core during normal sampling, without changing
the image; read out by the render functions."""
from .heads import (
           MODES,
           auto_concept,
           concept_weight_of,
           cosine_reading,
           head_weights,
           top_heads,
           top_k_count,
)
from .recorder import RECORDER, SUSPEND_KEY, MapRecorder
from .request import (
           FEATURE,
           HeadSelection,
           MapError,
           MapHolder,
           MapRequest,
           MapWord,
           RecordedMaps,
)

__all__ = ["FEATURE", "MODES", "RECORDER", "SUSPEND_KEY", "HeadSelection", "MapError", "MapHolder", "MapRecorder",
           "MapRequest", "MapWord", "RecordedMaps", "auto_concept", "concept_weight_of", "cosine_reading",
           "head_weights", "top_heads", "top_k_count"]
