"""NNCLR: NT-Xent where the positive is the nearest neighbour of a view in a support set.

The support set is our :class:`KeyQueue` (one view), not lightly's ``NNMemoryBankModule``:
that bank keeps its content in non-persistent buffers (a resumed run starts from random
vectors again), is not gathered across DDP ranks by default (each rank then holds another
support set), drops the part of a batch that crosses the end of the ring instead of
wrapping, and writes whenever it is called with ``update=True``, in eval mode too. Here the
support set is read once per step, before either loss term, and written after both, in
training mode only; it is saved in checkpoints (``support.keys``, ``support.pointer``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from lightly.loss import NTXentLoss
from lightly.models.modules import NNCLRPredictionHead, NNCLRProjectionHead
from lightly.transforms import BYOLTransform
from torch import Tensor, nn

from ...errors import UserError
from .registry import register_method
from .base import SSLMethod, SSLOutput
from .queue import KeyQueue
from .siamese import byol_views


@torch.no_grad()
def nearest_neighbours(embeddings: Tensor, support: Tensor) -> Tensor:
    """Row i: the support vector with the largest cosine similarity to ``embeddings[i]``.

    Args:
        embeddings: (B, D) projections (any norm).
        support: (K, D) L2-normalised support set.

    Returns:
        (B, D) the selected support vectors (unit norm, no gradient).
    """
    index = (F.normalize(embeddings, dim=-1) @ support.T).argmax(dim=1)
    return support[index]


@register_method("nnclr")
class NNCLR(SSLMethod):
    """NNCLR (Dwibedi et al., ICCV 2021, arXiv 2104.14548): nearest-neighbour positives.

    What the loss sees: with NN(z) the nearest neighbour of z in the support set Q (read before
    this step writes anything), loss = 0.5 * (NT-Xent(NN(z1), p2) + NT-Xent(NN(z2), p1)),
    lightly's ``NTXentLoss`` (in-batch negatives, gathered across ranks). NN(z) carries no
    gradient; the gradient reaches the backbone through the predictions p.

    State: the support set Q (K slots, unit vectors; starts as random unit vectors like
    lightly's bank, so the first K / B steps draw some neighbours from noise). After both
    terms the view-1 projections z1 of the global batch are written into the oldest slots
    (each image once, so K slots hold K images), in training mode only. A global batch larger
    than K is refused when the model is built.

    Defaults are the paper's (Sec. 4): projector 2048-2048-256 (BatchNorm on every layer),
    predictor 4096-256, temperature 0.1, support set 98,304; the paper trains with LARS,
    batch 4096, base lr 0.3 x batch / 256, weight decay 1e-6, BYOL's augmentations. At these
    sizes the support set is 98,304 x 256 floats, 100 MB in memory and in every checkpoint.

    Distillation contract: queries are the predictions p1, p2; keys the projections z1, z2 of
    the same images, detached (their nearest neighbours are other images, so they cannot
    stand for the image in the relation set).
    """

    @dataclass
    class Hparams:
        proj_hidden_dim: int = 2048
        proj_output_dim: int = 256
        pred_hidden_dim: int = 4096
        temperature: float = 0.1
        queue_size: int = 98304   # support set size K

    @staticmethod
    def make_transform(**kwargs: Any) -> BYOLTransform:
        return byol_views(**kwargs)

    def build_heads(self) -> None:
        hp = self.hp
        if hp.queue_size < self.batch_size:
            raise UserError(f"method.kwargs.queue_size={hp.queue_size} is smaller than the global batch "
                            f"{self.batch_size}; the NNCLR support set must hold at least one batch")
        self.projector = NNCLRProjectionHead(self.feature_dim, hp.proj_hidden_dim, hp.proj_output_dim)
        self.predictor = NNCLRPredictionHead(hp.proj_output_dim, hp.pred_hidden_dim, hp.proj_output_dim)
        self.support = KeyQueue(views=1, size=hp.queue_size, dim=hp.proj_output_dim)
        self.criterion = NTXentLoss(temperature=hp.temperature, gather_distributed=True)

    def ssl_step(self, view1: Tensor, view2: Tensor) -> SSLOutput:
        z1, z2 = self.projector(self.backbone(view1)), self.projector(self.backbone(view2))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        support = self.support.snapshot()[0]                      # (K, D), read once
        nn1, nn2 = nearest_neighbours(z1, support), nearest_neighbours(z2, support)
        loss = 0.5 * (self.criterion(nn1, p2) + self.criterion(nn2, p1))
        if self.training:
            self.support.enqueue((z1,))  # after both terms: no image is its own neighbour this step
        return SSLOutput(loss, (p1, p2), (z1.detach(), z2.detach()))

    def embedding_heads(self) -> dict[str, nn.Module]:
        return {"projector": self.projector, "predictor": self.predictor}
