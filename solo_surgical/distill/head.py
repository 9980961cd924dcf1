"""The distillation head: frozen teacher + aligned memory + relational KL, for any SSL method.

A host (lightly, solo-learn, your own loop) gives the head, per step, the two augmented
views and the student's queries and keys of both views (this rank's images); the head runs
the teacher, gathers student keys and teacher embeddings of the global batch from every
DDP rank (one collective), returns the KL term over the relation set [global batch keys,
aligned memory] (see :mod:`solo_surgical.distill.loss`) and then enqueues the global
batch's view-2 keys. It never touches the host's own loss, optimiser or queue.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from .loss import gather_keys, symmetric_relational_kl
from .memory import AlignedMemory
from .teacher import FrozenTeacher


@dataclass
class DistillConfig:
    """Hyper-parameters of the distillation term (one schema for every host and method).

    ``total = ssl_weight * ssl_loss + weight * relational_kl``. ``preset="authors"``
    reproduces the authors' released code, which computes ``loss += loss + 5 * kd``
    (i.e. 2 x SSL + 5 x KL).

    ``memory_size`` K is the number of earlier images (student and teacher keys, slot-aligned)
    added to each query's relation set, after the N images of the current global batch; the
    relation set has N + min(images seen so far, K) columns. ``memory_size=0`` is a valid
    configuration: no memory, the relations are over the global batch alone (N columns), and
    distillation is still fully active. A positive K must hold at least one global batch.
    The global batch must hold at least 2 images (a single image has nothing to relate to).
    """

    teacher: Optional[str] = None
    weight: float = 1.0
    ssl_weight: float = 1.0
    memory_size: int = 2048
    student_temperature: float = 0.2
    teacher_temperature: float = 0.2
    symmetric: bool = True
    preset: Optional[str] = None

    def __post_init__(self) -> None:
        if self.preset is not None:
            if self.preset not in WEIGHT_PRESETS:
                raise ValueError(f"unknown distill.preset {self.preset!r}; known: {', '.join(WEIGHT_PRESETS)}")
            self.ssl_weight, self.weight = WEIGHT_PRESETS[self.preset]
        # NaN compares false with everything, so "w < 0" alone would let a NaN weight through, and
        # the NaN loss it causes would then be blamed on the learning rate
        for name in ("weight", "ssl_weight"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"distill.{name} must be a finite number >= 0, got {value}")
        for name in ("student_temperature", "teacher_temperature"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"distill.{name} must be a finite number > 0, got {value}")
        if self.memory_size < 0:
            raise ValueError(f"distill.memory_size must be >= 0, got {self.memory_size}")

    def to_dict(self) -> dict:
        return asdict(self)


def check_global_batch(config: DistillConfig, batch: int, made_of: str) -> None:
    """Refuse a global batch the relational KL cannot use, before any work.

    Args:
        config: the distillation settings.
        batch: the global batch (images per step over every rank).
        made_of: how the host computes it, for the message (e.g. ``"data.batch_size x devices x nodes"``).

    Raises:
        ValueError: a batch of fewer than 2 images (nothing to relate to), or a positive memory
            smaller than the batch (it must hold at least one batch).
    """
    if batch < 2:
        raise ValueError(f"distill: the relational KL relates each image to the others of its global batch; "
                         f"it needs at least 2 images ({made_of}), got {batch}")
    if 0 < config.memory_size < batch:
        raise ValueError(f"distill.memory_size={config.memory_size} is smaller than the global batch {batch} "
                         f"({made_of}); it must hold at least one batch")


# name -> (ssl_weight, distill_weight)
WEIGHT_PRESETS: dict[str, tuple[float, float]] = {
    "default": (1.0, 1.0),
    "authors": (2.0, 5.0),  # the released code: `loss += loss + 5 * kd`
}


class DistillationHead(nn.Module):
    """Relational distillation from a :class:`FrozenTeacher` with a slot-aligned memory.

    Args:
        teacher: the frozen teacher (its embedding size Dt may differ from the student's Ds).
        student_dim: Ds, size of the student queries/keys.
        config: :class:`DistillConfig`.
    """

    def __init__(self, teacher: FrozenTeacher, student_dim: int, config: DistillConfig) -> None:
        super().__init__()
        self.teacher = teacher
        self.config = config
        self.memory = AlignedMemory(config.memory_size, student_dim, teacher.out_dim)

    def teacher_embeddings(self, view1: Tensor, view2: Tensor) -> tuple[Tensor, Tensor]:
        """(t1, t2), each (B, Dt): one teacher forward over both views (concatenated)."""
        both = self.teacher(torch.cat([view1, view2], dim=0))
        return both[: view1.shape[0]], both[view1.shape[0]:]

    def forward(self, views: tuple[Tensor, Tensor], queries: tuple[Tensor, Tensor],
                keys: tuple[Tensor, Tensor], update_memory: Optional[bool] = None) -> Tensor:
        """KL(p_teacher || p_student) over [global batch keys, memory], then enqueue view-2 keys.

        Args:
            views: (x1, x2), each (B, 3, H, W), exactly the images the student saw (this rank).
            queries: (q1, q2), each (B, Ds), student queries (gradient flows through these).
            keys: (k1, k2), each (B, Ds), student keys (detached here).
            update_memory: defaults to ``self.training``.

        Returns:
            Scalar loss: the symmetric relational KL averaged over this rank's B queries; each
            query relates to the N keys of the other view of the global batch (all ranks,
            rank order) and the K' <= K keys in memory.
        """
        t1, t2 = self.teacher_embeddings(*views)
        # Relations in fp32 even under mixed precision: a bf16 similarity (8-bit mantissa) divided
        # by tau = 0.2 is off by up to ~0.02 in the logits, and the term is tiny next to the backbones.
        t1, t2 = t1.float(), t2.float()
        queries = (queries[0].float(), queries[1].float())
        # One collective: (N, .) global batch of both views' student keys and teacher embeddings.
        (k1, k2, g1, g2), offset = gather_keys([keys[0].float(), keys[1].float(), t1, t2])
        with torch.autocast(t1.device.type, enabled=False):
            loss = symmetric_relational_kl(
                queries, (k1, k2), self.memory.student(), (g1, g2), self.memory.teacher(),
                self.config.student_temperature, self.config.teacher_temperature, self.config.symmetric,
                key_offset=offset,
            )
        if self.training if update_memory is None else update_memory:
            # Memory is updated after the loss (MoCo's convention): an image is never in the memory
            # during its own step. The keys are already gathered, so every rank writes the same slots.
            self.memory.enqueue(nn.functional.normalize(k2, dim=1), nn.functional.normalize(g2, dim=1),
                                gather=False)
        return loss

    def combine(self, ssl_loss: Tensor, distill_loss: Tensor) -> Tensor:
        return self.config.ssl_weight * ssl_loss + self.config.weight * distill_loss

    # --- checkpoints: the frozen teacher is referenced by file and SHA-256, not copied ---------------
    # A student checkpoint would otherwise carry the whole teacher (a ResNet-50: ~100 MB) in every
    # epoch's file although it never changes. The memory (learnt state) stays in the checkpoint.

    def teacher_reference(self) -> dict[str, str]:
        """``{"file", "sha256"}`` of the teacher checkpoint this head was loaded from."""
        meta = self.teacher.meta
        if not meta.get("file") or not meta.get("file_sha256"):
            raise ValueError("this teacher was not loaded from a file (load_teacher); it cannot be referenced")
        return {"file": str(meta["file"]), "sha256": str(meta["file_sha256"])}

    def teacher_state_keys(self, prefix: str) -> list[str]:
        """The state-dict keys of the teacher, under ``prefix`` (this head's name in its parent + '.')."""
        return [f"{prefix}teacher.{k}" for k in self.teacher.state_dict()]

    def drop_teacher_state(self, state_dict: dict[str, Tensor], prefix: str) -> dict[str, str]:
        """Remove the teacher's tensors from ``state_dict`` in place; returns the reference to store instead."""
        reference = self.teacher_reference()
        for key in self.teacher_state_keys(prefix):
            state_dict.pop(key, None)
        return reference

    def restore_teacher_state(self, state_dict: dict[str, Tensor], prefix: str,
                              reference: Optional[dict[str, str]], where: str) -> None:
        """Put the loaded teacher's tensors back into a checkpoint's ``state_dict`` (in place), after
        checking that it is the teacher the checkpoint was trained with (same SHA-256).

        Raises:
            ValueError: the checkpoint names another teacher file content (one line naming both).
        """
        if reference is None:  # written before teachers were referenced: the tensors are there
            return
        ours = self.teacher_reference()
        if ours["sha256"] != reference.get("sha256"):
            raise ValueError(f"{where}: trained with teacher {reference.get('file')} (sha256 "
                             f"{str(reference.get('sha256'))[:12]}...), but distill.teacher={ours['file']} has sha256 "
                             f"{ours['sha256'][:12]}...; resume with the same teacher file")
        for key, value in self.teacher.state_dict().items():
            state_dict[f"{prefix}teacher.{key}"] = value.detach().clone()
