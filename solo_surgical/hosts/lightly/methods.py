"""SimCLR, MoCo v2+ and BYOL assembled from lightly's heads, losses and momentum utilities.

MoCo's queue and loss are our own (``queue.py``): lightly's memory bank enqueues inside the
loss call, which leaks a batch's keys into the second term of a symmetric loss.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from lightly.loss import NegativeCosineSimilarity, NTXentLoss
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead, MoCoProjectionHead, SimCLRProjectionHead
from lightly.transforms import BYOLTransform, BYOLView1Transform, BYOLView2Transform, MoCoV2Transform, SimCLRTransform
from torch import Tensor, nn

from ...errors import UserError
from .registry import register_method
from .base import SSLMethod, SSLOutput
from .queue import KeyQueue, moco_infonce


@register_method("simclr")
class SimCLR(SSLMethod):
    """SimCLR (Chen et al. 2020): NT-Xent over in-batch negatives, gathered across DDP ranks.

    What the loss sees (lightly's ``NTXentLoss`` without a memory bank): z1, z2 are
    L2-normalised; the anchor z1_i has its positive z2_i and as negatives every other
    image's z2_j and z1_j of the global batch (its own z1_i is masked out); likewise for
    z2_i. Cross-entropy over those 2B rows, averaged. Across ranks the embeddings are
    gathered with gradient (rank order, positive at ``rank * B + i``), which needs the same
    batch size on every rank (the training loader drops the last partial batch).

    Stateless: nothing carries over from one step to the next (lightly's bank has size 0,
    and its empty buffers are not saved), so no step can see another step's embeddings.

    Distillation contract: queries are the projections z1, z2; keys are the same
    projections detached (SimCLR has no key encoder).
    """

    @dataclass
    class Hparams:
        proj_hidden_dim: int = 2048
        proj_output_dim: int = 128
        temperature: float = 0.2

    @staticmethod
    def make_transform(**kwargs: Any) -> SimCLRTransform:
        return SimCLRTransform(**kwargs)

    def build_heads(self) -> None:
        hp = self.hp
        self.projector = SimCLRProjectionHead(self.feature_dim, hp.proj_hidden_dim, hp.proj_output_dim)
        self.criterion = NTXentLoss(temperature=hp.temperature, gather_distributed=True)

    def ssl_step(self, view1: Tensor, view2: Tensor) -> SSLOutput:
        z1, z2 = self.projector(self.backbone(view1)), self.projector(self.backbone(view2))
        return SSLOutput(self.criterion(z1, z2), (z1, z2), (z1.detach(), z2.detach()))

    def embedding_heads(self) -> dict[str, nn.Module]:
        return {"projector": self.projector}


@register_method("mocov2plus", aliases=("moco",))
class MoCoV2Plus(SSLMethod):
    """MoCo v2+ (solo-learn's name): MoCo v2 with a BatchNorm projector and a symmetric loss.

    Keys k1, k2 come from an EMA copy of backbone + projector (no gradient); the EMA is
    updated in ``on_train_batch_end``, after the optimiser step (see ``base.py``).

    Negatives come from one queue per view (:class:`KeyQueue`, shape (2, K, D)):

    * q1 is contrasted with its positive k2 and the queue of past **view-2** keys,
      q2 with k1 and the queue of past **view-1** keys;
    * the queue is read once per step, before either term, and written after both,
      with k1 into the view-1 queue and k2 into the view-2 queue at the same slots
      (gathered across DDP ranks first): no term ever sees this step's keys as negatives,
      and K slots hold K images (the pointer advances by the global batch B, not 2B);
    * it is written only in training mode, so a loss computed in eval mode leaves it alone;
    * it lives in persistent buffers (``queue.keys``, ``queue.pointer``) and is saved in
      and restored from Lightning checkpoints with the ``state_dict``.

    A global batch larger than ``queue_size`` is refused when the model is built (and
    again at enqueue time): it would overwrite its own keys. One that does not divide it
    wraps around.

    Not done: the shuffled BatchNorm of MoCo v1/v2's key encoder; here the key encoder's
    BatchNorm sees each rank's batch as a whole, in train mode.

    Distillation contract: queries are q1, q2; keys k1, k2 (raw, not normalised).
    """

    @dataclass
    class Hparams:
        proj_hidden_dim: int = 2048
        proj_output_dim: int = 128
        projector_batch_norm: bool = True
        temperature: float = 0.2
        queue_size: int = 2048     # K keys per view = negatives per loss term
        momentum: float = 0.99

    @staticmethod
    def make_transform(**kwargs: Any) -> MoCoV2Transform:
        return MoCoV2Transform(**kwargs)

    def build_heads(self) -> None:
        hp = self.hp
        if hp.queue_size < self.batch_size:
            raise UserError(f"method.kwargs.queue_size={hp.queue_size} is smaller than the global batch "
                            f"{self.batch_size}; the MoCo queue must hold at least one batch")
        self.projector = MoCoProjectionHead(self.feature_dim, hp.proj_hidden_dim, hp.proj_output_dim,
                                            batch_norm=hp.projector_batch_norm)
        self.build_momentum_branch()
        self.queue = KeyQueue(views=2, size=hp.queue_size, dim=hp.proj_output_dim)

    def ssl_step(self, view1: Tensor, view2: Tensor) -> SSLOutput:
        q1, q2 = self.projector(self.backbone(view1)), self.projector(self.backbone(view2))
        k1, k2 = self.momentum_forward(view1), self.momentum_forward(view2)
        negatives = self.queue.snapshot()  # (2, K, D): [view-1 keys, view-2 keys], read once
        tau = self.hp.temperature
        # a query's negatives are past keys of the view its positive comes from
        loss = 0.5 * (moco_infonce(q1, k2, negatives[1], tau) + moco_infonce(q2, k1, negatives[0], tau))
        if self.training:
            self.queue.enqueue((k1, k2))  # after both terms: this step's keys are never its own negatives
        return SSLOutput(loss, (q1, q2), (k1, k2))

    def embedding_heads(self) -> dict[str, nn.Module]:
        return {"projector": self.projector}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        # Checkpoints from before the per-view queue kept lightly's single mixed-view bank
        # under "moco_queue" and no queue buffers; it cannot be split by view, so such a
        # run resumes with a fresh queue instead of failing the strict state_dict load.
        state = checkpoint.get("state_dict")
        if checkpoint.pop("moco_queue", None) is not None and state is not None and "queue.keys" not in state:
            warnings.warn("checkpoint from before the per-view MoCo queue: its mixed-view queue is dropped, "
                          "training resumes with a fresh queue", stacklevel=2)
            state["queue.keys"] = self.queue.keys.detach().clone()
            state["queue.pointer"] = torch.zeros_like(self.queue.pointer)


@register_method("byol")
class BYOL(SSLMethod):
    """BYOL (Grill et al. 2020): predictor on the online branch, EMA target, negative cosine loss.

    What the loss sees: 0.5 * (-cos(p1, z2) - cos(p2, z1)), each a mean over the batch,
    with the online predictions p and the target projections z of the other view. No
    negatives, so no queue and no cross-image term; z has no gradient (computed under
    ``no_grad``).

    State: only the EMA target (``backbone_momentum``, ``projector_momentum``; saved in
    checkpoints as ordinary submodules). Its parameters are updated in
    ``on_train_batch_end`` (``base.py``), i.e. after this step's optimiser step, with a
    cosine-scheduled momentum; lightly's ``update_momentum`` moves parameters only, the
    target's BatchNorm statistics come from its own train-mode forwards.

    Distillation contract: queries are the predictions p1, p2; keys the target projections.
    """

    @dataclass
    class Hparams:
        proj_hidden_dim: int = 4096
        proj_output_dim: int = 256
        pred_hidden_dim: int = 4096
        momentum: float = 0.99

    @staticmethod
    def make_transform(**kwargs: Any) -> BYOLTransform:
        # BYOL's two views differ (blur and solarisation probabilities); extra kwargs go to both
        return BYOLTransform(view_1_transform=BYOLView1Transform(**kwargs),
                             view_2_transform=BYOLView2Transform(**kwargs))

    def build_heads(self) -> None:
        hp = self.hp
        self.projector = BYOLProjectionHead(self.feature_dim, hp.proj_hidden_dim, hp.proj_output_dim)
        self.predictor = BYOLPredictionHead(hp.proj_output_dim, hp.pred_hidden_dim, hp.proj_output_dim)
        self.build_momentum_branch()
        self.criterion = NegativeCosineSimilarity()

    def ssl_step(self, view1: Tensor, view2: Tensor) -> SSLOutput:
        p1 = self.predictor(self.projector(self.backbone(view1)))
        p2 = self.predictor(self.projector(self.backbone(view2)))
        z1, z2 = self.momentum_forward(view1), self.momentum_forward(view2)
        loss = 0.5 * (self.criterion(p1, z2) + self.criterion(p2, z1))
        return SSLOutput(loss, (p1, p2), (z1, z2))

    def embedding_heads(self) -> dict[str, nn.Module]:
        return {"projector": self.projector, "predictor": self.predictor}
