"""`python -m hrv build` and `python -m hrv merge`: build HRVs for your own checkpoint from the shell.

    python -m hrv build --ckpt model.safetensors --out my_model.safetensors [--prompts FILE] [--concepts FILE]
                        [--shard I/N] [--resume] [--ray [--ray-address ADDR]]
    python -m hrv merge OUT IN...

The prompt batch is the paper's "A photo of a {class}" for the 1,000 ImageNet classes plus the
prompts of --prompts (one per line); --no-imagenet keeps only the file's prompts. Counts are
checkpointed to OUT's `.partial.safetensors` sibling; --resume continues a killed run.
"""
from __future__ import annotations

import functools
import logging
import os

from .estimator import DEFAULT_ESTIMATOR, ESTIMATORS
from .run import BuildError, BuildSettings, Shard, merge_builds, run_build
from ..format.hrv_file import HRV, load, save

log = logging.getLogger("hrv.build")

SUFFIX = ".safetensors"


def partial_path(out: str) -> str:
    return out[:-len(SUFFIX)] + ".partial" + SUFFIX


def settings_from_args(args) -> BuildSettings:
    return BuildSettings(steps=args.steps, cfg=args.cfg, seed=args.seed, sampler=args.sampler,
                         scheduler=args.scheduler, width=args.width, height=args.height,
                         negative_prompt=args.negative, estimator=args.estimator)


def prompts_from_args(args) -> list[str]:
    from .prompts import prompt_batch, read_prompt_file
    return prompt_batch(imagenet=not args.no_imagenet, extra=read_prompt_file(args.prompts) if args.prompts else None)


def concepts_from_args(args) -> dict[str, list[str]]:
    from ..format.concepts import load_concept_set
    return load_concept_set(args.concepts)


def _check_out(args) -> None:
    if not args.out.endswith(SUFFIX):
        raise BuildError(f"--out must be a {SUFFIX} file, got {args.out}")
    if os.path.exists(args.out) and not args.resume:
        raise BuildError(f"{args.out} exists: pass --resume to check/finish it, or choose another --out")


class _Bar:
    """tqdm over prompts x steps of this run, with ETA; absolute updates so resumed runs start where they were."""

    def __init__(self, desc: str):
        from tqdm import tqdm
        self.bar = tqdm(total=0, unit="step", desc=desc, dynamic_ncols=True, smoothing=0.05)

    def __call__(self, done: int, total: int) -> None:
        if self.bar.total != total:
            self.bar.total = total
            self.bar.reset(total)
        self.bar.update(done - self.bar.n)

    def close(self):
        self.bar.close()


def build_with(args, model, clip, model_id=None) -> HRV:
    """The build loop of `python -m hrv build` on an already loaded (model, clip); writes args.out."""
    from .sampling import ComfyPromptSampler, clip_text_encoder, optimized_attention
    from .concept_embed import encode_concept_tokens
    _check_out(args)
    settings = settings_from_args(args)
    prompts = prompts_from_args(args)
    shard = Shard.parse(args.shard)
    words = encode_concept_tokens(clip, concepts_from_args(args))
    checkpoint = partial_path(args.out)
    if args.resume and os.path.exists(args.out) and not os.path.exists(checkpoint):
        checkpoint = args.out  # a finished build: run_build checks it matches and returns it
    bar = _Bar(f"HRV build {shard.label}" if shard.count > 1 else "HRV build")
    try:
        hrv = run_build(model, words, prompts, settings, ComfyPromptSampler(clip_text_encoder(clip), settings),
                        optimized_attention(), shard=shard, checkpoint_path=checkpoint, resume=args.resume,
                        checkpoint_every=args.checkpoint_every, progress=bar, model_id=model_id,
                        batch_size=args.batch)
    finally:
        bar.close()
    save(hrv, args.out)
    if checkpoint != args.out and os.path.exists(checkpoint):
        os.remove(checkpoint)
    return hrv


def model_id_of(path: str) -> dict:
    from ..format.official import sha256_of
    log.info("hashing %s", path)
    return {"file": os.path.basename(path), "sha256": sha256_of(path)}


def build(args):
    from ..comfy_host import use_comfyui
    import torch
    use_comfyui(cpu=args.cpu or not torch.cuda.is_available())
    from . import sampling as comfy_sampling
    if not os.path.isfile(args.ckpt):
        raise BuildError(f"no checkpoint at {args.ckpt}")
    model_id = model_id_of(args.ckpt)
    if args.ray:
        loader = functools.partial(comfy_sampling.load_checkpoint, os.path.abspath(args.ckpt), cpu=args.cpu or None)
        hrv = build_on_ray(args, loader, model_id)
    else:
        model, clip = comfy_sampling.load_checkpoint(args.ckpt)
        hrv = build_with(args, model, clip, model_id)
    print(f"{args.out}: {hrv.arch}, {hrv.num_heads} heads, {len(hrv.concepts)} concepts, "
          f"{hrv.provenance.get('prompts_built')} prompts x {hrv.votes.shape[0]} steps")


def build_on_ray(args, loader, model_id=None) -> HRV:
    """`--ray`: one shard per GPU (or per worker) as Ray tasks; the driver merges and writes args.out."""
    from .ray_dispatch import run_build_ray
    _check_out(args)
    if args.shard != "0/1":
        raise BuildError("--shard and --ray do not go together: Ray splits the prompts itself")
    bar = _Bar("HRV build (ray)")
    work_dir = args.ray_work_dir or args.out[:-len(SUFFIX)] + ".shards"
    try:
        hrv = run_build_ray(loader, prompts_from_args(args), concepts_from_args(args), settings_from_args(args),
                            address=args.ray_address, num_shards=args.ray_shards, work_dir=work_dir,
                            resume=args.resume, cpus_per_task=args.ray_cpus_per_task, model_id=model_id,
                            checkpoint_every=args.checkpoint_every, progress=bar, batch_size=args.batch)
    finally:
        bar.close()
    save(hrv, args.out)
    return hrv


def merge(args):
    if not args.out.endswith(SUFFIX):
        raise BuildError(f"the merged file must be a {SUFFIX} file, got {args.out}")
    merged = merge_builds([load(path) for path in args.inputs], mixed=args.mixed)
    save(merged, args.out)
    print(f"{args.out}: summed {len(args.inputs)} files, {merged.provenance.get('prompts_built', '?')} prompts")


def add_parsers(sub) -> None:
    s = sub.add_parser("build", help="build HRVs for a checkpoint by sampling prompts and counting head votes")
    s.add_argument("--ckpt", required=True, help="SD1.x or SDXL checkpoint (.safetensors/.ckpt), e.g. a fine-tune or LoRA merge")
    s.add_argument("--out", required=True, help="HRV file to write (.safetensors)")
    s.add_argument("--prompts", help="extra prompts, one per line (added to the 1,000 ImageNet prompts)")
    s.add_argument("--no-imagenet", action="store_true", help="use only the prompts of --prompts")
    s.add_argument("--concepts", help="concept set (.json or `Concept: word, word` lines); default: the 34 x 10 set")
    s.add_argument("--steps", type=int, default=50)
    s.add_argument("--cfg", type=float, default=7.5)
    s.add_argument("--seed", type=int, default=0, help="prompt i is sampled with seed + i")
    s.add_argument("--sampler", default="euler", help="a ComfyUI sampler name (euler, dpmpp_2m, ...)")
    s.add_argument("--scheduler", default="normal", help="a ComfyUI scheduler name (normal, karras, ...)")
    s.add_argument("--width", type=int, default=512, help="image width in pixels (SDXL: use 1024)")
    s.add_argument("--height", type=int, default=512, help="image height in pixels (SDXL: use 1024)")
    s.add_argument("--negative", default="", help="negative prompt of the unconditional pass (default empty)")
    s.add_argument("--estimator", default=DEFAULT_ESTIMATOR, choices=ESTIMATORS,
                   help="paper: one sampled word per concept at every call, every token its own key (arXiv 2412.02237, "
                        "Sec. 3); all_words: every word in one softmax, one key per word (this pack's first builder)")
    s.add_argument("--batch", type=int, default=1, help="prompts sampled together in one latent batch (GPU: 8-16)")
    s.add_argument("--shard", default="0/1", help="build only prompts i with i %% N == I; merge the shards with `merge`")
    s.add_argument("--resume", action="store_true", help="continue a killed run from its .partial file")
    s.add_argument("--checkpoint-every", type=int, default=8, help="save the counts every this many prompts")
    s.add_argument("--cpu", action="store_true", help="run on the CPU even if a GPU is present")
    s.add_argument("--ray", action="store_true", help="run shards as Ray tasks (pip install ray) and merge them")
    s.add_argument("--ray-address", default=None, help="Ray cluster address (default: start a local Ray)")
    s.add_argument("--ray-shards", type=int, default=None, help="number of shards (default: one per GPU, else per CPU task)")
    s.add_argument("--ray-cpus-per-task", type=int, default=1, help="CPUs per shard task on CPU-only clusters")
    s.add_argument("--ray-work-dir", default=None, help="where shard checkpoints go (shared storage on multi-node clusters)")
    s = sub.add_parser("merge", help="sum the vote counts of HRV builds (shards of one build, or --mixed)")
    s.add_argument("out", help="merged HRV file (.safetensors)")
    s.add_argument("inputs", nargs="+", help="built HRV files")
    s.add_argument("--mixed", action="store_true", help="allow builds with different prompts or settings")


COMMANDS = {"build": build, "merge": merge}
