"""Attend-and-Excite around any ComfyUI sampler: a SAMPLER_SAMPLE wrapper on the model.

When the guider's conditionings carry an ExciteRequest, the sampler (a KSAMPLER: every sampler of KSampler and
SamplerCustomAdvanced's SAMPLER) runs with its sampling function wrapped: the first steps (the first 25 of 50,
scaled) run one at a time, each preceded by Attend-and-Excite's latent update; the remaining steps run in one call.
Samplers that keep a history (dpmpp_2m, lms, ...) restart it at every step of the excited part, as after their
first step. Ancestral and SDE samplers draw their noise from one seeded noise sampler across the calls.

The update: a conditional-only forward with gradients (torch.inference_mode(False) + enable_grad) through ComfyUI's
calc_cond_batch, the loss of hrv.ae.maps, and x -= s * (1 + sigma^2) * grad_x(loss): the reference's
z -= s * grad_z(loss) on z = x / sqrt(1 + sigma^2). At the refinement steps (0, 10, 20 of 50) the update repeats
while an image's loss is above 1 - threshold, at most max_refinement times, for the images still above it.
"""
from __future__ import annotations

import copy
import inspect
import logging

import torch

from ..attention.core import CORE_KEY
from ..attention.requests import requests_of
from ..maps.recorder import SUSPEND_KEY
from .maps import excite_loss
from .processor import ACTIVE_KEY, ExciteCollector
from .request import FEATURE, ExcitePlan, ExciteRequest, StepRecord

log = logging.getLogger("hrv.ae")

WRAPPER_KEY = "hrv_ae"


def excited_conds(guider) -> list[tuple[dict, ExciteRequest]]:
    found = []
    for group in (getattr(guider, "conds", None) or {}).values():
        for cond in group or []:
            request = requests_of(cond).get(FEATURE)
            if request is not None:
                found.append((cond, request))
    return found


class TrainableWeights:
    """Weights created under torch.inference_mode (ComfyUI loads models inside it) cannot be saved for backward.
    While open, every such parameter and buffer of the module is replaced by a normal copy; close() puts the
    originals back. Costs one copy of those weights for the excited steps."""

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.swapped = None

    def open(self) -> None:
        if self.swapped is not None:
            return
        self.swapped = []
        with torch.inference_mode(False):
            for mod in self.module.modules():
                for store in (mod._parameters, mod._buffers):
                    for name, t in list(store.items()):
                        if t is not None and t.is_inference():
                            copy_ = t.clone()
                            store[name] = torch.nn.Parameter(copy_, requires_grad=False) if store is mod._parameters else copy_
                            self.swapped.append((store, name, t))

    def close(self) -> None:
        for store, name, t in reversed(self.swapped or []):
            store[name] = t
        self.swapped = None


class Exciter:
    def __init__(self, guider, cond: dict, request: ExciteRequest, run, model_options: dict, plan: ExcitePlan):
        self.guider = guider
        self.cond = cond
        self.request = request
        self.run = run
        self.model_options = model_options
        self.plan = plan
        self.weights = TrainableWeights(guider.inner_model)
        self.records: list[StepRecord] = []

    def loss_and_grad(self, x: torch.Tensor, sigma: torch.Tensor):
        """(per-image loss [B], grad_x of their sum, max attention [B, S]), all detached."""
        import comfy.samplers
        with torch.inference_mode(False), torch.enable_grad():
            self.weights.open()
            xg = x.detach().clone().requires_grad_(True)
            timestep = sigma.detach().clone().reshape(-1)[:1].expand(x.shape[0]).to(x.device)
            collector = ExciteCollector(self.request)
            self.run.cache[ACTIVE_KEY] = collector
            self.run.cache[SUSPEND_KEY] = True
            try:
                comfy.samplers.calc_cond_batch(self.guider.inner_model, [[self.cond]], xg, timestep, self.model_options)
            finally:
                self.run.cache.pop(ACTIVE_KEY, None)
                self.run.cache.pop(SUSPEND_KEY, None)
            max_attention = collector.max_attention()
            losses = excite_loss(max_attention)
            total = losses.sum()
            if total.requires_grad and bool(total > 0):
                grad = torch.autograd.grad(total, xg)[0]
            else:
                grad = torch.zeros_like(xg)
        return losses.detach(), grad.detach(), max_attention.detach()

    def step(self, i: int, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if i >= self.plan.excited:
            return x
        s = float(sigma.reshape(-1)[0])
        size = self.plan.sizes[i] * (1.0 + s * s)
        start = x
        losses, grad, _ = self.loss_and_grad(x, sigma)
        evaluated = [losses.tolist()]
        threshold = self.plan.thresholds.get(i)
        if threshold is not None:
            target = max(0.0, 1.0 - threshold)
            for _ in range(self.request.settings.max_refinement):
                above = losses > target
                if not bool(above.any()):
                    break
                x = x - size * grad * above.to(grad.dtype).view(-1, *([1] * (grad.dim() - 1)))
                losses, grad, _ = self.loss_and_grad(x, sigma)
                evaluated.append(losses.tolist())
        x = x - size * grad
        record = StepRecord(i, s, evaluated, float((x - start).float().norm()))
        self.records.append(record)
        log.info("Attend-and-Excite step %d (sigma %.3g): loss %s%s", i, s,
                 ", ".join(f"{v:.3f}" for v in evaluated[0]),
                 f" -> {', '.join(f'{v:.3f}' for v in evaluated[-1])} after {len(evaluated) - 1} refinement "
                 f"iteration(s)" if len(evaluated) > 1 else "")
        return x.to(start.dtype)

    def close(self) -> None:
        self.weights.close()
        self.request.runs.append(self.records)


def _shifted(callback, offset: int):
    if callback is None:
        return None
    return lambda data: callback({**data, "i": data["i"] + offset})


def excite_sampling_function(base, guider, cond: dict, request: ExciteRequest):
    """The sampling function `base` with Attend-and-Excite's update before each of its first steps."""
    accepts = inspect.signature(base).parameters

    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
        import comfy.k_diffusion.sampling
        extra_args = {} if extra_args is None else extra_args
        model_options = extra_args.get("model_options", {})
        run = model_options.get("transformer_options", {}).get(CORE_KEY)
        if not hasattr(run, "cache"):
            log.warning("Attend-and-Excite: the HRV attention is not installed on the model being sampled; connect the "
                        "model output of HRV Attend and Excite to the sampler. Sampling without it.")
            return base(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, **options)
        steps = len(sigmas) - 1
        plan = ExcitePlan.of(request.settings, steps)
        if "noise_sampler" in accepts and options.get("noise_sampler") is None:
            options["noise_sampler"] = comfy.k_diffusion.sampling.default_noise_sampler(x, seed=extra_args.get("seed"))
        exciter = Exciter(guider, cond, request, run, model_options, plan)
        try:
            for i in range(plan.excited):
                x = exciter.step(i, x, sigmas[i])
                x = base(model, x, sigmas[i:i + 2], extra_args=extra_args, callback=_shifted(callback, i), disable=True,
                         **options)
            if plan.excited < steps:
                x = base(model, x, sigmas[plan.excited:], extra_args=extra_args,
                         callback=_shifted(callback, plan.excited), disable=disable, **options)
        finally:
            exciter.close()
        return x

    return sample


def sampler_sample_wrapper(executor, *args, **kwargs):
    """SAMPLER_SAMPLE wrapper: the sampler with Attend-and-Excite when a conditioning asks for it."""
    import comfy.patcher_extension
    guider = args[0] if args else kwargs.get("model_wrap")
    sampler = executor.class_obj
    found = excited_conds(guider)
    if not found:
        return executor(*args, **kwargs)
    if not callable(getattr(sampler, "sampler_function", None)):
        log.warning("Attend-and-Excite works with ComfyUI's k-diffusion samplers (KSAMPLER); %s is not one, so it "
                    "samples without Attend-and-Excite", type(sampler).__name__)
        return executor(*args, **kwargs)
    if len(found) > 1:
        log.warning("Attend-and-Excite: %d conditionings ask for it; only the first is excited", len(found))
    cond, request = found[0]
    excited = copy.copy(sampler)
    excited.sampler_function = excite_sampling_function(sampler.sampler_function, guider, cond, request)
    return comfy.patcher_extension.WrapperExecutor.new_class_executor(
        excited.sample, excited, executor.wrappers, executor.idx + 1).execute(*args, **kwargs)


def install_excite(model):
    """A clone of `model` with the attention core, the Attend-and-Excite processor and the sampler wrapper."""
    import comfy.patcher_extension

    from ..attention import install_core
    from .processor import EXCITE
    m = install_core(model, [EXCITE])
    kind = comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE
    if not m.get_wrappers(kind, WRAPPER_KEY):
        m.add_wrapper_with_key(kind, WRAPPER_KEY, sampler_sample_wrapper)
    return m
