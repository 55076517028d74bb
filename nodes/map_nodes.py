"""Heat-map nodes: HRVAttentionMap (a text encoder that makes the sampler record word maps), HRVAttentionMapRender
(reads them out after sampling) and HRVDiagnose (samples once and says how a word is read, by concept)."""
from __future__ import annotations

import logging

import torch

from ..hrv.attention import attach_request, install_core, requests_of
from ..hrv.maps.diagnose import compared_concepts, read_word, suggest_mark
from ..hrv.maps.encode import AUTO, map_request
from ..hrv.maps.heads import MODES, HeadSelectionError, head_weights, top_k_count
from ..hrv.maps.recorder import RECORDER
from ..hrv.maps.render import (
    DAAM_TAU,
    heat_colors,
    label,
    overlay,
    side_by_side,
    word_masks,
)
from ..hrv.maps.request import FEATURE, MapError
from ..hrv.steering.positions import WordPositionError
from .hrv_folders import concept_choices
from .steering_nodes import _check_architecture, _check_hrv, encode_text

log = logging.getLogger("hrv.nodes.maps")

CATEGORY = "HRV/maps"
USER_ERRORS = (MapError, HeadSelectionError, WordPositionError, ValueError)

CONCEPT_TOOLTIP = ("Whose heads draw the map. auto: for each word, the concept c whose HRV row gives the heads the word "
                   "draws attention in the most weight: the largest sum_h HRV[c][h] * m_h / sum_h m_h, where m_h is the "
                   "word's share of head h's attention (mean over image positions and the recorded steps). auto "
                   "records every head apart, so it costs like heads = all.")
HEADS_TOOLTIP = ("top_k: the concept's k most relevant heads, weight 1 (equal HRV values: the earlier head first). "
                 "hrv_weighted: every head weighted by HRV[concept][head]. all: every head alike (DAAM).")
TOP_K_TOOLTIP = ("For top_k: below 1 a fraction of the model's heads (0.25 = the top 25%: 32 of 128 on SD1.x, 325 of "
                 "1300 on SDXL), from 1 on a number of heads.")


def _timing_inputs():
    return {
        "start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                                    "Record from this point of sampling on (a fraction of the model's noise range, as "
                                    "ControlNet's start_percent): 0 = from the first step."}),
        "end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                                  "Record up to this point (a fraction of the noise range): 1 = to the last step."}),
    }


def _map_request_of(conditioning):
    for entry in conditioning or []:
        request = requests_of(entry[1]).get(FEATURE) if len(entry) > 1 and isinstance(entry[1], dict) else None
        if request is not None:
            return request
    raise ValueError("HRV Attention Map Render: this conditioning carries no map request: connect the conditioning "
                     "output of HRV Attention Map (the one the sampler used)")


class HRVAttentionMap:
    DESCRIPTION = ("CLIP Text Encode that makes the sampler record where chosen words attend, in the heads an HRV "
                   "ties to a concept (or in all heads, as DAAM). The image does not change. Use it in place of CLIP "
                   "Text Encode (positive or negative), connect both outputs to the sampler, and read the maps with "
                   "HRV Attention Map Render after it.")
    CATEGORY = CATEGORY
    FUNCTION = "encode"
    RETURN_TYPES = ("MODEL", "CONDITIONING")
    RETURN_NAMES = ("model", "conditioning")
    OUTPUT_TOOLTIPS = ("The model with the HRV attention installed; connect it to the sampler. Sampling is unchanged, "
                       "bit for bit.",
                       "The encoded text, as CLIP Text Encode gives it, asking for the maps; connect it to the sampler "
                       "and to HRV Attention Map Render.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The SD1.x or SDXL model. It is copied, never changed; connect the copy "
                                           "this node returns to the sampler."}),
            "clip": ("CLIP", {"tooltip": "The CLIP of the same checkpoint: it encodes the text, as CLIP Text Encode does."}),
            "hrv": ("HRV", {"tooltip": "Head relevance vectors for this model's architecture, from HRV Loader."}),
            "text": ("STRING", {"multiline": True, "dynamicPrompts": True, "default": "",
                                "tooltip": "The prompt, as you would type it into CLIP Text Encode."}),
            "words": ("STRING", {"default": "", "tooltip":
                                 "The words of the text to map, separated by commas, e.g. 'dog, hat'. Whole words; a "
                                 "word of several tokens gets their mean; every occurrence counts."}),
            "concept": ([AUTO] + concept_choices(), {"default": AUTO, "tooltip": CONCEPT_TOOLTIP}),
            "heads": (list(MODES), {"default": "top_k", "tooltip": HEADS_TOOLTIP}),
            "top_k": ("FLOAT", {"default": 0.25, "min": 0.001, "max": 1300.0, "step": 0.01, "tooltip": TOP_K_TOOLTIP}),
            **_timing_inputs(),
        }}

    def encode(self, model, clip, hrv, text, words, concept, heads, top_k, start_percent, end_percent):
        _check_hrv(hrv)
        _check_architecture(hrv, model)
        try:
            request = map_request(clip, hrv, text, words, concept, heads, top_k, start_percent, end_percent)
        except USER_ERRORS as e:
            raise ValueError(f"HRV Attention Map: {e}") from None
        conditioning = attach_request(encode_text(clip, text), FEATURE, request)
        log.info("HRV Attention Map: %s at context positions %s, %s", ", ".join(w.label for w in request.words),
                 [list(w.positions) for w in request.words], request.selection.describe(hrv.layout.num_heads))
        return (install_core(model, [RECORDER]), conditioning)


class HRVAttentionMapRender:
    DESCRIPTION = ("Reads out the maps that HRV Attention Map recorded while the sampler ran: one mask per word and "
                   "image (DAAM's read-out: bicubic to the image size, normalised to 0..1, threshold) and the maps over "
                   "the images. Put it after VAE Decode of that sampler; connect the same conditioning.")
    CATEGORY = CATEGORY
    FUNCTION = "render"
    RETURN_TYPES = ("MASK", "IMAGE", "STRING")
    RETURN_NAMES = ("masks", "overlay", "info")
    OUTPUT_TOOLTIPS = ("One mask per word and image, at the image size: word by word, each word's images in batch "
                       "order. Binary with a threshold, soft (0..1) with threshold 0.",
                       "The maps coloured over the images, in the order of the masks.",
                       "Which heads each word's map reads (with the concept auto chose).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "conditioning": ("CONDITIONING", {"tooltip": "The conditioning output of HRV Attention Map that the "
                                                         "sampler used (its maps travel with it)."}),
            "images": ("IMAGE", {"tooltip": "The decoded images of that sampler (VAE Decode): the masks get their "
                                            "size, the overlay is drawn on them."}),
            "threshold": ("FLOAT", {"default": DAAM_TAU, "min": 0.0, "max": 0.99, "step": 0.01, "tooltip":
                                    "DAAM's tau: the mask is 1 where the normalised map is above it (DAAM: 0.4). "
                                    "0 = the soft map."}),
            "word": ("STRING", {"default": "", "tooltip": "Only this mapped word; empty = every mapped word."}),
        }, "optional": {
            "samples": ("LATENT", {"tooltip": "The sampler's latent output: picks that run's maps when several "
                                              "samplers used the conditioning (otherwise the latest run)."}),
        }}

    def render(self, conditioning, images, threshold, word, samples=None):
        if not 0.0 <= float(threshold) < 1.0:
            raise ValueError(f"HRV Attention Map Render: threshold must be from 0 (soft map) to below 1, got {threshold}")
        request = _map_request_of(conditioning)
        try:
            recorded = request.holder.find(samples.get("samples") if isinstance(samples, dict) else None)
        except MapError as e:
            raise ValueError(f"HRV Attention Map Render: {e}") from None
        if images.shape[0] != recorded.batch:
            raise ValueError(f"HRV Attention Map Render: {images.shape[0]} images but the recorded run sampled "
                             f"{recorded.batch}: connect the images decoded from that sampler's latent")
        indices = list(range(len(recorded.words)))
        if str(word).strip():
            lowered = [w.lower() for w in recorded.words]
            if word.strip().lower() not in lowered:
                raise ValueError(f"HRV Attention Map Render: {word.strip()!r} was not mapped; mapped words: "
                                 f"{', '.join(recorded.words)}")
            indices = [lowered.index(word.strip().lower())]
        maps = recorded.latent_maps()[:, indices]                                   # [B, words, Hl, Wl]
        soft = word_masks(maps, images.shape[1:3], 0.0)
        masks = (soft > threshold).to(torch.float32) if threshold > 0 else soft
        masks = masks.transpose(0, 1).reshape(-1, *masks.shape[-2:])
        soft = soft.transpose(0, 1).reshape(-1, *soft.shape[-2:])
        pictures = images.to(torch.float32).cpu().repeat(len(indices), 1, 1, 1)
        info = "\n".join(recorded.describe()[i] for i in indices)
        return (masks, overlay(pictures, soft), info)


class HRVDiagnose:
    DESCRIPTION = ("Samples the text once and tells how the model reads one word: its attention per head compared "
                   "with every concept's HRV row ('rose-colored is read as Plants 0.71, Color 0.18, ...'), maps from "
                   "two concepts' top heads beside the all-heads map, and an inline mark for HRV Text Encode that "
                   "fixes the reading. A check to run before steering; its outputs go to Preview Image / Show Text.")
    CATEGORY = CATEGORY
    FUNCTION = "diagnose"
    RETURN_TYPES = ("IMAGE", "STRING", "STRING")
    RETURN_NAMES = ("picture", "reading", "suggested_mark")
    OUTPUT_TOOLTIPS = ("Per image: the word's map from the first concept's top heads | the second concept's | all heads "
                       "(over the image when a VAE is connected).",
                       "The reading: cosine similarity of the word's attention per head with each concept's HRV row, "
                       "highest first, and what the mark does.",
                       "An inline mark such as [rose-colored:Color-Plants] to put into HRV Text Encode's text.")

    @classmethod
    def INPUT_TYPES(cls):
        import comfy.samplers
        names = concept_choices()
        return {"required": {
            "model": ("MODEL", {"tooltip": "The SD1.x or SDXL model. It is not changed."}),
            "clip": ("CLIP", {"tooltip": "The CLIP of the same checkpoint."}),
            "hrv": ("HRV", {"tooltip": "Head relevance vectors for this model's architecture, from HRV Loader."}),
            "text": ("STRING", {"multiline": True, "dynamicPrompts": True, "default": "",
                                "tooltip": "The prompt that shows the problem, e.g. 'a rose-colored vase'."}),
            "word": ("STRING", {"default": "", "tooltip": "The word of the text to diagnose, e.g. rose-colored."}),
            "intended_concept": (["auto"] + names, {"default": "auto", "tooltip":
                                 "What the word should mean (first map and the mark). auto: the concept it is read "
                                 "as most."}),
            "other_concept": (["auto"] + names, {"default": "auto", "tooltip":
                              "The concept to compare with (second map and the mark's undesired concept). auto: the "
                              "strongest reading other than the first concept."}),
            "top_k": ("FLOAT", {"default": 0.25, "min": 0.001, "max": 1300.0, "step": 0.01, "tooltip":
                                "How many top heads of each concept draw its map. " + TOP_K_TOOLTIP}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff, "tooltip": "Noise seed."}),
            "steps": ("INT", {"default": 20, "min": 1, "max": 200, "tooltip": "Sampling steps."}),
            "cfg": ("FLOAT", {"default": 7.0, "min": 0.0, "max": 30.0, "step": 0.1, "tooltip": "Guidance scale."}),
            "sampler_name": (comfy.samplers.KSampler.SAMPLERS, {"tooltip": "The sampler."}),
            "scheduler": (comfy.samplers.KSampler.SCHEDULERS, {"default": "normal", "tooltip": "The noise schedule."}),
            "width": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 8, "tooltip": "Image width (SD1.x: 512, SDXL: 1024)."}),
            "height": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 8, "tooltip": "Image height."}),
        }, "optional": {
            "vae": ("VAE", {"tooltip": "Connect the checkpoint's VAE to see the maps over the sampled image."}),
        }}

    def diagnose(self, model, clip, hrv, text, word, intended_concept, other_concept, top_k, seed, steps, cfg,
                 sampler_name, scheduler, width, height, vae=None):
        _check_hrv(hrv)
        _check_architecture(hrv, model)
        try:
            if "," in word:
                raise ValueError("diagnose one word at a time (no commas)")
            request = map_request(clip, hrv, text, word, AUTO, "top_k", top_k)
            k = top_k_count(top_k, hrv.layout.num_heads)
            intended = None if intended_concept == "auto" else hrv.concept_index(intended_concept)
            other = None if other_concept == "auto" else hrv.concept_index(other_concept)
        except USER_ERRORS as e:
            raise ValueError(f"HRV Diagnose: {e}") from None
        samples = sample_with_maps(model, clip, text, request, seed, steps, cfg, sampler_name, scheduler, width, height)
        recorded = request.holder.find(samples)
        mass = recorded.head_mass()[:, :, 0].mean(0)                                   # [H]
        reading = read_word(request.words[0].label, hrv.matrix, hrv.concepts, mass)
        first, second = compared_concepts(reading, intended, other)
        mark, why = suggest_mark(reading, intended, other)
        num_heads = hrv.layout.num_heads
        panels_weights = [head_weights("top_k", hrv.matrix[first], num_heads, k),
                          head_weights("top_k", hrv.matrix[second], num_heads, k), head_weights("all", None, num_heads)]
        titles = [f"top {k} {hrv.concepts[first]}", f"top {k} {hrv.concepts[second]}", "all heads"]
        images = vae.decode(samples) if vae is not None else None
        hw = images.shape[1:3] if images is not None else (height, width)
        softs = [word_masks(recorded.latent_maps(weights)[:, :1], hw, 0.0)[:, 0] for weights in panels_weights]
        rows = []
        for b in range(recorded.batch):
            panels = []
            for soft, title in zip(softs, titles):
                picture = overlay(images[b:b + 1].float().cpu(), soft[b:b + 1])[0] if images is not None else heat_colors(soft[b])
                panels.append(label(picture, title))
            rows.append(side_by_side(panels))
        text_out = (f"{reading.text()}\n(cosine similarity of its attention per head with each concept's HRV row, "
                    f"mean over {steps} steps)\nSuggested mark: {mark}. {why}")
        log.info("HRV Diagnose: %s", text_out.replace("\n", " "))
        return (torch.stack(rows), text_out, mark)


def sample_with_maps(model, clip, text, request, seed, steps, cfg, sampler_name, scheduler, width, height):
    """Sample the text once (empty negative) with the request's maps recorded; returns the latent."""
    import comfy.model_management
    import comfy.sample
    import comfy.utils
    positive = attach_request(encode_text(clip, text), FEATURE, request)
    negative = encode_text(clip, "")
    latent = comfy.sample.fix_empty_latent_channels(model, torch.zeros([1, 4, height // 8, width // 8]))
    noise = comfy.sample.prepare_noise(latent, seed)
    bar = comfy.utils.ProgressBar(steps)
    return comfy.sample.sample(install_core(model, [RECORDER]), noise, steps, cfg, sampler_name, scheduler, positive,
                               negative, latent, seed=seed, disable_pbar=True,
                               callback=lambda step, x0, x, total: bar.update_absolute(step + 1, total))


NODE_CLASS_MAPPINGS = {"HRVAttentionMap": HRVAttentionMap, "HRVAttentionMapRender": HRVAttentionMapRender,
                       "HRVDiagnose": HRVDiagnose}
NODE_DISPLAY_NAME_MAPPINGS = {"HRVAttentionMap": "HRV Attention Map", "HRVAttentionMapRender": "HRV Attention Map Render",
                              "HRVDiagnose": "HRV Diagnose"}
