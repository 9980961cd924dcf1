"""SimSiam, Barlow Twins and VICReg from lightly's heads and losses: two views, no key encoder, no state.

None of the three carries anything from one step to the next: no queue, no memory bank, no
EMA copy, no running centre (their losses are pure functions of this step's embeddings), so
no step can see another step's images and eval-mode calls change nothing. What each loss
sees is stated per class; ``tests/test_lightly_methods_state.py`` checks each value against
an independent float64 computation.

Distillation contract (all three): the queries are the online embeddings that carry the
gradient of the SSL loss (SimSiam's predictions p, Barlow Twins' / VICReg's projections z);
the keys are the projections z of the same images, detached: none of these methods has a
key encoder, and z is the target side of the method (SimSiam's stop-gradient branch).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lightly.loss import BarlowTwinsLoss, NegativeCosineSimilarity, VICRegLoss
from lightly.models.modules import BarlowTwinsProjectionHead, SimSiamPredictionHead, SimSiamProjectionHead
from lightly.models.modules.heads import VICRegProjectionHead  # not re-exported by lightly.models.modules
from lightly.transforms import BYOLTransform, BYOLView1Transform, BYOLView2Transform, SimSiamTransform, VICRegTransform
from torch import Tensor, nn

from .registry import register_method
from .base import SSLMethod, SSLOutput


def byol_views(**kwargs: Any) -> BYOLTransform:
    """BYOL's two asymmetric views (Barlow Twins and NNCLR train with BYOL's augmentations)."""
    return BYOLTransform(view_1_transform=BYOLView1Transform(**kwargs), view_2_transform=BYOLView2Transform(**kwargs))


@register_method("simsiam")
class SimSiam(SSLMethod):
    """SimSiam (Chen & He, CVPR 2021, arXiv 2011.10566): predictor + stop-gradient, no negatives.

    What the loss sees: 0.5 * (-cos(p1, sg(z2)) - cos(p2, sg(z1))), each a batch mean; z is
    the 3-layer projector's output (BatchNorm on every layer, the last without affine), p the
    2-layer predictor's. Stateless.

    Defaults are the paper's (Sec. 4 / appendix A): projector 2048-2048-2048, predictor
    bottleneck 512; the paper trains with SGD, lr 0.05 x batch / 256, weight decay 1e-4,
    momentum 0.9 (``optimizer.lr=0.05``), batch 512.

    Distillation contract: queries p1, p2; keys z1, z2 detached.
    """

    @dataclass
    class Hparams:
        proj_hidden_dim: int = 2048
        proj_output_dim: int = 2048
        pred_hidden_dim: int = 512

    @staticmethod
    def make_transform(**kwargs: Any) -> SimSiamTransform:
        return SimSiamTransform(**kwargs)

    def build_heads(self) -> None:
        hp = self.hp
        self.projector = SimSiamProjectionHead(self.feature_dim, hp.proj_hidden_dim, hp.proj_output_dim)
        self.predictor = SimSiamPredictionHead(hp.proj_output_dim, hp.pred_hidden_dim, hp.proj_output_dim)
        self.criterion = NegativeCosineSimilarity()

    def ssl_step(self, view1: Tensor, view2: Tensor) -> SSLOutput:
        z1, z2 = self.projector(self.backbone(view1)), self.projector(self.backbone(view2))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        loss = 0.5 * (self.criterion(p1, z2.detach()) + self.criterion(p2, z1.detach()))
        return SSLOutput(loss, (p1, p2), (z1.detach(), z2.detach()))

    def embedding_heads(self) -> dict[str, nn.Module]:
        return {"projector": self.projector, "predictor": self.predictor}


@register_method("barlow_twins")
class BarlowTwins(SSLMethod):
    """Barlow Twins (Zbontar et al., ICML 2021, arXiv 2103.03230): redundancy reduction.

    What the loss sees (lightly's ``BarlowTwinsLoss``): z1, z2 standardised per dimension over
    this rank's batch; C = z1ᵀ z2 / B, averaged over DDP ranks (``gather_distributed``);
    loss = Σ_i (1 - C_ii)² + λ Σ_{i≠j} C_ij². Stateless. (The authors standardise with a
    SyncBatchNorm, i.e. over the global batch; here each rank standardises its own batch.)

    Defaults are the paper's (Sec. 3 / 4): projector 8192-8192-8192, λ = 5e-3; the paper trains
    with LARS, batch 2048, lr 0.2 (weights), weight decay 1.5e-6, 10 warm-up epochs.

    Distillation contract: queries z1, z2 (the projections the loss acts on); keys the same, detached.
    """

    @dataclass
    class Hparams:
        proj_hidden_dim: int = 8192
        proj_output_dim: int = 8192
        lambda_param: float = 5e-3

    @staticmethod
    def make_transform(**kwargs: Any) -> BYOLTransform:
        return byol_views(**kwargs)

    def build_heads(self) -> None:
        hp = self.hp
        self.projector = BarlowTwinsProjectionHead(self.feature_dim, hp.proj_hidden_dim, hp.proj_output_dim)
        self.criterion = BarlowTwinsLoss(lambda_param=hp.lambda_param, gather_distributed=True)

    def ssl_step(self, view1: Tensor, view2: Tensor) -> SSLOutput:
        z1, z2 = self.projector(self.backbone(view1)), self.projector(self.backbone(view2))
        return SSLOutput(self.criterion(z1, z2), (z1, z2), (z1.detach(), z2.detach()))

    def embedding_heads(self) -> dict[str, nn.Module]:
        return {"projector": self.projector}


@register_method("vicreg")
class VICReg(SSLMethod):
    """VICReg (Bardes, Ponce & LeCun, ICLR 2022, arXiv 2105.04906): variance-invariance-covariance.

    What the loss sees (lightly's ``VICRegLoss``): λ · MSE(z1, z2) on this rank's batch, plus
    μ · the mean hinge max(0, 1 - sqrt(Var + ε)) per dimension and ν · the sum of squared
    off-diagonal covariances / D, both over the global batch (gathered with gradient across
    ranks) and averaged / summed over the two views. Stateless.

    Defaults are the paper's (Sec. 4.1): projector 8192-8192-8192, λ = μ = 25, ν = 1, ε = 1e-4;
    the paper trains with LARS, batch 2048, base lr 0.2, weight decay 1e-6.

    Distillation contract: queries z1, z2; keys the same, detached.
    """

    @dataclass
    class Hparams:
        proj_hidden_dim: int = 8192
        proj_output_dim: int = 8192
        sim_loss_weight: float = 25.0   # λ, invariance
        var_loss_weight: float = 25.0   # μ, variance
        cov_loss_weight: float = 1.0    # ν, covariance
        eps: float = 1e-4

    @staticmethod
    def make_transform(**kwargs: Any) -> VICRegTransform:
        return VICRegTransform(**kwargs)

    def build_heads(self) -> None:
        hp = self.hp
        self.projector = VICRegProjectionHead(self.feature_dim, hp.proj_hidden_dim, hp.proj_output_dim)
        self.criterion = VICRegLoss(lambda_param=hp.sim_loss_weight, mu_param=hp.var_loss_weight,
                                    nu_param=hp.cov_loss_weight, eps=hp.eps, gather_distributed=True)

    def ssl_step(self, view1: Tensor, view2: Tensor) -> SSLOutput:
        z1, z2 = self.projector(self.backbone(view1)), self.projector(self.backbone(view2))
        return SSLOutput(self.criterion(z1, z2), (z1, z2), (z1.detach(), z2.detach()))

    def embedding_heads(self) -> dict[str, nn.Module]:
        return {"projector": self.projector}
