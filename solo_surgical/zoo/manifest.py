"""The zoo manifest: public teacher sources, their hashes, licences and key mappings.

Reading it needs only PyYAML (no torch), so ``solo-surgical zoo list`` stays fast.
"""
from __future__ import annotations

import difflib
import fnmatch
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Optional
from urllib.parse import urlparse

import yaml

from ..errors import UserError

TIMM_PREFIX = "timm:"
_HEX = re.compile(r"^[0-9a-f]+$")
# torch.hub's rule: the hash prefix is the hex run after the last '-' before the first '.'.
FILE_NAME_HASH = re.compile(r"-([a-f0-9]{8,64})\.")
_LAYOUTS = ("torchvision", "mocov2", "timm", "dinov2-hub")


@dataclass(frozen=True)
class KeyMapping:
    """How a published file's keys become our backbone's (torchvision) keys."""

    container: Optional[str] = None  # key of the parameter dict inside the file; None = the file is it
    strip_prefix: str = ""
    drop: tuple[str, ...] = ()  # fnmatch patterns of source keys that are discarded

    def is_documented_drop(self, key: str) -> bool:
        return any(fnmatch.fnmatchcase(key, pattern) for pattern in self.drop)


@dataclass(frozen=True)
class ZooSource:
    """One public teacher source (a manifest entry, or a ``timm:`` name)."""

    name: str
    arch: Optional[str]
    url: Optional[str]
    layout: str
    key_mapping: KeyMapping
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    licence: str
    description: str = ""
    sha256: Optional[str] = None  # full digest or published prefix, lower-case hex
    md5: Optional[str] = None
    hash_source: str = ""
    homepage: str = ""
    reported: Mapping[str, Any] = field(default_factory=dict)
    timm_model: Optional[str] = None  # set for timm:<model> names

    @property
    def file_name(self) -> str:
        """Name of the cached file: the URL's last path component (torch.hub's convention)."""
        if self.url is None:
            raise UserError(f"{self.name}: has no download URL (timm models use timm's own cache)")
        return Path(urlparse(self.url).path).name

    @property
    def has_published_hash(self) -> bool:
        return bool(self.sha256 or self.md5)


@dataclass(frozen=True)
class Manifest:
    sources: Mapping[str, ZooSource]
    timm_mapping: KeyMapping
    timm_licence: str
    path: str

    def names(self) -> list[str]:
        return sorted(self.sources)

    def get(self, name: str) -> ZooSource:
        """The source called ``name`` (or ``timm:<model>``); unknown names are a one-line error."""
        if name in self.sources:
            return self.sources[name]
        if name.startswith(TIMM_PREFIX):
            model = name[len(TIMM_PREFIX):].strip()
            if not model:
                raise UserError(f"'{name}': give a timm model after 'timm:', e.g. timm:resnet50.a1_in1k")
            from ..backbones import IMAGENET_MEAN, IMAGENET_STD

            # mean/std here are placeholders; the model's own pretrained_cfg replaces them.
            return ZooSource(name=name, arch=None, url=None, layout="timm", key_mapping=self.timm_mapping,
                             mean=IMAGENET_MEAN, std=IMAGENET_STD, licence=self.timm_licence,
                             description=f"timm model {model}", timm_model=model)
        close = difflib.get_close_matches(name, self.names(), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UserError(f"unknown zoo name '{name}'{hint}; known: {', '.join(self.names())}, "
                        f"or timm:<model>; `solo-surgical zoo list` describes them")

    def by_file_name(self, file_name: str) -> Optional[ZooSource]:
        """The source whose published file is called ``file_name``, if any."""
        for source in self.sources.values():
            if source.url and source.file_name == file_name:
                return source
        return None


def default_manifest_path() -> Path:
    return Path(str(resources.files("solo_surgical.zoo").joinpath("manifest.yaml")))


def _hex_or_none(value: Any, what: str, where: str) -> Optional[str]:
    if value is None:
        return None
    text = str(value).strip().lower()
    if not _HEX.match(text) or not 8 <= len(text) <= 64:
        raise UserError(f"{where}: {what} must be 8 to 64 hex digits, got {value!r}")
    return text


def _mapping(raw: Any, where: str) -> KeyMapping:
    if not isinstance(raw, Mapping):
        raise UserError(f"{where}: key_mapping must be a mapping")
    return KeyMapping(container=raw.get("container"), strip_prefix=str(raw.get("strip_prefix") or ""),
                      drop=tuple(str(p) for p in raw.get("drop") or ()))


def _triple(raw: Any, what: str, where: str) -> tuple[float, float, float]:
    if not isinstance(raw, (list, tuple)) or len(raw) != 3:
        raise UserError(f"{where}: {what} must be three numbers (RGB), got {raw!r}")
    return (float(raw[0]), float(raw[1]), float(raw[2]))


def _source(name: str, raw: Mapping[str, Any], where: str) -> ZooSource:
    where = f"{where}: source '{name}'"
    missing = [k for k in ("arch", "url", "layout", "key_mapping", "mean", "std", "licence") if not raw.get(k)]
    if missing:
        raise UserError(f"{where}: missing {', '.join(missing)}")
    if raw["layout"] not in _LAYOUTS:
        raise UserError(f"{where}: layout must be one of {', '.join(_LAYOUTS)}, got {raw['layout']!r}")
    source = ZooSource(
        name=name, arch=str(raw["arch"]), url=str(raw["url"]), layout=str(raw["layout"]),
        key_mapping=_mapping(raw["key_mapping"], where), mean=_triple(raw["mean"], "mean", where),
        std=_triple(raw["std"], "std", where), licence=str(raw["licence"]),
        description=str(raw.get("description") or ""), sha256=_hex_or_none(raw.get("sha256"), "sha256", where),
        md5=_hex_or_none(raw.get("md5"), "md5", where), hash_source=str(raw.get("hash_source") or ""),
        homepage=str(raw.get("homepage") or ""), reported=dict(raw.get("reported") or {}),
    )
    # A hash in the file name (torch.hub convention) and the recorded hash must agree.
    m = FILE_NAME_HASH.search(source.file_name)
    if m and source.sha256 and not (source.sha256.startswith(m.group(1)) or m.group(1).startswith(source.sha256)):
        raise UserError(f"{where}: sha256 {source.sha256} disagrees with the file name {source.file_name}")
    return source


def load_manifest(path: str | Path | None = None) -> Manifest:
    """Read and check a manifest (default: the one shipped in the package)."""
    path = Path(path) if path is not None else default_manifest_path()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: zoo manifest not found") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(raw, Mapping) or not isinstance(raw.get("sources"), Mapping):
        raise UserError(f"{path}: a zoo manifest needs a 'sources' mapping")
    sources = {str(n): _source(str(n), s or {}, str(path)) for n, s in raw["sources"].items()}
    timm = raw.get("timm") or {}
    timm_mapping = _mapping(timm.get("key_mapping") or {"drop": ["fc.weight", "fc.bias"]}, f"{path}: timm")
    return Manifest(sources=sources, timm_mapping=timm_mapping,
                    timm_licence=str(timm.get("licence") or "per model"), path=str(path))
