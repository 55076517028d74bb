"""HRVBuild and HRVSave on the real ComfyUI with a tiny random (model, clip)."""
import os

import pytest
import torch

from hrv.format.hrv_file import load
from harness.tiny_pipeline import tiny_sd1_pipeline



pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_clip():
    return tiny_sd1_pipeline(0)


@pytest.fixture(autouse=True)
def user_dir(tmp_path, monkeypatch):
    """Resumable builds keep their counts in ComfyUI's user folder: a fresh one per test."""
    import folder_paths
    monkeypatch.setattr(folder_paths, "get_user_directory", lambda: str(tmp_path / "user"))
    return tmp_path / "user"


ARGS = dict(prompt_batch="my prompts only", prompts="a cat\n# skipped\na red car\n", concept_set="my concepts only",
            my_concepts="Color: red, blue\nAnimals: cat, dog\n", steps=2, cfg=5.0, seed=1, sampler_name="euler",
            scheduler="normal", width=128, height=128)


def test_nodes_are_registered_with_tooltips(pack):
    for node_id in ("HRVBuild", "HRVSave"):
        cls = pack.NODE_CLASS_MAPPINGS[node_id]
        assert cls.CATEGORY == "HRV/build" and cls.DESCRIPTION
        inputs = cls.INPUT_TYPES()["required"]
        assert all("tooltip" in spec[1] for spec in inputs.values())
        assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES)
    assert pack.NODE_CLASS_MAPPINGS["HRVBuild"].RETURN_TYPES[0] == "HRV"


def test_build_node_builds_with_a_progress_bar_and_leaves_the_model_alone(pack, model_clip, monkeypatch):
    import comfy.utils
    model, clip = model_clip
    updates = []
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", lambda value, total, preview, node_id=None: updates.append((value, total)))
    options = repr(model.model_options)
    hrv, info = pack.NODE_CLASS_MAPPINGS["HRVBuild"]().build(model, clip, **ARGS)
    assert repr(model.model_options) == options
    assert hrv.concepts == ["Color", "Animals"] and hrv.votes.shape == (2, 2, 128)
    assert hrv.votes.sum(1).eq(2).all()                          # 2 prompts, one cond vote per head and step
    assert hrv.provenance["prompts"] == 2 and "2 prompts x 2 steps" in info
    assert updates[-1] == (4, 4)


def test_build_node_extends_the_default_concepts(pack, model_clip):
    model, clip = model_clip
    args = dict(ARGS, concept_set="default + my concepts", my_concepts="Fabric: silk, wool", steps=1)
    hrv, _ = pack.NODE_CLASS_MAPPINGS["HRVBuild"]().build(model, clip, **args)
    assert len(hrv.concepts) == 35 and hrv.concepts[-1] == "Fabric"
    with pytest.raises(ValueError, match="already in the default set"):
        pack.NODE_CLASS_MAPPINGS["HRVBuild"]().build(model, clip, **dict(args, my_concepts="color: red"))


def test_save_node_writes_to_models_hrv(pack, model_clip, tmp_path, monkeypatch):
    import folder_paths
    monkeypatch.setattr(folder_paths, "models_dir", str(tmp_path))
    monkeypatch.delitem(folder_paths.folder_names_and_paths, "hrv", raising=False)
    model, clip = model_clip
    hrv, _ = pack.NODE_CLASS_MAPPINGS["HRVBuild"]().build(model, clip, **dict(ARGS, steps=1))
    save = pack.NODE_CLASS_MAPPINGS["HRVSave"]()
    out = save.save_hrv(hrv, "my model.safetensors", False)
    path = out["result"][0]
    assert path == os.path.join(str(tmp_path), "hrv", "my model.safetensors")
    assert torch.equal(load(path).votes, hrv.votes)
    assert "my model.safetensors" in folder_paths.get_filename_list("hrv")   # what HRV Loader lists
    with pytest.raises(ValueError, match="exists"):
        save.save_hrv(hrv, "my model", False)
    save.save_hrv(hrv, "my model", True)
    for bad in ("../escape", "a/b", "", ".."):
        with pytest.raises(ValueError, match="not allowed"):
            save.save_hrv(hrv, bad, False)


def test_interrupted_build_resumes_to_the_uninterrupted_counts(pack, model_clip, user_dir, monkeypatch):
    sampling = pack.hrv.build.sampling          # the module the node uses (the pack is its own package)
    model, clip = model_clip
    args = dict(ARGS, prompts="a cat\na red car\na blue dog\na green tree\n", steps=1)
    node = pack.NODE_CLASS_MAPPINGS["HRVBuild"]()
    reference, _ = node.build(model, clip, **dict(args, resume=False))
    assert not user_dir.exists()
    real = sampling.ComfyPromptSampler.__call__
    sampled = []

    def interrupted(self, m, prompt, seed, step_done):
        sampled.append(prompt)
        if len(sampled) == 3:
            raise KeyboardInterrupt("the user pressed cancel")
        return real(self, m, prompt, seed, step_done)

    monkeypatch.setattr(sampling.ComfyPromptSampler, "__call__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        node.build(model, clip, **args)
    sampled.clear()
    monkeypatch.setattr(sampling.ComfyPromptSampler, "__call__",
                        lambda self, *a: sampled.append(a[1]) or real(self, *a))
    resumed, _ = node.build(model, clip, **args)
    assert sampled == ["a blue dog", "a green tree"]            # the 2 prompts finished before the cancel are kept
    assert torch.equal(resumed.votes, reference.votes)
    files = list((user_dir / "hrv_builds").iterdir())
    assert len(files) == 1 and load(str(files[0])).provenance["complete"]
    sampled.clear()
    again, _ = node.build(model, clip, **args)                 # a finished build of the same settings: no sampling
    assert sampled == [] and torch.equal(again.votes, reference.votes)
    other_weights = model.clone()
    other_weights.add_patches({next(iter(model.model.state_dict())): (torch.ones(1),)}, 0.5)
    node.build(other_weights, clip, **args)                      # another model never reuses these counts
    assert len(sampled) == 4 and len(list((user_dir / "hrv_builds").iterdir())) == 2


def test_max_prompts_draws_evenly_from_the_batch(pack):
    prompts_for = pack.nodes.build_nodes.prompts_for
    everything = prompts_for("ImageNet only", "")
    picked = prompts_for("ImageNet only", "", 64)
    assert len(everything) == 1000 and len(picked) == 64 and picked[0] == everything[0]
    assert picked == [everything[i * 1000 // 64] for i in range(64)]
    assert prompts_for("my prompts only", "a\nb", 64) == ["a", "b"]
