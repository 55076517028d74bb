"""HRV CLIP Score with OpenCLIP's real ViT-B-32 architecture and random weights (nothing is downloaded): the scorer
against OpenCLIP's own transform and encoders, weights read from a local file, the node."""
import pytest
import torch

open_clip = pytest.importorskip("open_clip", reason="pip install open-clip-torch (requirements-test.txt)")

from hrv.eval.clip_score import ClipScoreError, ClipScorer  # noqa: E402

ARCH = "ViT-B-32"
TEXTS = ["a red car", "a photo of a cat"]


@pytest.fixture(scope="module")
def scorer(one_torch_thread):
    torch.manual_seed(0)
    return ClipScorer.from_open_clip(ARCH)


def images():
    g = torch.Generator().manual_seed(1)
    return torch.rand(2, 72, 100, 3, generator=g)          # ComfyUI IMAGE: [batch, height, width, 3] in 0..1


def test_scores_are_open_clips_cosines(scorer):
    _, _, transform = open_clip.create_model_and_transforms(ARCH, pretrained=None)
    tokenizer = open_clip.get_tokenizer(ARCH)
    with torch.no_grad():
        pixels = torch.stack([transform(image.permute(2, 0, 1)) for image in images()])
        image = scorer.model.encode_image(pixels)
        text = scorer.model.encode_text(tokenizer(TEXTS))
    expected = torch.nn.functional.cosine_similarity(image, text, dim=-1)
    assert torch.allclose(scorer.score(images(), TEXTS), expected, atol=1e-5)
    one_text = torch.nn.functional.cosine_similarity(image, text[:1].expand(2, -1), dim=-1)
    assert torch.allclose(scorer.score(images(), TEXTS[:1]), one_text, atol=1e-5)


def test_weights_come_from_a_local_file(scorer, tmp_path):
    path = tmp_path / "open_clip_model.bin"
    torch.save(scorer.model.state_dict(), path)
    loaded = ClipScorer.from_open_clip(ARCH, str(path))
    assert torch.allclose(loaded.score(images(), TEXTS), scorer.score(images(), TEXTS), atol=1e-6)


def test_errors(scorer):
    with pytest.raises(ClipScoreError, match="2 image.* and 3 texts"):
        scorer.score(images(), TEXTS + ["x"])
    with pytest.raises(ClipScoreError, match="no architecture 'ViT-Q-99'"):
        ClipScorer.from_open_clip("ViT-Q-99")
    with pytest.raises(ClipScoreError, match="ComfyUI IMAGE"):
        scorer.score(images().permute(0, 3, 1, 2), TEXTS)


def test_node(scorer, monkeypatch):
    from hrv.comfy_host import import_pack
    pack = import_pack()
    nodes = pack.nodes.eval_nodes
    cls = pack.NODE_CLASS_MAPPINGS["HRVCLIPScore"]
    assert pack.NODE_DISPLAY_NAME_MAPPINGS["HRVCLIPScore"] == "HRV CLIP Score" and cls.CATEGORY == "HRV/eval"
    monkeypatch.setattr(nodes, "clip_filenames", lambda: ["random.bin"])
    spec = cls.INPUT_TYPES()["required"]
    assert all(opts.get("tooltip") for _, opts in spec.values()) and len(cls.OUTPUT_TOOLTIPS) == 2
    monkeypatch.setattr(nodes, "clip_path", lambda name: None)
    monkeypatch.setattr(nodes, "scorer_for", lambda architecture, path, device: scorer)
    mean, report = cls().score(images(), "a red car\na photo of a cat\n", "random.bin", ARCH)
    scores = scorer.score(images(), TEXTS)
    assert mean == pytest.approx(float(scores.mean())) and report.splitlines()[1] == f"image 1: {float(scores[1]):.4f}"
    with pytest.raises(ValueError, match="type the text"):
        cls().score(images(), "  \n", "random.bin", ARCH)
