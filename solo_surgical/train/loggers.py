"""Lightning loggers by name, shared by pretraining (the lightly host's runner) and the linear probe.

Every stage that trains logs the same way: ``csv`` -> ``RUN_DIR/logs/version_N/metrics.csv``,
``tensorboard`` -> ``RUN_DIR/tensorboard/version_N``, ``wandb`` (when installed; offline unless
``WANDB_MODE`` says otherwise) -> ``RUN_DIR/wandb``. Each launch gets a new version folder, so a
second run into the same folder never overwrites the first one's log.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from ..errors import UserError

LOGGERS = ("csv", "tensorboard", "wandb")


def build_loggers(names: Any, run_dir: Path, option: str = "run.loggers") -> list[Any]:
    """Lightning loggers for ``names`` (a list of :data:`LOGGERS`) writing under ``run_dir``.

    Raises:
        UserError: ``"<option>: unknown ..."`` for a name not in :data:`LOGGERS`, or wandb not installed.
    """
    names = [str(n) for n in (names or [])]
    unknown = [n for n in names if n not in LOGGERS]
    if unknown:
        raise UserError(f"{option}: unknown {', '.join(unknown)} (known: {', '.join(LOGGERS)})")
    loggers: list[Any] = []
    for name in dict.fromkeys(names):
        if name == "csv":
            loggers.append(CSVLogger(str(run_dir), name="logs"))
        elif name == "tensorboard":
            loggers.append(TensorBoardLogger(str(run_dir), name="tensorboard"))
        else:
            try:
                import wandb  # noqa: F401
            except ImportError:
                raise UserError(f"{option}: wandb is not installed (pip install wandb)") from None
            from lightning.pytorch.loggers import WandbLogger

            loggers.append(WandbLogger(save_dir=str(run_dir), project="solo-surgical",
                                       offline=os.environ.get("WANDB_MODE", "offline") == "offline"))
    return loggers
