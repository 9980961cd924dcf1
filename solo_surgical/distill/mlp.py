"""Host-neutral description of projection / prediction heads.

A teacher checkpoint must be loadable without the library that trained it (lightly,
solo-learn). Most heads are ``nn.Sequential`` stacks of Linear / BatchNorm1d / ReLU (/ GELU)
layers: such a stack is stored as a list of plain dicts plus its state dict and rebuilt as an
``nn.Sequential`` with the same layer indices (hence the same keys).

Any other layer made of torch modules (solo-learn's IterNorm, a custom normalisation, a
whole non-sequential head) is stored as its **eval-mode** computation: ``torch.export`` traces
it into a graph of ATen operators, saved as bytes (``torch.export.save``: a zip of a JSON graph
and tensors, no pickled Python objects), so rebuilding it needs neither the defining library
nor its source. Its parameters and buffers keep their names, so the head's state dict loads
into the rebuilt stack unchanged. Such a layer computes what the original computes in eval
mode, which is the only mode a frozen teacher runs in; it cannot be trained further.
"""
from __future__ import annotations

import copy
import io
from typing import Any, Optional

import torch
from torch import nn

EXPORT_BATCH = 2  # example batch for the trace; the batch dimension is exported as dynamic (>= 1)


def sequential_of(head: nn.Module) -> nn.Sequential:
    """The ``nn.Sequential`` inside a head (lightly's ``ProjectionHead.layers``, or the head itself);
    any other module becomes a one-layer stack (its state-dict keys then start with ``0.``)."""
    if isinstance(head, nn.Sequential):
        return head
    layers = getattr(head, "layers", None)
    if isinstance(layers, nn.Sequential):
        return layers
    return nn.Sequential(head)


def _first_linear_in(module: nn.Module) -> Optional[int]:
    return next((m.in_features for m in module.modules() if isinstance(m, nn.Linear)), None)


def _export_layer(layer: nn.Module, in_dim: Optional[int]) -> dict[str, Any]:
    """Spec of a layer outside the plain vocabulary: its eval-mode computation as an exported program.

    Args:
        layer: maps (B, in_dim) -> (B, out).
        in_dim: its input size (the previous layer's output), or None for a first layer.

    Raises:
        TypeError: the input size is unknown, or the layer cannot be copied, traced or reproduced.
    """
    name = f"{type(layer).__module__}.{type(layer).__qualname__}"
    in_dim = in_dim if in_dim is not None else _first_linear_in(layer)
    if in_dim is None:
        raise TypeError(f"head layer {name}: its input size is unknown (no preceding or inner nn.Linear)")
    try:  # a copy on the CPU in eval mode: the live module keeps its device and mode
        frozen = copy.deepcopy(layer).cpu().float().eval()
    except Exception as exc:  # e.g. torch.nn.utils.weight_norm layers refuse deepcopy
        raise TypeError(f"head layer {name} is not serialisable (cannot be copied: {exc})") from None
    example = torch.randn(EXPORT_BATCH, in_dim, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            expected = frozen(example)
        program = torch.export.export(frozen, (example,),
                                      dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TypeError(f"head layer {name} is not serialisable (torch.export failed: {first})") from None
    if expected.dim() != 2 or expected.shape[0] != EXPORT_BATCH:
        raise TypeError(f"head layer {name} maps (B, {in_dim}) to {tuple(expected.shape)}, not (B, D)")
    spec = {"type": "exported", "class": name, "in": int(in_dim), "out": int(expected.shape[1]),
            "program": buffer.getvalue()}
    rebuilt = _load_exported(spec)
    with torch.no_grad():
        if not torch.allclose(rebuilt(example), expected, rtol=1e-4, atol=1e-5):
            raise TypeError(f"head layer {name} is not serialisable (the exported graph computes otherwise)")
    return spec


class ExportedLayer(nn.Module):
    """A layer rebuilt from its exported eval-mode graph (see the module docstring).

    Its state-dict keys are the original layer's (the graph's parameters and buffers, without a
    prefix of their own), ``train()`` only sets the flag (the graph has one, eval-mode, behaviour;
    torch refuses ``train()`` on the graph itself, but Lightning and FrozenTeacher call it on every
    submodule), and it pickles as (program bytes, state dict), so a teacher holding it can be saved
    whole or sent to spawned processes.
    """

    def __init__(self, program: bytes) -> None:
        super().__init__()
        self.program = program
        self.graph = torch.export.load(io.BytesIO(program)).module()
        self.register_state_dict_post_hook(_drop_graph_prefix)
        self.register_load_state_dict_pre_hook(_add_graph_prefix)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, in) -> (B, out)
        return self.graph(x)

    def train(self, mode: bool = True) -> "ExportedLayer":
        self.training = mode  # not passed on to the graph
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild_exported, (self.program, self.state_dict(), self.training)


def _drop_graph_prefix(module: nn.Module, state: dict[str, Any], prefix: str, _meta: Any) -> None:
    for key in [k for k in state if k.startswith(prefix + "graph.")]:
        state[prefix + key[len(prefix) + len("graph."):]] = state.pop(key)


def _add_graph_prefix(module: nn.Module, state: dict[str, Any], prefix: str, *_args: Any) -> None:
    for key in [k for k in state if k.startswith(prefix) and not k.startswith(prefix + "graph.")]:
        state[prefix + "graph." + key[len(prefix):]] = state.pop(key)


def _rebuild_exported(program: bytes, state: dict[str, Any], training: bool) -> ExportedLayer:
    layer = ExportedLayer(program)
    layer.load_state_dict(state, strict=True)
    return layer.train(training)


def _load_exported(item: dict[str, Any]) -> nn.Module:
    return ExportedLayer(item["program"])


def describe_mlp(head: nn.Module, in_dim: Optional[int] = None) -> list[dict[str, Any]]:
    """List of layer specs, e.g. ``[{"type": "linear", "in": 512, "out": 2048, "bias": True}, ...]``.

    Layers outside Linear / BatchNorm1d / ReLU / GELU / Identity become ``{"type": "exported", ...}``
    items (see the module docstring). ``in_dim`` is the head's input size, needed only when its
    first layer is such a layer without an ``nn.Linear`` inside.
    """
    spec: list[dict[str, Any]] = []
    dim = in_dim
    for layer in sequential_of(head):
        if isinstance(layer, nn.Linear):
            spec.append({"type": "linear", "in": layer.in_features, "out": layer.out_features,
                         "bias": layer.bias is not None})
            dim = layer.out_features
        elif isinstance(layer, nn.BatchNorm1d):
            spec.append({"type": "batchnorm1d", "features": layer.num_features, "affine": layer.affine,
                         "eps": layer.eps, "momentum": layer.momentum})
            dim = layer.num_features
        elif type(layer) in (nn.ReLU, nn.GELU, nn.Identity):  # exact types: subclasses may compute otherwise
            spec.append({"type": type(layer).__name__.lower()})
        else:
            spec.append(_export_layer(layer, dim))
            dim = spec[-1]["out"]
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
        elif kind == "exported":
            layers.append(_load_exported(item))
        else:
            raise ValueError(f"unknown head layer type {kind!r}")
    return nn.Sequential(*layers)


def mlp_output_dim(spec: list[dict[str, Any]]) -> int:
    """Output size: that of the last layer that states one (a linear or an exported layer)."""
    sized = [item for item in spec if "out" in item]
    if not sized:
        raise ValueError("head has no linear layer")
    return int(sized[-1]["out"])
