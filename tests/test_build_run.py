"""The build loop on a real ComfyUI (model, clip) pair with tiny random weights:
determinism, resume after a real kill, shards, merge, CLI, errors."""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from hrv.build.run import BuildError, BuildSettings, Shard, merge_builds, run_build
from hrv.cli import main as cli_main
from hrv.cli import parser as cli_parser
from hrv.build.sampling import ComfyPromptSampler, clip_text_encoder, optimized_attention
from hrv.build.concept_embed import encode_concept_tokens, encode_concept_words, semantic_positions
from hrv.format.hrv_file import load, save
from hrv.build.prompts import PromptError, imagenet_prompts, read_prompt_file
from harness.tiny_pipeline import tiny_sd1_pipeline
from hrv.build.votes import ConceptWordsError

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
PACK_DIR = os.path.dirname(TESTS_DIR)
CONCEPTS = {"Color": ["red", "blue", "dark green"], "Animals": ["cat", "dog"], "Material": ["wood", "metal"]}
PROMPTS = ["a cat on a mat", "a blue car", "a wooden chair", "two dogs", "a metal robot"]
SETTINGS = BuildSettings(steps=2, cfg=5.0, seed=3, width=128, height=128)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pipeline():
    model, clip = tiny_sd1_pipeline(0)
    return model, clip, encode_concept_tokens(clip, CONCEPTS)


def build(pipeline, **kwargs):
    model, clip, words = pipeline
    settings = kwargs.pop("settings", SETTINGS)
    prompts = kwargs.pop("prompts", PROMPTS)
    return run_build(model, words, prompts, settings, ComfyPromptSampler(clip_text_encoder(clip), settings),
                     optimized_attention(), **kwargs)


@pytest.fixture(scope="module")
def single_run(pipeline):
    return build(pipeline)


def test_counts_are_well_formed_and_deterministic(pipeline, single_run):
    h = single_run
    assert h.votes.dtype == torch.int64 and h.votes.shape == (2, 3, 128)
    assert h.votes.sum(1).eq(len(PROMPTS)).all()               # one vote per head, step and prompt (cond only)
    assert torch.allclose(h.matrix.sum(1)[h.votes.sum((0, 2)) > 0], torch.tensor(128.0))
    assert h.provenance["prompts_built"] == 5 and h.provenance["complete"] and "shard" not in h.provenance
    assert h.provenance["concept_set"] == CONCEPTS and h.provenance["seed"] == 3
    again = build(pipeline)
    assert torch.equal(again.votes, h.votes) and again.provenance == h.provenance


def test_concept_words_keep_their_semantic_tokens_and_average_them_for_all_words(pipeline):
    _, clip, bank = pipeline
    words = encode_concept_words(clip, CONCEPTS)
    assert bank.words == words.words and torch.equal(bank.word_concept, words.word_concept)
    assert bank.token_count.tolist() == [1, 1, 2, 1, 1, 1, 1]
    assert words.words == ["red", "blue", "dark green", "cat", "dog", "wood", "metal"]
    assert words.word_concept.tolist() == [0, 0, 0, 1, 1, 2, 2]
    tokens = clip.tokenize("dark green", return_word_ids=True)
    positions = semantic_positions(tokens["l"])
    assert positions == [1, 2]                                  # after the start token, before end/padding
    cond = clip.encode_from_tokens(tokens)                       # the word encoded alone, its own call
    assert torch.allclose(words.embeddings[2], cond[0, positions].float().mean(0), atol=1e-5)
    assert torch.allclose(bank.word_tokens(2), cond[0, positions].float(), atol=1e-5)


def test_sdxl_concept_words_concatenate_clip_l_and_clip_g():
    from harness.tiny_pipeline import tiny_sdxl_clip
    clip = tiny_sdxl_clip()
    words = encode_concept_words(clip, {"A": ["dark green", "red"], "B": ["cat"]})
    assert words.embeddings.shape == (3, 2048)
    tokens = clip.tokenize("dark green", return_word_ids=True)
    assert semantic_positions(tokens["l"]) == semantic_positions(tokens["g"]) == [1, 2]   # g pads with 0, l with end
    cond = clip.encode_from_tokens(tokens)
    assert torch.allclose(words.embeddings[0], cond[0, [1, 2]].float().mean(0), atol=1e-5)


def test_shards_merge_into_the_single_run_file_bit_for_bit(pipeline, single_run, tmp_path):
    shards = [build(pipeline, shard=Shard(i, 2)) for i in range(2)]
    assert [s.provenance["prompts_built"] for s in shards] == [3, 2]
    assert not any(torch.equal(s.votes, single_run.votes) for s in shards)
    for i, s in enumerate(shards):
        save(s, str(tmp_path / f"shard{i}.safetensors"))
    save(single_run, str(tmp_path / "single.safetensors"))
    assert cli_main(["merge", str(tmp_path / "merged.safetensors"),
                     str(tmp_path / "shard1.safetensors"), str(tmp_path / "shard0.safetensors")]) == 0
    merged = load(str(tmp_path / "merged.safetensors"))
    assert torch.equal(merged.votes, single_run.votes) and torch.equal(merged.matrix, single_run.matrix)
    # Same tensors bit for bit and the same metadata (checksum included); safetensors itself writes
    # the metadata map in arbitrary order, so the files are compared by content, not by bytes.
    from safetensors import safe_open
    files = [safe_open(str(tmp_path / n), framework="pt") for n in ("merged.safetensors", "single.safetensors")]
    assert files[0].metadata() == files[1].metadata()
    assert sorted(files[0].keys()) == sorted(files[1].keys()) == ["hrv", "hrv_per_timestep", "votes"]
    for name in files[0].keys():
        a, b = files[0].get_tensor(name), files[1].get_tensor(name)
        assert a.dtype == b.dtype and torch.equal(a, b)


def killed_run(checkpoint: str, kill_at_step: int) -> None:
    """Run in a subprocess: build with checkpoints after every 2 prompts, SIGKILL itself mid-prompt."""
    def progress(done, total):
        if done == kill_at_step:
            os.kill(os.getpid(), signal.SIGKILL)
    torch.set_num_threads(1)                                    # like the test process: identical floats
    model, clip = tiny_sd1_pipeline(0)
    words = encode_concept_tokens(clip, CONCEPTS)
    run_build(model, words, PROMPTS, SETTINGS, ComfyPromptSampler(clip_text_encoder(clip), SETTINGS),
              optimized_attention(), checkpoint_path=checkpoint, checkpoint_every=2, progress=progress)


def test_resume_after_a_kill_gives_the_uninterrupted_counts(pipeline, single_run, tmp_path):
    checkpoint = str(tmp_path / "run.partial.safetensors")
    code = (f"import sys; sys.path[:0] = [{PACK_DIR!r}, {TESTS_DIR!r}]\n"
            "from hrv.comfy_host import use_comfyui; use_comfyui(cpu=True)\n"
            f"import test_build_run as t; t.killed_run({checkpoint!r}, 7)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    partial = load(checkpoint)                                   # atomic saves: never half-written
    assert partial.provenance["prompts_built"] == 2 and not partial.provenance["complete"]
    assert partial.votes.sum(1).eq(2).all()                      # only whole prompts are in the file
    with pytest.raises(BuildError, match="--resume"):
        build(pipeline, checkpoint_path=checkpoint)
    seen = []
    resumed = build(pipeline, checkpoint_path=checkpoint, resume=True, progress=lambda d, t: seen.append(d))
    assert seen[0] == 4 and seen[-1] == 10                       # restarted at prompt 3 of 5 (2 steps each)
    assert torch.equal(resumed.votes, single_run.votes) and resumed.provenance == single_run.provenance
    # Resuming a finished build samples nothing and returns the same counts.
    again = build(pipeline, checkpoint_path=checkpoint, resume=True, progress=lambda d, t: seen.append(-d))
    assert torch.equal(again.votes, single_run.votes) and seen[-1] == -10


def test_resume_refuses_a_checkpoint_of_another_build(pipeline, tmp_path):
    checkpoint = str(tmp_path / "other.partial.safetensors")
    build(pipeline, prompts=PROMPTS[:2], checkpoint_path=checkpoint)
    with pytest.raises(BuildError, match="other prompts, concepts, settings or model"):
        build(pipeline, checkpoint_path=checkpoint, resume=True)
    with pytest.raises(BuildError, match="holds shard 0/1, not 1/2"):
        build(pipeline, prompts=PROMPTS[:2], checkpoint_path=checkpoint, resume=True, shard=Shard(1, 2))


def test_merge_errors(pipeline, single_run):
    a, b = build(pipeline, shard=Shard(0, 3)), build(pipeline, shard=Shard(1, 3))
    with pytest.raises(BuildError, match="shards 2/3 are missing"):
        merge_builds([a, b])
    with pytest.raises(BuildError, match="appears twice"):
        merge_builds([a, a, b])
    other = build(pipeline, settings=BuildSettings(steps=2, cfg=5.0, seed=4, width=128, height=128))
    with pytest.raises(BuildError, match="not shards of one build"):
        merge_builds([single_run, other])
    mixed = merge_builds([single_run, other], mixed=True)
    assert torch.equal(mixed.votes, single_run.votes + other.votes)
    assert mixed.provenance["source"] == "merged" and len(mixed.provenance["merged_from"]) == 2


def test_bad_input_is_a_clear_error(pipeline):
    _, clip, _ = pipeline
    with pytest.raises(ConceptWordsError, match="'\\\\t' has no tokens"):
        encode_concept_words(clip, {"A": ["dog", "\t"], "B": ["cat"]})
    with pytest.raises(ConceptWordsError, match="'B' has no words"):
        encode_concept_words(clip, {"A": ["dog"], "B": []})
    with pytest.raises(ConceptWordsError, match="at least 2 concepts"):
        encode_concept_words(clip, {"A": ["dog", "cat"]})
    with pytest.raises(BuildError, match="dpm_adaptive"):
        BuildSettings(sampler="dpm_adaptive")
    with pytest.raises(BuildError, match="multiples of 8"):
        BuildSettings(width=100)
    for bad in ("2/2", "x", "1/0", "-1/3"):
        with pytest.raises(BuildError, match="0 <= I < N"):
            Shard.parse(bad)
    with pytest.raises(BuildError, match="empty"):
        build(pipeline, prompts=[])


def test_imagenet_prompts_and_prompt_files(tmp_path):
    prompts = imagenet_prompts()
    assert len(prompts) == 1000 and len(set(prompts)) == 1000
    assert prompts[0] == "A photo of a tench" and prompts[-1] == "A photo of a toilet tissue"
    f = tmp_path / "p.txt"
    f.write_text("# mine\n a fox \n\nan owl\n", encoding="utf-8")
    assert read_prompt_file(str(f)) == ["a fox", "an owl"]
    f.write_text("\n# nothing\n", encoding="utf-8")
    with pytest.raises(PromptError, match="no prompts"):
        read_prompt_file(str(f))


def _cli_files(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS[:3]), encoding="utf-8")
    concepts = tmp_path / "concepts.json"
    concepts.write_text(json.dumps({"concepts": CONCEPTS}), encoding="utf-8")
    return ["--prompts", str(prompts), "--no-imagenet", "--concepts", str(concepts), "--steps", "2",
            "--cfg", "5", "--seed", "3", "--width", "128", "--height", "128"]


def test_cli_build_loop_writes_the_same_counts(pipeline, tmp_path):
    from hrv.build.cli import build_with
    model, clip, _ = pipeline
    out = str(tmp_path / "mine.safetensors")
    args = cli_parser().parse_args(["build", "--ckpt", "unused", "--out", out] + _cli_files(tmp_path))
    hrv = build_with(args, model, clip)
    assert os.path.isfile(out) and not os.path.exists(str(tmp_path / "mine.partial.safetensors"))
    expected = build(pipeline, prompts=PROMPTS[:3])
    assert torch.equal(load(out).votes, expected.votes) and torch.equal(hrv.votes, expected.votes)


def test_cli_command_loads_the_checkpoint_and_refuses_to_overwrite(pipeline, tmp_path, monkeypatch, capsys):
    import hrv.build.sampling
    model, clip, _ = pipeline
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"stand-in for a checkpoint file")
    loaded = []
    monkeypatch.setattr(hrv.build.sampling, "load_checkpoint", lambda path: loaded.append(path) or (model, clip))
    out = str(tmp_path / "built.safetensors")
    argv = ["build", "--ckpt", str(ckpt), "--out", out, "--cpu"] + _cli_files(tmp_path)
    assert cli_main(argv) == 0 and loaded == [str(ckpt)]
    built = load(out)
    assert built.provenance["model"]["file"] == "model.safetensors" and len(built.provenance["model"]["sha256"]) == 64
    assert cli_main(argv) == 2 and "exists" in capsys.readouterr().err
    assert cli_main(argv + ["--resume"]) == 0                    # finished: verified, nothing sampled again
    assert torch.equal(load(out).votes, built.votes)
    assert cli_main(argv[:2] + ["missing.ckpt"] + argv[3:]) == 2


def test_batched_prompts_vote_as_one_by_one(pipeline, single_run):
    # 5 prompts in batches of 2: each row has its own seed's noise and its own word draws; euler is deterministic.
    batched = build(pipeline, batch_size=2)
    assert torch.equal(batched.votes, single_run.votes)
    assert batched.provenance["batch_size"] == 2 and batched.provenance["fingerprint"] == single_run.provenance["fingerprint"]
    with pytest.raises(BuildError, match="batch size"):
        build(pipeline, batch_size=0)


def test_estimator_is_recorded_and_all_words_is_an_explicit_choice(pipeline, single_run):
    assert single_run.provenance["estimator"] == "paper" and single_run.provenance["words_sampled_per_concept"] == 1
    old = build(pipeline, settings=BuildSettings(**{**SETTINGS.as_dict(), "estimator": "all_words"}))
    assert old.provenance["estimator"] == "all_words" and old.provenance["words_sampled_per_concept"] == "all"
    assert old.provenance["fingerprint"] != single_run.provenance["fingerprint"]
    with pytest.raises(BuildError, match="unknown estimator 'best'"):
        BuildSettings(estimator="best")
