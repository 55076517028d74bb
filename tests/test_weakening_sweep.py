"""HRV Weakening Sweep on the real ComfyUI with tiny random models (SD1 UNet and CLIP, a tiny real ComfyUI VAE):
grid and plot shapes, k=0 is plain KSampler sampling bit for bit, MoRHF k=H equals LeRHF k=H, CLIP column equals
a direct OpenCLIP computation (random-weight ViT-B-32)."""
import csv
import io

import pytest
import torch

from harness.tiny_pipeline import tiny_sd1_pipeline
from hrv.comfy_host import import_pack

SIZE = 64          # 8x8 latent
SETTINGS = dict(steps=2, cfg=5.0, sampler_name="euler", scheduler="normal", width=SIZE, height=SIZE)


def tiny_vae(seed: int = 3):
    """ComfyUI's VAE class around a small AutoencoderKL (8x down/up-sampling like SD's, 32 channels)."""
    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencoderKL
    ddconfig = {"double_z": True, "z_channels": 4, "resolution": 64, "in_channels": 3, "out_ch": 3, "ch": 32,
                "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}
    config = {"params": {"ddconfig": ddconfig, "embed_dim": 4}}
    from scripts.demo.unets import init_random_
    sd = init_random_(AutoencoderKL(ddconfig=dict(ddconfig), embed_dim=4), seed, std=0.1).state_dict()
    return comfy.sd.VAE(sd=sd, config=config, dtype=torch.float32)


@pytest.fixture(scope="module")
def pack():
    return import_pack()


@pytest.fixture(scope="module")
def node(pack):
    return pack.NODE_CLASS_MAPPINGS["HRVWeakeningSweep"]


@pytest.fixture(scope="module")
def sd1_hrv(pack, official_dir):
    return pack.hrv.format.hrv_file.load(f"{official_dir}/sd1_official.safetensors")


@pytest.fixture(scope="module")
def parts(one_torch_thread):
    model, clip = tiny_sd1_pipeline(0)
    return model, clip, tiny_vae()


@pytest.fixture(scope="module")
def sweep(node, parts, sd1_hrv):
    model, clip, vae = parts
    return node().sweep(model, clip, vae, sd1_hrv, "photo of a {}", "dog", "Animals", "0,1,128", "10",
                        clip_weights="(none: no scores)", architecture="ViT-B-32", **SETTINGS)


def rows_of(text):
    return list(csv.DictReader(io.StringIO(text)))


def test_registered_with_tooltips(pack, node):
    assert pack.NODE_DISPLAY_NAME_MAPPINGS["HRVWeakeningSweep"] == "HRV Weakening Sweep"
    assert node.CATEGORY == "HRV/eval" and len(node.OUTPUT_TOOLTIPS) == len(node.RETURN_TYPES) == 3
    assert all(opts.get("tooltip") for _, opts in node.INPUT_TYPES()["required"].values())


def test_grid_plot_and_csv_shapes(sweep):
    from hrv.eval.weakening import GRID_HEADER_H, GRID_LABEL_W, PLOT_SIZE
    grid, plot, text = sweep
    assert grid.shape == (1, GRID_HEADER_H + 2 * SIZE, GRID_LABEL_W + 3 * SIZE, 3)
    assert plot.shape == (1, PLOT_SIZE[1], PLOT_SIZE[0], 3)
    rows = rows_of(text)
    assert [(r["order"], r["k"]) for r in rows] == [(o, k) for o in ("MoRHF", "LeRHF") for k in ("0", "1", "128")]
    assert all(r["prompt"] == "photo of a dog" and r["clip"] == "" for r in rows)


def cell(grid, row, column):
    from hrv.eval.weakening import GRID_HEADER_H, GRID_LABEL_W
    top, left = GRID_HEADER_H + row * SIZE, GRID_LABEL_W + column * SIZE
    return grid[0, top:top + SIZE, left:left + SIZE]


def test_k0_is_plain_sampling_bit_for_bit_and_k_h_is_the_same_heads(parts, sweep):
    import nodes as comfy_nodes
    model, clip, vae = parts
    grid, _, _ = sweep
    positive = comfy_nodes.CLIPTextEncode().encode(clip, "photo of a dog")[0]
    negative = comfy_nodes.CLIPTextEncode().encode(clip, "")[0]
    latent = comfy_nodes.EmptyLatentImage().generate(SIZE, SIZE, 1)[0]
    (samples,) = comfy_nodes.common_ksampler(model, 10, 2, 5.0, "euler", "normal", positive, negative, latent)
    plain = vae.decode(samples["samples"])[0].float().clamp(0, 1)
    # the grid stores 8-bit pixels: compare the plain image quantised the same way
    from hrv.eval.weakening import _pil, _tensor
    expected = _tensor(_pil(plain))
    assert torch.equal(cell(grid, 0, 0), expected) and torch.equal(cell(grid, 1, 0), expected)
    assert torch.equal(cell(grid, 0, 2), cell(grid, 1, 2))          # k = H: MoRHF and LeRHF weaken every head
    assert not torch.equal(cell(grid, 0, 1), cell(grid, 1, 1))      # k = 1: different heads


def test_sweep_images_bit_for_bit(parts, sd1_hrv):
    """The float images themselves (no 8-bit grid): k=0 equals KSampler, MoRHF k=H equals LeRHF k=H."""
    import nodes as comfy_nodes
    from hrv.eval import weakening as W
    model, clip, vae = parts
    sampling = W.Sampling(2, 5.0, "euler", "normal", SIZE, SIZE)
    samples = W.plan("Animals", ["dog"], "photo of a {}", [0, 128], [10])
    images = {(s.order, s.k): image for s, image, _ in W.run_sweep(model, clip, vae, sd1_hrv, samples, sampling)}
    positive = comfy_nodes.CLIPTextEncode().encode(clip, "photo of a dog")[0]
    negative = comfy_nodes.CLIPTextEncode().encode(clip, "")[0]
    latent = comfy_nodes.EmptyLatentImage().generate(SIZE, SIZE, 1)[0]
    (out,) = comfy_nodes.common_ksampler(model, 10, 2, 5.0, "euler", "normal", positive, negative, latent)
    plain = vae.decode(out["samples"])[0].float().clamp(0, 1)
    assert torch.equal(images[("MoRHF", 0)], plain) and torch.equal(images[("LeRHF", 0)], plain)
    assert torch.equal(images[("MoRHF", 128)], images[("LeRHF", 128)])
    assert not torch.equal(images[("MoRHF", 128)], plain)


def test_clip_column_is_open_clips_similarity(node, parts, sd1_hrv, monkeypatch):
    open_clip = pytest.importorskip("open_clip", reason="pip install open-clip-torch (requirements-test.txt)")
    from hrv.eval.clip_score import ClipScorer
    sweep_nodes = import_pack().nodes.sweep_nodes
    W = sweep_nodes.W
    eval_nodes = import_pack().nodes.eval_nodes
    torch.manual_seed(0)
    scorer = ClipScorer.from_open_clip("ViT-B-32")
    monkeypatch.setattr(sweep_nodes, "clip_path", lambda name: None)
    monkeypatch.setattr(eval_nodes, "scorer_for", lambda architecture, path, device: scorer)
    seen = []
    real_run = W.run_sweep

    def recording_run(*args, **kwargs):
        on_sample = args[7] if len(args) > 7 else kwargs["on_sample"]

        def record(s, image, score):
            seen.append((s, image))
            on_sample(s, image, score)
        return real_run(*args[:7], record)
    monkeypatch.setattr(W, "run_sweep", recording_run)
    model, clip, vae = parts
    _, plot, text = node().sweep(model, clip, vae, sd1_hrv, "photo of a {}", "dog, cat", "Animals", "0,1", "10",
                                 clip_weights="random.bin", architecture="ViT-B-32", **SETTINGS)
    rows = rows_of(text)
    assert len(rows) == len(seen) == 2 * 2 * 2
    _, transform = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)[1:]
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    for row, (s, image) in zip(rows, seen):
        with torch.no_grad():
            pixels = transform(image.permute(2, 0, 1))[None]
            expected = torch.nn.functional.cosine_similarity(scorer.model.encode_image(pixels),
                                                             scorer.model.encode_text(tokenizer([row["word"]])))
        assert row["word"] == s.word and float(row["clip"]) == pytest.approx(float(expected), abs=1e-5)
    assert plot.shape[1:] == (400, 640, 3) and plot.std() > 0


def test_k_values_templates_and_errors(node, parts, sd1_hrv):
    from hrv.eval import weakening as W
    assert W.default_ks(128) == [0, 1, 11, 21, 31, 41, 51, 61, 71, 81, 91, 101, 111, 121, 128]
    assert W.default_ks(1300) == [0, 11, 111, 211, 311, 411, 511, 611, 711, 811, 911, 1011, 1111, 1211, 1300]
    assert W.parse_ks(" auto ", 128) == W.default_ks(128) and W.parse_ks("0, 11,11", 128) == [0, 11]
    assert W.fill(W.template_for("Color"), "red") == "a red car"
    assert W.fill(W.template_for("Material"), "gold") == "a cup made of gold"
    assert W.fill(W.template_for("Something Else"), "x") == "a photo of a x"
    assert W.plot({}).shape == (400, 640, 3)
    model, clip, vae = parts
    for kwargs, message in ((dict(k_values="0,200"), "between 0 and 128"), (dict(k_values="a"), "whole numbers"),
                            (dict(words=" , "), "no concept word"), (dict(template="photo"), "no {}"),
                            (dict(seeds="x"), "seeds must be")):
        args = dict(template="photo of a {}", words="dog", concept="Animals", k_values="0", seeds="10",
                    clip_weights="(none: no scores)", architecture="ViT-B-32", **SETTINGS)
        args.update(kwargs)
        with pytest.raises(ValueError, match=message):
            node().sweep(model, clip, vae, sd1_hrv, **args)
