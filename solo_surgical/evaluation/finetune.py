"""End-to-end fine-tuning (``solo-surgical linear --finetune``), trained by Lightning like the probe.

Backbone + linear head, SGD with momentum 0.9, cross-entropy on images. Lightning runs the loop so
fine-tuning logs like pretraining and the probe (``OUT/logs/version_N/metrics.csv``,
``OUT/tensorboard/version_N``: ``train/loss`` (the epoch's last batch), ``val/acc``) and shows
progress the same way. The epoch with the best validation accuracy is kept in memory (the first
best wins a tie).

Each epoch's batches come from ``loader(epoch)`` (epochs count from 1; ``linear`` gives a fixed
permutation seeded with ``seed + epoch``), so the same seed gives the same weights, bit for bit, and
the same numbers as a plain PyTorch loop over the same loaders (tested). A loader must give the same
order each time it is iterated: Lightning iterates a reloaded loader twice.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable, Optional

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader

from .probe import fit_quietly


class FineTune(pl.LightningModule):
    """``model(images)`` -> logits (B, C), all of it trained.

    ``loader(epoch)`` gives the training DataLoader of ``epoch`` (1-based); ``score(model)`` the
    validation accuracy in percent (None: no validation videos). ``history`` gets one row per epoch
    (``epoch``, ``loss``, ``val_acc``); ``best_state``/``best_epoch`` the best validation epoch.
    """

    def __init__(self, model: nn.Module, loader: Callable[[int], DataLoader],
                 score: Optional[Callable[[nn.Module], float]], lr: float, weight_decay: float) -> None:
        super().__init__()
        self.save_hyperparameters({"lr": float(lr), "weight_decay": float(weight_decay)})
        self.model, self._loader, self._score = model, loader, score
        self.history: list[dict[str, Any]] = []
        self.best_acc, self.best_epoch = -1.0, 0
        self.best_state: Optional[dict[str, torch.Tensor]] = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.current_epoch + 1)  # reloaded every epoch (Trainer option below)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.model.parameters(), lr=self.hparams.lr, momentum=0.9,
                               weight_decay=self.hparams.weight_decay)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, phases = batch
        loss = nn.functional.cross_entropy(self.model(images), phases)
        self._last_loss = float(loss.detach())
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # after the epoch's last optimiser step and before the epoch-end callbacks (the progress line)
        if batch_idx + 1 != self.trainer.num_training_batches:
            return
        row: dict[str, Any] = {"epoch": self.current_epoch + 1, "loss": self._last_loss}
        self.log("train/loss", self._last_loss, on_step=False, on_epoch=True)
        if self._score is not None:
            row["val_acc"] = self._score(self.model)
            self.model.train()  # scoring put it in eval mode; the epoch's bookkeeping still follows
            self.log("val/acc", row["val_acc"], on_step=False, on_epoch=True)
            if row["val_acc"] > self.best_acc:
                self.best_acc, self.best_epoch = row["val_acc"], self.current_epoch + 1
                self.best_state = copy.deepcopy(self.model.state_dict())
        self.history.append(row)


def train_finetune(model: nn.Module, loader: Callable[[int], DataLoader],
                   score: Optional[Callable[[nn.Module], float]], epochs: int, lr: float,
                   weight_decay: float = 0.0, device: str = "cpu", out: str | Path | None = None,
                   loggers: tuple[str, ...] = ("csv", "tensorboard"), progress: bool = True):
    """Fine-tune ``model`` for ``epochs`` epochs on ``device`` ("cpu", "cuda", "cuda:N") and load the
    best validation epoch's weights into it (the last epoch's without ``score``).

    Returns ``(history, best_epoch)``. ``out``: where the loggers write (None: no logs).
    """
    task = FineTune(model, loader, score, lr, weight_decay)
    accelerator, devices = ("cpu", 1) if device == "cpu" else ("cuda", [int(device.partition(":")[2] or 0)])
    fit_quietly(task, epochs, out, loggers, progress, accelerator=accelerator, devices=devices,
                reload_dataloaders_every_n_epochs=1, log_every_n_steps=1)
    if task.best_state is not None:
        model.load_state_dict(task.best_state)
    return task.history, (task.best_epoch if score is not None else epochs)
