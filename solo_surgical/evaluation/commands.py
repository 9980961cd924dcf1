"""Sub-commands of the evaluation concern: extract, linear, temporal, evaluate.

Heavy imports (torch, matplotlib) happen inside the command functions, so ``--help`` is fast.
"""
from __future__ import annotations

from typing import Any


def register(subparsers: Any) -> None:
    from . import evaluate, features, linear, temporal_cli

    features.add_parser(subparsers)
    linear.add_parser(subparsers)
    temporal_cli.add_parser(subparsers)
    evaluate.add_parser(subparsers)
