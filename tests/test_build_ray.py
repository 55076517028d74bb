"""--ray on a local Ray with 2 CPU workers: shards run as Ray tasks and merge into the single-run counts."""
import functools
import os

import pytest
import torch

ray = pytest.importorskip("ray", reason="ray is not installed (optional extra: pip install -r requirements-test.txt)")

from hrv.build.ray_dispatch import run_build_ray  # noqa: E402
from hrv.build.run import BuildSettings, run_build  # noqa: E402
from hrv.build.sampling import ComfyPromptSampler, clip_text_encoder, optimized_attention  # noqa: E402
from hrv.build.concept_embed import encode_concept_tokens  # noqa: E402
from harness.tiny_pipeline import tiny_sd1_pipeline  # noqa: E402

CONCEPTS = {"Color": ["red", "blue"], "Animals": ["cat", "dog"], "Material": ["wood", "metal"]}
PROMPTS = ["a cat", "a blue car", "a wooden chair", "two dogs", "a metal robot"]
SETTINGS = BuildSettings(steps=2, cfg=5.0, seed=9, width=128, height=128)


def single_run_one_thread():
    """The reference, computed like a Ray CPU task does (num_cpus=1: one torch thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, clip = tiny_sd1_pipeline(0)
        words = encode_concept_tokens(clip, CONCEPTS)
        return run_build(model, words, PROMPTS, SETTINGS, ComfyPromptSampler(clip_text_encoder(clip), SETTINGS),
                         optimized_attention())
    finally:
        torch.set_num_threads(threads)


def test_ray_two_cpu_workers_merge_to_the_single_run(tmp_path, monkeypatch):
    # The workers unpickle the loader, which lives in the test harness.
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (tests_dir, os.environ.get("PYTHONPATH")) if p))
    seen = []
    merged = run_build_ray(functools.partial(tiny_sd1_pipeline, 0), PROMPTS, CONCEPTS, SETTINGS,
                           work_dir=str(tmp_path / "shards"), progress=lambda d, t: seen.append((d, t)),
                           init_options={"num_cpus": 2, "object_store_memory": 80 * 1024 * 1024})
    assert not ray.is_initialized()                                   # the local Ray it started is shut down
    shard_files = sorted(p.name for p in (tmp_path / "shards").iterdir())
    assert shard_files == ["shard_0_of_2.partial.safetensors", "shard_1_of_2.partial.safetensors"]
    assert merged.provenance["prompts_built"] == 5 and "shard" not in merged.provenance
    assert seen and seen[-1][1] == 10
    reference = single_run_one_thread()
    assert torch.equal(merged.votes, reference.votes)
    assert torch.equal(merged.matrix, reference.matrix)
    assert merged.provenance == reference.provenance
