"""`--ray`: build the shards of one HRV as Ray tasks (one per GPU, or per CPU worker) and merge them.

Ray is optional (`pip install ray`). Each task loads the model itself through `loader` (a
picklable callable returning (model, clip), e.g. functools.partial(load_checkpoint, path)),
builds shard i/N with its own checkpoint file under work_dir, and returns its HRV; the driver
sums the counts with merge_builds, so the result is bit-identical to a single run on the same
kind of device. On a multi-node cluster the checkpoint must be readable at the same path on
every node, and work_dir should be shared storage for --resume to find the shard checkpoints.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Callable

from .run import BuildError, BuildSettings, Shard, merge_builds, run_build
from ..format.hrv_file import HRV

log = logging.getLogger("hrv.build")

PACK_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
UPLOAD_EXCLUDES = [".venv", ".git", "data/hrv_vectors", "output", "test-artifacts", "*.safetensors", "*.ckpt", "*.pt"]


def import_ray():
    try:
        import ray
    except ImportError:
        raise BuildError("--ray needs Ray: pip install 'ray>=2.9' (or drop --ray to build on this machine)") from None
    return ray


def runtime_env(address: str | None) -> dict:
    """Local Ray: workers import this pack from here. Remote cluster: upload the pack (without venv/data)."""
    if address:
        return {"working_dir": PACK_DIR, "excludes": UPLOAD_EXCLUDES}
    path = os.pathsep.join(p for p in (PACK_DIR, os.environ.get("PYTHONPATH", "")) if p)
    return {"env_vars": {"PYTHONPATH": path}}


def build_shard(loader: Callable, prompts: list[str], concepts: dict, settings: BuildSettings, shard: Shard,
                checkpoint_path: str | None, resume: bool, model_id, checkpoint_every: int, tracker=None,
                batch_size: int = 1) -> HRV:
    """Body of one Ray task (also callable directly): load, embed the concept words, build the shard."""
    from .sampling import ComfyPromptSampler, clip_text_encoder, optimized_attention
    from .concept_embed import encode_concept_tokens
    model, clip = loader()
    words = encode_concept_tokens(clip, concepts)

    def report(done, total):
        tracker.report.remote(shard.index, done, total)   # fire and forget: never waits for the driver

    if checkpoint_path:
        os.makedirs(os.path.dirname(os.path.abspath(checkpoint_path)), exist_ok=True)
    return run_build(model, words, prompts, settings, ComfyPromptSampler(clip_text_encoder(clip), settings),
                     optimized_attention(), shard=shard, checkpoint_path=checkpoint_path, resume=resume,
                     checkpoint_every=checkpoint_every, progress=report if tracker is not None else None,
                     model_id=model_id, batch_size=batch_size)


class ProgressTracker:
    """Ray actor: the latest (done, total) steps of every shard."""

    def __init__(self):
        self.state: dict[int, tuple[int, int]] = {}

    def report(self, shard: int, done: int, total: int) -> None:
        self.state[shard] = (done, total)

    def totals(self) -> tuple[int, int]:
        return sum(d for d, _ in self.state.values()), sum(t for _, t in self.state.values())


def shard_plan(ray, num_shards: int | None, cpus_per_task: int) -> tuple[int, dict]:
    """(number of shards, Ray task options): one shard per GPU if the cluster has GPUs, else per CPU task."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if gpus:
        return (num_shards or gpus), {"num_gpus": 1, "num_cpus": cpus_per_task}
    return (num_shards or max(1, int(resources.get("CPU", 1)) // cpus_per_task)), {"num_cpus": cpus_per_task}


def run_build_ray(loader: Callable, prompts: list[str], concepts: dict, settings: BuildSettings, *,
                  address: str | None = None, num_shards: int | None = None, work_dir: str | None = None,
                  resume: bool = False, cpus_per_task: int = 1, model_id=None, checkpoint_every: int = 8,
                  progress: Callable[[int, int], None] | None = None, init_options: dict | None = None,
                  batch_size: int = 1) -> HRV:
    """Build on a Ray cluster (address) or a local Ray started here; returns the merged HRV."""
    ray = import_ray()
    started = False
    if not ray.is_initialized():
        options = {"include_dashboard": False, "log_to_driver": True, **(init_options or {})}
        ray.init(address=address, runtime_env=runtime_env(address), **options)
        started = True
    try:
        count, task_options = shard_plan(ray, num_shards, cpus_per_task)
        if count > len(prompts):
            count = len(prompts)
        log.info("building %d prompts as %d Ray shards (%s each)", len(prompts), count, task_options)
        remote_build = ray.remote(build_shard).options(**task_options, max_retries=0)
        tracker = ray.remote(ProgressTracker).options(num_cpus=0).remote()
        refs = []
        for i in range(count):
            checkpoint = os.path.join(work_dir, f"shard_{i}_of_{count}.partial.safetensors") if work_dir else None
            refs.append(remote_build.remote(loader, prompts, concepts, settings, Shard(i, count), checkpoint,
                                            resume, model_id, checkpoint_every, tracker, batch_size))
        pending = list(refs)
        while pending:
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=1.0)
            if progress:
                done, total = ray.get(tracker.totals.remote())
                if total:
                    progress(done, total)
            if pending:
                time.sleep(0.2)
        shards = ray.get(refs)
    finally:
        if started:
            ray.shutdown()
    return merge_builds(shards)
