"""Progress of a training run: Lightning's bar on a terminal, one line per epoch everywhere else.

A progress bar written to a log file or a pipe (the benchmark, a batch job, ``| tee``) is a stream
of carriage returns; a run with the bar switched off says nothing for minutes. So the bar is shown
only when it has a terminal to draw on, and otherwise each finished epoch prints one line on stderr:

    epoch 3/20  step 27  loss 4.213  distill_kl 0.0312  lr 0.0375  (12.1 s)
"""
from __future__ import annotations

import sys
import time
from typing import Any, Optional, TextIO

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback


def progress_mode(bar_requested: bool, epoch_lines: bool, stream: Optional[TextIO] = None) -> tuple[bool, bool]:
    """``(show_bar, print_epoch_lines)`` for a run.

    The bar needs a terminal: requested but not on a terminal, it is replaced by epoch lines.
    Epoch lines (``run.epoch_lines``) are printed whenever the bar is not shown.
    """
    stream = sys.stderr if stream is None else stream
    interactive = bool(getattr(stream, "isatty", lambda: False)())
    show_bar = bool(bar_requested) and interactive
    return show_bar, bool(epoch_lines) and not show_bar


def _format(value: float) -> str:
    return f"{value:.4g}"


class EpochLines(Callback):
    """One line per finished training epoch on ``stream`` (rank 0 only): epoch, step, the epoch's
    logged ``train/*`` values (the last step's; the name without ``train/``), the values under the
    ``also`` prefixes (``also=("val/",)``: ``val/acc`` shown as ``val_acc``; logged before the epoch
    ends, e.g. by the validation loop), the learning rate and the epoch's wall time."""

    def __init__(self, stream: Optional[TextIO] = None, also: tuple[str, ...] = ()) -> None:
        self.stream = stream
        self.also = tuple(also)
        self._start = time.monotonic()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.monotonic()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_rank != 0:
            return
        parts = [f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}", f"step {trainer.global_step}"]
        metrics: dict[str, Any] = trainer.callback_metrics
        for key in sorted(metrics):
            # values logged both per step and per epoch appear three times (x, x_step, x_epoch): keep x
            base = key.removesuffix("_step").removesuffix("_epoch")
            if key.startswith("train/") and (key == base or base not in metrics):
                parts.append(f"{base[len('train/'):]} {_format(float(metrics[key]))}")
        for key in sorted(metrics):
            if key.startswith(self.also) and not key.endswith(("_step", "_epoch")):
                parts.append(f"{key.replace('/', '_')} {_format(float(metrics[key]))}")
        lrs = [group["lr"] for opt in trainer.optimizers for group in opt.param_groups]
        if lrs:
            parts.append(f"lr {_format(lrs[0])}")
        stream = sys.stderr if self.stream is None else self.stream
        print("  ".join(parts) + f"  ({time.monotonic() - self._start:.1f} s)", file=stream, flush=True)
