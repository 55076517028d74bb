"""HRVBuild and HRVSave: build head relevance vectors for the loaded checkpoint, save them to models/hrv/."""
from __future__ import annotations

import logging
import os
import re
import time

from ..hrv.build.model_hash import model_fingerprint
from ..hrv.build.run import BuildSettings, build_fingerprint, run_build
from ..hrv.build.sampling import ComfyPromptSampler, clip_text_encoder, optimized_attention
from ..hrv.build.concept_embed import encode_concept_tokens
from ..hrv.format.concepts import extend_concept_set, load_concept_set, parse_concept_text
from ..hrv.format.hrv_file import save
from ..hrv.format.layout import layout_of_unet
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


def prompts_for(batch: str, prompts: str, max_prompts: int = 0) -> list[str]:
    """The prompt batch; with max_prompts > 0, that many drawn evenly across it (every class group represented)."""
    mine = parse_prompt_text(prompts)
    found = prompt_batch(imagenet=batch != "my prompts only", extra=mine if batch != "ImageNet only" else None)
    if 0 < max_prompts < len(found):
        found = [found[i * len(found) // max_prompts] for i in range(max_prompts)]
    return found


def default_batch(model, arch: str) -> int:
    """Prompts per sampling run: batches keep a GPU busy (SD1.x: 8, SDXL at 1024: 2); a CPU gains nothing."""
    device = getattr(model, "load_device", None)
    if getattr(device, "type", "cpu") == "cpu":
        return 1
    return 2 if arch == "sdxl" else 8


def build_cache_path(fingerprint: str) -> str:
    """Where an interrupted build of these exact settings and weights keeps its counts (ComfyUI's user folder:
    its temp folder is emptied at every start)."""
    import folder_paths
    return os.path.join(folder_paths.get_user_directory(), "hrv_builds", f"{fingerprint[:24]}.partial.safetensors")


class _Progress:
    """ComfyUI's progress bar plus an ETA line under the node, from the steps sampled in this session."""

    def __init__(self, node_id, steps_per_prompt: int):
        import comfy.utils
        self.bar, self.node_id, self.steps_per_prompt = comfy.utils.ProgressBar(1, node_id=node_id), node_id, steps_per_prompt
        self.start, self.first, self.last_text = time.monotonic(), None, 0.0

    def __call__(self, done: int, total: int) -> None:
        self.bar.update_absolute(done, total)
        if self.first is None:
            self.first = done      # resumed steps are not part of the rate
            return
        now = time.monotonic()
        if done > self.first and (now - self.last_text > 2.0 or done == total):
            left = (now - self.start) / (done - self.first) * (total - done)
            text = (f"prompt {done // self.steps_per_prompt}/{total // self.steps_per_prompt}, "
                    f"about {int(left // 60)} min {int(left % 60)} s left")
            self.last_text = now
            log.info("HRV Build: %s", text)
            self._send(text)

    def _send(self, text: str) -> None:
        try:
            from server import PromptServer
            PromptServer.instance.send_progress_text(text, self.node_id)
        except Exception:  # no server (scripts, tests): the log line is enough
            pass


class HRVBuild:
    DESCRIPTION = ("Builds Head Relevance Vectors for the connected checkpoint (fine-tunes, LoRA merges): samples every "
                   "prompt and, at every step, lets each cross-attention head vote for the concept word it attends to "
                   "most. Slow: prompts x steps sampling steps (the paper: 1,000 ImageNet prompts x 50 steps). "
                   "Put it after Load Checkpoint (and LoRA loaders); send the HRV to HRV Save, HRV Inspect or the "
                   "steering nodes. The default draws 64 prompts from the batch, a build you can run in a sitting (a few "
                   "minutes on a GPU); an interrupted build of the same settings and model resumes where it stopped. "
                   "For paper-size builds use `python -m hrv build` (sharded, Ray).")
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
            "max_prompts": ("INT", {"default": 64, "min": 0, "max": 100000, "tooltip":
                            "How many prompts to sample, drawn evenly from the batch; 0 = all of them (ImageNet: "
                            "1,000, the paper's size: hours even on a GPU). 64 prompts x 50 steps take a few minutes "
                            "on a recent GPU, far longer on a CPU."}),
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
            "resume": ("BOOLEAN", {"default": True, "tooltip":
                       "Keep the counts of finished prompts in ComfyUI's user folder (hrv_builds/) so an interrupted "
                       "build of the same settings and model continues where it stopped; off = always start over."}),
        }, "hidden": {"unique_id": "UNIQUE_ID"}}

    def build(self, model, clip, prompt_batch, prompts, concept_set, my_concepts, steps, cfg, seed,
              sampler_name, scheduler, width, height, max_prompts=64, resume=True, unique_id=None):
        concepts = concepts_for(concept_set, my_concepts)
        prompt_list = prompts_for(prompt_batch, prompts, int(max_prompts))
        settings = BuildSettings(steps=steps, cfg=cfg, seed=seed, sampler=sampler_name, scheduler=scheduler,
                                 width=width, height=height)
        words = encode_concept_tokens(clip, concepts)
        model_id = {"weights_sampled_sha256": model_fingerprint(model)}
        layout = layout_of_unet(model.get_model_object("diffusion_model"))
        checkpoint = None
        if resume:
            checkpoint = build_cache_path(build_fingerprint(prompt_list, words.as_dict(), settings, layout.compact(),
                                                            model_id))
        hrv = run_build(model, words, prompt_list, settings, ComfyPromptSampler(clip_text_encoder(clip), settings),
                        optimized_attention(), checkpoint_path=checkpoint, resume=True, model_id=model_id, checkpoint_every=1,
                        progress=_Progress(unique_id, steps), batch_size=default_batch(model, layout.arch))
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
