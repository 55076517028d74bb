"""HRV Prompt Edit: Prompt-to-Prompt editing with the concept's head relevance vector on the edited word
(P2P-HRV, arXiv 2412.02237 section 5.2). The node encodes source and target as one conditioning of batch 2 and makes
the latent pair; the user's own sampler draws both images, and VAE Decode shows them side by side."""
from __future__ import annotations

import logging

from ..hrv.edit.align import MODES, AlignmentError
from ..hrv.edit.encode import NO_CONCEPT, EditError, EditSettings, prompt_edit
from ..hrv.edit.request import BLEND_THRESHOLD
from ..hrv.steering.factors import SteeringError
from .hrv_folders import concept_choices
from .steering_nodes import _check_architecture, _check_hrv

log = logging.getLogger("hrv.nodes.edit")

EDITED_MAP_CHOICES = {"source map (P2P)": "source", "own map (authors' code)": "own"}


class HRVPromptEdit:
    DESCRIPTION = ("Prompt-to-Prompt image editing with head relevance vectors. Type the source prompt and the target "
                   "prompt (the same with a word swapped, e.g. 'a blue car' -> 'a red car', or words added in refine "
                   "mode) and the concept of the edit (Color, Material, ...). Connect model, conditioning (positive) "
                   "and latent to your own KSampler (any sampler and scheduler, a negative prompt of your choice), then "
                   "VAE Decode: the batch holds the source image and the edited image.")
    CATEGORY = "HRV/edit"
    FUNCTION = "edit"
    RETURN_TYPES = ("MODEL", "CONDITIONING", "LATENT")
    RETURN_NAMES = ("model", "conditioning", "latent")
    OUTPUT_TOOLTIPS = (
        "The model with the editing attention installed; connect it to the sampler.",
        ("Source and target prompts as one conditioning of batch 2, carrying the edit; connect it to the sampler's "
         "positive input."),
        ("An empty latent of batch 2 (source, target) per pair whose rows share their noise; connect it to the "
         "sampler's latent_image. Any latent of batch 2, 4, ... works too."))

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The SD1.x or SDXL model. It is copied, never changed."}),
                "clip": ("CLIP", {"tooltip": "The CLIP of the same checkpoint; encodes both prompts as CLIP Text Encode does."}),
                "hrv": ("HRV", {"tooltip": "Head relevance vectors for this model's architecture, from HRV Loader."}),
                "source_text": ("STRING", {"multiline": True, "dynamicPrompts": True, "default": "a blue car",
                                           "tooltip": "The prompt of the original image."}),
                "target_text": ("STRING", {"multiline": True, "dynamicPrompts": True, "default": "a red car",
                                           "tooltip": "The edited prompt: the source with words swapped (replace) or "
                                                      "added/removed (refine). (word:1.2) weights work as usual."}),
                "concept": ([NO_CONCEPT] + concept_choices(), {"default": "Color", "tooltip":
                            "The concept of the edited attribute (Color for 'blue' -> 'red', Material for 'wooden' -> "
                            "'golden'). Its HRV strengthens the edited words in the heads that carry it. none = plain "
                            "Prompt-to-Prompt."}),
                "hrv_strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 5.0, "step": 0.05, "tooltip":
                                           "How much of the HRV the edited words get: 1 = the paper; 0 = plain "
                                           "Prompt-to-Prompt attention."}),
                "cross_replace": ("FLOAT", {"default": 0.8, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip":
                                            "Fraction of the steps in which the target takes the source's "
                                            "cross-attention maps (and the HRV acts). Higher keeps more of the layout."}),
                "self_replace": ("FLOAT", {"default": -1.0, "min": -1.0, "max": 1.0, "step": 0.05, "tooltip":
                                           "Fraction of the steps in which the target takes the source's "
                                           "self-attention in the lowest-resolution layers (keeps shape and "
                                           "structure). -1 = auto: 0.9 with a concept, 0.4 without (the authors' runs)."}),
                "mode": (list(MODES), {"default": "replace", "tooltip":
                         "replace: words swapped one for one (same word count). refine: words added or removed; the "
                         "prompts are aligned token by token and new words keep their own attention."}),
                "width": ("INT", {"default": 512, "min": 64, "max": 8192, "step": 8, "tooltip": "Image width of the latent pair."}),
                "height": ("INT", {"default": 512, "min": 64, "max": 8192, "step": 8, "tooltip": "Image height of the latent pair."}),
                "pairs": ("INT", {"default": 1, "min": 1, "max": 32, "tooltip":
                                  "How many (source, target) pairs the latent holds; each pair gets its own noise."}),
            },
            "optional": {
                "edited_word_map": (list(EDITED_MAP_CHOICES), {"default": "source map (P2P)", "tooltip":
                                    "Which attention map the edited words use in the cross-replace window, before the "
                                    "HRV scaling: the source word's map (Prompt-to-Prompt; hrv_strength 0 equals plain "
                                    "P2P) or the target word's own map (what the authors' P2P-HRV code does)."}),
                "reweight_words": ("STRING", {"default": "", "tooltip":
                                              "Words of the target prompt whose attention to amplify or weaken "
                                              "(Prompt-to-Prompt's reweighting), separated by commas; empty = none."}),
                "reweight_factor": ("FLOAT", {"default": 1.0, "min": -5.0, "max": 10.0, "step": 0.1, "tooltip":
                                              "Factor on the reweight words' attention in the cross-replace window; 1 = none."}),
                "local_blend_words": ("STRING", {"default": "", "tooltip":
                                                 "Words (of either prompt, comma-separated) whose region may change, "
                                                 "e.g. 'car': outside it the edited image keeps the source. Empty = off."}),
                "local_blend_threshold": ("FLOAT", {"default": BLEND_THRESHOLD, "min": 0.0, "max": 1.0, "step": 0.05,
                                                    "tooltip": "How much of the words' peak attention a region needs to "
                                                               "count as theirs (Prompt-to-Prompt: 0.3)."}),
            },
        }

    def edit(self, model, clip, hrv, source_text, target_text, concept, hrv_strength, cross_replace, self_replace,
             mode, width, height, pairs, edited_word_map="source map (P2P)", reweight_words="", reweight_factor=1.0,
             local_blend_words="", local_blend_threshold=BLEND_THRESHOLD):
        _check_hrv(hrv)
        _check_architecture(hrv, model)
        if edited_word_map not in EDITED_MAP_CHOICES:
            raise ValueError(f"HRV Prompt Edit: edited_word_map must be one of {', '.join(EDITED_MAP_CHOICES)}")
        settings = EditSettings(mode, concept, float(hrv_strength), float(cross_replace), float(self_replace),
                                EDITED_MAP_CHOICES[edited_word_map], reweight_words, float(reweight_factor),
                                local_blend_words, float(local_blend_threshold))
        try:
            edited, conditioning, latent, request = prompt_edit(model, clip, hrv, source_text, target_text, settings,
                                                                width, height, pairs)
        except (EditError, AlignmentError, SteeringError, ValueError) as e:
            raise ValueError(f"HRV Prompt Edit: {e}") from None
        for label in request.labels:
            log.info("HRV Prompt Edit: %s", label)
        return (edited, conditioning, latent)


NODE_CLASS_MAPPINGS = {"HRVPromptEdit": HRVPromptEdit}
NODE_DISPLAY_NAME_MAPPINGS = {"HRVPromptEdit": "HRV Prompt Edit"}
