"""HRVBuild and HRVSave: build head relevance vectors for the loaded checkpoint, save them to models/hrv/."""
from __future__ import annotations

import logging
import os
import re

from ..hrv.build.run import BuildSettings, run_build
from ..hrv.build.sampling import ComfyPromptSampler, clip_text_encoder, optimized_attention
from ..hrv.build.concept_embed import encode_concept_words
from ..hrv.format.concepts import extend_concept_set, load_concept_set, parse_concept_text
from ..hrv.format.hrv_file import save
from ..hrv.build.prompts import parse_prompt_text, prompt_batch
from .hrv_folders import ensure_hrv_folder_registered, models_hrv_dir

log = logging.getLogger("hrv.nodes")

PROMPT_BATCHES = ("ImageNet + my prompts", "my prompts only", "ImageNet only")
CONCEPT_SETS = ("default", "default + my concepts", "my concepts only")
SAVE_NAME = re.compile(r"[A-Za-z0-9_\-. ]+")


def concepts_for(concept_set: str, my_concepts: str) -> dict[str, list[str]]:
    if concept_set == "default":
        return load_concept_set()
    if concept_set == "my concepts only":
        return parse_concept_text(my_concepts, "my_concepts")
    return extend_concept_set(load_concept_set(), parse_concept_text(my_concepts, "my_concepts", complete=False))


def prompts_for(batch: str, prompts: str) -> list[str]:
    mine = parse_prompt_text(prompts)
    return prompt_batch(imagenet=batch != "my prompts only", extra=mine if batch != "ImageNet only" else None)


class HRVBuild:
    DESCRIPTION = ("Builds Head Relevance Vectors for the connected checkpoint (fine-tunes, LoRA merges): samples every "
                   "prompt and, at every step, lets each cross-attention head vote for the concept word it attends to "
                   "most. Slow: prompts x steps sampling steps (the paper: 1,000 ImageNet prompts x 50 steps). "
                   "Put it after Load Checkpoint (and LoRA loaders); send the HRV to HRV Save, HRV Inspect or the "
                   "steering nodes. For big builds use `python -m hrv build` (resumable, sharded, Ray).")
    CATEGORY = "HRV/build"
    FUNCTION = "build"
    RETURN_TYPES = ("HRV", "STRING")
    RETURN_NAMES = ("hrv", "info")
    OUTPUT_TOOLTIPS = ("The built head relevance vectors (with the raw vote counts per step), for this model.",
                       "A short summary of the build.")

    @classmethod
    def INPUT_TYPES(cls):
        import comfy.samplers
        return {"required": {
            "model": ("MODEL", {"tooltip": "The SD1.x or SDXL model to build HRVs for (LoRAs applied are included). "
                                           "It is not changed: the build patches a clone."}),
            "clip": ("CLIP", {"tooltip": "The text encoder of the same checkpoint: it encodes the prompts and the concept words."}),
            "prompt_batch": (list(PROMPT_BATCHES), {"default": PROMPT_BATCHES[0], "tooltip":
                             "Which prompts to sample: the paper's 'A photo of a {class}' for the 1,000 ImageNet "
                             "classes, your prompts below, or both."}),
            "prompts": ("STRING", {"multiline": True, "default": "", "tooltip":
                        "Your prompts, one per line (lines starting with # are ignored)."}),
            "concept_set": (list(CONCEPT_SETS), {"default": CONCEPT_SETS[0], "tooltip":
                            "The concepts to score: the paper's 34 concepts x 10 words, those plus yours, or only yours."}),
            "my_concepts": ("STRING", {"multiline": True, "default": "", "tooltip":
                            "Your concepts, one per line as `Concept: word, word, ...` (or the JSON concept format). "
                            "Each word is encoded alone by the text encoder."}),
            "steps": ("INT", {"default": 50, "min": 1, "max": 1000, "tooltip":
                      "Sampling steps per prompt; the HRV keeps one vote count row per step."}),
            "cfg": ("FLOAT", {"default": 7.5, "min": 0.01, "max": 100.0, "step": 0.1, "round": 0.01, "tooltip":
                    "Classifier-free guidance scale. Only the conditional pass votes."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff, "tooltip":
                     "Noise seed; prompt i uses seed + i, so a build is reproducible."}),
            "sampler_name": (comfy.samplers.KSampler.SAMPLERS, {"default": "euler", "tooltip": "The sampler."}),
            "scheduler": (comfy.samplers.KSampler.SCHEDULERS, {"default": "normal", "tooltip": "The noise schedule."}),
            "width": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 8, "tooltip":
                      "Image width (SD1.x: 512, SDXL: 1024)."}),
            "height": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 8, "tooltip":
                       "Image height (SD1.x: 512, SDXL: 1024)."}),
        }}

    def build(self, model, clip, prompt_batch, prompts, concept_set, my_concepts, steps, cfg, seed,
              sampler_name, scheduler, width, height):
        import comfy.utils
        concepts = concepts_for(concept_set, my_concepts)
        prompt_list = prompts_for(prompt_batch, prompts)
        settings = BuildSettings(steps=steps, cfg=cfg, seed=seed, sampler=sampler_name, scheduler=scheduler,
                                 width=width, height=height)
        words = encode_concept_words(clip, concepts)
        bar = comfy.utils.ProgressBar(len(prompt_list) * steps)
        hrv = run_build(model, words, prompt_list, settings, ComfyPromptSampler(clip_text_encoder(clip), settings),
                        optimized_attention(), progress=lambda done, total: bar.update_absolute(done, total))
        info = (f"built {hrv.arch} HRV: {hrv.num_heads} heads, {len(hrv.concepts)} concepts, "
                f"{len(prompt_list)} prompts x {steps} steps ({sampler_name}/{scheduler}, cfg {cfg}, seed {seed})")
        log.info(info)
        return (hrv, info)


class HRVSave:
    DESCRIPTION = ("Saves an HRV as models/hrv/<filename>.safetensors, where HRV Loader finds it. "
                   "Put it after HRV Build.")
    CATEGORY = "HRV/build"
    FUNCTION = "save_hrv"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("path",)
    OUTPUT_TOOLTIPS = ("Where the file was written.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "hrv": ("HRV", {"tooltip": "The HRV to save, usually from HRV Build."}),
            "filename": ("STRING", {"default": "my_model_hrv", "tooltip":
                         "File name in models/hrv/ (letters, digits, spaces, - _ .); .safetensors is added."}),
            "overwrite": ("BOOLEAN", {"default": False, "tooltip":
                          "Replace an existing file of that name (otherwise saving fails and nothing is lost)."}),
        }}

    def save_hrv(self, hrv, filename, overwrite):
        name = filename.strip()
        if name.endswith(".safetensors"):
            name = name[:-len(".safetensors")]
        if not SAVE_NAME.fullmatch(name) or name.strip(". ") == "":
            raise ValueError(f"filename {filename!r} is not allowed: use letters, digits, spaces, - _ . (no folders)")
        ensure_hrv_folder_registered()
        path = os.path.join(models_hrv_dir(), name + ".safetensors")
        if os.path.exists(path) and not overwrite:
            raise ValueError(f"{path} exists: choose another filename or enable overwrite")
        save(hrv, path)
        log.info("saved %s", path)
        return {"ui": {"text": [path]}, "result": (path,)}


NODE_CLASS_MAPPINGS = {"HRVBuild": HRVBuild, "HRVSave": HRVSave}
NODE_DISPLAY_NAME_MAPPINGS = {"HRVBuild": "HRV Build", "HRVSave": "HRV Save"}
