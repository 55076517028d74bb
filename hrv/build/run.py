"""The prompt loop of an HRV build: shards, atomic checkpoints, resume, merge.

Vote counts are integers and every prompt i is sampled with seed `settings.seed + i` whatever
shard runs it, so the counts of shards (or of a run killed and resumed) sum to exactly the
counts of one uninterrupted run. A checkpoint holds the counts of whole prompts only: the
prompt that was running when a run died is sampled again on resume.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Callable, Protocol

import torch

from ..format.hrv_file import HRV, HRVFileError, load, normalise_rows, save
from .estimator import DEFAULT_ESTIMATOR, ESTIMATOR_HELP, ConceptTokenBank, check_estimator
from .votes import install_vote_patches

log = logging.getLogger("hrv.build")

# Samplers whose number of model calls is not tied to `steps` cannot fill [steps, C, H].
UNSUPPORTED_SAMPLERS = {"dpm_adaptive": "it chooses its own number of steps"}


class BuildError(ValueError):
    """A build that cannot run or resume as asked; the message says what to do."""


@dataclass(frozen=True)
class BuildSettings:
    steps: int = 50
    cfg: float = 7.5
    seed: int = 0
    sampler: str = "euler"
    scheduler: str = "normal"
    width: int = 512
    height: int = 512
    negative_prompt: str = ""
    estimator: str = DEFAULT_ESTIMATOR

    def __post_init__(self):
        if int(self.steps) < 1:
            raise BuildError(f"steps must be at least 1, got {self.steps}")
        if not math.isfinite(self.cfg) or self.cfg <= 0:
            raise BuildError(f"cfg must be a positive number, got {self.cfg}")
        if self.width < 8 or self.height < 8 or self.width % 8 or self.height % 8:
            raise BuildError(f"width and height must be multiples of 8 (at least 8), got {self.width}x{self.height}")
        try:
            check_estimator(self.estimator)
        except ValueError as e:
            raise BuildError(str(e)) from None
        if self.sampler in UNSUPPORTED_SAMPLERS:
            raise BuildError(f"sampler {self.sampler!r} cannot be used to build HRVs: "
                             f"{UNSUPPORTED_SAMPLERS[self.sampler]}; pick euler or another fixed-step sampler")

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Shard:
    index: int = 0
    count: int = 1

    def __post_init__(self):
        if self.count < 1 or not 0 <= self.index < self.count:
            raise BuildError(f"shard {self.index}/{self.count} is invalid: use I/N with 0 <= I < N")

    @classmethod
    def parse(cls, text: str) -> "Shard":
        index, sep, count = str(text).partition("/")
        try:
            return cls(int(index), int(count)) if sep else cls(int(index), 0)
        except ValueError:
            raise BuildError(f"shard {text!r} is invalid: use I/N with 0 <= I < N, e.g. 0/4") from None

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"

    def prompt_indices(self, num_prompts: int) -> list[int]:
        """Round-robin: prompt i belongs to shard i % N."""
        return list(range(self.index, num_prompts, self.count))


class PromptSampler(Protocol):
    def __call__(self, model, prompt: str, seed: int, step_done: Callable[[int], None]) -> None:
        """Sample `prompt` with `model`, calling step_done(i) after step i."""


def prompts_sha256(prompts: list[str]) -> str:
    return hashlib.sha256(json.dumps(prompts, ensure_ascii=False).encode()).hexdigest()


def build_fingerprint(prompts: list[str], concepts: dict[str, list[str]], settings: BuildSettings,
                      layout_compact: list, model_id=None) -> str:
    """Identifies what a build computes; shards and resumed runs must share it."""
    payload = {"prompts": prompts_sha256(prompts), "concepts": concepts, "settings": settings.as_dict(),
               "layout": layout_compact, "model": model_id}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def make_hrv(votes: torch.Tensor, layout, concepts: list[str], provenance: dict) -> HRV:
    """An HRV from int64 vote counts [S, C, H]: matrix = row-normalised sum over steps,
    per-timestep HRVs = each step's counts row-normalised."""
    return HRV(matrix=normalise_rows(votes.sum(0)), layout=layout, concepts=list(concepts), provenance=provenance,
               votes=votes.clone(), per_timestep=torch.stack([normalise_rows(v) for v in votes]))


def _provenance(prompts, words, settings, shard, fingerprint, model_id, built, complete, batch_size=1) -> dict:
    provenance = {"source": "built", "method": "head votes, arXiv 2412.02237 Sec. 3",
                  "estimator_description": ESTIMATOR_HELP[settings.estimator],
                  "words_sampled_per_concept": 1 if settings.estimator == "paper" else "all",
                  "batch_size": batch_size,
                  "prompts": len(prompts), "prompts_sha256": prompts_sha256(prompts),
                  "prompts_built": built, "complete": complete, **settings.as_dict(),
                  "seed_rule": "seed + prompt index", "concept_set": words.as_dict(),
                  "model": model_id, "fingerprint": fingerprint}
    if shard.count > 1:
        provenance["shard"] = shard.label
    return provenance


def _resume_state(path: str, fingerprint: str, shard: Shard, shape) -> tuple[torch.Tensor, int, bool]:
    try:
        previous = load(path)
    except HRVFileError as e:
        raise BuildError(f"cannot resume from {path}: {e}; delete it to start over") from None
    p = previous.provenance
    if p.get("fingerprint") != fingerprint:
        raise BuildError(f"{path} was built with other prompts, concepts, settings or model; "
                         "delete it or change --out to start a new build")
    if p.get("shard", "0/1") != shard.label:
        raise BuildError(f"{path} holds shard {p.get('shard', '0/1')}, not {shard.label}")
    if previous.votes is None or tuple(previous.votes.shape) != tuple(shape):
        raise BuildError(f"{path} has no vote counts of shape {list(shape)}; delete it to start over")
    return previous.votes.clone(), int(p.get("prompts_built", 0)), bool(p.get("complete"))


def run_build(model, words: ConceptTokenBank, prompts: list[str], settings: BuildSettings, sample_prompt: PromptSampler,
              optimized_attention, *, shard: Shard = Shard(), checkpoint_path: str | None = None, resume: bool = False,
              checkpoint_every: int = 8, checkpoint_seconds: float = 120.0,
              progress: Callable[[int, int], None] | None = None, model_id=None, batch_size: int = 1) -> HRV:
    """Sample every prompt of `shard`, counting head votes; returns the HRV of this shard.

    batch_size prompts sample as one latent batch (CFG batch 2 x batch_size); the votes are counted per
    prompt and summed, so the counts do not depend on it beyond the float rounding of batched kernels.

    With checkpoint_path, the counts of finished prompts are saved there atomically every
    checkpoint_every prompts or checkpoint_seconds; resume=True continues from that file.
    progress(done_steps, total_steps) is called after every sampling step.
    """
    if not prompts:
        raise BuildError("the prompt batch is empty")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise BuildError(f"the batch size must be a whole number of prompts, at least 1, got {batch_size!r}")
    patched, recorder = install_vote_patches(model, words, settings.steps, optimized_attention, settings.estimator,
                                             settings.seed)
    layout = recorder.layout
    fingerprint = build_fingerprint(prompts, words.as_dict(), settings, layout.compact(), model_id)
    indices = shard.prompt_indices(len(prompts))
    votes = torch.zeros(recorder.shape, dtype=torch.int64)
    done = 0
    if checkpoint_path and os.path.exists(checkpoint_path):
        if not resume:
            raise BuildError(f"{checkpoint_path} exists: resume it (--resume) or delete it to start over")
        votes, done, complete = _resume_state(checkpoint_path, fingerprint, shard, recorder.shape)
        log.info("resuming %s: %d of %d prompts done", checkpoint_path, done, len(indices))
        if complete or done >= len(indices):
            done = len(indices)

    def snapshot(complete: bool) -> HRV:
        return make_hrv(votes, layout, words.names, _provenance(prompts, words, settings, shard, fingerprint,
                                                          model_id, done, complete, batch_size))

    total_steps = len(indices) * settings.steps
    if progress:
        progress(done * settings.steps, total_steps)
    last_save, unsaved = time.monotonic(), 0
    with torch.inference_mode():
        for position in range(done, len(indices), batch_size):
            group = indices[position:position + batch_size]
            recorder.start_prompt(group)
            base = position * settings.steps

            def step_done(i, base=base, n=len(group)):
                recorder.end_step(i)
                if progress:
                    progress(base + n * min(i + 1, settings.steps), total_steps)

            if batch_size == 1:
                sample_prompt(patched, prompts[group[0]], settings.seed + group[0], step_done)
            else:
                sample_prompt(patched, [prompts[i] for i in group], [settings.seed + i for i in group], step_done)
            votes += recorder.take_prompt_counts()
            done, unsaved = position + len(group), unsaved + len(group)
            if checkpoint_path and done < len(indices) and (
                    unsaved >= checkpoint_every or time.monotonic() - last_save >= checkpoint_seconds):
                save(snapshot(False), checkpoint_path)
                last_save, unsaved = time.monotonic(), 0
    result = snapshot(True)
    if checkpoint_path:
        save(result, checkpoint_path)
    return result


def merge_builds(hrvs: list[HRV], mixed: bool = False) -> HRV:
    """Sum the vote counts of shards (or, with mixed=True, of unrelated builds of one layout and concept set).

    The shards of one build merge into exactly the file a single run writes.
    """
    if not hrvs:
        raise BuildError("nothing to merge")
    first = hrvs[0]
    for h in hrvs:
        if h.votes is None:
            raise BuildError("an input has no vote counts (official HRVs cannot be merged); merge built HRV files")
        if h.layout != first.layout or h.concepts != first.concepts:
            raise BuildError("the inputs have different head layouts or concept sets; they cannot be summed")
        if h.votes.shape != first.votes.shape:
            raise BuildError(f"the inputs have different step counts ({h.votes.shape[0]} vs {first.votes.shape[0]})")
        if not h.provenance.get("complete"):
            raise BuildError("an input is an unfinished build: resume it first")
    votes = torch.stack([h.votes for h in hrvs]).sum(0)
    if mixed:
        provenance = {"source": "merged", "complete": True, "merged_from": [h.provenance for h in hrvs]}
        return make_hrv(votes, first.layout, first.concepts, provenance)
    fingerprints = {h.provenance.get("fingerprint") for h in hrvs}
    if len(fingerprints) != 1:
        raise BuildError("the inputs are not shards of one build (different prompts, concepts, settings or model); "
                         "pass --mixed to sum them anyway")
    labels = [h.provenance.get("shard", "0/1") for h in hrvs]
    shards = [Shard.parse(label) for label in labels]
    counts = {s.count for s in shards}
    if len(counts) != 1:
        raise BuildError(f"the inputs come from different shard splits: {', '.join(labels)}")
    (count,) = counts
    if len(set(labels)) != len(labels):
        raise BuildError(f"a shard appears twice ({', '.join(labels)}): its votes would count double")
    missing = sorted(set(range(count)) - {s.index for s in shards})
    if missing:
        raise BuildError(f"shards {', '.join(f'{i}/{count}' for i in missing)} are missing; build them first")
    provenance = {k: v for k, v in first.provenance.items() if k != "shard"}
    provenance["prompts_built"] = sum(int(h.provenance.get("prompts_built", 0)) for h in hrvs)
    return make_hrv(votes, first.layout, first.concepts, provenance)
