"""Installing the attention core on a ModelPatcher clone, and the per-run wrapper that feeds it.

Every cross-attention (attn2) gets the core; a self-attention (attn1) gets it only where an installed processor asks
for that transformer (`self_attention_keys`), so models without such a processor run attn1 untouched.
"""
from __future__ import annotations

import logging
from typing import Iterable

from ..format.layout import cross_attention_modules
from .adapter import fused_attention, installed_replacement
from .processor import self_attention_keys
from .run import ACTIVE_KEY, RunState

log = logging.getLogger("hrv.attention")

CORE_KEY = "hrv_core"     # transformer_options key: the CoreHolder between runs, the RunState during one
WRAPPER_KEY = "hrv"


class CoreHolder:
    """The processors installed on a model, kept in its transformer_options; clones share the processors."""

    def __init__(self, processors=None, keys=(), fused=None):
        self.processors = dict(processors or {})
        self.keys = list(keys)
        self.fused = fused          # ComfyUI's fused attention in the replacement signature, for processors' extra terms

    def clone(self) -> "CoreHolder":
        return CoreHolder(self.processors, self.keys, self.fused)


def is_core_fn(fn) -> bool:
    return getattr(fn, "hrv_core", False) is True


def make_core_fn(key: tuple, inner, inner_source: str, self_attention: bool = False):
    """The attn2 (or attn1) replacement of one transformer: the run's processors, then `inner` (what was there before)."""
    def hrv_core_attention(q, k, v, extra_options):
        run = extra_options.get(CORE_KEY)
        if type(run) is not RunState or ACTIVE_KEY in extra_options:
            return inner(q, k, v, extra_options)
        return run.attend(key, q, k, v, extra_options, inner, inner_source, self_attention=self_attention)
    hrv_core_attention.hrv_core = True
    hrv_core_attention.hrv_inner = inner
    hrv_core_attention.hrv_inner_source = inner_source
    return hrv_core_attention


def _install(m, kind: str, keys, default) -> None:
    """The core on `keys` of the attn1 or attn2 replacements of clone `m`, wrapping what each transformer runs now."""
    existing = m.model_options["transformer_options"].get("patches_replace", {}).get(kind, {})
    setter = m.set_model_attn1_replace if kind == "attn1" else m.set_model_attn2_replace
    for key in keys:
        fn, source = installed_replacement(existing, key)
        if source == "transformer" and is_core_fn(fn):
            continue
        setter(make_core_fn(key, fn or default, source, self_attention=kind == "attn1"), *key)


def install_core(model, processors: Iterable = (), optimized_attention=None):
    """A clone of the ModelPatcher `model` with the core on every cross-attention transformer and `processors` added.

    Idempotent: a model that has the core keeps its replacements and gains the processors. A replacement that
    another node installed before becomes the core's inner attention, so both keep working.
    """
    import comfy.patcher_extension
    if optimized_attention is None:
        from comfy.ldm.modules.attention import optimized_attention
    m = model.clone()
    options = m.model_options.setdefault("transformer_options", {})
    holder = options.get(CORE_KEY)
    holder = holder.clone() if isinstance(holder, CoreHolder) else CoreHolder()
    for processor in processors:
        holder.processors[processor.feature] = processor
    keys = list(cross_attention_modules(m.get_model_object("diffusion_model")))
    if not keys:
        raise ValueError("this model has no UNet cross-attention (HRV works on SD1.x and SDXL checkpoints)")
    holder.keys = keys
    default = fused_attention(optimized_attention)
    holder.fused = holder.fused or default
    options[CORE_KEY] = holder
    _install(m, "attn2", keys, default)
    diffusion_model = m.get_model_object("diffusion_model")
    self_keys = sorted({key for p in holder.processors.values() for key in self_attention_keys(p, diffusion_model)})
    _install(m, "attn1", self_keys, default)
    wrappers = comfy.patcher_extension.WrappersMP
    for kind, wrapper in ((wrappers.OUTER_SAMPLE, outer_sample_wrapper), (wrappers.CALC_COND_BATCH, calc_cond_batch_wrapper)):
        if not m.get_wrappers(kind, WRAPPER_KEY):
            m.add_wrapper_with_key(kind, WRAPPER_KEY, wrapper)
    return m


def outer_sample_wrapper(executor, *args, **kwargs):
    """Once per sampling run: a fresh RunState from the guider's conds, dropped in `finally`."""
    import comfy.model_patcher
    guider = executor.class_obj
    original = guider.model_options
    holder = original.get("transformer_options", {}).get(CORE_KEY)
    if not isinstance(holder, CoreHolder):
        return executor(*args, **kwargs)
    options = comfy.model_patcher.create_model_options_clone(original)
    attn2 = options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    run = RunState(holder.processors, getattr(guider, "conds", None),
                   guider.model_patcher.get_model_object("model_sampling"), attn2, holder.keys, fused=holder.fused)
    options["transformer_options"][CORE_KEY] = run
    guider.model_options = options
    try:
        output = executor(*args, **kwargs)
        run.output = output
        return output
    finally:
        guider.model_options = original
        run.finish()


def calc_cond_batch_wrapper(executor, model, conds, *args, **kwargs):
    """Per calc_cond_batch call: tells the run which chunks carry one conditioning's uuid but another's context."""
    model_options = kwargs["model_options"] if "model_options" in kwargs else args[-1] if args else {}
    run = (model_options or {}).get("transformer_options", {}).get(CORE_KEY)
    if type(run) is not RunState:
        return executor(model, conds, *args, **kwargs)
    previous = run.begin_batch(conds)
    try:
        return executor(model, conds, *args, **kwargs)
    finally:
        run.borrowed = previous
