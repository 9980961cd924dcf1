"""Write a file completely or not at all.

Every output of the project goes through here: the data are written under a temporary name
in the destination folder and renamed over the destination, so a kill at any moment leaves
either the previous file or the new one, never a torn one (and no stray temporary file on error).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, IO


def _current_umask() -> int:
    mask = os.umask(0)  # the only portable way to read it is to set it
    os.umask(mask)
    return mask


def _write(path: str | Path, mode: str, fill: Callable[[IO], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600; a file made by open() would get 0666 minus the umask, so colleagues
        # sharing a results folder can read it. Give the result those permissions.
        os.fchmod(fd, 0o666 & ~_current_umask())
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if "b" not in mode else {})) as handle:
            fill(handle)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(path)  # a full disk fails in write(), which names no file: name ours
        raise
    return path


def write_bytes(path: str | Path, data: bytes) -> Path:
    return _write(path, "wb", lambda handle: handle.write(data))


def write_text(path: str | Path, text: str) -> Path:
    return _write(path, "w", lambda handle: handle.write(text))


def write_json(path: str | Path, doc: Any, indent: int = 1, default: Callable | None = None) -> Path:
    return write_text(path, json.dumps(doc, indent=indent, default=default) + "\n")


def torch_save(obj: Any, path: str | Path) -> Path:
    import torch

    return _write(path, "wb", lambda handle: torch.save(obj, handle))
