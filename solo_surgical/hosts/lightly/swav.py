"""SwAV with two large crops: swapped prediction of Sinkhorn codes over learnable prototypes."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from lightly.loss import SwaVLoss
from lightly.models.modules import SwaVProjectionHead
from lightly.transforms import SwaVTransform
from torch import Tensor, nn

from ...errors import UserError
from .registry import register_method
from .base import SSLMethod, SSLOutput
from .queue import KeyQueue


@register_method("swav")
class SwAV(SSLMethod):
    """SwAV (Caron et al., NeurIPS 2020, arXiv 2006.09882) with two 224-style crops, no small crops.

    What the loss sees (lightly's ``SwaVLoss``, stateless): unit projections z1, z2, prototype
    scores s_v = C z_v, codes q_v = Sinkhorn(s_v) (no gradient; over [this batch, queue] when
    the queue is in use, then cut to this batch); loss = ½ (CE(q1, softmax(s2/τ)) +
    CE(q2, softmax(s1/τ))).

    State, and when it is read and written:

    * prototypes C (``prototypes.weight``, (K, D), no bias — lightly's ``SwaVPrototypes`` has
      one, the paper's prototypes do not): rows re-normalised to unit length at the start of
      every training batch (``on_train_batch_start``), before the forward, as in the paper;
      their gradients are dropped during the first ``freeze_prototypes_epochs`` epochs;
    * the optional queue (``queue_size`` > 0): one :class:`KeyQueue` per view of past unit
      projections z, persistent buffers (saved in checkpoints), one per DDP rank holding that
      rank's images, as in the authors' code (the Sinkhorn sums over ranks, so a queue shared
      by all ranks would be counted once per rank; ``queue_size`` is therefore per rank). From
      epoch ``queue_start_epoch`` on, every training step writes this rank's z1 / z2 after the
      loss; once the queue has been filled completely its scores under
      the *current* prototypes join the Sinkhorn input of the same view. It is read once per
      step, before the loss, so a step never meets its own projections there; eval mode
      neither writes it nor advances the fill count.

    Defaults are the paper's (Sec. 4 / appendix): projector 2048 → 128, 3,000 prototypes,
    τ = 0.1, Sinkhorn ε = 0.05 with 3 iterations, prototypes frozen for the first epoch, no
    queue at the paper's batch of 4096 (for batch 256 the paper uses a queue of 3,840 from
    epoch 15: ``method.kwargs.queue_size=3840 method.kwargs.queue_start_epoch=15``); the paper
    trains with LARS, lr 4.8 at batch 4096, weight decay 1e-6.

    Distillation contract: queries are the projections z1, z2 (before the prototypes; the
    scores are assignments to prototypes, not embeddings of the image); keys the same,
    detached. The teacher stage exports the projector.
    """

    @dataclass
    class Hparams:
        proj_hidden_dim: int = 2048
        proj_output_dim: int = 128
        num_prototypes: int = 3000
        temperature: float = 0.1
        sinkhorn_iterations: int = 3
        sinkhorn_epsilon: float = 0.05
        freeze_prototypes_epochs: int = 1
        queue_size: int = 0
        queue_start_epoch: int = 15

    @staticmethod
    def make_transform(**kwargs: Any) -> SwaVTransform:
        size, min_scale = kwargs.pop("input_size", 224), kwargs.pop("min_scale", 0.14)
        return SwaVTransform(crop_sizes=(size,), crop_counts=(2,), crop_min_scales=(min_scale,),
                             crop_max_scales=(1.0,), **kwargs)

    def build_heads(self) -> None:
        hp = self.hp
        if 0 < hp.queue_size < self.batch_size:
            raise UserError(f"method.kwargs.queue_size={hp.queue_size} is smaller than the global batch "
                            f"{self.batch_size}; the SwAV queue must hold at least one batch (or be 0)")
        self.projector = SwaVProjectionHead(self.feature_dim, hp.proj_hidden_dim, hp.proj_output_dim)
        self.prototypes = nn.Linear(hp.proj_output_dim, hp.num_prototypes, bias=False)
        self.criterion = SwaVLoss(temperature=hp.temperature, sinkhorn_iterations=hp.sinkhorn_iterations,
                                  sinkhorn_epsilon=hp.sinkhorn_epsilon, sinkhorn_gather_distributed=True)
        self.queue: Optional[KeyQueue] = None
        if hp.queue_size > 0:
            self.queue = KeyQueue(views=2, size=hp.queue_size, dim=hp.proj_output_dim)
            self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))  # images written so far

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)
        self.normalize_prototypes()

    def on_after_backward(self) -> None:
        if self.current_epoch < self.hp.freeze_prototypes_epochs:
            self.prototypes.weight.grad = None

    def queue_in_use(self) -> bool:
        """The queue joins the codes once it has been filled completely (the paper's rule)."""
        return self.queue is not None and int(self.queue_filled) >= self.queue.size

    def ssl_step(self, view1: Tensor, view2: Tensor) -> SSLOutput:
        z1 = F.normalize(self.projector(self.backbone(view1)), dim=1)
        z2 = F.normalize(self.projector(self.backbone(view2)), dim=1)
        queue_scores = None
        if self.queue_in_use():
            past = self.queue.snapshot()   # (2, K, D), read once, before this step writes
            with torch.no_grad():
                queue_scores = [self.prototypes(past[0]), self.prototypes(past[1])]
        loss = self.criterion([self.prototypes(z1), self.prototypes(z2)], [], queue_scores).reshape(())
        if self.training and self.queue is not None and self.current_epoch >= self.hp.queue_start_epoch:
            # per rank, not gathered: the Sinkhorn sums over ranks, so a shared queue would count K x world
            self.queue.enqueue((z1, z2), gather=False)
            self.queue_filled += z1.shape[0]
        return SSLOutput(loss, (z1, z2), (z1.detach(), z2.detach()))

    def embedding_heads(self) -> dict[str, nn.Module]:
        return {"projector": self.projector}
