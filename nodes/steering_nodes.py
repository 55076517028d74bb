"""HRVConceptStrengthen, HRVConceptAdjust, HRVOrderedWeakening: steer one word of the prompt per head."""
from __future__ import annotations

import logging

from ..hrv.steering.attention_patch import default_inner, factors_by_block, make_attn2_replacements
from ..hrv.format.concepts import default_concept_names
from ..hrv.format.layout import LayoutError, layout_of_unet
from ..hrv.steering.factors import adjust, ordered_weakening, strengthen
from ..hrv.steering.tokens import find_target_positions

log = logging.getLogger("hrv.nodes.steering")

CATEGORY = "HRV/steering"
ORDERS = ("MoRHF", "LeRHF")


def _check_hrv(hrv):
    if not all(hasattr(hrv, a) for a in ("matrix", "layout", "concepts", "row")):
        raise ValueError(f"the hrv input is a {type(hrv).__name__}, not head relevance vectors: "
                         "connect the HRV output of HRV Loader")


def _check_architecture(hrv, model):
    try:
        model_layout = layout_of_unet(model.model.diffusion_model)
    except (AttributeError, LayoutError):
        raise ValueError("the steering nodes work on SD1.x and SDXL UNet checkpoints; this model has no "
                         "UNet cross-attention to steer") from None
    if model_layout.compact() != hrv.layout.compact():
        raise ValueError(f"this HRV was made for {hrv.layout.arch} ({hrv.layout.num_heads} heads) but the model is "
                         f"{model_layout.arch} ({model_layout.num_heads} heads): load the HRV made for your "
                         "checkpoint's architecture (sd1_official for SD1.x, sdxl_official for SDXL)")


def steer(model, clip, hrv, prompt, target, s, start_percent, end_percent):
    """A clone of `model` whose cross-attention scales the target words by the per-head factors s [H]."""
    import comfy.ldm.modules.attention as attention
    if not 0.0 <= start_percent < end_percent <= 1.0:
        raise ValueError(f"start_percent ({start_percent}) must be below end_percent ({end_percent}), both in 0..1")
    found = find_target_positions(clip, prompt, target)
    sampling = model.get_model_object("model_sampling")
    sigma_range = (float(sampling.percent_to_sigma(start_percent)), float(sampling.percent_to_sigma(end_percent)))
    m = model.clone()
    existing = m.model_options["transformer_options"].get("patches_replace", {}).get("attn2", {})
    replacements = make_attn2_replacements(factors_by_block(hrv.layout, s), found.positions, found.context_length,
                                           default_inner(attention.optimized_attention), existing, sigma_range)
    for (block, block_id, transformer_index), fn in replacements.items():
        m.set_model_attn2_replace(fn, block, block_id, transformer_index)
    log.info("steering %s at context positions %s (%d tokens): %d heads, factors %.3g..%.3g, sigma %.4g..%.4g",
             ", ".join(found.words), list(found.positions), found.context_length, s.numel(),
             float(s.min()), float(s.max()), sigma_range[1], sigma_range[0])
    return m


def _common_inputs():
    return {
        "model": ("MODEL", {"tooltip": "The SD1.x or SDXL model to steer. It is copied, never changed: "
                                       "other branches of your graph keep the original."}),
        "clip": ("CLIP", {"tooltip": "The same CLIP that encodes your prompt; used only to find where the "
                                     "target word sits in it."}),
        "hrv": ("HRV", {"tooltip": "Head relevance vectors for this model's architecture, from HRV Loader."}),
        "prompt": ("STRING", {"multiline": True, "default": "", "tooltip":
                              "Your positive prompt, exactly as typed into CLIP Text Encode (tip: turn both into "
                              "inputs fed by one text node so they never drift apart)."}),
        "target": ("STRING", {"default": "", "tooltip":
                              "The word of the prompt to steer, e.g. rose-colored. Several words: separate them "
                              "with commas. Every occurrence is steered; spelling must match the prompt."}),
    }


def _timing_inputs():
    return {
        "start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                                    "When steering starts, as a fraction of sampling (0 = first step). The first "
                                    "steps set layout and shapes; later ones set details."}),
        "end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                                  "When steering stops (1 = last step). Stop early to keep the effect on the "
                                  "composition only."}),
    }


class HRVConceptStrengthen:
    DESCRIPTION = ("Makes the model read one word of your prompt more strongly as a chosen concept, by giving that "
                   "word more weight in the attention heads that care about the concept (and less in the others). "
                   "Put it between your checkpoint loader (after LoRAs) and the KSampler.")
    CATEGORY = CATEGORY
    FUNCTION = "apply"
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The steered copy of the model; connect it to the KSampler.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            **_common_inputs(),
            "concept": (default_concept_names(), {"default": "Color", "tooltip":
                        "What the word should be about, e.g. Color for 'rose-colored' or Material for 'gold'."}),
            "strength": ("FLOAT", {"default": 1.0, "min": -5.0, "max": 10.0, "step": 0.05, "tooltip":
                                   "1 = the paper's amount; 0 = no change; above 1 pushes harder and can distort."}),
            **_timing_inputs(),
        }}

    def apply(self, model, clip, hrv, prompt, target, concept, strength, start_percent, end_percent):
        _check_hrv(hrv)
        _check_architecture(hrv, model)
        # hrv.row raises a ValueError listing the concepts the file has.
        s = strengthen(hrv.row(concept), strength)
        return (steer(model, clip, hrv, prompt, target, s, start_percent, end_percent),)


class HRVConceptAdjust:
    DESCRIPTION = ("Fixes a word the model reads the wrong way: pushes it toward the concept you meant and away from "
                   "the one it drifts to (e.g. 'rose-colored' as a Color, not Plants). Put it between your "
                   "checkpoint loader (after LoRAs) and the KSampler.")
    CATEGORY = CATEGORY
    FUNCTION = "apply"
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The steered copy of the model; connect it to the KSampler.",)

    @classmethod
    def INPUT_TYPES(cls):
        names = default_concept_names()
        return {"required": {
            **_common_inputs(),
            "desired_concept": (names, {"default": "Color", "tooltip": "What the word should mean."}),
            "undesired_concept": (names, {"default": "Plants", "tooltip":
                                          "What the model wrongly shows instead (e.g. roses for 'rose-colored')."}),
            "w_desired": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.05, "tooltip":
                                    "How hard to pull toward the desired concept. Paper: 1. For SDXL the authors use 2."}),
            "w_undesired": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.05, "tooltip":
                                      "How hard to push away from the undesired concept. Paper: 1."}),
            "offset": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.05, "tooltip":
                                 "Base weight every head keeps for the word. Paper: 1 (SD1); the authors' SDXL setting: 0."}),
            "clamp": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 100.0, "step": 0.5, "tooltip":
                                "Caps very relevant heads so SDXL does not overshoot; 0 = off (SD1). For SDXL try 9."}),
            **_timing_inputs(),
        }}

    def apply(self, model, clip, hrv, prompt, target, desired_concept, undesired_concept, w_desired, w_undesired,
              offset, clamp, start_percent, end_percent):
        _check_hrv(hrv)
        _check_architecture(hrv, model)
        s = adjust(hrv.row(desired_concept), hrv.row(undesired_concept), w_desired, w_undesired, offset,
                   clamp if clamp > 0 else None)
        return (steer(model, clip, hrv, prompt, target, s, start_percent, end_percent),)


class HRVOrderedWeakening:
    DESCRIPTION = ("Weakens how a word is drawn in the k attention heads most (MoRHF) or least (LeRHF) tied to a "
                   "concept: a way to see which heads carry a concept, or to tone one down. Put it between your "
                   "checkpoint loader (after LoRAs) and the KSampler.")
    CATEGORY = CATEGORY
    FUNCTION = "apply"
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The steered copy of the model; connect it to the KSampler.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            **_common_inputs(),
            "concept": (default_concept_names(), {"default": "Color", "tooltip": "Whose heads to weaken."}),
            "order": (list(ORDERS), {"default": "MoRHF", "tooltip":
                      "MoRHF: the heads most tied to the concept first (the concept fades fast). "
                      "LeRHF: the least tied first (little should change)."}),
            "k": ("INT", {"default": 10, "min": 0, "max": 1300, "tooltip":
                          "How many heads to weaken; at most 128 for SD1.x, 1300 for SDXL."}),
            "factor": ("FLOAT", {"default": -2.0, "min": -10.0, "max": 10.0, "step": 0.1, "tooltip":
                                 "What the chosen heads multiply the word by. Paper: -2 (pushes it away); "
                                 "0 silences it; 1 changes nothing."}),
            **_timing_inputs(),
        }}

    def apply(self, model, clip, hrv, prompt, target, concept, order, k, factor, start_percent, end_percent):
        _check_hrv(hrv)
        _check_architecture(hrv, model)
        if order not in ORDERS:
            raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
        s = ordered_weakening(hrv.row(concept), int(k), most_relevant_first=order == "MoRHF", factor=factor)
        return (steer(model, clip, hrv, prompt, target, s, start_percent, end_percent),)


NODE_CLASS_MAPPINGS = {"HRVConceptStrengthen": HRVConceptStrengthen, "HRVConceptAdjust": HRVConceptAdjust,
                       "HRVOrderedWeakening": HRVOrderedWeakening}
NODE_DISPLAY_NAME_MAPPINGS = {"HRVConceptStrengthen": "HRV Concept Strengthen", "HRVConceptAdjust": "HRV Concept Adjust",
                              "HRVOrderedWeakening": "HRV Ordered Weakening"}
