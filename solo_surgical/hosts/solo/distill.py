"""``distill_<name>``: any solo-learn method with two large crops, plus the relational distillation head.

The host method is untouched: its own ``training_step`` computes its loss (SSL + online
classifier); :class:`~.common.CropCapture` records the two large crops and their embeddings,
and the head adds ``weight * KL`` (``ssl_weight`` scales the SSL part only, never the
classifier's cross-entropy).

Distillation contract: per method, in :mod:`.contracts` (and the README's table). The rule:

* queries: the online embedding the method's loss moves, the prediction where the method has a
  predictor (BYOL, SimSiam, MoCo v3's ``q``, ...), else the projection ``z`` (SimCLR, MoCo v2+, ...);
* keys: the momentum projection for momentum methods (MoCo v3's ``k``), else the detached online
  projection; never prototype scores (SwAV's and DeepCluster v2's ``p``, DINO's ``z``: DINO uses
  the bottleneck of its head's MLP) nor nearest neighbours (NNCLR's support set).
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
from .common import Captured, CropCapture, crop_size, global_batch, input_normalisation, module_sources, recording, select
from .contracts import Source


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
    large = select(cfg, "data.num_large_crops", 2)
    if large != 2:  # main_pretrain lets wmse (and mae) use other counts; the KL pairs two views
        raise UserError(f"{cfg.method}: the distillation needs exactly 2 large crops (augmentations' num_crops "
                        f"of the large pipelines), got {large}")
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

        Probing (rather than trusting ``method_kwargs.proj_output_dim``) checks the contract against
        this solo-learn version at construction, and fails with the method's name if an output it
        names is missing or queries and keys differ in size.
        """
        was_training = self.training
        self.eval()
        try:
            x = torch.zeros(2, 3, size, size)
            captured = Captured(views=[x, x])
            with recording(self, module_sources(self.solo_surgical_contract), captured.hooked):
                captured.online = [self(x)] * 2
                if hasattr(self, "momentum_forward"):
                    captured.momentum = [self.momentum_forward(x)] * 2
            for src, outs in captured.hooked.items():  # each hooked module ran once; one output per crop
                captured.hooked[src] = outs * 2
            _, queries, keys = self.distill_inputs(captured)
        finally:
            self.train(was_training)
        if queries[0].shape[-1] != keys[0].shape[-1]:
            raise UserError(f"{self.cfg.method}: queries ({queries[0].shape[-1]}) and keys ({keys[0].shape[-1]}) "
                            f"differ in size")
        return int(keys[0].shape[-1])

    @property
    def learnable_params(self) -> list[dict[str, Any]]:
        """The host's parameter groups; the teacher never appears (it also has requires_grad=False)."""
        teacher = {id(p) for p in self.distill.parameters()}
        groups = super().learnable_params  # type: ignore[misc]
        return [{**g, "params": [p for p in g["params"] if id(p) not in teacher]} for g in groups]

    def _embeddings(self, captured: Captured, src: Source) -> list[Tensor]:
        """The two large crops' embeddings named by ``src`` (an output key or a hooked submodule)."""
        if src.module:
            found = captured.hooked.get(src, [])
        else:
            outs = captured.online if src.branch == "online" else captured.momentum
            found = [o[src.name] for o in outs if src.name in o]
        if len(found) != 2:
            raise UserError(f"{self.cfg.method}: the distillation contract expects the {src.describe()} of the two "  # type: ignore[attr-defined]
                            f"large crops, the step exposed {len(found)}; this solo-learn version is not supported")
        return found

    def distill_inputs(self, captured: Captured) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor],
                                                           tuple[Tensor, Tensor]]:
        """(views, queries, keys) of the two large crops, per the method's contract (:mod:`.contracts`)."""
        contract = self.solo_surgical_contract
        query_src = contract.query or Source("online", "p" if "p" in captured.online[0] else "z")
        key_src = contract.key or (Source("momentum", "z") if hasattr(self, "momentum_forward") else Source("online", "z"))
        queries = self._embeddings(captured, query_src)
        keys = [k.detach() for k in self._embeddings(captured, key_src)]  # the key side never gets gradients
        return (captured.views[0], captured.views[1]), (queries[0], queries[1]), (keys[0], keys[1])

    def training_step(self, batch: Sequence[Any], batch_idx: int) -> Tensor:
        loss, captured = self.captured_training_step(batch, batch_idx)
        views, queries, keys = self.distill_inputs(captured)
        kd = self.distill(views, queries, keys)
        class_loss = captured.class_loss()
        ssl_loss = loss - class_loss
        self.log_dict({"train_distill_kl": kd.detach(), "train_ssl_loss": ssl_loss.detach()},
                      on_epoch=True, sync_dist=True)
        return self.distill.combine(ssl_loss, kd) + class_loss
