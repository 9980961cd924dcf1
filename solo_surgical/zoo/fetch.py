"""Cache, download and hash checks for zoo files.

The cache is torch's: ``$TORCH_HOME/hub/checkpoints`` (``$TORCH_HOME`` defaults to
``$XDG_CACHE_HOME/torch``, i.e. ``~/.cache/torch``) and files keep their published names, so a
file that ``torchvision.models.resnet50(weights=...)`` already downloaded is reused as is, and
vice versa. ``$SOLO_SURGICAL_ZOO_CACHE`` or ``--cache-dir`` override it.

Files are written under a temporary name in the cache directory and renamed only after their
hash (and, where nothing is published, their layout) has been checked, so a failed or
interrupted download never leaves a file under the real name.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import socket
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import urlparse

from ..checkpoints import CheckpointError, load_file
from ..errors import UserError
from .manifest import ZooSource

ENV_CACHE = "SOLO_SURGICAL_ZOO_CACHE"
ENV_TIMEOUT = "SOLO_SURGICAL_ZOO_TIMEOUT"
DEFAULT_TIMEOUT_S = 10.0
_CHUNK = 1 << 20


def cache_dir(override: str | Path | None = None) -> Path:
    """Where zoo files live: ``override``, ``$SOLO_SURGICAL_ZOO_CACHE`` or torch's hub cache."""
    if override:
        return Path(override).expanduser()
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser()
    # Same rule as torch.hub.get_dir(), without importing torch.
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "torch")
    return Path(torch_home).expanduser() / "hub" / "checkpoints"


def default_timeout() -> float:
    try:
        return float(os.environ.get(ENV_TIMEOUT, DEFAULT_TIMEOUT_S))
    except ValueError:
        raise UserError(f"${ENV_TIMEOUT} must be a number of seconds, got {os.environ[ENV_TIMEOUT]!r}") from None


@dataclass
class Digests:
    sha256: str
    md5: str
    size: int


def file_digests(path: str | Path) -> Digests:
    """SHA-256 and MD5 of a file in one pass."""
    sha, md5, size = hashlib.sha256(), hashlib.md5(), 0
    with open(path, "rb") as handle:
        while block := handle.read(_CHUNK):
            sha.update(block)
            md5.update(block)
            size += len(block)
    return Digests(sha.hexdigest(), md5.hexdigest(), size)


def check_hashes(path: str | Path, source: ZooSource, digests: Digests, shown_as: str | Path | None = None) -> list[str]:
    """Compare ``digests`` with what ``source`` publishes; return what was checked.

    A mismatch is a one-line :class:`CheckpointError` naming the file, both hashes and the size,
    because a truncated download is the usual cause.
    """
    shown = shown_as or path
    checked = []
    for algo, expected, actual in (("SHA-256", source.sha256, digests.sha256), ("MD5", source.md5, digests.md5)):
        if not expected:
            continue
        if not actual.startswith(expected):
            raise CheckpointError(
                f"{shown}: {algo} {actual[:len(expected)]}... does not match {expected} published for "
                f"{source.name} ({digests.size} bytes: truncated, corrupt or a different file)")
        checked.append(f"{algo} {'=' if len(expected) == len(actual) else 'prefix'} {expected}")
    return checked


@dataclass
class FetchResult:
    path: Path
    digests: Digests
    checked: list[str] = field(default_factory=list)  # e.g. ["SHA-256 prefix 0676ba61"]
    downloaded: bool = False

    @property
    def verified(self) -> bool:
        return bool(self.checked)


def _check_file(path: Path, source: ZooSource, shown_as: str | Path | None = None) -> tuple[Digests, list[str]]:
    digests = file_digests(path)
    checked = check_hashes(path, source, digests, shown_as)
    if not checked:
        # Nothing published to compare with: at least make sure the file is a complete
        # checkpoint in the documented layout (a truncated zip fails to load).
        from .convert import convert_object

        # The layout check does not count as "verified": `checked` stays empty.
        convert_object(load_file(path, trusted=False), source=source, where=shown_as or path)
    return digests, checked


def _resolve_host(url: str, timeout: float) -> None:
    """DNS lookup with a deadline: getaddrinfo ignores socket timeouts and can hang offline."""
    parsed = urlparse(url)
    if not parsed.hostname:
        return
    outcome: dict[str, BaseException] = {}

    def lookup() -> None:
        try:
            socket.getaddrinfo(parsed.hostname, parsed.port or 443)
        except BaseException as exc:  # noqa: BLE001 - reported to the caller below
            outcome["error"] = exc

    worker = threading.Thread(target=lookup, daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise TimeoutError(f"DNS lookup of {parsed.hostname} took over {timeout:g} s")
    if "error" in outcome:
        raise outcome["error"]


Opener = Callable[..., object]


def _manual_hint(source: ZooSource, dest: Path) -> str:
    return (f"download {source.url} by hand, then run `solo-surgical zoo fetch {source.name} --file PATH` "
            f"or save it as {dest}")


def _download(source: ZooSource, dest: Path, timeout: float, opener: Optional[Opener]) -> tuple[Digests, list[str]]:
    """Stream ``source.url`` into a temporary file next to ``dest``; rename after the checks."""
    import http.client
    import urllib.request

    open_url = opener or urllib.request.urlopen
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        try:
            _resolve_host(source.url, timeout)
            request = urllib.request.Request(source.url, headers={"User-Agent": "solo-surgical-zoo"})
            with open_url(request, timeout=timeout) as response, os.fdopen(fd, "wb") as out:
                fd = -1
                expected_size = int(response.headers.get("Content-Length") or -1)
                written = 0
                while block := response.read(_CHUNK):
                    out.write(block)
                    written += len(block)
            if expected_size >= 0 and written != expected_size:
                raise OSError(f"connection closed after {written} of {expected_size} bytes")
        except (OSError, ValueError, http.client.HTTPException) as exc:  # URLError, refused, timeout, DNS, short read
            reason = " ".join(str(getattr(exc, "reason", None) or exc or type(exc).__name__).split())
            raise UserError(f"cannot download {source.name} ({reason}); {_manual_hint(source, dest)}") from None
        digests, checked = _check_file(tmp, source, shown_as=f"{source.url} (downloaded)")
        os.replace(tmp, dest)
        return digests, checked
    finally:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)


def fetch(source: ZooSource, cache: str | Path | None = None, file: str | Path | None = None,
          timeout: float | None = None, opener: Optional[Opener] = None) -> FetchResult:
    """Make ``source`` available in the cache and return its checked path.

    * ``file``: a manually downloaded copy; its hash is checked, then it is copied into the cache.
    * already cached: the cached file's hash is checked again (cheap next to a training run).
    * otherwise: downloaded with ``timeout`` seconds per network operation; offline, this is a
      one-line :class:`UserError` naming the URL and where to put a manual download.
    """
    if source.url is None:
        raise UserError(f"{source.name}: timm models are fetched by timm; use `solo-surgical zoo convert {source.name}`")
    dest = cache_dir(cache) / source.file_name
    if file is not None:
        file = Path(file).expanduser()
        if not file.is_file():
            raise UserError(f"{file}: file not found")
        digests, checked = _check_file(file, source)
        if file.resolve() != dest.resolve():
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)
            os.close(fd)
            try:
                shutil.copyfile(file, tmp_name)
                os.replace(tmp_name, dest)
            finally:
                Path(tmp_name).unlink(missing_ok=True)
        return FetchResult(dest, digests, checked)
    if dest.is_file():
        try:
            digests, checked = _check_file(dest, source)
        except CheckpointError as exc:
            raise CheckpointError(f"{exc} - delete the cached file and fetch again") from None
        return FetchResult(dest, digests, checked)
    digests, checked = _download(source, dest, default_timeout() if timeout is None else timeout, opener)
    return FetchResult(dest, digests, checked, downloaded=True)


def resolve_local(name_or_path: str | Path, cache: str | Path | None = None, timeout: float | None = None) -> Path:
    """A local checkpoint for a source setting such as ``teacher.source`` or ``backbone.init``.

    An existing path is returned as is; a zoo name is fetched (or found in the cache) with its
    hash checked. ``timm:`` names must be converted first, since timm keeps its own cache.
    """
    from .manifest import TIMM_PREFIX, load_manifest

    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    text = str(name_or_path)
    if text.startswith(TIMM_PREFIX):
        raise UserError(f"{text}: convert it first (`solo-surgical zoo convert {text} --out FILE`) and use FILE")
    manifest = load_manifest()
    if text not in manifest.sources and (path.suffix or "/" in text):
        raise UserError(f"{text}: file not found (and not a zoo name; see `solo-surgical zoo list`)")
    return fetch(manifest.get(text), cache=cache, timeout=timeout).path
