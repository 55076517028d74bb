"""HRV Weakening Sweep: the paper's ordered-weakening figure inside ComfyUI (grid, plot of CLIP similarity against k,
CSV). The sweep itself is hrv/eval/weakening.py, on the steering path of HRV Ordered Weakening."""
from __future__ import annotations

import logging

from ..hrv.eval import weakening as W
from ..hrv.eval.clip_score import DEFAULT_ARCHITECTURE, ClipScoreError
from ..hrv.steering.factors import SteeringError
from ..hrv.steering.positions import WordPositionError
from .hrv_folders import CLIP_FOLDER, clip_filenames, clip_path, concept_choices
from .steering_nodes import _check_architecture, _check_hrv

log = logging.getLogger("hrv.nodes.sweep")
NO_CLIP = "(none: no scores)"


class HRVWeakeningSweep:
    DESCRIPTION = ("The paper's ordered-weakening analysis: for each k, weakens every prompt word by -2 in the k heads "
                   "most (MoRHF) or least (LeRHF) relevant to a concept, samples, and scores each image by its CLIP "
                   "similarity with the concept word alone. Gives a grid (MoRHF and LeRHF rows, one column per k), a "
                   "plot of similarity against k and a CSV. Connect a checkpoint loader and HRV Loader; nothing else "
                   f"is needed (it samples itself). CLIP weights are read from models/{CLIP_FOLDER}/, never downloaded.")
    CATEGORY = "HRV/eval"
    FUNCTION = "sweep"
    RETURN_TYPES = ("IMAGE", "IMAGE", "STRING")
    RETURN_NAMES = ("grid", "plot", "csv")
    OUTPUT_TOOLTIPS = ("MoRHF row over LeRHF row (one row pair per concept word, first seed), one column per k.",
                       "Mean CLIP similarity (over words and seeds) against k, one line per order.",
                       "Every sample: concept, order, k, word, seed, prompt, clip (CSV text).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The SD1.x or SDXL model; it is copied, never changed."}),
            "clip": ("CLIP", {"tooltip": "The CLIP of the same checkpoint."}),
            "vae": ("VAE", {"tooltip": "The VAE of the same checkpoint, to decode the samples."}),
            "hrv": ("HRV", {"tooltip": "Head relevance vectors for this model's architecture, from HRV Loader."}),
            "template": ("STRING", {"default": "photo of a {}", "tooltip":
                         "The prompt; {} is replaced by each concept word. The authors': 'a {} car' (Color), "
                         "'a cup made of {}' (Material), 'photo of a {}' (Animals)."}),
            "words": ("STRING", {"default": "dog, cat", "tooltip":
                      "The concept words, separated by commas; each image is scored against its word alone."}),
            "concept": (concept_choices(), {"default": "Animals", "tooltip": "Whose heads are weakened."}),
            "k_values": ("STRING", {"default": "auto", "tooltip":
                         "How many heads to weaken, separated by commas. auto: the paper's 0,1,11,...,121,128 (SD1.x) "
                         "or 0,11,111,...,1211,1300 (SDXL)."}),
            "seeds": ("STRING", {"default": "10, 20, 30", "tooltip": "One image per seed; the paper's: 10, 20, 30."}),
            "steps": ("INT", {"default": 50, "min": 1, "max": 1000, "tooltip": "Sampler steps (paper: 50)."}),
            "cfg": ("FLOAT", {"default": 7.5, "min": 0.0, "max": 100.0, "step": 0.1, "tooltip": "Guidance scale."}),
            "sampler_name": (cls._samplers(), {"tooltip": "The sampler, as in KSampler."}),
            "scheduler": (cls._schedulers(), {"tooltip": "The scheduler, as in KSampler."}),
            "width": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 8, "tooltip": "Image width (SDXL: 1024)."}),
            "height": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 8, "tooltip": "Image height (SDXL: 1024)."}),
            "clip_weights": ([NO_CLIP] + clip_filenames(), {"tooltip":
                             f"The OpenCLIP weights file in models/{CLIP_FOLDER}/ (the paper's: open_clip_pytorch_model.bin "
                             "of laion/CLIP-ViT-H-14-laion2B-s32B-b79K); none: images only, no scores."}),
            "architecture": ("STRING", {"default": DEFAULT_ARCHITECTURE, "tooltip":
                                        "The OpenCLIP architecture of those weights; the paper's is ViT-H-14."}),
        }}

    @staticmethod
    def _samplers():
        import comfy.samplers
        return list(comfy.samplers.KSampler.SAMPLERS)

    @staticmethod
    def _schedulers():
        import comfy.samplers
        return list(comfy.samplers.KSampler.SCHEDULERS)

    def sweep(self, model, clip, vae, hrv, template, words, concept, k_values, seeds, steps, cfg, sampler_name,
              scheduler, width, height, clip_weights, architecture):
        import comfy.model_management
        import comfy.utils
        _check_hrv(hrv)
        _check_architecture(hrv, model)
        try:
            ks = W.parse_ks(k_values, hrv.layout.num_heads)
            words = W.parse_words(words)
            samples = W.plan(concept, words, template, ks, W.parse_seeds(seeds))
            W.weakened_conditioning(clip, hrv, concept, "MoRHF", 0, samples[0].prompt)   # errors before sampling
            scorer = None
            if clip_weights != NO_CLIP:
                from .eval_nodes import scorer_for
                scorer = scorer_for(architecture.strip(), clip_path(clip_weights),
                                    comfy.model_management.get_torch_device())
        except (W.WeakeningError, SteeringError, WordPositionError, ClipScoreError, FileNotFoundError) as e:
            raise ValueError(f"HRV Weakening Sweep: {e}") from None
        bar = comfy.utils.ProgressBar(len(samples))
        cells, rows = {}, []

        def on_sample(s, image, score):
            rows.append(W.row_of(s, score))
            if s.seed == samples[0].seed:
                cells[(f"{s.order} {s.word}" if len(words) > 1 else s.order, s.k)] = image
            bar.update(1)
        W.run_sweep(model, clip, vae, hrv, samples, W.Sampling(steps, cfg, sampler_name, scheduler, width, height),
                    scorer, on_sample)
        labels = [f"{o} {w}" if len(words) > 1 else o for w in words for o in W.ORDERS]
        title = f"{concept}: ordered weakening ({', '.join(words)})"
        return (W.grid(cells, labels, ks)[None], W.plot(W.mean_curves(rows), title)[None], W.csv_text(rows))


NODE_CLASS_MAPPINGS = {"HRVWeakeningSweep": HRVWeakeningSweep}
NODE_DISPLAY_NAME_MAPPINGS = {"HRVWeakeningSweep": "HRV Weakening Sweep"}
