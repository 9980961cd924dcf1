"""Converting a published checkpoint into a teacher init: a torchvision-layout backbone state dict.

A teacher init is written as two files:

* ``FILE``: ``torch.save`` of the plain backbone state dict (torchvision key names, no ``fc``),
  so :func:`solo_surgical.checkpoints.extract_backbone_state` and any other tool read it
  as a torchvision file;
* ``FILE.json``: where it came from (``source``, ``source_sha256``, ``source_layout``, ``url``,
  ``licence``), ``arch``, ``mean``/``std``, the keys dropped and the SHA-256 of ``FILE``; the
  key names match the ``meta`` of a teacher checkpoint so the teacher stage can copy them.

Every conversion is proven by a strict load into :func:`solo_surgical.backbones.build_backbone`.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from ..atomic import write_bytes, write_json
from ..checkpoints import CheckpointError, backbone_from_keys, read_backbone_keys
from ..errors import UserError
from .manifest import ZooSource

TEACHER_INIT_FORMAT = "solo-surgical-teacher-init"


@dataclass
class Conversion:
    """A backbone state dict in torchvision layout, proven to load into ``build_backbone(arch)``."""

    state: dict[str, Any]
    arch: str
    layout: str  # layout of the source, e.g. "mocov2"
    dropped: list[str]  # source keys that were discarded (heads, momentum encoder, queue)
    filled: list[str]  # BatchNorm counters added because the source predates them


def convert_object(obj: Any, source: Optional[ZooSource] = None, where: str | Path = "<memory>",
                   arch: Optional[str] = None) -> Conversion:
    """Convert a loaded checkpoint object; with ``source``, check it against the manifest entry.

    Read by the one reader (:func:`solo_surgical.checkpoints.read_backbone_keys`, then
    :func:`~solo_surgical.checkpoints.backbone_from_keys`). Checked against ``source`` before any
    model is built: the detected layout, the prefix and container of the key mapping, that every
    discarded key matches a documented ``drop`` pattern; then the architecture (``arch``, else the
    manifest's, must be what the keys hold).
    """
    keys = read_backbone_keys(obj, where)
    if source is not None:
        mapping = source.key_mapping
        expected_layout = "torchvision" if source.layout == "timm" else source.layout
        if keys.layout != expected_layout:
            raise CheckpointError(f"{where}: keys are in {keys.layout} layout, but {source.name} is published "
                                  f"in {expected_layout} layout (wrong file?)")
        if keys.prefix != mapping.strip_prefix:
            raise CheckpointError(f"{where}: backbone keys carry prefix {keys.prefix!r}, the manifest says "
                                  f"{mapping.strip_prefix!r} for {source.name}")
        undocumented = [k for k in keys.dropped if not mapping.is_documented_drop(k)]
        if undocumented:
            raise CheckpointError(f"{where}: converting as {source.name} would drop {len(undocumented)} keys the "
                                  f"manifest does not list ({', '.join(undocumented[:5])})")
    loaded = backbone_from_keys(keys, where, arch=arch or (source.arch if source is not None else None),
                                keys_must_match_arch=True, ask="give the architecture with --arch")
    return Conversion(state=loaded.state, arch=loaded.arch, layout=keys.layout, dropped=list(keys.dropped),
                      filled=list(loaded.filled))


def load_timm(source: ZooSource, file: str | Path | None = None) -> tuple[Conversion, ZooSource, dict[str, Any]]:
    """Build ``timm:<model>`` with its pretrained weights (or ``file``) and convert its keys.

    Returns the conversion, the source with timm's own mean/std, and extra metadata.
    """
    try:
        import timm
    except ImportError:
        raise UserError(f"{source.name}: timm is not installed; `pip install timm` to use timm models") from None
    overlay = {"pretrained_cfg_overlay": {"file": str(file)}} if file else {}
    try:
        model = timm.create_model(source.timm_model, pretrained=True, **overlay)
    except Exception as exc:  # unknown model, no network, bad file: timm raises many types
        detail = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise UserError(f"{source.name}: timm could not load it ({detail}); offline, download the weights "
                        f"and pass --file PATH") from None
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    mean, std = tuple(cfg.get("mean", source.mean)), tuple(cfg.get("std", source.std))
    source = dataclasses.replace(source, mean=mean, std=std)
    conversion = convert_object(model.state_dict(), source=source, where=source.name)
    extra = {"timm_version": getattr(timm, "__version__", None), "hf_hub_id": cfg.get("hf_hub_id"),
             "timm_file": str(file) if file else None}
    return conversion, source, extra


def serialise(obj: Any) -> bytes:
    """``torch.save`` to memory: the bytes (hence the hash) do not depend on the file name,
    which torch would otherwise embed as the archive's folder name."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def write_teacher_init(conversion: Conversion, out: str | Path, meta: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write ``out`` (plain state dict) and ``out.json`` (metadata); both atomically."""
    from .. import __version__

    out = Path(out)
    data = serialise(conversion.state)
    digest = hashlib.sha256(data).hexdigest()
    write_bytes(out, data)

    sidecar = Path(f"{out}.json")
    record = {
        "format": TEACHER_INIT_FORMAT, "sha256": digest, "arch": conversion.arch, "layout": "torchvision",
        "num_tensors": len(conversion.state), "source_layout": conversion.layout,
        "dropped_keys": conversion.dropped, "filled_keys": conversion.filled, **meta,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "solo_surgical_version": __version__,
    }
    write_json(sidecar, record, indent=2)
    return out, sidecar


def source_meta(source: Optional[ZooSource], source_file: Optional[Path], source_sha256: Optional[str],
                checked: list[str]) -> dict[str, Any]:
    """The provenance part of a teacher init's metadata."""
    from ..backbones import IMAGENET_MEAN, IMAGENET_STD

    return {
        "source": source.name if source else str(source_file),
        "source_file": str(source_file) if source_file else None,
        "source_sha256": source_sha256,
        "source_hash_checked": checked,
        "url": source.url if source else None,
        "licence": source.licence if source else None,
        "mean": list(source.mean if source else IMAGENET_MEAN),
        "std": list(source.std if source else IMAGENET_STD),
        # A bare file says nothing about its normalisation; ImageNet's is the common case.
        "mean_std_from": ("timm pretrained_cfg" if source.timm_model else "manifest") if source
        else "assumed ImageNet (file not in the manifest)",
    }

