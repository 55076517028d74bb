"""Steering text encoders: HRVTextEncode (inline marks) and HRVConceptStrengthen / HRVConceptAdjust /
HRVOrderedWeakening (one target per node). Each encodes the prompt as CLIP Text Encode does, puts the steering
request on that CONDITIONING, and returns the model with the HRV attention core installed."""
from __future__ import annotations

import logging

from ..hrv.attention import attach_request, install_core
from ..hrv.format.layout import LayoutError, layout_of_unet
from ..hrv.steering.encode import AdjustWeights, auto_weights, concept_row, marks_request, targets_request
from ..hrv.steering.factors import SteeringError, adjust, ordered_weakening, strengthen
from ..hrv.steering.marks import MarkError, parse_marks
from ..hrv.steering.positions import WordPositionError
from ..hrv.steering.processor import STEERING
from ..hrv.steering.request import FEATURE
from .hrv_folders import concept_choices

log = logging.getLogger("hrv.nodes.steering")

CATEGORY = "HRV/steering"
ORDERS = ("MoRHF", "LeRHF")
PRESETS = ("auto", "custom")
USER_ERRORS = (MarkError, WordPositionError, SteeringError, ValueError)


def _check_hrv(hrv):
    if not all(hasattr(hrv, a) for a in ("matrix", "layout", "concepts", "row")):
        raise ValueError(f"the hrv input is a {type(hrv).__name__}, not head relevance vectors: "
                         "connect the HRV output of HRV Loader")


def _check_architecture(hrv, model):
    try:
        model_layout = layout_of_unet(model.get_model_object("diffusion_model"))
    except (AttributeError, LayoutError):
        raise ValueError("the HRV nodes work on SD1.x and SDXL UNet checkpoints; this model has no "
                         "UNet cross-attention to steer") from None
    if model_layout.compact() != hrv.layout.compact():
        raise ValueError(f"this HRV was made for {hrv.layout.arch} ({hrv.layout.num_heads} heads) but the model is "
                         f"{model_layout.arch} ({model_layout.num_heads} heads): load the HRV made for your "
                         "checkpoint's architecture (sd1_official for SD1.x, sdxl_official for SDXL)")


def encode_text(clip, text: str) -> list:
    """What CLIP Text Encode returns for this text."""
    if clip is None or not hasattr(clip, "encode_from_tokens_scheduled"):
        raise ValueError("the clip input is missing or not a CLIP: connect the CLIP output of your checkpoint loader")
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def steered(node: str, model, clip, hrv, make_request):
    """(model with the core, conditioning with the request) or a ValueError in the node's words."""
    _check_hrv(hrv)
    _check_architecture(hrv, model)
    try:
        text, request = make_request()
    except USER_ERRORS as e:
        raise ValueError(f"{node}: {e}") from None
    conditioning = encode_text(clip, text)
    if request is not None:
        conditioning = attach_request(conditioning, FEATURE, request)
        for term in request.terms:
            log.info("%s: %s at context positions %s, factors %.3g..%.3g", node, term.label, list(term.positions),
                     float(term.factors.min()), float(term.factors.max()))
    return (install_core(model, [STEERING]), conditioning)


def _text_inputs(text_tooltip: str):
    return {
        "model": ("MODEL", {"tooltip": "The SD1.x or SDXL model. It is copied, never changed; connect the copy this "
                                       "node returns to the sampler."}),
        "clip": ("CLIP", {"tooltip": "The CLIP of the same checkpoint: it encodes the text, as CLIP Text Encode does."}),
        "hrv": ("HRV", {"tooltip": "Head relevance vectors for this model's architecture, from HRV Loader."}),
        "text": ("STRING", {"multiline": True, "dynamicPrompts": True, "default": "", "tooltip": text_tooltip}),
    }


def _target_input(default: str = ""):
    return {"target": ("STRING", {"default": default, "tooltip":
                       "The word of the text to steer, e.g. rose-colored (whole words: 'rose' does not match inside "
                       "'rose-colored'). Several words: separate them with commas. Every occurrence is steered."})}


def _timing_inputs():
    return {
        "start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                                    "When steering starts, as a fraction of the model's noise range (like ControlNet's "
                                    "start_percent): 0 = from the first step. Early steps set layout, later ones details."}),
        "end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                                  "When steering stops, as a fraction of the model's noise range (like ControlNet's "
                                  "end_percent): 1 = to the last step. Stop early to steer the composition only."}),
    }


def _adjust_inputs(w_desired_default=1.0, offset_default=1.0):
    return {
        "w_desired": ("FLOAT", {"default": w_desired_default, "min": 0.0, "max": 10.0, "step": 0.05, "tooltip":
                                "How hard to pull towards the desired concept. Paper: 1; the authors' SDXL setting: 2."}),
        "w_undesired": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.05, "tooltip":
                                  "How hard to push away from the undesired concept. Paper: 1."}),
        "offset": ("FLOAT", {"default": offset_default, "min": -10.0, "max": 10.0, "step": 0.05, "tooltip":
                             "Base weight every head keeps for the word. Paper: 1 (SD1); the authors' SDXL setting: 0."}),
        "clamp": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 100.0, "step": 0.5, "tooltip":
                            "Caps very relevant heads so SDXL does not overshoot; 0 = off (SD1). The authors' SDXL: 9."}),
    }


RETURNS = dict(RETURN_TYPES=("MODEL", "CONDITIONING"), RETURN_NAMES=("model", "conditioning"),
               OUTPUT_TOOLTIPS=("The model with the HRV attention installed; connect it to the sampler (one HRV node "
                                "upstream is enough for all HRV conditionings).",
                                "The encoded text, as CLIP Text Encode gives it, carrying the steering; connect it "
                                "to the sampler's positive (or negative) input."))


class HRVTextEncode:
    DESCRIPTION = ("CLIP Text Encode that also steers words by their meaning. Mark a word in the text: "
                   "[rose-colored:Color] reads it more as a Color, [rose-colored:Color:1.5] harder, "
                   "[rose-colored:Color-Plants] as a Color and not as Plants. The marks are removed before encoding. "
                   "Use it in place of CLIP Text Encode and connect its model output to the sampler.")
    CATEGORY = CATEGORY
    FUNCTION = "encode"
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = RETURNS["RETURN_TYPES"], RETURNS["RETURN_NAMES"], RETURNS["OUTPUT_TOOLTIPS"]

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            **_text_inputs("The prompt, with marks such as [rose-colored:Color-Plants] on the words to steer. "
                           "(word:1.2) weights and embedding:name work as in CLIP Text Encode; \\[ and \\] are "
                           "literal brackets."),
            "preset": (list(PRESETS), {"default": "auto", "tooltip":
                       "How [word:Desired-Undesired] marks weigh the two concepts. auto: the paper's 1/1/1 without "
                       "clamp on SD1.x, the authors' 2/1/0 with clamp 9 on SDXL. custom: the four values below."}),
            **_adjust_inputs(),
            **_timing_inputs(),
        }}

    def encode(self, model, clip, hrv, text, preset, w_desired, w_undesired, offset, clamp, start_percent, end_percent):
        if preset not in PRESETS:
            raise ValueError(f"HRV Text Encode: preset must be one of {', '.join(PRESETS)}, got {preset!r}")

        def make_request():
            weights = (auto_weights(hrv.layout.arch) if preset == "auto" else
                       AdjustWeights(w_desired, w_undesired, offset, clamp if clamp > 0 else None))
            marked = parse_marks(text, list(hrv.concepts))
            return marked.text, marks_request(clip, hrv, marked.text, marked.marks, weights, start_percent, end_percent)
        return steered("HRV Text Encode", model, clip, hrv, make_request)


class HRVConceptStrengthen:
    DESCRIPTION = ("Encodes the text and makes the model read one word more strongly as a chosen concept, by giving "
                   "that word more weight in the attention heads that care about the concept (and less in the others). "
                   "Use it in place of CLIP Text Encode; connect both outputs to the sampler.")
    CATEGORY = CATEGORY
    FUNCTION = "encode"
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = RETURNS["RETURN_TYPES"], RETURNS["RETURN_NAMES"], RETURNS["OUTPUT_TOOLTIPS"]

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            **_text_inputs("The prompt, as you would type it into CLIP Text Encode."),
            **_target_input(),
            "concept": (concept_choices(), {"default": "Color", "tooltip":
                        "What the word should be about, e.g. Color for 'rose-colored' or Material for 'gold'."}),
            "strength": ("FLOAT", {"default": 1.0, "min": -5.0, "max": 10.0, "step": 0.05, "tooltip":
                                   "1 = the paper's amount; 0 = no change; above 1 pushes harder and can distort."}),
            **_timing_inputs(),
        }}

    def encode(self, model, clip, hrv, text, target, concept, strength, start_percent, end_percent):
        def make_request():
            s = strengthen(concept_row(hrv, concept), strength)
            return text, targets_request(clip, hrv, text, target, s, f"{concept} x{strength:g}", start_percent, end_percent)
        return steered("HRV Concept Strengthen", model, clip, hrv, make_request)


class HRVConceptAdjust:
    DESCRIPTION = ("Encodes the text and fixes a word the model reads the wrong way: pushes it towards the concept you "
                   "meant and away from the one it drifts to (e.g. 'rose-colored' as a Color, not Plants). Use it in "
                   "place of CLIP Text Encode; connect both outputs to the sampler.")
    CATEGORY = CATEGORY
    FUNCTION = "encode"
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = RETURNS["RETURN_TYPES"], RETURNS["RETURN_NAMES"], RETURNS["OUTPUT_TOOLTIPS"]

    @classmethod
    def INPUT_TYPES(cls):
        names = concept_choices()
        return {"required": {
            **_text_inputs("The prompt, as you would type it into CLIP Text Encode."),
            **_target_input(),
            "desired_concept": (names, {"default": "Color", "tooltip": "What the word should mean."}),
            "undesired_concept": (names, {"default": "Plants", "tooltip":
                                          "What the model wrongly shows instead (e.g. roses for 'rose-colored')."}),
            **_adjust_inputs(),
            **_timing_inputs(),
        }}

    def encode(self, model, clip, hrv, text, target, desired_concept, undesired_concept, w_desired, w_undesired,
               offset, clamp, start_percent, end_percent):
        def make_request():
            s = adjust(concept_row(hrv, desired_concept), concept_row(hrv, undesired_concept), w_desired, w_undesired,
                       offset, clamp if clamp > 0 else None)
            return text, targets_request(clip, hrv, text, target, s, f"{desired_concept}-{undesired_concept}",
                                         start_percent, end_percent)
        return steered("HRV Concept Adjust", model, clip, hrv, make_request)


class HRVOrderedWeakening:
    DESCRIPTION = ("Encodes the text and weakens its words in the k attention heads most (MoRHF) or least (LeRHF) tied "
                   "to a concept: the paper's test of which heads carry a concept, or a way to tone one down. Use it in "
                   "place of CLIP Text Encode; connect both outputs to the sampler.")
    CATEGORY = CATEGORY
    FUNCTION = "encode"
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = RETURNS["RETURN_TYPES"], RETURNS["RETURN_NAMES"], RETURNS["OUTPUT_TOOLTIPS"]

    @classmethod
    def INPUT_TYPES(cls):
        target = _target_input("*")
        target["target"][1]["tooltip"] += " * (the default) = every word of the text, as in the paper's analysis."
        return {"required": {
            **_text_inputs("The prompt, as you would type it into CLIP Text Encode."),
            **target,
            "concept": (concept_choices(), {"default": "Color", "tooltip": "Whose heads to weaken."}),
            "order": (list(ORDERS), {"default": "MoRHF", "tooltip":
                      "MoRHF: the heads most tied to the concept first (the concept fades fast). "
                      "LeRHF: the least tied first (little should change)."}),
            "k": ("INT", {"default": 10, "min": 0, "max": 1300, "tooltip":
                          "How many heads to weaken; at most 128 for SD1.x, 1300 for SDXL."}),
            "factor": ("FLOAT", {"default": -2.0, "min": -10.0, "max": 10.0, "step": 0.1, "tooltip":
                                 "What the chosen heads multiply the words by. Paper: -2 (pushes them away); "
                                 "0 silences them; 1 changes nothing."}),
            **_timing_inputs(),
        }}

    def encode(self, model, clip, hrv, text, target, concept, order, k, factor, start_percent, end_percent):
        if order not in ORDERS:
            raise ValueError(f"HRV Ordered Weakening: order must be one of {', '.join(ORDERS)}, got {order!r}")

        def make_request():
            s = ordered_weakening(concept_row(hrv, concept), int(k), most_relevant_first=order == "MoRHF", factor=factor)
            return text, targets_request(clip, hrv, text, target, s, f"{order} k={k} {concept}", start_percent, end_percent)
        return steered("HRV Ordered Weakening", model, clip, hrv, make_request)


NODE_CLASS_MAPPINGS = {"HRVTextEncode": HRVTextEncode, "HRVConceptStrengthen": HRVConceptStrengthen,
                       "HRVConceptAdjust": HRVConceptAdjust, "HRVOrderedWeakening": HRVOrderedWeakening}
NODE_DISPLAY_NAME_MAPPINGS = {"HRVTextEncode": "HRV Text Encode", "HRVConceptStrengthen": "HRV Concept Strengthen",
                              "HRVConceptAdjust": "HRV Concept Adjust", "HRVOrderedWeakening": "HRV Ordered Weakening"}
