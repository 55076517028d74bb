"""HRVAttendAndExcite: a text encoder whose model runs Attend-and-Excite (A&E-HRV with an HRV) inside any sampler."""
from __future__ import annotations

import logging

from ..hrv.ae.encode import excite_request
from ..hrv.ae.request import FEATURE, ExciteError, ExciteSettings
from ..hrv.ae.sampler import install_excite
from ..hrv.attention import attach_request
from ..hrv.steering.positions import WordPositionError
from .steering_nodes import _check_architecture, _check_hrv, encode_text

log = logging.getLogger("hrv.nodes.excite")

SMOOTH = ("auto", "on", "off")


class HRVAttendAndExcite:
    DESCRIPTION = ("CLIP Text Encode for prompts with several subjects ('a cat and a dog') that the model tends to "
                   "drop: in the first half of sampling it nudges the latent until every subject word gets strong "
                   "attention somewhere (Attend-and-Excite). With an HRV, each subject's attention is read from the "
                   "heads its concept cares about (A&E-HRV); without one, as in the original method. Works inside "
                   "KSampler or SamplerCustomAdvanced with any sampler: connect both outputs to the sampler (this is "
                   "the positive prompt). Costs gradient passes: several times slower in the excited steps.")
    CATEGORY = "HRV/sampling"
    FUNCTION = "encode"
    RETURN_TYPES = ("MODEL", "CONDITIONING")
    RETURN_NAMES = ("model", "conditioning")
    OUTPUT_TOOLTIPS = ("The model with Attend-and-Excite around its sampler; connect it to the sampler.",
                       "The encoded text, as CLIP Text Encode gives it, naming the subjects; connect it to the "
                       "sampler's positive input.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The SD1.x or SDXL model. It is copied, never changed."}),
            "clip": ("CLIP", {"tooltip": "The CLIP of the same checkpoint: it encodes the text."}),
            "text": ("STRING", {"multiline": True, "dynamicPrompts": True, "default": "",
                                "tooltip": "The positive prompt, e.g. 'a black cat and a white dog'."}),
            "subjects": ("STRING", {"default": "", "tooltip":
                                    "The subject words with their concepts, e.g. 'cat:Animals, dog:Animals'. Without "
                                    "an HRV the concepts may be left out ('cat, dog')."}),
            "excite_until": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.02, "tooltip":
                                       "The fraction of the steps that update the latent (paper: 25 of 50 = 0.5). "
                                       "Refinement runs at steps 0, 10 and 20 of 50 (scaled) with thresholds 0.05, "
                                       "0.5 and 0.8."}),
            "scale_factor": ("FLOAT", {"default": 20.0, "min": 0.0, "max": 200.0, "step": 0.5, "tooltip":
                                       "Step size of the latent update (paper: 20, falling with sqrt(1 -> 0.5) over "
                                       "the steps)."}),
            "max_refinement": ("INT", {"default": 20, "min": 0, "max": 100, "tooltip":
                                       "At most this many extra updates at each refinement step (paper: 20)."}),
            "smooth": (list(SMOOTH), {"default": "auto", "tooltip":
                                      "A 3x3 Gaussian on each subject's map before its maximum. auto: on for the "
                                      "original method (its default), off with an HRV (the HRV authors' default)."}),
        }, "optional": {
            "hrv": ("HRV", {"tooltip": "Head relevance vectors (HRV Loader): A&E-HRV. Leave it unconnected for the "
                                       "original Attend-and-Excite."}),
        }}

    def encode(self, model, clip, text, subjects, excite_until, scale_factor, max_refinement, smooth, hrv=None):
        if hrv is not None:
            _check_hrv(hrv)
            _check_architecture(hrv, model)
        if smooth not in SMOOTH:
            raise ValueError(f"HRV Attend and Excite: smooth must be one of {', '.join(SMOOTH)}, got {smooth!r}")
        try:
            settings = ExciteSettings(excite_until=float(excite_until), scale_factor=float(scale_factor),
                                      max_refinement=int(max_refinement),
                                      smooth=(hrv is None) if smooth == "auto" else smooth == "on")
            request = excite_request(clip, text, subjects, hrv, settings)
        except (ExciteError, WordPositionError, ValueError) as e:
            raise ValueError(f"HRV Attend and Excite: {e}") from None
        log.info("HRV Attend and Excite: %s", request.describe())
        return (install_excite(model), attach_request(encode_text(clip, text), FEATURE, request))


NODE_CLASS_MAPPINGS = {"HRVAttendAndExcite": HRVAttendAndExcite}
NODE_DISPLAY_NAME_MAPPINGS = {"HRVAttendAndExcite": "HRV Attend and Excite"}
