"""SimCLR, MoCo v2+ and BYOL assembled from lightly's heads, losses and momentum utilities."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lightly.loss import NegativeCosineSimilarity, NTXentLoss
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead, MoCoProjectionHead, SimCLRProjectionHead
from lightly.transforms import BYOLTransform, BYOLView1Transform, BYOLView2Transform, MoCoV2Transform, SimCLRTransform
from torch import Tensor, nn

from ...methods import register_method
from .base import SSLMethod, SSLOutput


@register_method("simclr")
class SimCLR(SSLMethod):
    """SimCLR (Chen et al. 2020): NT-Xent over in-batch negatives, gathered across DDP ranks.

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

    Keys come from an EMA copy of backbone + projector; negatives from lightly's memory
    bank (persisted in checkpoints by :meth:`on_save_checkpoint`, which lightly does not do).
    """

    @dataclass
    class Hparams:
        proj_hidden_dim: int = 2048
        proj_output_dim: int = 128
        projector_batch_norm: bool = True
        temperature: float = 0.2
        queue_size: int = 2048
        momentum: float = 0.99

    @staticmethod
    def make_transform(**kwargs: Any) -> MoCoV2Transform:
        return MoCoV2Transform(**kwargs)

    def build_heads(self) -> None:
        hp = self.hp
        self.projector = MoCoProjectionHead(self.feature_dim, hp.proj_hidden_dim, hp.proj_output_dim,
                                            batch_norm=hp.projector_batch_norm)
        self.build_momentum_branch()
        self.criterion = NTXentLoss(temperature=hp.temperature, gather_distributed=True,
                                    memory_bank_size=(hp.queue_size, hp.proj_output_dim))

    def ssl_step(self, view1: Tensor, view2: Tensor) -> SSLOutput:
        q1, q2 = self.projector(self.backbone(view1)), self.projector(self.backbone(view2))
        k1, k2 = self.momentum_forward(view1), self.momentum_forward(view2)
        loss = 0.5 * (self.criterion(q1, k2) + self.criterion(q2, k1))
        return SSLOutput(loss, (q1, q2), (k1, k2))

    def embedding_heads(self) -> dict[str, nn.Module]:
        return {"projector": self.projector}

    # lightly's MemoryBankModule registers its queue as a non-persistent buffer.
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        bank = self.criterion.memory_bank
        checkpoint["moco_queue"] = {"bank": bank.bank.detach().cpu().clone(), "ptr": bank.bank_ptr.detach().cpu().clone()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("moco_queue")
        if saved is not None:
            bank = self.criterion.memory_bank
            bank.bank = saved["bank"].to(bank.bank.device)
            bank.bank_ptr = saved["ptr"].to(bank.bank_ptr.device)


@register_method("byol")
class BYOL(SSLMethod):
    """BYOL (Grill et al. 2020): predictor on the online branch, EMA target, negative cosine loss.

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
