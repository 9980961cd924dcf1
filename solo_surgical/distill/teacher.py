"""The frozen, semantic-preserving teacher: a public backbone plus a projector trained on surgical frames.

Teacher checkpoint format (``torch.save`` of a plain dict, readable without lightly or solo-learn)::

    {"format": "solo-surgical-teacher", "version": 1,
     "backbone":  {"arch": "resnet50", "state_dict": {...}},           # torchvision key names
     "projector": {"layers": [<mlp spec>], "state_dict": {...}},      # see distill/mlp.py
     "predictor": {"layers": [...], "state_dict": {...}} | None,
     "meta": {"method", "source", "source_sha256", "source_layout", "mean", "std",
              "bn", "embedding_dim", "created", ...}}
"""
from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import Tensor, nn

from ..atomic import torch_save
from ..backbones import IMAGENET_MEAN, IMAGENET_STD
from ..checkpoints import (TEACHER_FORMAT, CheckpointError, backbone_from_keys, load_backbone_state, load_file,
                           read_backbone_keys, sha256_file)
from .freeze import freeze
from .mlp import build_mlp, describe_mlp, mlp_output_dim, sequential_of

TEACHER_VERSION = 1


class FrozenTeacher(nn.Module):
    """Backbone + projector that never learns and never changes its BatchNorm statistics.

    * it is frozen by :func:`~solo_surgical.distill.freeze.freeze` with ``bn="frozen"``: no
      parameter learns, and it stays in eval mode when Lightning calls ``model.train()`` on the
      student (or restores its modes by assigning ``.training``);
    * :meth:`forward` runs under ``torch.inference_mode()`` (returns an ordinary tensor).

    If the data pipeline normalises images with statistics other than the teacher's own,
    the images are re-normalised (an exact per-channel affine map) before the backbone.

    Args:
        backbone: feature extractor, (B, 3, H, W) -> (B, F).
        projector: (B, F) -> (B, Dt).
        out_dim: Dt, the projector's output size (default: ``out_features`` of its last ``nn.Linear``).
        mean, std: normalisation the teacher was trained with.
        input_mean, input_std: normalisation of the images it will be given.
    """

    def __init__(self, backbone: nn.Module, projector: nn.Module, out_dim: Optional[int] = None,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 input_mean: Sequence[float] = IMAGENET_MEAN, input_std: Sequence[float] = IMAGENET_STD,
                 meta: Optional[dict[str, Any]] = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = projector
        self.out_dim = _projector_out_dim(projector) if out_dim is None else int(out_dim)
        self.meta = dict(meta or {})
        # x_teacher = (x_input * s_in + m_in - m_t) / s_t  =  x_input * scale + shift
        m_in, s_in = torch.tensor(input_mean), torch.tensor(input_std)
        m_t, s_t = torch.tensor(mean), torch.tensor(std)
        self.register_buffer("_scale", (s_in / s_t).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_shift", ((m_in - m_t) / s_t).view(1, 3, 1, 1), persistent=False)
        self._renormalise = not (torch.equal(m_in, m_t) and torch.equal(s_in, s_t))
        # Lightning calls .train() on the whole LightningModule at every epoch start; a frozen
        # teacher must keep using (and never update) its BatchNorm statistics.
        freeze(self, bn="frozen")

    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) images -> (B, Dt) teacher embeddings (not normalised), without gradient.

        Runs under ``torch.inference_mode`` (no autograd bookkeeping at all) and in the caller's
        autocast dtype (bf16 under Lightning's ``bf16-mixed``). The output is cloned outside
        inference mode: inference tensors may not be saved for backward nor written in place
        later, and the clone of (B, Dt) costs nothing next to the backbone.
        """
        with torch.inference_mode():
            if self._renormalise:
                images = images * self._scale + self._shift
            out = self.projector(self.backbone(images))
        return out.clone()


def _projector_out_dim(projector: nn.Module) -> int:
    """Dt: the ``out_features`` of the projector's last linear layer (what it emits)."""
    linears = [m for m in projector.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("FrozenTeacher: the projector has no nn.Linear to read its output size from; give out_dim")
    return linears[-1].out_features


def save_teacher_checkpoint(path: str | Path, *, arch: str, backbone: nn.Module, projector: nn.Module,
                            predictor: Optional[nn.Module] = None, meta: dict[str, Any]) -> Path:
    """Write a teacher checkpoint atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": TEACHER_FORMAT,
        "version": TEACHER_VERSION,
        "backbone": {"arch": arch, "state_dict": {k: v.detach().cpu().clone() for k, v in backbone.state_dict().items()}},
        "projector": _head_payload(projector),
        "predictor": None if predictor is None else _head_payload(predictor),
        "meta": {**meta, "embedding_dim": mlp_output_dim(describe_mlp(projector)),
                 "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")},
    }
    return torch_save(payload, path)


def _head_payload(head: nn.Module) -> dict[str, Any]:
    seq = sequential_of(head)
    return {"layers": describe_mlp(seq), "state_dict": {k: v.detach().cpu().clone() for k, v in seq.state_dict().items()}}


def load_teacher(path: str | Path, input_mean: Sequence[float] = IMAGENET_MEAN,
                 input_std: Sequence[float] = IMAGENET_STD) -> FrozenTeacher:
    """Build a :class:`FrozenTeacher` from a teacher checkpoint, checking every key.

    Leaves the global (CPU) random state as it found it: building the modules draws random
    initial weights that the checkpoint then overwrites, and those draws would shift every
    later augmentation. With the stream untouched, ``distill_X`` and ``X`` at one seed start
    from the same student and see the same views in the same order, so their paired
    difference measures the distillation term, not a reshuffle (tests/test_paired_runs.py).
    """
    with torch.random.fork_rng(devices=[]):
        return _load_teacher(path, input_mean, input_std)


def _load_teacher(path: str | Path, input_mean: Sequence[float], input_std: Sequence[float]) -> FrozenTeacher:
    obj = load_file(path)
    if not isinstance(obj, dict) or obj.get("format") != TEACHER_FORMAT:
        raise CheckpointError(
            f"{path}: not a teacher checkpoint (make one with `solo-surgical teacher`; "
            f"a public backbone goes in teacher.source)")
    if obj.get("version") != TEACHER_VERSION:
        raise CheckpointError(f"{path}: teacher checkpoint version {obj.get('version')} is not supported")
    backbone = backbone_from_keys(read_backbone_keys(obj, path), path).module  # arch: the file's backbone.arch
    projector = build_mlp(obj["projector"]["layers"])
    load_backbone_state(projector, obj["projector"]["state_dict"], f"{path} (projector)")
    meta = dict(obj.get("meta", {}))
    # Where it came from: student checkpoints reference the teacher by file and hash (DistillationHead).
    meta["file"], meta["file_sha256"] = str(path), sha256_file(path)
    return FrozenTeacher(backbone, projector, out_dim=mlp_output_dim(obj["projector"]["layers"]),
                         mean=meta.get("mean", IMAGENET_MEAN), std=meta.get("std", IMAGENET_STD),
                         input_mean=input_mean, input_std=input_std, meta=meta)
