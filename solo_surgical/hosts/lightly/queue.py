"""MoCo's key queue (one FIFO per view) and its InfoNCE loss, in plain torch.

Why not lightly's ``NTXentLoss(memory_bank_size=...)``: its memory bank hands out its
content and then enqueues the keys it was given, inside the loss call. Called twice for
the symmetric loss, the second term then sees the current batch's own keys among its
negatives, and the two views share one queue (K slots hold K/2 images). Here reading and
writing are separate calls, so the method decides when the queue is written.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...distill.memory import gather_across_ranks, next_ring_slots
from ...errors import UserError


class KeyQueue(nn.Module):
    """``views`` ring buffers of L2-normalised keys sharing one write pointer.

    Queue ``v`` holds the keys of view ``v`` only; slot ``j`` of every queue was written by
    the same image. The state lives in persistent buffers, so Lightning saves it in and
    restores it from checkpoints with the rest of the ``state_dict``.

    Like MoCo, the queue starts full of random unit vectors (not empty): the first steps
    then already have K negatives and a loss of the usual scale.

    Buffers:
        keys: (V, K, D) float, the queued keys.
        pointer: () long, the next slot to write (the oldest key).

    Args:
        views: V, number of queues (2 for MoCo v2+).
        size: K, slots per queue; every enqueue must fit in it (see :meth:`enqueue`).
        dim: D, size of a key.
    """

    keys: Tensor
    pointer: Tensor

    def __init__(self, views: int, size: int, dim: int) -> None:
        super().__init__()
        if views < 1 or size < 1 or dim < 1:
            raise UserError(f"a key queue needs views, size and dim >= 1, got {views}, {size}, {dim}")
        self.views, self.size, self.dim = views, size, dim
        self.register_buffer("keys", F.normalize(torch.randn(views, size, dim), dim=-1))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    def snapshot(self) -> Tensor:
        """(V, K, D) copy of the queues, detached.

        A copy, not a view: the loss keeps it for its backward pass, and the in-place
        :meth:`enqueue` that follows would otherwise invalidate it.
        """
        return self.keys.detach().clone()

    @torch.no_grad()
    def enqueue(self, keys: Sequence[Tensor], gather: bool = True) -> None:
        """Write one batch of keys per view into the oldest slots (the same slots in every queue).

        Args:
            keys: V tensors, each (B, D): the keys of view v of this rank's images, rows in
                the same image order in every view.
            gather: first gather every DDP rank's keys (rank order), so that all ranks hold
                the same queue.

        Writes wrap around the end of the queue, so a global batch that does not divide K
        is fine. A global batch larger than K is refused: it would overwrite its own keys.
        """
        if len(keys) != self.views:
            raise ValueError(f"expected keys of {self.views} views, got {len(keys)}")
        if len({k.shape[0] for k in keys}) != 1:
            raise ValueError(f"every view must hold the same images, got batch sizes {[k.shape[0] for k in keys]}")
        batch = torch.stack([F.normalize(k.detach().to(self.keys.dtype), dim=-1) for k in keys])  # (V, B, D)
        if gather:
            # (V, B, D) -> (B, V, D) so rows stay whole images across ranks, then back
            batch = gather_across_ranks(batch.transpose(0, 1).contiguous()).transpose(0, 1)
        n = batch.shape[1]
        if n > self.size:
            raise UserError(f"key queue of {self.size} keys cannot hold a global batch of {n}; "
                            f"set method.kwargs.queue_size >= {n}")
        self.keys[:, next_ring_slots(self.pointer, n, self.size)] = batch


def moco_infonce(query: Tensor, key: Tensor, negatives: Tensor, temperature: float) -> Tensor:
    """MoCo's InfoNCE: each query must pick its own key out of [key, negatives].

    logits = [q·k, q·n_1, ..., q·n_K] / τ on L2-normalised vectors; cross-entropy with the
    positive at index 0, averaged over the batch.

    Args:
        query: (B, D), carries the gradient.
        key: (B, D), the positive of each query (no gradient expected).
        negatives: (K, D), shared by every query; must not contain this batch's keys.
        temperature: τ > 0.

    Returns:
        () the mean loss.
    """
    q = F.normalize(query, dim=-1)
    k = F.normalize(key, dim=-1)
    n = F.normalize(negatives, dim=-1)
    positive = (q * k).sum(dim=-1, keepdim=True)                         # (B, 1)
    logits = torch.cat([positive, q @ n.transpose(0, 1)], dim=1) / temperature  # (B, 1 + K)
    target = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, target)
