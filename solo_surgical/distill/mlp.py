"""Host-neutral description of projection / prediction heads.

A teacher checkpoint must be loadable without the library that trained it (lightly,
solo-learn). Heads of both are ``nn.Sequential`` stacks of Linear / BatchNorm1d / ReLU
(/ GELU) layers, so we store such a stack as a list of plain dicts plus its state dict and
rebuild an ``nn.Sequential`` with the same layer indices (hence the same keys).
"""
from __future__ import annotations

from typing import Any

from torch import nn


def sequential_of(head: nn.Module) -> nn.Sequential:
    """The ``nn.Sequential`` inside a head (lightly's ``ProjectionHead.layers``, or the head itself)."""
    if isinstance(head, nn.Sequential):
        return head
    layers = getattr(head, "layers", None)
    if isinstance(layers, nn.Sequential):
        return layers
    raise TypeError(f"cannot describe head of type {type(head).__name__}: expected an nn.Sequential")


def describe_mlp(head: nn.Module) -> list[dict[str, Any]]:
    """List of layer specs, e.g. ``[{"type": "linear", "in": 512, "out": 2048, "bias": True}, ...]``."""
    spec: list[dict[str, Any]] = []
    for layer in sequential_of(head):
        if isinstance(layer, nn.Linear):
            spec.append({"type": "linear", "in": layer.in_features, "out": layer.out_features,
                         "bias": layer.bias is not None})
        elif isinstance(layer, nn.BatchNorm1d):
            spec.append({"type": "batchnorm1d", "features": layer.num_features, "affine": layer.affine,
                         "eps": layer.eps, "momentum": layer.momentum})
        elif isinstance(layer, (nn.ReLU, nn.GELU, nn.Identity)):
            spec.append({"type": type(layer).__name__.lower()})
        else:
            raise TypeError(f"head layer {type(layer).__name__} is not serialisable")
    return spec


def build_mlp(spec: list[dict[str, Any]]) -> nn.Sequential:
    """Inverse of :func:`describe_mlp`."""
    layers: list[nn.Module] = []
    for item in spec:
        kind = item["type"]
        if kind == "linear":
            layers.append(nn.Linear(item["in"], item["out"], bias=item["bias"]))
        elif kind == "batchnorm1d":
            layers.append(nn.BatchNorm1d(item["features"], eps=item["eps"], momentum=item["momentum"],
                                         affine=item["affine"]))
        elif kind == "relu":
            layers.append(nn.ReLU())
        elif kind == "gelu":
            layers.append(nn.GELU())
        elif kind == "identity":
            layers.append(nn.Identity())
        else:
            raise ValueError(f"unknown head layer type {kind!r}")
    return nn.Sequential(*layers)


def mlp_output_dim(spec: list[dict[str, Any]]) -> int:
    linears = [item for item in spec if item["type"] == "linear"]
    if not linears:
        raise ValueError("head has no linear layer")
    return int(linears[-1]["out"])
