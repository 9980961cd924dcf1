"""``teacher_<name>``: the semantic-preserving stage inside solo-learn.

A public backbone (torchvision, MoCo v2, or one of ours; ``teacher.source``) is loaded strictly
into the method's backbone (and momentum backbone), frozen, and only the heads train with the
method's own SSL loss. At the end of training rank 0 writes a teacher checkpoint in the format
every host shares (:func:`solo_surgical.distill.save_teacher_checkpoint`), so ``distill_*`` of
either host can use it.

``teacher.bn``: ``frozen`` keeps the public BatchNorm statistics (eval mode, pinned against
Lightning's ``.train()`` and its direct ``.training`` assignments); ``recompute`` re-estimates
them on the surgical frames, as the authors' code effectively did. Both are
:func:`solo_surgical.distill.freeze` modes.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from torch import nn

from ...backbones import backbone_names
from ...checkpoints import load_backbone
from ...distill import BN_MODES, freeze, save_teacher_checkpoint
from ...distill.mlp import describe_mlp
from ...errors import UserError
from .common import CropCapture, crop_size, input_normalisation, select


def teacher_output_path(cfg: DictConfig) -> Path:
    """``teacher.out`` or ``<checkpoint.dir>/<method>/<name>-teacher.pth``."""
    out = select(cfg, "teacher.out", None)
    if out:
        return Path(str(out))
    root = select(cfg, "checkpoint.dir", "trained_models")
    return Path(str(root)) / str(cfg.method) / f"{select(cfg, 'name', cfg.method)}-teacher.pth"


def add_and_assert_teacher_cfg(cfg: DictConfig) -> DictConfig:
    """Validates ``teacher.*`` and the backbone (a teacher must be rebuildable without solo-learn)."""
    base = str(cfg.method).removeprefix("teacher_")
    source = select(cfg, "teacher.source", None)
    if not source:
        raise UserError(f"{cfg.method} freezes a public backbone: set teacher.source=PATH (a torchvision "
                        f"ResNet state dict, a MoCo v2 checkpoint or one of ours), then distil with "
                        f"method=distill_{base} distill.teacher=<the exported teacher>")
    if not os.path.isfile(str(source)):
        raise UserError(f"teacher.source={source}: checkpoint file not found")
    bn = str(select(cfg, "teacher.bn", "frozen"))
    if bn not in BN_MODES:
        raise UserError(f"teacher.bn must be one of {BN_MODES}, got {bn!r}")
    if str(cfg.backbone.name) not in backbone_names():
        raise UserError(f"{cfg.method}: backbone {cfg.backbone.name!r} cannot be exported as a teacher; "
                        f"supported: {', '.join(n for n in backbone_names() if n in ('resnet18', 'resnet50'))}")
    cfg.teacher = select(cfg, "teacher", {})
    cfg.teacher.bn = bn
    cfg.teacher.out = str(teacher_output_path(cfg))
    return cfg


class TeacherStageMixin(CropCapture):
    """Mixin turning a solo-learn method into its teacher stage (combined with it by :mod:`.registry`)."""

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg)
        source = str(cfg.teacher.source)
        self.frozen_backbones: list[nn.Module] = [self.backbone]
        if isinstance(getattr(self, "momentum_backbone", None), nn.Module):
            self.frozen_backbones.append(self.momentum_backbone)
        # strict, into solo-learn's own modules (offending keys are listed); the name is only recorded
        loaded = load_backbone(source, arch=str(cfg.backbone.name), into=self.frozen_backbones)
        self.bn_mode: str = str(cfg.teacher.bn)
        for module in self.frozen_backbones:
            freeze(module, bn=self.bn_mode)  # "frozen": pinned in eval mode, whatever Lightning sets
        projector, predictor = self.teacher_heads()
        if projector is None:
            raise UserError(f"{cfg.method}: the method has no `{self.solo_surgical_contract.projector}`, "
                            f"so it has no teacher embedding")
        for role, head in (("projector", projector), ("predictor", predictor)):
            if head is not None:  # fail now, not after training: every head must serialise
                try:
                    describe_mlp(head)
                except TypeError as exc:
                    raise UserError(f"{cfg.method}: its {role} cannot be exported as a teacher head ({exc})") from None
        self.teacher_out = Path(str(cfg.teacher.out))
        self.source_info = dict(loaded.meta)  # source, source_sha256, source_layout

    def teacher_heads(self) -> tuple[Optional[nn.Module], Optional[nn.Module]]:
        """(projector, predictor) the teacher exports, per the method's contract (:mod:`.contracts`):
        the head giving the key-side embedding (DINO: ``head.mlp``, its bottleneck) and the predictor."""
        contract = self.solo_surgical_contract

        def find(path: Optional[str]) -> Optional[nn.Module]:
            if path is None:
                return None
            try:
                return self.get_submodule(path)  # type: ignore[attr-defined]
            except AttributeError:
                return None

        return find(contract.projector), find(contract.predictor)

    @property
    def learnable_params(self) -> list[dict[str, Any]]:
        """The host's parameter groups minus the frozen backbones (emptied groups are dropped)."""
        frozen = {id(p) for m in self.frozen_backbones for p in m.parameters()}
        groups = [{**g, "params": [p for p in g["params"] if id(p) not in frozen]}
                  for g in super().learnable_params]  # type: ignore[misc]
        return [g for g in groups if g["params"]]

    def export_teacher(self, path: Optional[Path] = None) -> Path:
        """Write the teacher checkpoint (backbone + projector [+ predictor] + metadata); heads outside
        the plain Linear / BatchNorm / activation vocabulary are stored as their eval-mode graph
        (see :mod:`solo_surgical.distill.mlp`)."""
        mean, std = input_normalisation(self.cfg)
        projector, predictor = self.teacher_heads()
        return save_teacher_checkpoint(
            path or self.teacher_out, arch=str(self.cfg.backbone.name), backbone=self.backbone,
            projector=projector, predictor=predictor,
            meta={**self.source_info, "method": str(self.cfg.method).removeprefix("teacher_"), "host": "solo-learn",
                  "bn": self.bn_mode, "mean": mean, "std": std, "image_size": crop_size(self.cfg),
                  "steps": int(self.trainer.global_step) if self._trainer is not None else 0,
                  "method_kwargs": OmegaConf.to_container(self.cfg.method_kwargs, resolve=True)})

    def on_train_end(self) -> None:
        super().on_train_end()  # type: ignore[misc]
        if self.trainer.is_global_zero:
            print(f"solo-surgical: teacher written to {self.export_teacher()}")
