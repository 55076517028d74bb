"""Attend-and-Excite (hrv/ae) on the real ComfyUI with tiny random models: the latent update equals a plain
implementation's gradient step (A&E-HRV and the original), the loss falls over the refinement iterations, the latent
changes only in the excited steps, every sampler keeps working, and models loaded under inference mode work."""
import math

import pytest
import torch
import torch.nn.functional as F
from harness.tiny_pipeline import tiny_sd1_model, tiny_sd1_pipeline

from hrv.comfy_host import import_pack
from hrv.format.layout import known_layout

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXT = "a black cat and a white dog"
SUBJECTS = "cat:Animals, dog:Animals"


@pytest.fixture(scope="module")
def pack():
    return import_pack()


@pytest.fixture(scope="module")
def sd1_hrv(pack, official_dir):
    return pack.hrv.format.hrv_file.load(f"{official_dir}/sd1_official.safetensors")


@pytest.fixture(scope="module")
def pipeline():
    return tiny_sd1_pipeline(0)


def clip_text_encode(clip, text):
    import nodes as comfy_nodes
    return comfy_nodes.CLIPTextEncode().encode(clip, text)[0]


def excite(pack, model, clip, hrv=None, until=0.5, scale=20.0, refine=3, smooth="auto", text=TEXT, subjects=SUBJECTS):
    return pack.nodes.excite_nodes.HRVAttendAndExcite().encode(model, clip, text, subjects, until, scale, refine,
                                                                smooth, hrv)


def sample(model, positive, negative, steps=2, size=16, sampler="euler", seed=1, trace=None):
    import comfy.sample
    latent = torch.zeros(1, 4, size, size)
    noise = torch.randn(1, 4, size, size, generator=torch.Generator().manual_seed(seed))
    callback = None if trace is None else (lambda step, x0, x, total: trace.append((step, x0.clone(), x.clone())))
    return comfy.sample.sample(model, noise, steps, 5.0, sampler, "normal", positive, negative, latent,
                               disable_pbar=True, seed=seed, callback=callback), noise


def request_of(conditioning):
    return conditioning[0][1]["hrv_requests"]["ae"]


def sigmas_of(model, steps):
    import comfy.samplers
    return comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", steps)


# --- a plain implementation of the method -------------------------------------------------------------------------

def plain_resize(m, res):
    """[T, h, w] -> [T, res, res]: bicubic up; or 2-D Gaussian (kernel h//res+1, the authors' sigma, reflect) then down."""
    h = m.shape[-1]
    x = m[:, None]
    if h > res:
        size = h // res + 1
        sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
        t = torch.arange(size, dtype=m.dtype) - (size - 1) / 2
        g = torch.exp(-t ** 2 / (2 * sigma ** 2))
        kernel = torch.outer(g, g) / torch.outer(g, g).sum()
        x = F.conv2d(F.pad(x, [size // 2] * 4, mode="reflect"), kernel[None, None])
    if h != res:
        x = F.interpolate(x, size=(res, res), mode="bicubic", align_corners=False)
    return x[:, 0]


def plain_excite_grad(model, x, sigma, context, subjects, hrv=None, res=16):
    """(loss, grad_x): explicit attention in every layer, aggregate, softmax(100 *) over tokens 1..76, loss, autograd."""
    layout = known_layout("sd1")
    seen = []
    m = model.clone()
    for block in layout.blocks:
        def attend(q, k, v, extra, key=block.key):
            b, n, c = q.shape
            heads = extra["n_heads"]
            d = c // heads
            qh, kh, vh = (t.reshape(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
            p = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(d), dim=-1)
            seen.append((key, p, extra["activations_shape"][2:]))
            return (p @ vh).transpose(1, 2).reshape(b, n, c)
        m.set_model_attn2_replace(attend, *block.key)
    latent = x.shape[-1]
    with torch.enable_grad():
        xg = x.clone().requires_grad_(True)
        options = {**m.model_options["transformer_options"], "cond_or_uncond": [0], "sigmas": sigma}
        m.model.apply_model(xg, sigma, c_crossattn=context, transformer_options=options)
        aggregated = []
        for s, (positions, concept) in enumerate(subjects):
            total, layers = 0, 0
            for key, p, (h, w) in seen:
                if hrv is None:
                    if h != latent // 4:
                        continue
                    total = total + plain_resize(p[0].mean(0).T.reshape(-1, h, w), res)
                    layers += 1
                else:
                    block = layout.block(key)
                    for j in range(block.num_heads):
                        weight = hrv.matrix[concept, block.first_column + j] / 128
                        total = total + weight * plain_resize(p[0, j].T.reshape(-1, h, w), res)
            aggregated.append(total / layers if hrv is None else total)
        losses = []
        for (positions, _), maps in zip(subjects, aggregated):
            probs = torch.softmax(maps[1:77] * 100, dim=0)
            subject = probs[[p - 1 for p in positions]].mean(0)
            if hrv is None:                                    # the original method smooths (3x3, sigma 0.5)
                t = torch.arange(3.0) - 1
                g = torch.exp(-t ** 2 / 0.5)
                kernel = torch.outer(g, g) / torch.outer(g, g).sum()
                subject = F.conv2d(F.pad(subject[None, None], [1] * 4, mode="reflect"), kernel[None, None])[0, 0]
            losses.append((1 - subject.max()).clamp_min(0))
        loss = torch.stack(losses).max()
        return loss.detach(), torch.autograd.grad(loss, xg)[0]


@pytest.mark.parametrize("with_hrv", [True, False])
def test_update_is_the_plain_gradient_step(pack, pipeline, sd1_hrv, with_hrv):
    model, clip = pipeline
    hrv = sd1_hrv if with_hrv else None
    excited, positive = excite(pack, model, clip, hrv, refine=0)
    request = request_of(positive)
    trace = []
    sample(excited, positive, clip_text_encode(clip, ""), steps=2, size=32, trace=trace)
    (record,) = request.runs[-1]
    assert record.step == 0 and len(record.losses) == 1                     # refinement at step 0, at most 0 times
    sigmas = sigmas_of(model, 2)
    noise = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    x0 = noise * torch.sqrt(1.0 + sigmas[0] ** 2)
    subjects = [(s.positions, s.concept) for s in request.subjects]
    loss, grad = plain_excite_grad(model, x0, sigmas[:1], positive[0][0], subjects, hrv)
    assert abs(float(loss) - record.losses[0][0]) < 1e-4
    s = 20.0 * math.sqrt(1.0) * (1 + float(sigmas[0]) ** 2)
    step0_input = trace[0][2]
    assert torch.allclose(x0 - step0_input, s * grad, rtol=2e-3, atol=2e-3 * float((s * grad).abs().max()))
    assert float((x0 - step0_input).norm()) > 0


def test_loss_falls_over_refinement_and_only_the_excited_steps_move_the_latent(pack, pipeline, sd1_hrv):
    model, clip = pipeline
    excited, positive = excite(pack, model, clip, sd1_hrv, until=0.5, refine=3)
    trace = []
    out, noise = sample(excited, positive, clip_text_encode(clip, ""), steps=4, trace=trace)
    records = request_of(positive).runs[-1]
    assert [r.step for r in records] == [0, 1]                             # 25 of 50 steps -> 2 of 4
    for r in records:                                                      # refinement at steps 0 and 1 (0, 10/50*4)
        losses = [l[0] for l in r.losses]
        assert len(losses) == 4 and all(b < a for a, b in zip(losses, losses[1:])), losses
    sigmas = sigmas_of(model, 4)
    predicted = noise * torch.sqrt(1.0 + sigmas[0] ** 2)
    for step, denoised, x in trace:
        change = float((x - predicted).norm())
        if step < 2:
            assert change == pytest.approx(records[step].update_norm, rel=1e-3) and change > 0
        else:
            assert torch.allclose(x, predicted, atol=1e-5), step
        predicted = x + (x - denoised) / sigmas[step] * (sigmas[step + 1] - sigmas[step])     # Euler
    assert torch.allclose(out, model.model.process_latent_out(predicted), atol=1e-4)


@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral", "dpmpp_2m", "ddim"])
def test_every_sampler_runs_and_a_zero_step_changes_nothing(pack, pipeline, sd1_hrv, sampler):
    model, clip = pipeline
    negative = clip_text_encode(clip, "")
    plain, _ = sample(model, clip_text_encode(clip, TEXT), negative, steps=3, size=8, sampler=sampler)
    still, positive = excite(pack, model, clip, sd1_hrv, scale=0.0, refine=1)
    out, _ = sample(still, positive, negative, steps=3, size=8, sampler=sampler)
    assert len(request_of(positive).runs[-1]) == 2
    if sampler == "dpmpp_2m":      # its history restarts at every excited step: first-order there
        assert torch.isfinite(out).all() and not torch.equal(out, plain)
    else:                          # one step at a time with one noise sampler: the same sampling, bit for bit
        assert torch.equal(out, plain)
    moved, positive = excite(pack, model, clip, sd1_hrv, refine=1)
    out, _ = sample(moved, positive, negative, steps=3, size=8, sampler=sampler)
    assert torch.isfinite(out).all() and not torch.equal(out, plain)
    assert all(r.update_norm > 0 for r in request_of(positive).runs[-1])


def test_models_loaded_under_inference_mode_get_gradients_and_are_given_back(pack, sd1_hrv):
    from harness.tiny_pipeline import tiny_sd1_clip
    with torch.inference_mode():
        model, clip = tiny_sd1_model(0), tiny_sd1_clip(1)
        excited, positive = excite(pack, model, clip, sd1_hrv, refine=1)
        negative = clip_text_encode(clip, "")
        before = {name: p for name, p in model.model.named_parameters()}
        assert all(p.is_inference() for p in before.values())
        out, _ = sample(excited, positive, negative, steps=2, size=8)
    assert torch.isfinite(out).all() and request_of(positive).runs[-1][0].update_norm > 0
    assert all(p is before[name] for name, p in model.model.named_parameters())


def test_subjects_and_errors(pack, pipeline, sd1_hrv):
    model, clip = pipeline
    _, positive = excite(pack, model, clip, sd1_hrv, text="a cat, " + "tiny stars, " * 40 + "and a dog")
    request = request_of(positive)
    assert request.context_length == 154 and 0 not in request.keep and 77 not in request.keep
    assert request.subjects[1].positions[0] > 77 and request.subject_weights.shape == (2, 128)
    assert torch.allclose(request.subject_weights.sum(1), torch.ones(2))               # HRV rows sum to H
    _, positive = excite(pack, model, clip, None, subjects="cat, dog")
    assert not request_of(positive).hrv_mode and request_of(positive).settings.smooth
    with pytest.raises(ValueError, match="the subject 'cat' has no concept: write it as cat:Concept"):
        excite(pack, model, clip, sd1_hrv, subjects="cat, dog:Animals")
    with pytest.raises(ValueError, match="'horse' is not a word of the prompt"):
        excite(pack, model, clip, sd1_hrv, subjects="horse:Animals")
    with pytest.raises(ValueError, match="concept 'Beasts' is not in this HRV"):
        excite(pack, model, clip, sd1_hrv, subjects="cat:Beasts")
    with pytest.raises(ValueError, match="no subject words"):
        excite(pack, model, clip, sd1_hrv, subjects=" , ")


def test_schedule_scales_the_reference_steps(pack):
    ae = pack.hrv.ae
    plan = ae.ExcitePlan.of(ae.ExciteSettings(), 50)
    assert plan.excited == 25 and plan.thresholds == {0: 0.05, 10: 0.5, 20: 0.8}
    assert plan.sizes[0] == pytest.approx(20.0) and plan.sizes[49] == pytest.approx(20 * math.sqrt(0.5))
    plan = ae.ExcitePlan.of(ae.ExciteSettings(), 20)
    assert plan.excited == 10 and plan.thresholds == {0: 0.05, 4: 0.5, 8: 0.8}
    assert ae.ExcitePlan.of(ae.ExciteSettings(excite_until=0.0), 20).excited == 0


def test_sdxl_excites_with_1300_head_weights(pack, official_dir):
    from harness.comfy_models import tokenizer_clip
    from harness.tiny_pipeline import tiny_sdxl_model
    ae = pack.hrv.ae
    hrv = pack.hrv.format.hrv_file.load(f"{official_dir}/sdxl_official.safetensors")
    request = pack.hrv.ae.encode.excite_request(tokenizer_clip("sdxl"), TEXT, SUBJECTS, hrv,
                                                ae.ExciteSettings(max_refinement=0))
    assert request.subject_weights.shape == (2, 1300)
    assert torch.allclose(request.subject_weights.sum(1), torch.ones(2))
    g = torch.Generator().manual_seed(2)
    extra = {"pooled_output": torch.randn(1, 1280, generator=g)}
    positive = pack.hrv.attention.attach_request([[torch.randn(1, 77, 256, generator=g), dict(extra)]], ae.FEATURE,
                                                 request)
    negative = [[torch.randn(1, 77, 256, generator=g), dict(extra)]]
    out, _ = sample(ae.install_excite(tiny_sdxl_model(0)), positive, negative, steps=2, size=8)
    (record,) = request.runs[-1]
    assert torch.isfinite(out).all() and record.update_norm > 0 and 0 < record.losses[0][0] <= 1
