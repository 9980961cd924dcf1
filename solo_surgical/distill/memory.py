"""A FIFO memory that stores student and teacher keys of the same images in the same slot.

The authors' code keeps two independent queues, each with its own pointer, so that slot j
of the student queue and slot j of the teacher queue describe the same image only by
chance. Here one pointer writes both: the relational KL then compares distributions over
the *same* images. The memory extends the relation set beyond the current global batch
(see :mod:`solo_surgical.distill.loss`); it is written after the loss of a step, so an
image is never in the memory during its own step. A memory of size 0 holds nothing and
leaves the global batch as the whole relation set.
"""
from __future__ import annotations

from typing import Union

import torch
import torch.distributed as dist
from torch import Tensor, nn


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


@torch.no_grad()
def gather_across_ranks(tensor: Tensor, return_offset: bool = False) -> Union[Tensor, tuple[Tensor, int]]:
    """Concatenate ``tensor`` (B_r, ...) from every DDP rank in rank order (no gradient).

    Ranks may hold different batch sizes (the last batch of an epoch): rows are padded to
    the largest size for ``all_gather`` and trimmed afterwards.

    Args:
        tensor: (B_r, ...) this rank's rows.
        return_offset: also return this rank's offset, the number of rows held by lower
            ranks (sum of B_0 .. B_{r-1}): local row i is row ``offset + i`` of the result.

    Returns:
        (sum_r B_r, ...) detached, or ``(gathered, offset)`` with ``return_offset``.
        Without DDP: ``tensor.detach()`` and offset 0.
    """
    world = _world_size()
    if world == 1:
        return (tensor.detach(), 0) if return_offset else tensor.detach()
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(s.item()) for s in sizes]
    largest = max(counts)
    padded = tensor.new_zeros((largest, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    gathered = torch.cat([p[:n] for p, n in zip(parts, counts)], dim=0)
    if not return_offset:
        return gathered
    return gathered, sum(counts[: dist.get_rank()])


@torch.no_grad()
def next_ring_slots(pointer: Tensor, count: int, size: int) -> Tensor:
    """The ``count`` slots a FIFO ring of ``size`` slots writes next (oldest first, wrapping), and
    advance ``pointer`` (a () long buffer, updated in place) past them. ``count <= size`` is the
    caller's check: a larger write would overwrite itself."""
    slots = (pointer + torch.arange(count, device=pointer.device)) % size
    pointer.copy_((pointer + count) % size)
    return slots


class AlignedMemory(nn.Module):
    """Two ring buffers (student keys, teacher keys) sharing one write pointer.

    All state lives in persistent buffers, so it is saved in and restored from
    checkpoints. Slots that were never written are not returned: until the memory is
    full, :meth:`student` / :meth:`teacher` return only the filled prefix.

    Args:
        size: number of slots K.
        student_dim: Ds, size of a student key.
        teacher_dim: Dt, size of a teacher key.
    """

    def __init__(self, size: int, student_dim: int, teacher_dim: int) -> None:
        super().__init__()
        if size < 0:
            raise ValueError(f"memory size must be >= 0, got {size}")
        self.size = size
        self.register_buffer("student_keys", torch.zeros(size, student_dim))
        self.register_buffer("teacher_keys", torch.zeros(size, teacher_dim))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    def student(self) -> Tensor:
        """(min(filled, K), Ds) student keys currently held."""
        return self.student_keys[: int(self.filled)]

    def teacher(self) -> Tensor:
        """(min(filled, K), Dt) teacher keys currently held, slot-aligned with :meth:`student`."""
        return self.teacher_keys[: int(self.filled)]

    @torch.no_grad()
    def enqueue(self, student_keys: Tensor, teacher_keys: Tensor, gather: bool = True) -> None:
        """Write keys of the same images to the same slots, oldest slots first.

        Args:
            student_keys: (B, Ds) keys of this rank's images.
            teacher_keys: (B, Dt) teacher keys of the same images, same row order.
            gather: gather keys from every DDP rank first, so every rank's memory is identical.

        A global batch that does not divide K is fine: writes wrap around the end.
        A global batch larger than K is refused (it would overwrite itself).
        """
        if self.size == 0:
            return
        if student_keys.shape[0] != teacher_keys.shape[0]:
            raise ValueError(
                f"student keys ({student_keys.shape[0]}) and teacher keys "
                f"({teacher_keys.shape[0]}) must describe the same images"
            )
        if gather:
            student_keys = gather_across_ranks(student_keys.detach().contiguous())
            teacher_keys = gather_across_ranks(teacher_keys.detach().contiguous())
        n = student_keys.shape[0]
        if n > self.size:
            raise ValueError(
                f"distillation memory of {self.size} slots cannot hold a global batch of {n} keys; "
                f"set distill.memory_size >= {n} (or 0 to disable the memory)"
            )
        slots = next_ring_slots(self.pointer, n, self.size)
        self.student_keys[slots] = student_keys.to(self.student_keys.dtype)
        self.teacher_keys[slots] = teacher_keys.to(self.teacher_keys.dtype)
        self.filled.copy_(torch.clamp(self.filled + n, max=self.size))
