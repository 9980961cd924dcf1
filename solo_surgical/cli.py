"""The ``solo-surgical`` command line.

Each concern owns its sub-commands: a module listed in ``SUBCOMMAND_MODULES`` exposes
``register(subparsers)``, which adds its parsers and sets ``func`` (called with the parsed
arguments, returns an exit status). Modules are imported lazily only for ``--help`` of the
command that is run, so ``solo-surgical methods`` does not pay for importing the others.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

# Order here is the order in `solo-surgical --help`.
SUBCOMMAND_MODULES = [
    "solo_surgical.data.commands",  # prepare, synth, export-solo-learn
    "solo_surgical.train.commands",  # methods, pretrain, teacher
    "solo_surgical.evaluation.commands",  # extract, linear, temporal, evaluate
    "solo_surgical.benchmark.commands",  # benchmark, demo (the main job)
    "solo_surgical.zoo.commands",  # zoo list|fetch|verify|convert, export
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="solo-surgical",
        description="Distil public pretrained models into self-supervised learning on surgical video.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from .errors import one_line_errors

    with one_line_errors() as status:
        status.code = int(args.func(args) or 0)
    return status.code


if __name__ == "__main__":
    sys.exit(main())
