"""Plumbing shared by the solo-learn ``distill_*`` and ``teacher_*`` methods.

solo-learn's methods compute their loss inside ``training_step``; the per-crop images and
embeddings never leave it. :class:`CropCapture` records them on the way, around the two
hooks every method goes through: ``base_training_step`` (online forward of each large crop)
and ``_shared_step_momentum`` (momentum forward, :class:`BaseMomentumMethod` only). Nothing
here imports solo-learn: the mixins are combined with its classes by :mod:`.registry`.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from ...backbones import IMAGENET_MEAN, IMAGENET_STD
from ...errors import UserError
from .contracts import GENERIC, Contract, Source

# solo-learn ignores augmentations[i].mean/std for these datasets and uses their published
# statistics instead (facts of its pretrain pipeline); the teacher must be told the same.
FIXED_DATASET_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "stl10": ((0.4914, 0.4823, 0.4466), (0.247, 0.243, 0.261)),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "imagenet100": (IMAGENET_MEAN, IMAGENET_STD),
}


@dataclass
class Captured:
    """What one training step exposed: ``views[i]`` is large crop i, ``online[i]`` / ``momentum[i]``
    the dicts solo-learn's forward / momentum forward returned for it."""

    views: list[Tensor] = field(default_factory=list)
    online: list[dict[str, Any]] = field(default_factory=list)
    momentum: list[dict[str, Any]] = field(default_factory=list)
    # outputs of the submodules a contract names (e.g. DINO's head.mlp), per crop, in call order
    hooked: dict[Source, list[Tensor]] = field(default_factory=dict)

    def class_loss(self) -> Tensor:
        """The online (and momentum) classifiers' part of the loss, as solo-learn averages it."""
        loss = sum(o["loss"] for o in self.online) / len(self.online)
        with_loss = [m["loss"] for m in self.momentum if "loss" in m]
        if with_loss:
            loss = loss + sum(with_loss) / len(with_loss)
        return loss


def _ignored_class_loss(out: dict[str, Any], targets: Tensor) -> None:
    """Without labels (``data.no_labels``: every target is -1) the mean cross-entropy is 0/0 = NaN;
    a classifier with nothing to learn contributes 0 instead (same graph, zero gradient)."""
    if "loss" in out and bool((targets == -1).all()) and not torch.isfinite(out["loss"]):
        logits = out.get("logits")
        out["loss"] = logits.sum() * 0.0 if isinstance(logits, Tensor) else torch.zeros((), device=targets.device)
        for key in ("acc1", "acc5"):
            if key in out:
                out[key] = torch.zeros_like(out[key])


def module_sources(contract: Contract) -> list[Source]:
    return [src for src in (contract.query, contract.key) if src is not None and src.module]


@contextmanager
def recording(model: torch.nn.Module, sources: Sequence[Source], store: dict[Source, list[Tensor]],
              active: Callable[[], bool] = lambda: True) -> Iterator[None]:
    """Forward hooks appending each named submodule's output to ``store[source]`` while inside
    (and while ``active()``: a step records only the forwards of its large crops)."""
    handles = []
    try:
        for src in sources:
            try:
                module = model.get_submodule(src.name)
            except AttributeError:
                raise UserError(f"{type(model).__name__}: the distillation contract names `{src.name}`, "
                                f"which this solo-learn version does not have") from None
            store.setdefault(src, [])
            handles.append(module.register_forward_hook(
                lambda _m, _inputs, output, src=src: store[src].append(output) if active() else None))
        yield
    finally:
        for handle in handles:
            handle.remove()


class CropCapture:
    """Mixin (placed before a solo-learn method class) that records the large crops of a step."""

    _captured: Optional[Captured] = None
    _in_large_crop: bool = False  # inside the online / momentum forward of a large crop
    solo_surgical_contract: Contract = GENERIC  # set per method by registry.derive

    def base_training_step(self, X: Tensor, targets: Tensor) -> dict[str, Any]:
        self._in_large_crop = True
        try:
            out = super().base_training_step(X, targets)  # type: ignore[misc]
        finally:
            self._in_large_crop = False
        _ignored_class_loss(out, targets)
        if self._captured is not None:
            self._captured.views.append(X)
            self._captured.online.append(out)
        return out

    def _shared_step_momentum(self, X: Tensor, targets: Tensor) -> dict[str, Any]:
        self._in_large_crop = True
        try:
            out = super()._shared_step_momentum(X, targets)  # type: ignore[misc]
        finally:
            self._in_large_crop = False
        _ignored_class_loss(out, targets)
        if self._captured is not None:
            self._captured.momentum.append(out)
        return out

    def captured_training_step(self, batch: Sequence[Any], batch_idx: int) -> tuple[Tensor, Captured]:
        """Run the host method's own ``training_step``; return its loss and what it exposed."""
        self._captured = Captured()
        try:
            with recording(self, module_sources(self.solo_surgical_contract), self._captured.hooked,  # type: ignore[arg-type]
                           active=lambda: self._in_large_crop):
                loss = super().training_step(batch, batch_idx)  # type: ignore[misc]
            captured = self._captured
        finally:
            self._captured = None
        if isinstance(loss, dict):  # a step may return {"loss": ...}; Lightning accepts both
            loss = loss["loss"]
        if len(captured.online) != 2:
            raise UserError(f"{self.cfg.method}: the distillation head needs exactly 2 large crops, "  # type: ignore[attr-defined]
                            f"the step used {len(captured.online)}")
        return loss, captured


def select(cfg: DictConfig, key: str, default: Any) -> Any:
    """``cfg.key`` if set (and not missing), else ``default`` (solo-learn's omegaconf_select, kept local)."""
    return OmegaConf.select(cfg, key, default=default)


def input_normalisation(cfg: DictConfig) -> tuple[list[float], list[float]]:
    """Mean/std solo-learn's pretrain pipeline normalises the crops with."""
    if str(cfg.data.dataset) in FIXED_DATASET_STATS:
        mean, std = FIXED_DATASET_STATS[str(cfg.data.dataset)]
        return list(mean), list(std)
    first = cfg.augmentations[0]
    mean = first.get("mean", None) or IMAGENET_MEAN
    std = first.get("std", None) or IMAGENET_STD
    return [float(v) for v in mean], [float(v) for v in std]


def global_batch(cfg: DictConfig) -> int:
    """Images per optimiser step over all ranks, counted as solo-learn counts them for lr scaling."""
    devices = cfg.get("devices", 1)
    try:  # solo-learn scales the lr by len(cfg.devices): a list of ids, or a string such as "1"
        n_devices = len(devices)
    except TypeError:
        n_devices = int(devices)
    return int(cfg.optimizer.batch_size) * max(1, n_devices) * int(cfg.get("num_nodes", 1) or 1)


def crop_size(cfg: DictConfig) -> int:
    return int(cfg.augmentations[0].crop_size)
