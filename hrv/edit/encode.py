"""From two prompts to HRV Prompt Edit's conditioning (source and target as one conditioning of batch 2) and its
EditRequest. The CLIP is ComfyUI's, duck-typed: tokenize, encode_from_tokens_scheduled."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from ..steering.encode import concept_row, split_targets
from ..steering.factors import strengthen
from ..steering.positions import WordPositionError, locate_span, prompt_words, token_stream, whole_word_spans
from .align import Alignment, align_prompts
from .request import BLEND_THRESHOLD, EditRequest, LocalBlend, merge_scales

NO_CONCEPT = "none"
EDITED_MAPS = ("source", "own")    # the edited words' columns: the source's carried map (P2P) or the target's own


class EditError(ValueError):
    """Bad edit settings; the message says which and what is allowed."""


@dataclass(frozen=True)
class EditSettings:
    mode: str = "replace"
    concept: str = NO_CONCEPT
    hrv_strength: float = 1.0
    cross_replace: float = 0.8
    self_replace: float = -1.0            # < 0: 0.9 with a concept, 0.4 without (the authors' runs)
    edited_map: str = "source"
    reweight_words: str = ""
    reweight_factor: float = 1.0
    blend_words: str = ""
    blend_threshold: float = BLEND_THRESHOLD

    def resolved_self_replace(self) -> float:
        if self.self_replace < 0:
            return 0.9 if self.concept != NO_CONCEPT else 0.4
        return self.self_replace


def encode_pair(clip, source_text: str, target_text: str) -> tuple[list, int]:
    """One CONDITIONING entry of batch 2 (row 0 = CLIP Text Encode of the source, row 1 of the target) and its
    context length. Prompts of different chunk counts are both repeated to the least common length, as ComfyUI does
    when it batches conditionings of different lengths (the attention is the same)."""
    if clip is None or not hasattr(clip, "encode_from_tokens_scheduled"):
        raise EditError("the clip input is missing or not a CLIP: connect the CLIP output of your checkpoint loader")
    encoded = [clip.encode_from_tokens_scheduled(clip.tokenize(t)) for t in (source_text, target_text)]
    if any(len(e) != 1 for e in encoded):
        raise EditError("a prompt encoded to several conditionings (scheduled CLIP hooks): HRV Prompt Edit needs one "
                        "conditioning per prompt; remove the hooks from the CLIP")
    (cs, ds), (ct, dt) = encoded[0][0][:2], encoded[1][0][:2]
    length = math.lcm(cs.shape[1], ct.shape[1])
    tiled = [c.repeat(1, length // c.shape[1], 1) for c in (cs, ct)]
    extra = dict(ds)
    for key, value in ds.items():
        other = dt.get(key)
        if isinstance(value, torch.Tensor) and isinstance(other, torch.Tensor) and value.shape == other.shape:
            extra[key] = torch.cat([value, other])
    return [[torch.cat(tiled), extra]], length


def restore_edited(alignment: Alignment) -> Alignment:
    """The edited words keep the target's own attention column (the authors' P2P-HRV) instead of the source's."""
    edited = set(alignment.edited)
    pairs = tuple(p for p in alignment.pairs if p[0] not in edited)
    own = tuple(sorted(set(alignment.own) | edited))
    return replace(alignment, pairs=pairs, own=own)


def word_positions(clip, text: str, words: str, what: str) -> tuple[int, ...]:
    """Context positions of every whole-word occurrence of the comma-separated words in text."""
    stream = token_stream(clip, text)
    found = set()
    for word in split_targets(words):
        spans = whole_word_spans(text, word)
        if not spans:
            raise EditError(f"the {what} word {word!r} is not a word of the prompt {text!r}. Prompt words: "
                            f"{', '.join(prompt_words(text)) or '(none)'}")
        for a, b in spans:
            found.update(locate_span(clip, text, a, b, stream))
    return tuple(sorted(found))


def blend_positions(clip, source_text: str, target_text: str, words: str) -> tuple[tuple, tuple]:
    """Positions of the local-blend words in each prompt (a word may be in one prompt only)."""
    source, target = set(), set()
    for word in split_targets(words):
        in_source, in_target = whole_word_spans(source_text, word), whole_word_spans(target_text, word)
        if not in_source and not in_target:
            raise EditError(f"the local-blend word {word!r} is in neither prompt; name words of the source or the "
                            f"target, e.g. the object being edited")
        if in_source:
            source.update(word_positions(clip, source_text, word, "local-blend"))
        if in_target:
            target.update(word_positions(clip, target_text, word, "local-blend"))
    return tuple(sorted(source)), tuple(sorted(target))


def edit_request(clip, hrv, source_text: str, target_text: str, settings: EditSettings, context_length: int,
                 self_keys, blend_keys) -> EditRequest:
    s = settings
    if s.edited_map not in EDITED_MAPS:
        raise EditError(f"edited_map must be one of {', '.join(EDITED_MAPS)}, got {s.edited_map!r}")
    for name in ("cross_replace", "hrv_strength", "reweight_factor", "blend_threshold"):
        if not math.isfinite(getattr(s, name)):
            raise EditError(f"{name} must be a finite number")
    try:
        alignment = align_prompts(clip, source_text, target_text, s.mode)
        labels = []
        scales = ()
        if s.concept != NO_CONCEPT and alignment.edited:
            factors = strengthen(concept_row(hrv, s.concept), s.hrv_strength)
            scales = tuple((p, factors) for p in alignment.edited)
            labels.append(f"{s.concept} x{s.hrv_strength:g} on target positions {list(alignment.edited)}")
        if s.edited_map == "own":
            alignment = restore_edited(alignment)
        reweight = ()
        if s.reweight_words.strip() and s.reweight_factor != 1.0:
            positions = word_positions(clip, target_text, s.reweight_words, "reweight")
            reweight = tuple((p, torch.full((hrv.layout.num_heads,), float(s.reweight_factor))) for p in positions)
            labels.append(f"reweight x{s.reweight_factor:g} on target positions {list(positions)}")
        blend = None
        if s.blend_words.strip():
            source_positions, target_positions = blend_positions(clip, source_text, target_text, s.blend_words)
            blend = LocalBlend(source_positions, target_positions, frozenset(blend_keys), float(s.blend_threshold))
        return EditRequest(hrv.layout, alignment, context_length, float(s.cross_replace), s.resolved_self_replace(),
                           frozenset(self_keys), merge_scales(scales, reweight), blend, tuple(labels))
    except WordPositionError as e:
        raise EditError(str(e)) from None


def pair_latent(width: int, height: int, pairs: int) -> dict:
    """An empty LATENT of 2 * pairs rows whose rows 2p and 2p + 1 share their noise (batch_index p, p)."""
    import comfy.model_management
    samples = torch.zeros([2 * pairs, 4, height // 8, width // 8], device=comfy.model_management.intermediate_device())
    return {"samples": samples, "batch_index": [p for p in range(pairs) for _ in range(2)]}


def prompt_edit(model, clip, hrv, source_text: str, target_text: str, settings: EditSettings, width: int, height: int,
                pairs: int = 1):
    """(model with the edit installed, conditioning of batch 2 carrying the request, latent pair): what HRV Prompt
    Edit returns. Raises EditError / AlignmentError / ValueError in the user's terms."""
    from ..attention import attach_request, install_core
    from .processor import EDIT, blend_layers, self_attention_layers
    from .request import FEATURE
    from .sampling import install_sampling_wrappers
    unet = model.get_model_object("diffusion_model")
    conditioning, length = encode_pair(clip, source_text, target_text)
    request = edit_request(clip, hrv, source_text, target_text, settings, length, self_attention_layers(unet),
                           blend_layers(unet))
    edited = install_core(model, [EDIT])
    install_sampling_wrappers(edited)
    return edited, attach_request(conditioning, FEATURE, request), pair_latent(int(width), int(height), int(pairs)), request
