"""Shared Lightning plumbing for the lightly-based methods.

A method subclass only builds its heads and implements :meth:`ssl_step`, which returns
its SSL loss together with the query/key embeddings of both views. That contract is
what lets the distillation head (``solo_surgical.distill``) attach to any method.

Extension points (solo-learn's names): :meth:`learnable_params` and :meth:`momentum_pairs`.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, Optional

import lightning.pytorch as pl
import torch
from lightly.models.utils import update_momentum
from lightly.utils.scheduler import cosine_schedule
from torch import Tensor, nn

from ...backbones import build_backbone
from ...distill import BN_MODES, DistillationHead, freeze
from ...errors import UserError
from ...train.schedule import replan, upgrade_state, warmup_cosine, warmup_steps

# Checkpoint entry that replaces the frozen teacher's tensors: {"file": path, "sha256": hex digest}.
TEACHER_REFERENCE_KEY = "solo_surgical_teacher"


@dataclass
class SSLOutput:
    """What a method's step exposes.

    loss: scalar SSL loss. queries: (q1, q2), each (B, D), the online embeddings that
    carry gradient. keys: (k1, k2), each (B, D), the targets (key encoder output, or the
    detached online embedding for methods without one).
    """

    loss: Tensor
    queries: tuple[Tensor, Tensor]
    keys: tuple[Tensor, Tensor]


@dataclass
class OptimConfig:
    name: str = "sgd"          # sgd | lars | adamw
    lr: float = 0.05           # for a batch of 256; scaled linearly with the batch size
    weight_decay: float = 1e-4
    momentum: float = 0.9
    warmup_epochs: int = 0
    scale_lr_by_batch: bool = True


def hparams_from(cls: type, values: dict[str, Any], where: str) -> Any:
    """Instantiate dataclass ``cls`` from a mapping, rejecting unknown keys with a clear message."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(f"{where}: unknown keys {unknown}; known: {sorted(known)}")
    return cls(**values)


class SSLMethod(pl.LightningModule):
    """Base Lightning module for lightly-built SSL methods, optionally distilled.

    Args:
        backbone: registered backbone name (see ``solo_surgical.backbones``).
        hparams: method hyper-parameters, a mapping validated against ``Hparams``.
        optim: optimiser settings (:class:`OptimConfig` fields).
        distill: an optional :class:`DistillationHead` (``distill_<method>``).
        freeze_backbone: ``None`` to train everything, or ``"frozen"`` / ``"recompute"``
            for the teacher stage (only heads train; the modes of :func:`~solo_surgical.distill.freeze`).
        backbone_module: an already built backbone (e.g. loaded from a public checkpoint).
    """

    Hparams: ClassVar[type]
    supports_distillation: ClassVar[bool] = True
    method_name: ClassVar[str] = "?"

    def __init__(self, backbone: str = "resnet18", hparams: Optional[dict[str, Any]] = None,
                 optim: Optional[dict[str, Any]] = None, distill: Optional[DistillationHead] = None,
                 freeze_backbone: Optional[str] = None, backbone_module: Optional[nn.Module] = None,
                 max_epochs: int = 1, batch_size: int = 256) -> None:
        super().__init__()
        self.hp = hparams_from(self.Hparams, dict(hparams or {}), f"method.kwargs of {self.method_name}")
        self.optim_cfg = hparams_from(OptimConfig, dict(optim or {}), "optimizer")
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        module, self.feature_dim = build_backbone(backbone)
        if backbone_module is not None:
            module = backbone_module
        self.backbone = module
        self.backbone_frozen = freeze_backbone is not None
        if freeze_backbone is not None:
            if freeze_backbone not in BN_MODES:
                raise UserError(f"teacher.bn must be 'frozen' or 'recompute', got {freeze_backbone!r}")
            # Teacher stage: the public backbone's weights never train; with bn="frozen" its BatchNorm
            # statistics are pinned too ("recompute" re-estimates them on surgical frames).
            freeze(self.backbone, bn=freeze_backbone)
        self.build_heads()
        self.distill = distill
        self.save_hyperparameters(ignore=["distill", "backbone_module"])

    # --- what a method implements -------------------------------------------------------
    @staticmethod
    def make_transform(**kwargs: Any) -> Any:
        """PIL image -> list of two augmented views (the method paper's augmentation)."""
        raise NotImplementedError

    def build_heads(self) -> None:
        raise NotImplementedError

    def ssl_step(self, view1: Tensor, view2: Tensor) -> SSLOutput:
        raise NotImplementedError

    def embedding_heads(self) -> dict[str, nn.Module]:
        """Heads exported with a teacher: ``{"projector": ..., "predictor": ... (optional)}``."""
        raise NotImplementedError

    # --- extension points ---------------------------------------------------------------
    def learnable_params(self) -> list[dict[str, Any]]:
        """Parameter groups for the optimiser. The teacher and frozen backbones never appear."""
        excluded = {id(p) for p in self.distill.parameters()} if self.distill is not None else set()
        for online, target in self.momentum_pairs():
            excluded |= {id(p) for p in target.parameters()}
        params = [p for p in self.parameters() if p.requires_grad and id(p) not in excluded]
        return [{"name": "student", "params": params}]

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(online, momentum) module pairs updated by EMA after every step."""
        if not hasattr(self, "projector_momentum"):
            return []
        pairs = [(self.projector, self.projector_momentum)]
        if self.backbone_momentum is not self.backbone:  # a frozen (teacher-stage) backbone is shared
            pairs.append((self.backbone, self.backbone_momentum))
        return pairs

    def build_momentum_branch(self) -> None:
        """EMA key encoder: copies of backbone and projector (MoCo, BYOL)."""
        self.backbone_momentum = self.momentum_copy(self.backbone)
        self.projector_momentum = self.momentum_copy(self.projector)

    @torch.no_grad()
    def momentum_forward(self, x: Tensor) -> Tensor:
        return self.projector_momentum(self.backbone_momentum(x))

    def momentum_copy(self, module: nn.Module) -> nn.Module:
        """A frozen EMA copy of ``module``; a frozen backbone is shared, not copied."""
        if module is self.backbone and self.backbone_frozen:
            return module
        # weights move by EMA, not by gradient; BatchNorm statistics follow the copy's own forwards
        return freeze(copy.deepcopy(module), bn="recompute")

    # --- training -----------------------------------------------------------------------
    def current_momentum(self) -> float:
        base = getattr(self.hp, "momentum", 0.99)
        total = max(1, int(self.trainer.estimated_stepping_batches)) if self._trainer is not None else 1
        return float(cosine_schedule(self.global_step, total, base, 1.0))

    # --- data.device_augment: the batch is JPEG bytes, made into views on the device ------
    device_views: Optional[Any] = None  # set by the runner (train/device_data.py)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        if self.device_views is not None:
            return batch  # the decoder reads the bytes on the CPU and writes its images on `device`
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.device_views is not None:
            jpegs, index = batch
            return self.device_views(jpegs, self.device), index
        return batch

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        views = batch[0]
        if len(views) != 2:
            raise UserError(f"{self.method_name} needs exactly 2 views per image, the transform gave {len(views)}")
        view1, view2 = views
        out = self.ssl_step(view1, view2)
        loss = out.loss
        logs = {"train/ssl_loss": out.loss.detach()}
        if self.distill is not None:
            kd = self.distill((view1, view2), out.queries, out.keys)
            loss = self.distill.combine(out.loss, kd)
            logs["train/distill_kl"] = kd.detach()
        if not torch.isfinite(loss):
            parts = ", ".join(f"{k}={v.item():.4g}" for k, v in logs.items())
            raise FloatingPointError(
                f"non-finite loss at step {self.global_step} of {self.method_name} ({parts}); "
                f"lower optimizer.lr or check the data; checkpoints written so far are kept")
        logs["train/loss"] = loss.detach()
        self.log_dict(logs, prog_bar=True, on_step=True, on_epoch=True, batch_size=view1.shape[0], sync_dist=False)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # One EMA update per optimiser step, not per batch: with trainer.accumulate_grad_batches=k
        # the online weights only move every k-th batch (and on an epoch's last batch), and the
        # momentum schedule counts optimiser steps (global_step). Whether this batch stepped is read
        # from global_step itself rather than re-deriving Lightning's accumulation rule.
        if self.global_step == getattr(self, "_ema_global_step", -1):
            return
        self._ema_global_step = self.global_step
        pairs = self.momentum_pairs()
        if pairs:
            m = self.current_momentum()
            for online, target in pairs:
                update_momentum(online, target, m)
            self.log("train/momentum", m, on_step=True, on_epoch=False, batch_size=1)

    def configure_optimizers(self):
        cfg = self.optim_cfg
        lr = cfg.lr * (self.batch_size / 256 if cfg.scale_lr_by_batch else 1.0)
        groups = self.learnable_params()
        if cfg.name == "sgd":
            optimizer = torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        elif cfg.name == "lars":
            from lightly.utils.lars import LARS

            optimizer = LARS(groups, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        elif cfg.name == "adamw":
            optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=cfg.weight_decay)
        else:
            raise UserError(f"optimizer.name must be sgd, lars or adamw, got {cfg.name!r}")
        # linear warm-up, then cosine decay to zero, per optimiser step (so short runs decay too);
        # Lightning steps it after each optimiser step and saves / restores its state in checkpoints
        scheduler = warmup_cosine(optimizer, *self._schedule_plan())
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _schedule_plan(self) -> tuple[int, int]:
        """(optimiser steps in all, of which warm-up) of this fit."""
        total = max(1, int(self.trainer.estimated_stepping_batches))
        return total, warmup_steps(total, self.optim_cfg.warmup_epochs, self.max_epochs)

    def on_train_start(self) -> None:
        self._ema_global_step = self.global_step  # no EMA update until the optimiser steps (resume too)
        # A resume restores the scheduler built for the old run's length; with more epochs its
        # cosine would end early and rise again. Continue on this fit's plan from the same step.
        for config in self.trainer.lr_scheduler_configs:
            config.scheduler = replan(config.scheduler, config.scheduler.optimizer, *self._schedule_plan())

    def hparams_dict(self) -> dict[str, Any]:
        return asdict(self.hp)

    # --- checkpoints: the frozen teacher by reference (file + SHA-256), not by value ------------
    def referenced_state_keys(self) -> list[str]:
        """State-dict keys a checkpoint does not store (the frozen teacher's; restored on load)."""
        return self.distill.teacher_state_keys("distill.") if self.distill is not None else []

    def complete_checkpoint_state(self, checkpoint: dict[str, Any], where: str) -> None:
        """Put the referenced teacher back into ``checkpoint["state_dict"]`` (in place), refusing a
        checkpoint trained with another teacher file content. ``where`` names the file for the message."""
        if self.distill is not None:
            try:
                self.distill.restore_teacher_state(checkpoint["state_dict"], "distill.",
                                                   checkpoint.get(TEACHER_REFERENCE_KEY), where)
            except ValueError as exc:
                raise UserError(str(exc)) from None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.distill is not None:
            checkpoint[TEACHER_REFERENCE_KEY] = self.distill.drop_teacher_state(checkpoint["state_dict"], "distill.")

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.complete_checkpoint_state(checkpoint, "the checkpoint being loaded")
        if "lr_schedulers" in checkpoint:  # a LambdaLR state of earlier versions: rebuilt at its step
            checkpoint["lr_schedulers"] = [upgrade_state(state) for state in checkpoint["lr_schedulers"]]
