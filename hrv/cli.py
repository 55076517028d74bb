"""`python -m hrv ...`: import, fetch, export and inspect HRV files from the shell."""
from __future__ import annotations

import argparse
import json
import logging
import sys

from .build import cli as build_cli
from .format.hrv_file import HRVFileError, load

COMMANDS = dict(build_cli.COMMANDS)


def command(fn):
    COMMANDS[fn.__name__.replace("_", "-")] = fn
    return fn


@command
def import_official(args):
    from .format.official import import_official as run
    for path in run(args.src_dir, args.out_dir):
        print(path)


@command
def fetch_official(args):
    from .format.official import fetch_official as run
    for path in run(args.out_dir):
        print(path)


@command
def export(args):
    from .format.official import export_npy
    export_npy(load(args.file), args.out, per_timestep=args.per_timestep)
    print(args.out)


@command
def info(args):
    print(json.dumps(load(args.file).summary(), indent=2))


def eval_command(args):
    from .eval import edit_bench, weakening_bench
    {"edit": edit_bench.run, "weakening": weakening_bench.run}[args.eval_command](args)


COMMANDS["eval"] = eval_command


def parser() -> argparse.ArgumentParser:
    from .format.official import PACK_DIR
    import os
    default_out = os.path.join(PACK_DIR, "data", "hrv_vectors")
    p = argparse.ArgumentParser(prog="python -m hrv", description="Head Relevance Vector tools")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("import-official", help="convert the published .npy HRVs into .safetensors files")
    s.add_argument("src_dir", help="folder with the published .npy files")
    s.add_argument("out_dir", nargs="?", default=default_out, help="where to write sd1/sdxl_official.safetensors")
    s = sub.add_parser("fetch-official", help="download the published HRVs (pinned commit, sha256-checked) and import them")
    s.add_argument("out_dir", nargs="?", default=default_out)
    s = sub.add_parser("export", help="write an HRV back as .npy in the published head order")
    s.add_argument("file")
    s.add_argument("out")
    s.add_argument("--per-timestep", action="store_true", help="export the per-timestep HRVs [steps, concepts, heads]")
    s = sub.add_parser("info", help="print a JSON summary of an HRV file")
    s.add_argument("file")
    from .eval import edit_bench, weakening_bench
    s = sub.add_parser("eval", help="benchmarks of the paper's applications (eval edit: image editing; "
                                    "eval weakening: ordered weakening)")
    eval_sub = s.add_subparsers(dest="eval_command", required=True)
    edit_bench.add_parser(eval_sub)
    weakening_bench.add_parser(eval_sub)
    build_cli.add_parsers(sub)
    return p


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    args = parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except (HRVFileError, ValueError, KeyError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0

