"""What scripts/start.sh runs in Python: prepare the ComfyUI base directory, run a workflow headless.

    python -m scripts.demo prepare --base-dir comfy_base [--ckpt PATH]
    python -m scripts.demo run --base-dir comfy_base --workflow FILE --output output [--ckpt PATH]
"""
from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import sys

from hrv.comfy_host import PACK_DIR

log = logging.getLogger("scripts.demo.__main__")

NOISE_WARNING = """
##########################################################################################
#  NO CHECKPOINT CONFIGURED: using a RANDOM-WEIGHT SD1.5 checkpoint.                     #
#  Every workflow runs, but EVERY IMAGE WILL BE NOISE.                                   #
#  For real images point it at an SD1.x checkpoint:                                      #
#      bash scripts/start.sh --ckpt /path/to/v1-5-pruned-emaonly.safetensors             #
#  or put checkpoints into {folder:<52} #
##########################################################################################
"""


def checkpoint_folder(base_dir: str) -> str:
    return os.path.join(base_dir, "models", "checkpoints")


def real_checkpoints(base_dir: str) -> list[str]:
    """Checkpoint files in the base directory other than the random one, as ComfyUI names them."""
    from scripts.demo.checkpoint import is_random_checkpoint
    from folder_paths import supported_pt_extensions
    folder = checkpoint_folder(base_dir)
    names = []
    for path in sorted(glob.glob(os.path.join(folder, "**", "*"), recursive=True)):
        if os.path.splitext(path)[1] in supported_pt_extensions and os.path.isfile(path) and not is_random_checkpoint(path):
            names.append(os.path.relpath(path, folder))
    return names


def link_checkpoint(base_dir: str, path: str) -> str:
    """Link the user's checkpoint into the base directory; returns its ComfyUI name."""
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--ckpt {path}: no such file")
    link = os.path.join(checkpoint_folder(base_dir), os.path.basename(path))
    if os.path.realpath(link) != os.path.realpath(path):
        if os.path.lexists(link):
            if not os.path.islink(link):
                raise FileExistsError(f"{link} exists and is not a link; rename one of the two checkpoints")
            os.remove(link)
        os.symlink(path, link)
    return os.path.basename(path)


def prepare(base_dir: str, ckpt: str | None = None) -> tuple[str | None, bool]:
    """Make base_dir ready for ComfyUI with this pack; returns (checkpoint to default to, is it random).

    With ckpt: that file is linked in and used. Without: the checkpoints already in the folder are
    left to the workflows; if there are none, the random SD1.5 checkpoint is linked in.
    """
    from scripts.demo.checkpoint import DEFAULT_NAME, cached_random_sd15_checkpoint
    from scripts.demo.workflows import make_base_dir
    make_base_dir(base_dir)
    if ckpt:
        return link_checkpoint(base_dir, ckpt), False
    real = real_checkpoints(base_dir)
    if real:
        return real[0], False
    random_path = cached_random_sd15_checkpoint()
    link = os.path.join(checkpoint_folder(base_dir), DEFAULT_NAME)
    if os.path.realpath(link) != os.path.realpath(random_path):
        if os.path.lexists(link):
            os.remove(link)
        os.symlink(random_path, link)
    return DEFAULT_NAME, True


def warn_noise(base_dir: str) -> None:
    print(NOISE_WARNING.format(folder=os.path.relpath(checkpoint_folder(base_dir), os.getcwd()) + "/"), file=sys.stderr)


def default_workflow() -> str:
    files = sorted(glob.glob(os.path.join(PACK_DIR, "example_workflows", "*.json")))
    if not files:
        raise FileNotFoundError("example_workflows/ has no .json workflow; pass --workflow FILE")
    return files[0]


def point_at_checkpoint(prompt: dict, default_ckpt: str | None, force: bool = False, base_dir: str = "") -> None:
    """Loaders asking for a checkpoint this ComfyUI lacks (or every loader, with force) get default_ckpt."""
    import folder_paths
    available = folder_paths.get_filename_list("checkpoints")
    for node_id, node in prompt.items():
        name = node["inputs"].get("ckpt_name")
        if node["class_type"] == "CheckpointLoaderSimple" and (force or name not in available):
            if default_ckpt is None:
                raise FileNotFoundError(f"the workflow wants checkpoint {name!r}, which is not in {checkpoint_folder(base_dir)}")
            log.info("node #%s: checkpoint %s -> %s", node_id, name, default_ckpt)
            node["inputs"]["ckpt_name"] = default_ckpt


def run(base_dir: str, workflow_path: str, output_dir: str, ckpt: str | None = None, cpu: bool = True) -> list[str]:
    """Run a UI-format workflow through ComfyUI's executor; images land in output_dir. Returns their paths."""
    import folder_paths

    from scripts.demo import workflows
    default_ckpt, is_random = prepare(base_dir, ckpt)
    workflows.start_comfyui(base_dir, cpu=cpu)
    os.makedirs(output_dir, exist_ok=True)
    with open(workflow_path, encoding="utf-8") as f:
        workflow = json.load(f)
    prompt = workflows.ui_to_api(workflow, workflows.object_info())
    point_at_checkpoint(prompt, default_ckpt, force=bool(ckpt), base_dir=base_dir)
    if is_random:
        warn_noise(base_dir)
    previous_output = folder_paths.get_output_directory()
    folder_paths.set_output_directory(os.path.abspath(output_dir))
    try:
        result = workflows.run_prompt(prompt, fresh=True)  # node instances cache the output folder
    finally:
        folder_paths.set_output_directory(previous_output)
    if is_random:
        warn_noise(base_dir)
    return result.images


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m scripts.demo", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("prepare", "run"):
        s = sub.add_parser(name)
        s.add_argument("--base-dir", default=os.path.join(PACK_DIR, "comfy_base"))
        s.add_argument("--ckpt", help="a checkpoint file to use instead of the ones in the base directory")
    s.add_argument("--workflow", help="UI-format workflow JSON (default: the first of example_workflows/)")
    s.add_argument("--output", default=os.path.join(PACK_DIR, "output"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    from hrv.comfy_host import accelerator_available, use_comfyui
    use_comfyui(cpu=not accelerator_available())
    try:
        if args.command == "prepare":
            _, is_random = prepare(args.base_dir, args.ckpt)
            if is_random:
                warn_noise(args.base_dir)
            return 0
        images = run(args.base_dir, args.workflow or default_workflow(), args.output, args.ckpt,
                     cpu=not accelerator_available())
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in images:
        print(path)
    if not images:
        print("the workflow ran but saved no image (it has no SaveImage/PreviewImage node)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
