"""The linear probe, trained by Lightning on cached frozen features (``solo-surgical linear``).

A linear layer on features standardised with the training set's statistics, Adam, cross-entropy.
Lightning runs the loop so the probe logs like pretraining (``OUT/logs/version_N/metrics.csv`` and
``OUT/tensorboard/version_N``: ``train/loss`` (mean over the epoch's frames), ``train/acc`` (all
training frames after the epoch), ``val/acc``) and shows progress the same way (Lightning's bar on
a terminal, one line per epoch otherwise). The epoch with the best validation accuracy is kept in
memory (no checkpoint files: the head is a few kilobytes; the first best wins a tie).

The batches are the same as the hand-written loop this replaced: one permutation per epoch from a
generator seeded with ``seed``, split in ``batch_size`` chunks; the head is drawn right after
``torch.manual_seed(seed)``. So the same seed gives the same weights, bit for bit.
"""
from __future__ import annotations

import copy
import logging
import math
import warnings
from pathlib import Path
from typing import Any, Iterator, Optional

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from ..train.loggers import build_loggers
from ..train.progress import EpochLines, progress_mode


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Percentage of rows of ``logits`` (N, C) whose argmax equals ``labels`` (N,); NaN when N = 0."""
    return 100.0 * float((logits.argmax(1) == labels).float().mean()) if len(labels) else float("nan")


class _Rows(Dataset):
    """Rows of ``(x (N, F), y (N,))`` taken a whole batch at a time: ``rows[idx] -> (x[idx], y[idx])``."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[idx], self.y[idx]


class _PermutedBatches(Sampler):
    """Index tensors of one epoch: ``randperm(n, generator).split(batch_size)``. The generator is seeded
    once and drawn from each epoch; it is not the DataLoader's own (which draws a worker seed from it)."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size = n, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(torch.randperm(self.n, generator=self.generator).split(self.batch_size))


class LinearProbe(pl.LightningModule):
    """``head(x)`` on standardised features: (N, F) -> logits (N, C).

    ``train_x`` (N, F) are the standardised training features (kept to score all of them after each
    epoch), ``val`` the standardised validation features and labels, or None. ``history`` gets one row
    per epoch (``epoch``, ``loss``, ``train_acc``, ``val_acc``); ``best_state``/``best_epoch`` the
    epoch with the best validation accuracy.
    """

    def __init__(self, train_x: torch.Tensor, train_y: torch.Tensor,
                 val: Optional[tuple[torch.Tensor, torch.Tensor]], num_classes: int,
                 lr: float, weight_decay: float) -> None:
        super().__init__()
        self.save_hyperparameters({"features": int(train_x.shape[1]), "num_classes": int(num_classes),
                                   "lr": float(lr), "weight_decay": float(weight_decay)})
        self.head = nn.Linear(train_x.shape[1], num_classes)  # draws from torch's global generator
        self.train_x, self.train_y, self.val = train_x, train_y, val
        self.history: list[dict[str, Any]] = []
        self.best_acc, self.best_epoch = -1.0, 0
        self.best_state: Optional[dict[str, torch.Tensor]] = None
        self._loss_sum, self._seen = 0.0, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.head.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self.head(x), y)
        self._loss_sum += float(loss.detach()) * len(y)
        self._seen += len(y)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # The epoch's summary is made after its last step and before the validation loop and the
        # epoch-end callbacks (the progress line), so both see it.
        if batch_idx + 1 != self.trainer.num_training_batches:
            return
        with torch.no_grad():
            train_acc = accuracy(self.head(self.train_x), self.train_y)
        loss = self._loss_sum / max(1, self._seen)
        self._loss_sum, self._seen = 0.0, 0
        self.history.append({"epoch": self.current_epoch + 1, "loss": loss, "train_acc": train_acc})
        self.log("train/loss", loss, on_step=False, on_epoch=True)
        self.log("train/acc", train_acc, on_step=False, on_epoch=True)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch  # the whole validation set: one batch, scored at once as before
        val_acc = accuracy(self.head(x), y)
        self.history[-1]["val_acc"] = val_acc
        self.log("val/acc", val_acc, on_step=False, on_epoch=True)
        if val_acc > self.best_acc:
            self.best_acc, self.best_epoch = val_acc, self.current_epoch + 1
            self.best_state = copy.deepcopy(self.head.state_dict())


def _quiet() -> None:
    """Lightning's start-up notes ("GPU available but not used", ...) are noise for a CPU probe."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda"):
        logging.getLogger(name).setLevel(logging.WARNING)


def fit_quietly(task: pl.LightningModule, epochs: int, out: str | Path | None, loggers: tuple[str, ...],
                progress: bool, *loaders: Optional[DataLoader], accelerator: str = "cpu", devices: Any = 1,
                **options: Any) -> None:
    """Fit a small evaluation ``task`` the way the probe and fine-tuning share: loggers under ``out``
    (None: none), Lightning's bar on a terminal or one line per epoch (``progress``), no checkpoint
    files, no model summary, no sanity validation, no inference tensors in kept states; ``options``
    go to the Trainer; ``loaders``: train (and validation) loaders, none when the task has hooks."""
    show_bar, epoch_lines = progress_mode(progress, progress)
    _quiet()
    trainer = pl.Trainer(
        accelerator=accelerator, devices=devices, max_epochs=epochs,
        logger=build_loggers(loggers, Path(out)) if out else False,
        callbacks=[EpochLines(also=("val/",))] if epoch_lines else [], enable_progress_bar=show_bar,
        enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=0,
        inference_mode=False, default_root_dir=str(out) if out else None, **options)
    with warnings.catch_warnings():
        # in-memory tensors or cached frames need no worker processes
        warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
        warnings.filterwarnings("ignore", message=r".*validation_step.* but have no `val_dataloader`.*")
        trainer.fit(task, *loaders)


def train_probe(train_x: torch.Tensor, train_y: torch.Tensor, val_x: Optional[torch.Tensor],
                val_y: Optional[torch.Tensor], num_classes: int, epochs: int, lr: float, batch_size: int,
                weight_decay: float = 0.0, seed: int = 0, out: str | Path | None = None,
                loggers: tuple[str, ...] = ("csv", "tensorboard"), progress: bool = True):
    """Train the probe on features ``train_x`` (N, F) with labels ``train_y`` (N,) for ``epochs`` epochs
    on the CPU; validation on ``val_x`` (M, F), ``val_y`` (M,) (None: keep the last epoch).

    ``out``: the folder the loggers write under (None: no logs). ``progress``: Lightning's bar on a
    terminal, else one line per epoch on stderr. Returns ``(head, mean, std, history, best_epoch)``:
    the ``nn.Linear`` (F -> C) of the kept epoch, the (F,) training mean and std its inputs are
    standardised with, one row per epoch, and the epoch kept.
    """
    torch.manual_seed(seed)
    mean, std = train_x.mean(0), train_x.std(0).clamp(min=1e-6)
    xs = (train_x - mean) / std
    val = None if val_x is None else ((val_x - mean) / std, val_y)
    probe = LinearProbe(xs, train_y, val, num_classes, lr, weight_decay)
    train_loader = DataLoader(_Rows(xs, train_y), sampler=_PermutedBatches(len(xs), batch_size, seed),
                              batch_size=None)
    # the whole validation set as one batch (a list of one index tensor as the sampler)
    val_loader = None if val is None else DataLoader(_Rows(*val), sampler=[torch.arange(len(val[0]))],
                                                     batch_size=None)
    fit_quietly(probe, epochs, out, loggers, progress, train_loader, val_loader,
                log_every_n_steps=max(1, min(50, len(train_loader))))
    head = probe.head
    if probe.best_state is not None:
        head.load_state_dict(probe.best_state)
    best_epoch = probe.best_epoch if val is not None else epochs
    return head, mean, std, probe.history, best_epoch
