"""``distill_<name>``: any solo-learn method with two large crops, plus the relational distillation head.

The host method is untouched: its own ``training_step`` computes its loss (SSL + online
classifier); :class:`~.common.CropCapture` records the two large crops and their embeddings,
and the head adds ``weight * KL`` (``ssl_weight`` scales the SSL part only, never the
classifier's cross-entropy).

Distillation contract (the same as the lightly host's):

* queries: the online prediction ``p`` where the method has a predictor (BYOL, SimSiam,
  MoCo v3, ...), else the online projection ``z`` (SimCLR, MoCo v2+, ...);
* keys: the momentum projection ``z`` for momentum methods (``BaseMomentumMethod``), else the
  detached online projection ``z``.
"""
from __future__ import annotations

import os
from dataclasses import fields
from typing import Any, Sequence

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from ...distill import DistillationHead, DistillConfig, check_global_batch, load_teacher
from ...errors import UserError
from .common import Captured, CropCapture, crop_size, global_batch, input_normalisation, select


def distill_config(cfg: DictConfig) -> DistillConfig:
    """``cfg.distill`` as a validated :class:`DistillConfig` (unknown keys and bad values are errors)."""
    node = select(cfg, "distill", None)
    if node is None:
        raise UserError(f"method {cfg.method} needs a `distill:` section with at least distill.teacher=PATH "
                        f"(the solo-surgical configs ship one)")
    values = OmegaConf.to_container(node, resolve=True)
    known = {f.name for f in fields(DistillConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(f"distill: unknown keys {unknown}; known: {sorted(known)}")
    try:
        return DistillConfig(**values)
    except (TypeError, ValueError) as exc:
        raise UserError(f"distill: {exc}") from None


def add_and_assert_distill_cfg(cfg: DictConfig) -> DictConfig:
    """Validates the ``distill`` section for real (upstream's dotted ``is_missing`` asserts never fire)."""
    dcfg = distill_config(cfg)
    base = str(cfg.method).removeprefix("distill_")
    if not dcfg.teacher or dcfg.teacher == "???":
        raise UserError(f"{cfg.method} distils from a teacher checkpoint: set distill.teacher=PATH "
                        f"(make one with method=teacher_{base} teacher.source=PUBLIC_BACKBONE)")
    if not os.path.isfile(dcfg.teacher):
        raise UserError(f"distill.teacher={dcfg.teacher}: teacher checkpoint file not found")
    try:
        check_global_batch(dcfg, global_batch(cfg), "optimizer.batch_size x devices x nodes")
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return cfg


class DistillMixin(CropCapture):
    """Mixin giving a solo-learn method the distillation head (combined with it by :mod:`.registry`)."""

    distill: DistillationHead

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg)  # the host method builds itself and calls add_and_assert_specific_cfg
        dcfg = distill_config(cfg)
        mean, std = input_normalisation(cfg)
        student_dim = self._probe_key_dim(crop_size(cfg))
        # The teacher re-normalises if its own statistics differ from the pipeline's.
        self.distill = DistillationHead(load_teacher(dcfg.teacher, input_mean=mean, input_std=std), student_dim, dcfg)

    @torch.no_grad()
    def _probe_key_dim(self, size: int) -> int:
        """Size of the keys, found by one eval-mode forward of two blank crops (BN statistics untouched).

        Probing (rather than trusting ``method_kwargs.proj_output_dim``) also covers methods whose
        ``z`` is not the projector output (e.g. DINO's prototypes) and fails early, with the
        method's name, if a method exposes no ``z``.
        """
        was_training = self.training
        self.eval()
        try:
            x = torch.zeros(2, 3, size, size)
            out = self(x)
            if "z" not in out:
                raise UserError(f"{self.cfg.method}: the method's forward returns no 'z' embedding "
                                f"(keys: {sorted(out)}), so it cannot be distilled")
            query = out.get("p", out["z"])
            key = out["z"]
            if hasattr(self, "momentum_forward"):
                key = self.momentum_forward(x).get("z", key)
        finally:
            self.train(was_training)
        if query.shape[-1] != key.shape[-1]:
            raise UserError(f"{self.cfg.method}: queries ({query.shape[-1]}) and keys ({key.shape[-1]}) differ in size")
        return int(key.shape[-1])

    @property
    def learnable_params(self) -> list[dict[str, Any]]:
        """The host's parameter groups; the teacher never appears (it also has requires_grad=False)."""
        teacher = {id(p) for p in self.distill.parameters()}
        groups = super().learnable_params  # type: ignore[misc]
        return [{**g, "params": [p for p in g["params"] if id(p) not in teacher]} for g in groups]

    def distill_inputs(self, captured: Captured) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor],
                                                           tuple[Tensor, Tensor]]:
        """(views, queries, keys) of the two large crops, per the contract in the module docstring."""
        online = captured.online
        queries = tuple(o["p"] if "p" in o else o["z"] for o in online)
        momentum_keys = [m["z"] for m in captured.momentum if "z" in m]
        if len(momentum_keys) == 2:
            keys = tuple(momentum_keys)
        elif hasattr(self, "momentum_forward"):
            raise UserError(f"{self.cfg.method}: the momentum forward of the two large crops was not "
                            f"observed; this solo-learn version is not supported by the distillation wrapper")
        else:
            keys = tuple(o["z"].detach() for o in online)
        return (captured.views[0], captured.views[1]), queries, keys  # type: ignore[return-value]

    def training_step(self, batch: Sequence[Any], batch_idx: int) -> Tensor:
        loss, captured = self.captured_training_step(batch, batch_idx)
        views, queries, keys = self.distill_inputs(captured)
        kd = self.distill(views, queries, keys)
        class_loss = captured.class_loss()
        ssl_loss = loss - class_loss
        self.log_dict({"train_distill_kl": kd.detach(), "train_ssl_loss": ssl_loss.detach()},
                      on_epoch=True, sync_dist=True)
        return self.distill.combine(ssl_loss, kd) + class_loss
