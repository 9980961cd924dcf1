"""Backbone registry: a name in, a feature extractor (fc removed) and its feature size out."""
from __future__ import annotations

from typing import Callable, Mapping, Optional

import torch
from torch import nn

from .tv_backbones import (DINOV2_VITS, UNSUPPORTED, VIT_SPEC_PREFIX, infer_vit_arch, parse_vit_spec, public_head_keys,
                           torchvision_backbone, torchvision_backbone_names, torchvision_vit)

# ImageNet statistics: the normalisation torchvision, MoCo v2 and DINO checkpoints expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_BACKBONES: dict[str, Callable[[], tuple[nn.Module, int]]] = {}


def register_backbone(name: str):
    def wrap(factory: Callable[[], tuple[nn.Module, int]]):
        if name in _BACKBONES:
            raise ValueError(f"backbone {name!r} is already registered")
        _BACKBONES[name] = factory
        return factory

    return wrap


def backbone_names() -> list[str]:
    """Registered backbones and every torchvision classification model that can serve as one."""
    return sorted(set(_BACKBONES) | set(torchvision_backbone_names()))


def infer_arch(state: Mapping[str, torch.Tensor]) -> Optional[str]:
    """Backbone name read from a torchvision-layout state dict's keys and shapes (ResNets, ViTs), or None."""
    from .checkpoints import infer_resnet_arch

    return infer_resnet_arch(state) or infer_vit_arch(state)


def build_backbone(name: str) -> tuple[nn.Module, int]:
    """Return ``(module, feature_dim)``; ``module(x)`` maps (B, 3, H, W) to (B, feature_dim).

    ``name`` is a registered backbone (ResNets, ``tiny``, ``vit_tiny``), any torchvision
    classification model (``vit_b_16``, ``convnext_tiny``, ``efficientnet_b0``, ``swin_t``, ...),
    or a torchvision Vision Transformer spec ``vit:image=S,patch=P,layers=L,heads=H,hidden=D,mlp=M``.
    Every torchvision model keeps torchvision's parameter names with its classifier (the last
    ``Linear``) replaced by ``Identity``, so public torchvision state dicts load into it once
    that classifier's weight and bias are dropped (see :func:`public_head_keys`).
    """
    if name in _BACKBONES:
        return _BACKBONES[name]()
    if name in torchvision_backbone_names() or name in UNSUPPORTED:  # the latter raise, giving the reason
        return torchvision_backbone(name)
    if name.startswith(VIT_SPEC_PREFIX):
        return torchvision_vit(**parse_vit_spec(name))
    raise KeyError(f"unknown backbone {name!r}; known: {', '.join(backbone_names())}, "
                   f"or {VIT_SPEC_PREFIX}image=S,patch=P,layers=L,heads=H,hidden=D,mlp=M")


for _arch in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"):
    register_backbone(_arch)(lambda _arch=_arch: torchvision_backbone(_arch))


class TinyConvNet(nn.Module):
    """A 4-layer conv net (about 25k parameters) for tests and smoke runs, with BatchNorm."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = [3, width, width * 2, width * 2, width * 4]
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = channels[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x)).flatten(1)


@register_backbone("tiny")
def _tiny() -> tuple[nn.Module, int]:
    net = TinyConvNet()
    return net, net.out_dim


for _name, _shape in DINOV2_VITS.items():  # torch.hub DINOv2 files convert into these (checkpoints.py)
    register_backbone(_name)(lambda _shape=_shape: torchvision_vit(*_shape))


@register_backbone("vit_tiny")
def _vit_tiny() -> tuple[nn.Module, int]:
    """A torchvision VisionTransformer of about 30k parameters (32 px, patches of 8) for tests and smoke runs."""
    return torchvision_vit(image=32, patch=8, layers=2, heads=2, hidden=32, mlp=64)


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "TinyConvNet", "backbone_names", "build_backbone", "infer_arch",
           "public_head_keys", "register_backbone"]
