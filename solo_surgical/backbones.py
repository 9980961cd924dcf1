"""Backbone registry: a name in, a feature extractor (fc removed) and its feature size out."""
from __future__ import annotations

from typing import Callable

import torch
import torchvision
from torch import nn

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
    return sorted(_BACKBONES)


def build_backbone(name: str) -> tuple[nn.Module, int]:
    """Return ``(module, feature_dim)``; ``module(x)`` maps (B, 3, H, W) to (B, feature_dim).

    torchvision ResNets keep torchvision's parameter names (``conv1.weight``,
    ``layer1.0.bn1.running_mean``, ...) with ``fc`` replaced by ``Identity``, so public
    torchvision / MoCo / DINO state dicts load into them after key conversion.
    """
    if name not in _BACKBONES:
        raise KeyError(f"unknown backbone {name!r}; known: {', '.join(backbone_names())}")
    return _BACKBONES[name]()


def _torchvision_resnet(arch: str) -> tuple[nn.Module, int]:
    model = getattr(torchvision.models, arch)(weights=None)
    dim = model.fc.in_features
    model.fc = nn.Identity()
    return model, dim


for _arch in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"):
    register_backbone(_arch)(lambda _arch=_arch: _torchvision_resnet(_arch))


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
