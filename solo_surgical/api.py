"""The training stages as Python functions, for notebooks and scripts.

Each function takes the same values as the command line (Hydra override strings such as
``"method=distill_mocov2plus"`` or ``"data.root=FRAMES"``, and/or a mapping of dotted keys to
values), composes the same packaged config, validates it the same way and returns what the
command prints: a path. Nothing here parses argv; the CLI and these functions share
:func:`solo_surgical.hosts.lightly.config.compose` and the runner.

    >>> from solo_surgical import api
    >>> teacher = api.teacher(["teacher.source=public.pth", "data.root=FRAMES"])
    >>> run_dir = api.pretrain({"method": "distill_mocov2plus", "distill.teacher": str(teacher)})

The distillation core for your own training loop is :mod:`solo_surgical.distill`
(``DistillationHead``, ``DistillConfig``, ``FrozenTeacher``, ``load_teacher``, ``freeze``); any
backbone checkpoint reads with :func:`solo_surgical.checkpoints.load_backbone`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

Overrides = Union[Sequence[str], Mapping[str, Any], None]


def _override_strings(overrides: Overrides) -> list[str]:
    """Hydra override strings from a list of strings or a mapping of dotted keys to values.

    Mapping values are written as JSON (``None`` -> ``null``, lists -> ``[a,b]``), which Hydra's
    override grammar reads back as the same value; a key the config does not define raises the
    same one-line error as on the command line (prefix it with ``+`` to add one).
    """
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        return [f"{key}={value if isinstance(value, str) else str(value) if isinstance(value, Path) else json.dumps(value)}"
                for key, value in overrides.items()]
    if isinstance(overrides, str):
        raise TypeError("overrides: give a list of strings (e.g. ['method=simclr']), not one string")
    return [str(o) for o in overrides]


def compose_config(stage: str, overrides: Overrides = None):
    """The composed, validated-at-run config of a stage (``"pretrain"`` or ``"teacher"``) as a DictConfig."""
    from .hosts.lightly.config import compose

    if stage not in ("pretrain", "teacher"):
        raise ValueError(f"stage must be 'pretrain' or 'teacher', got {stage!r}")
    return compose(stage, _override_strings(overrides))


def pretrain(overrides: Overrides = None) -> Path:
    """Self-supervised (optionally distilled) pretraining; returns the run folder
    (``checkpoints/last.ckpt``, ``config.yaml``, ``logs/``), exactly as ``solo-surgical pretrain``."""
    from .hosts.lightly.runner import run_pretrain

    return Path(run_pretrain(compose_config("pretrain", overrides)))


def teacher(overrides: Overrides = None) -> Path:
    """The semantic-preserving teacher stage; returns the teacher checkpoint path, exactly as
    ``solo-surgical teacher``."""
    from .hosts.lightly.runner import run_teacher_stage

    return Path(run_teacher_stage(compose_config("teacher", overrides)))


def linear(config: "LinearConfig") -> dict[str, Any]:
    """Linear probe (or fine-tuning) on a prepared folder; returns what ``OUT/linear.json`` holds
    (``val_acc``, ``test_acc``, ...), exactly as ``solo-surgical linear``."""
    from .evaluation.linear import run_linear

    return run_linear(config)


def extract(config: "ExtractArgs") -> dict[str, Any]:
    """Per-video feature files (``solo-surgical extract``); returns the features index."""
    from .evaluation.features import extract as extract_features

    return extract_features(**config.__dict__)


def temporal(config: "TemporalConfig") -> Path:
    """MS-TCN on feature files (``solo-surgical temporal``); returns the output folder."""
    from .evaluation.temporal_cli import run_temporal

    return Path(run_temporal(config))


def __getattr__(name: str) -> Any:
    # the stage configs, imported on first use (torch-free until a stage runs)
    homes = {"LinearConfig": ".evaluation.linear", "TemporalConfig": ".evaluation.temporal_cli",
             "ExtractArgs": ".evaluation.features"}
    if name in homes:
        import importlib

        return getattr(importlib.import_module(homes[name], __package__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ExtractArgs", "LinearConfig", "TemporalConfig", "compose_config", "extract", "linear", "pretrain",
           "teacher", "temporal"]
