"""The one attention core: every feature of the pack runs through it.

`install_core` puts one attn2 replacement on every cross-attention transformer of a cloned ModelPatcher
(wrapping whatever was installed before) and an OUTER_SAMPLE wrapper that, once per sampling run, reads
the guider's conditionings. Features attach a request to a CONDITIONING entry (`attach_request`); during
sampling the core maps each batch chunk of every attn2 call to its conditioning (chunks.py, through the
uuids ComfyUI names per chunk) and hands the chunks that carry a feature's request to that feature's
processor. Processors say what they do to q, k, v; the fused attention kernel still runs. A processor that
asks for the self-attention (attn1) of some transformers gets the core there too (`process_self`), and one that
adds a term to an attention's output does it in `process_output` with `AttnCall.attention` (the fused kernel).
"""
from .adapter import fused_attention
from .chunks import Chunk
from .core import CORE_KEY, install_core, is_core_fn
from .processor import AttnCall, Processor
from .requests import COND_KEY, attach_request, requests_of

__all__ = ["AttnCall", "COND_KEY", "CORE_KEY", "Chunk", "Processor", "attach_request", "fused_attention",
           "install_core", "is_core_fn", "requests_of"]
