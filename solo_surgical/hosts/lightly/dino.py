"""DINO with two global crops: student / EMA teacher, centred and sharpened teacher targets."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from lightly.loss import DINOLoss
from lightly.models.modules import DINOProjectionHead
from lightly.transforms import DINOTransform
from torch import Tensor, nn

from ...distill import freeze
from .registry import register_method
from .base import SSLMethod, SSLOutput


def _dino_head(feature_dim: int, hp: Any) -> DINOProjectionHead:
    with warnings.catch_warnings():  # lightly's head uses torch's older weight_norm (deprecated, equivalent)
        warnings.simplefilter("ignore", FutureWarning)
        return DINOProjectionHead(feature_dim, hp.proj_hidden_dim, hp.proj_output_dim, hp.num_prototypes,
                                  batch_norm=hp.batch_norm, freeze_last_layer=hp.freeze_last_layer,
                                  norm_last_layer=hp.norm_last_layer)


def head_outputs(head: DINOProjectionHead, features: Tensor) -> tuple[Tensor, Tensor]:
    """(bottleneck, logits): the MLP's (B, D) output and the (B, K) prototype scores of its unit vector.

    lightly's ``DINOProjectionHead.forward`` returns only the logits; the distillation needs
    the bottleneck too, so the two halves of the head are run here in the same order.
    """
    bottleneck = head.layers(features)
    return bottleneck, head.last_layer(F.normalize(bottleneck, dim=-1))


@register_method("dino")
class DINO(SSLMethod):
    """DINO (Caron et al., ICCV 2021, arXiv 2104.14294), two global crops, no local crops.

    What the loss sees (lightly's ``DINOLoss``, one call per step): student logits s1, s2 and
    EMA-teacher logits t1, t2 (no gradient); loss = ½ Σ_{a≠b} mean_i H(softmax((t_a - c)/τ_t),
    softmax(s_b/τ_s)), the two cross-view terms. τ_t warms up linearly from
    ``warmup_teacher_temp`` to ``teacher_temp`` over ``warmup_teacher_temp_epochs`` epochs.

    State, and when it is read and written:

    * the centre c (``criterion.center``, (1, 1, K), a persistent buffer: saved in
      checkpoints): the loss reads it, then, inside the same call, moves it to
      m·c + (1-m)·mean(t1, t2) (mean over both views and, under DDP, every rank). One call per
      step, so a step's targets are centred with the previous steps' outputs only. In eval
      mode the centre is put back after the call: evaluating never moves it;
    * the EMA teacher (``backbone_momentum``, ``projector_momentum``): updated after the
      optimiser step (``base.py``) with a cosine schedule from ``momentum`` to 1. It is built
      as a second head loaded with the student's weights, not deep-copied: the weight-normed
      last layer holds a non-leaf tensor that ``copy.deepcopy`` refuses;
    * the last layer's gradients are dropped during the first ``freeze_last_layer`` epochs
      (``on_after_backward``), as in the paper.

    Defaults are the paper's (Sec. 3 / appendix): head 2048-2048-256 (bottleneck) → 65,536
    weight-normalised prototypes with fixed norm, no BatchNorm in the head, τ_s = 0.1, τ_t
    0.04 → 0.07 over 30 epochs, centre momentum 0.9, teacher momentum 0.996 → 1, last layer
    frozen for 1 epoch; the paper trains with AdamW, lr 5e-4 x batch / 256, weight decay
    0.04 → 0.4, batch 1024 (``optimizer.name=adamw optimizer.lr=0.0005 optimizer.weight_decay=0.04``).

    Distillation contract: queries are the student's bottleneck embeddings b1, b2 (the
    (B, ``proj_output_dim``) vectors whose unit version the prototypes score); keys the EMA
    teacher's bottlenecks of the same views. The K-way prototype scores are a distribution
    over prototypes, not an embedding of the image; the bottleneck is the metric space.
    The teacher stage exports the head's MLP up to the bottleneck as the projector.
    """

    @dataclass
    class Hparams:
        proj_hidden_dim: int = 2048
        proj_output_dim: int = 256        # bottleneck: the embedding the distillation uses
        num_prototypes: int = 65536       # K, the head's output dimension
        batch_norm: bool = False
        norm_last_layer: bool = True
        freeze_last_layer: int = 1        # epochs
        student_temperature: float = 0.1
        warmup_teacher_temp: float = 0.04
        teacher_temp: float = 0.07
        warmup_teacher_temp_epochs: int = 30
        center_momentum: float = 0.9
        momentum: float = 0.996

    @staticmethod
    def make_transform(**kwargs: Any) -> DINOTransform:
        # two global crops only; our config names its crop size / scale like the other transforms
        size, min_scale = kwargs.pop("input_size", 224), kwargs.pop("min_scale", 0.4)
        blur = kwargs.pop("gaussian_blur", None)
        if isinstance(blur, (int, float)):
            blur = (float(blur),) * 3   # one probability for both global views (DINO's own: 1.0, 0.1)
        if blur is not None:
            kwargs["gaussian_blur"] = tuple(blur)
        return DINOTransform(global_crop_size=size, global_crop_scale=(min_scale, 1.0), n_local_views=0, **kwargs)

    def build_heads(self) -> None:
        hp = self.hp
        self.projector = _dino_head(self.feature_dim, hp)
        self.backbone_momentum = self.momentum_copy(self.backbone)
        self.projector_momentum = freeze(_dino_head(self.feature_dim, hp), bn="recompute")  # moves by EMA only
        self.projector_momentum.load_state_dict(self.projector.state_dict())
        self.criterion = DINOLoss(output_dim=hp.num_prototypes, warmup_teacher_temp=hp.warmup_teacher_temp,
                                  teacher_temp=hp.teacher_temp,
                                  warmup_teacher_temp_epochs=max(1, hp.warmup_teacher_temp_epochs),
                                  student_temp=hp.student_temperature, center_momentum=hp.center_momentum)

    def teacher_temperature(self) -> float:
        """τ_t of the current epoch: linear warm-up, then constant."""
        hp, epoch = self.hp, self.current_epoch
        if epoch >= hp.warmup_teacher_temp_epochs:
            return hp.teacher_temp
        return hp.warmup_teacher_temp + (hp.teacher_temp - hp.warmup_teacher_temp) * epoch / hp.warmup_teacher_temp_epochs

    def ssl_step(self, view1: Tensor, view2: Tensor) -> SSLOutput:
        b1, s1 = head_outputs(self.projector, self.backbone(view1))
        b2, s2 = head_outputs(self.projector, self.backbone(view2))
        with torch.no_grad():
            bt1, t1 = head_outputs(self.projector_momentum, self.backbone_momentum(view1))
            bt2, t2 = head_outputs(self.projector_momentum, self.backbone_momentum(view2))
        center = None if self.training else self.criterion.center.detach().clone()
        loss = self.criterion([t1, t2], [s1, s2], teacher_temp=self.teacher_temperature())
        if center is not None:
            self.criterion.center.copy_(center)  # DINOLoss moves the centre on every call; eval must not
        return SSLOutput(loss, (b1, b2), (bt1, bt2))

    def on_after_backward(self) -> None:
        self.projector.cancel_last_layer_gradients(self.current_epoch)

    def embedding_heads(self) -> dict[str, nn.Module]:
        return {"projector": self.projector.layers}
