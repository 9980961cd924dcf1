"""Reading public backbone checkpoints in their published key layouts.

Supported layouts (detected from the keys, never from the file name):

* ``torchvision``: a plain ResNet state dict (``conv1.weight``, ``layer1.0.bn1.running_mean``,
  ``fc.weight``), as in ``resnet50-0676ba61.pth``; ``fc.*`` is dropped. DINO's ResNet-50
  backbone file has the same layout without ``fc``.
* ``mocov2``: ``{"state_dict": {"module.encoder_q.conv1.weight": ...}}`` as in
  ``moco_v2_200ep_pretrain.pth.tar``; ``module.encoder_q.`` is stripped, the MLP ``fc.*`` and
  the key encoder / queue are dropped.
* ``solo-surgical-teacher``: a teacher checkpoint written by ``solo-surgical teacher``.
* ``lightning``: a Lightning checkpoint of one of our runs (``state_dict`` with ``backbone.*``).
* ``dinov2-hub``: a torch.hub DINOv2 ViT-S/B/L file (``cls_token``, ``pos_embed``, ``blocks.N.*``),
  converted to torchvision's ViT names with LayerScale folded in (:mod:`solo_surgical.tv_backbones`);
  name the architecture (``dinov2_vits14`` / ``dinov2_vitb14`` / ``dinov2_vitl14``).
* any torchvision classification model: its classifier's keys (``heads.head.*`` for a ViT, ...)
  are dropped by :func:`load_backbone_state`, exactly those.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

TEACHER_FORMAT = "solo-surgical-teacher"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message is one line naming the file and the cause."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def load_file(path: str | Path) -> Any:
    """``torch.load`` on CPU with a one-line error for a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        # Lightning checkpoints and MoCo's .pth.tar hold plain Python objects besides tensors.
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # truncated zip, pickle garbage, ...
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else 'no detail'})") from None


def _strip(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _drop_heads(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def extract_backbone_state(obj: Any, path: str | Path = "<memory>") -> tuple[dict[str, Tensor], str]:
    """Return ``(backbone_state_dict, layout_name)`` for any supported checkpoint object."""
    if isinstance(obj, Mapping) and obj.get("format") == TEACHER_FORMAT:
        return dict(obj["backbone"]["state_dict"]), TEACHER_FORMAT
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        state = obj["state_dict"]
        if any(k.startswith("module.encoder_q.") for k in state):
            return _drop_heads(_strip(state, "module.encoder_q.")), "mocov2"
        if any(k.startswith("encoder_q.") for k in state):  # MoCo saved without DataParallel
            return _drop_heads(_strip(state, "encoder_q.")), "mocov2"
        if any(k.startswith("backbone.") for k in state):
            return _strip(state, "backbone."), "lightning"
        obj = state
    if isinstance(obj, Mapping) and obj and all(isinstance(v, Tensor) for v in obj.values()):
        if any(k.startswith("module.") for k in obj):
            obj = _strip(obj, "module.")
        from .tv_backbones import DINOV2_LAYOUT, dinov2_hub_to_torchvision, is_dinov2_hub_state

        if is_dinov2_hub_state(obj):  # torch.hub DINOv2: converted to torchvision's ViT key names
            try:
                return dinov2_hub_to_torchvision(obj, str(path))[0], DINOV2_LAYOUT
            except (KeyError, ValueError) as exc:
                raise CheckpointError(str(exc) if isinstance(exc, ValueError) else
                                      f"{path}: DINOv2 layout without key {exc.args[0]}") from None
        return _drop_heads(obj), "torchvision"
    keys = list(obj)[:6] if isinstance(obj, Mapping) else type(obj).__name__
    raise CheckpointError(f"{path}: unrecognised checkpoint layout (top-level keys: {keys})")


_RESNET_BLOCKS = {(2, 2, 2, 2): "resnet18", (3, 4, 6, 3): "resnet34"}
_RESNET_BOTTLENECK = {(3, 4, 6, 3): "resnet50", (3, 4, 23, 3): "resnet101", (3, 8, 36, 3): "resnet152"}


def infer_resnet_arch(state: Mapping[str, Tensor]) -> str | None:
    """torchvision ResNet name from the block counts in a state dict, or None if not a ResNet."""
    counts = []
    for layer in range(1, 5):
        blocks = {int(m.group(1)) for k in state if (m := re.match(rf"layer{layer}\.(\d+)\.", k))}
        if not blocks:
            return None
        counts.append(max(blocks) + 1)
    bottleneck = any(".conv3." in k for k in state)
    return (_RESNET_BOTTLENECK if bottleneck else _RESNET_BLOCKS).get(tuple(counts))


def _summarise(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" ... (+{len(keys) - limit} more)" if len(keys) > limit else "")


def fill_batchnorm_counters(state: dict[str, Any], expected: Mapping[str, Any]) -> list[str]:
    """Add ``num_batches_tracked`` (0) where a BatchNorm has statistics but no counter.

    Files saved before PyTorch 0.4.1 have no counter; BatchNorm itself fills it with 0 when it
    loads such a file (``_load_from_state_dict``, version < 2). Our loader is strict on key sets,
    so the gap is closed here instead. The counter only matters when ``momentum=None``.
    """
    filled = []
    for key in expected:
        stem = key[: -len("num_batches_tracked")]
        if key.endswith(".num_batches_tracked") and key not in state and stem + "running_mean" in state:
            state[key] = torch.tensor(0, dtype=torch.long)
            filled.append(key)
    return filled


def load_backbone_state(model: nn.Module, state: Mapping[str, Tensor], source: str | Path) -> None:
    """Strictly load ``state`` into ``model``; any missing, unexpected or mis-shaped key is an error.

    The message names the file and lists the offending keys, e.g.
    ``teacher.pth: 2 missing keys (layer4.1.bn2.weight, ...); 1 unexpected key (head.weight)``.
    """
    expected = model.state_dict()
    state = dict(state)
    # a torchvision backbone's removed classifier (e.g. ViT's heads.head.*): exactly those keys go
    for key in getattr(model, "_public_head_keys", ()):
        state.pop(key, None)
    fill_batchnorm_counters(state, expected)  # torchvision's original ResNet files predate the counter
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(
        f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}"
        for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape)
    )
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({_summarise(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({_summarise(unexpected)})")
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} keys of wrong shape ({_summarise(wrong_shape)})")
    if problems:
        raise CheckpointError(f"{source}: does not fit the backbone: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)
