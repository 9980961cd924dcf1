"""The ``solo-surgical`` command line.

Each concern owns its sub-commands: a module listed in ``SUBCOMMAND_MODULES`` exposes
``register(subparsers)``, which adds its parsers and sets ``func`` (called with the parsed
arguments, returns an exit status). Modules are imported lazily only for ``--help`` of the
command that is run, so ``solo-surgical methods`` does not pay for importing the others.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import typing
from typing import Sequence

# Order here is the order in `solo-surgical --help`.
SUBCOMMAND_MODULES = [
    "solo_surgical.data.commands",  # prepare, synth, export-solo-learn
    "solo_surgical.hosts.lightly.commands",  # methods, pretrain, teacher
    "solo_surgical.evaluation.commands",  # extract, linear, temporal, evaluate
    "solo_surgical.benchmark.commands",  # benchmark, demo (the main job)
    "solo_surgical.zoo.commands",  # zoo list|fetch|verify|convert, export
]


class OneLineParser(argparse.ArgumentParser):
    """argparse errors (bad option value, missing argument) in one line, exit status 2.

    argparse prints the usage block before the message; the usage is what ``--help`` is for,
    and the line names the option and the problem.
    """

    def error(self, message: str) -> typing.NoReturn:
        print(f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="solo-surgical",
        description="Distil public pretrained models into self-supervised learning on surgical video.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"solo-surgical {__version__}")
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
    from .errors import one_line, one_line_errors

    try:
        with one_line_errors() as status:
            status.code = int(args.func(args) or 0)
        sys.stdout.flush()  # a reader gone before our last line shows here, not at interpreter exit
    except BrokenPipeError as exc:
        if not _stdout_closed():  # another pipe (a worker process's): an error like any other
            print(f"solo-surgical: error: {one_line(exc)}", file=sys.stderr)
            return 2
        # The reader of our output went away (``solo-surgical methods | head -1``): end quietly, with
        # the status of a program ended by SIGPIPE, and keep Python from complaining at exit when
        # it flushes stdout again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13
    return status.code


def _stdout_closed() -> bool:
    """Whether stdout is a pipe or socket whose reader has gone (poll reports an error on it)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # no fileno (captured), no poll on this platform
        return False


if __name__ == "__main__":
    sys.exit(main())
