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

:func:`load_backbone` is the one reader every stage uses (the teacher stage and ``backbone.init``
of both hosts, ``linear`` / ``extract``, the zoo's conversions, the distillation teacher): file ->
:func:`read_backbone_keys` (layout, prefix, dropped keys) -> :func:`backbone_from_keys` (architecture,
strict load) -> :class:`LoadedBackbone` with its provenance (path, SHA-256, layout).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

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


def load_file(path: str | Path, trusted: bool = True) -> Any:
    """``torch.load`` on CPU with a one-line error for a missing or unreadable file.

    ``trusted=False`` is for files fetched from the internet: ``weights_only=True`` admits tensors,
    containers and numbers only, which is all the published files (torchvision, MoCo v2 with its
    optimiser state, DINO) hold; anything else is refused rather than executed. Our own Lightning
    checkpoints hold plain Python objects besides tensors and are read ``trusted`` (the default).
    """
    import pickle

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trusted)
    except pickle.UnpicklingError as exc:
        if not trusted and ("weights_only" in str(exc) or "Unsupported global" in str(exc)):
            raise CheckpointError(f"{path}: holds Python objects besides tensors; refusing to unpickle a "
                                  f"downloaded file (convert a copy you trust with `zoo convert FILE`)") from None
        raise CheckpointError(f"{path}: not a readable torch checkpoint (UnpicklingError: "
                              f"{_first_line(exc)})") from None
    except Exception as exc:  # truncated zip, pickle garbage, ...
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: "
                              f"{_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else "no detail"


def _strip(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _drop_heads(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


@dataclass(frozen=True)
class BackboneKeys:
    """What a checkpoint object holds for a backbone, read from its keys before any module is built.

    state: the backbone's tensors under torchvision key names (heads, key encoder and queue removed).
    layout: the detected layout (see the module docstring).
    prefix: what was stripped from the container's keys (``module.encoder_q.``, ``backbone.``, ``""``).
    dropped: the container's keys not in ``state``, with their prefix (heads, momentum encoder, queue).
    recorded_arch: the architecture the file itself names (a teacher's ``backbone.arch``, a
        Lightning run's ``hyper_parameters.backbone``), or None.
    """

    state: dict[str, Tensor]
    layout: str
    prefix: str
    dropped: tuple[str, ...]
    recorded_arch: Optional[str]


def read_backbone_keys(obj: Any, path: str | Path = "<memory>") -> BackboneKeys:
    """The backbone part of any supported checkpoint object; :class:`CheckpointError` naming ``path`` if none."""
    from .tv_backbones import DINOV2_LAYOUT

    state, layout, container, prefix = _locate(obj, path)
    if layout == DINOV2_LAYOUT:
        # renamed, not selected: the conversion uses every source key but mask_token, or refuses the file
        dropped = sorted(k for k in container if k == prefix + "mask_token")
    else:
        dropped = sorted(set(container) - {prefix + k for k in state})
    return BackboneKeys(state, layout, prefix, tuple(dropped), _recorded_arch(obj))


def extract_backbone_state(obj: Any, path: str | Path = "<memory>") -> tuple[dict[str, Tensor], str]:
    """Return ``(backbone_state_dict, layout_name)`` for any supported checkpoint object."""
    keys = read_backbone_keys(obj, path)
    return keys.state, keys.layout


def _recorded_arch(obj: Any) -> Optional[str]:
    if not isinstance(obj, Mapping):
        return None
    backbone, hparams = obj.get("backbone"), obj.get("hyper_parameters")
    arch = backbone.get("arch") if isinstance(backbone, Mapping) else None
    arch = arch or (hparams.get("backbone") if isinstance(hparams, Mapping) else None)
    return arch if isinstance(arch, str) else None


# Containers of a backbone inside a Lightning-style {"state_dict": ...}: (key prefix, layout, drop fc.*).
_PREFIXED = (("module.encoder_q.", "mocov2", True),
             ("encoder_q.", "mocov2", True),  # MoCo saved without DataParallel
             ("backbone.", "lightning", False))


def _locate(obj: Any, path: str | Path) -> tuple[dict[str, Tensor], str, Mapping[str, Any], str]:
    """``(state, layout, container, prefix)``: ``state`` is read from ``container``'s keys under ``prefix``."""
    if isinstance(obj, Mapping) and obj.get("format") == TEACHER_FORMAT:
        container = obj["backbone"]["state_dict"]
        return dict(container), TEACHER_FORMAT, container, ""
    container = obj
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        container = obj["state_dict"]
        for prefix, layout, drop_heads in _PREFIXED:
            if any(k.startswith(prefix) for k in container):
                state = _strip(container, prefix)
                return (_drop_heads(state) if drop_heads else state), layout, container, prefix
    if isinstance(container, Mapping) and container and all(isinstance(v, Tensor) for v in container.values()):
        prefix = "module." if any(k.startswith("module.") for k in container) else ""
        state = _strip(container, prefix)
        from .tv_backbones import DINOV2_LAYOUT, dinov2_hub_to_torchvision, is_dinov2_hub_state

        if is_dinov2_hub_state(state):  # torch.hub DINOv2: converted to torchvision's ViT key names
            try:
                return dinov2_hub_to_torchvision(state, str(path))[0], DINOV2_LAYOUT, container, prefix
            except (KeyError, ValueError) as exc:
                raise CheckpointError(str(exc) if isinstance(exc, ValueError) else
                                      f"{path}: DINOv2 layout without key {exc.args[0]}") from None
        return _drop_heads(state), "torchvision", container, prefix
    keys = list(container)[:6] if isinstance(container, Mapping) else type(container).__name__
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


# --------------------------------------------------------------------------- the one reader
@dataclass(frozen=True)
class LoadedBackbone:
    """A backbone read from a checkpoint (or randomly initialised), every key checked.

    module: maps (B, 3, H, W) -> (B, feature_dim); freshly built (train mode), or ``into[0]``.
    arch: its :func:`solo_surgical.backbones.build_backbone` name.
    layout: the source's layout (module docstring), or ``random-init (seed N)``.
    meta: provenance under the names a teacher checkpoint's ``meta`` uses: ``source`` (path or
        None), ``source_sha256`` (None for random init or an object in memory), ``source_layout``.
    feature_dim: F; None when loaded ``into`` modules the caller built.
    state: the tensors that were loaded (the file's, plus BatchNorm counters it lacked), in file order.
    keys: what the file held (prefix, dropped keys, recorded arch); None for random init.
    filled: BatchNorm counters added because the source predates them.
    """

    module: nn.Module
    arch: str
    layout: str
    meta: dict[str, Any]
    feature_dim: Optional[int] = None
    state: dict[str, Tensor] = field(default_factory=dict)
    keys: Optional[BackboneKeys] = None
    filled: tuple[str, ...] = ()


def load_backbone(source: str | Path | None, arch_hint: Optional[str] = None, *, arch: Optional[str] = None,
                  init_seed: int = 0, into: Sequence[nn.Module] = (), trusted: bool = True,
                  ask: str = "name the architecture") -> LoadedBackbone:
    """The one checkpoint reader: a backbone from a file in any layout of this module, strictly loaded.

    Args:
        source: the checkpoint file; None builds ``arch or arch_hint`` randomly initialised from
            ``init_seed`` without touching the global generator (``linear`` and ``extract`` given
            the same seed see the same network).
        arch_hint: the architecture when nothing else tells (e.g. ``backbone.name``'s default).
        arch: the architecture the caller insists on (``--backbone``, ``--arch``); wins over the file.
        into: load strictly into these modules, already built by a host (its backbone and momentum
            backbone), instead of building one; ``arch`` is then only recorded.
        trusted: False for downloaded files: tensors only, pickled code is refused (:func:`load_file`).
        ask: how the user names the architecture, ending the message when it cannot be told.

    The architecture is, first that applies: ``arch``; the file's own record (a teacher's
    ``backbone.arch``, a Lightning run's ``hyper_parameters.backbone``); the keys' shapes
    (:func:`solo_surgical.backbones.infer_arch`: ResNets, ViTs); ``arch_hint``. Every problem is one
    line naming the file (:class:`CheckpointError`).
    """
    if source is None:
        return random_backbone(arch or arch_hint, init_seed)
    loaded = backbone_from_keys(read_backbone_keys(load_file(source, trusted), source), source,
                                arch=arch, arch_hint=arch_hint, into=into, ask=ask)
    loaded.meta["source_sha256"] = sha256_file(source)
    return loaded


def backbone_from_keys(keys: BackboneKeys, where: str | Path, *, arch: Optional[str] = None,
                       arch_hint: Optional[str] = None, into: Sequence[nn.Module] = (),
                       keys_must_match_arch: bool = False, ask: str = "name the architecture") -> LoadedBackbone:
    """Build (or fill ``into``) and strictly load the backbone ``keys`` describe; see :func:`load_backbone`.

    ``keys_must_match_arch``: refuse an ``arch`` the keys contradict (``holds a resnet18, expected
    resnet50``) before building anything. Off by default: ResNet variants of one block plan
    (``wide_resnet50_2``) read as their plain ResNet, and a caller naming one must be believed.
    """
    from .backbones import build_backbone, infer_arch

    inferred = infer_arch(keys.state) if (keys_must_match_arch or not (arch or keys.recorded_arch)) else None
    if keys_must_match_arch and arch and inferred and arch != inferred:
        raise CheckpointError(f"{where}: holds a {inferred}, expected {arch}")
    name = arch or keys.recorded_arch or inferred or arch_hint
    if name is None:
        raise CheckpointError(f"{where}: cannot tell the architecture from its keys (not a torchvision ResNet "
                              f"layout, nor a ViT; first keys: {', '.join(list(keys.state)[:3])}); {ask}")
    state = dict(keys.state)
    meta = {"source": str(where), "source_sha256": None, "source_layout": keys.layout}
    if into:
        filled = fill_batchnorm_counters(state, into[0].state_dict())
        for module in into:
            load_backbone_state(module, state, where)  # strict: offending keys are listed
        return LoadedBackbone(into[0], name, keys.layout, meta, None, state, keys, tuple(filled))
    try:
        module, dim = build_backbone(name)
    except KeyError as exc:
        raise CheckpointError(f"{where}: {exc.args[0]}") from None
    filled = fill_batchnorm_counters(state, module.state_dict())
    load_backbone_state(module, state, where)
    return LoadedBackbone(module, name, keys.layout, meta, dim, state, keys, tuple(filled))


def random_backbone(arch: Optional[str], seed: int = 0) -> LoadedBackbone:
    """``arch`` randomly initialised from ``seed``; the global generator is left as it was."""
    from .backbones import build_backbone
    from .errors import UserError

    if arch is None:
        raise UserError("no checkpoint and no architecture: name a checkpoint, or an architecture for a random init")
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module, dim = build_backbone(arch)
    except KeyError as exc:
        raise UserError(str(exc.args[0])) from None
    layout = f"random-init (seed {seed})"
    return LoadedBackbone(module, arch, layout, {"source": None, "source_sha256": None, "source_layout": layout}, dim)
