"""Errors caused by bad input end in one line naming the cause, never a traceback.

The boundary (:func:`one_line_errors`, used by ``solo_surgical.cli.main``) turns into one line:

* :class:`UserError` and checkpoint errors (their message already names the file and the cause);
* every ``OSError`` (permission denied, is a directory, not a directory, disk full, read-only
  file system, ...): ``PATH: OPERATION: reason``, with the path the system call was given
  (``exc.filename``) -- or, for a temporary file of an atomic write, the file being written;
* a ``UserError`` / ``OSError`` raised inside a DataLoader worker process: PyTorch re-raises it in
  the main process with the worker's traceback as its message; only the original last line is kept;
* a non-finite loss (``FloatingPointError``).

Anything else is a bug and keeps its traceback. ``SOLO_SURGICAL_TRACEBACK=1`` re-raises after the
line, for debugging.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional


class UserError(Exception):
    """Bad input (file, config value, method name). The message is one line naming the cause."""


@dataclass
class _Status:
    code: int = 0


# Errors whose message is meant for the user. Anything else is a bug and keeps its traceback.
def _user_facing() -> tuple[type[BaseException], ...]:
    from .checkpoints import CheckpointError

    return (UserError, CheckpointError, OSError, FloatingPointError)


# Why an OS call failed, in words that say what to do about it.
_REASONS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EISDIR: "is a directory, a file was expected",
    errno.ENOTDIR: "a component of the path is not a directory",
    errno.ENOSPC: "no space left on device (disk full)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.ENOENT: "no such file or directory",
    errno.EEXIST: "already exists",
    errno.ENOTEMPTY: "directory not empty",
    errno.ENAMETOOLONG: "file name too long",
    errno.EMFILE: "too many open files",
    errno.EIO: "input/output error",
}

# ``atomic.py`` writes ``DIR/.NAME.<random>.tmp`` and renames it to ``DIR/NAME``: report NAME.
_ATOMIC_TMP = re.compile(r"^\.(?P<name>.+)\.[^.]+\.tmp$")


def _real_path(filename: object) -> str:
    path = Path(os.fsdecode(filename))  # type: ignore[arg-type]
    match = _ATOMIC_TMP.match(path.name)
    return str(path.with_name(match.group("name"))) if match else str(path)


@contextlib.contextmanager
def doing(operation: str) -> Iterator[None]:
    """Tag any ``OSError`` raised inside with ``operation`` (e.g. ``"creating the run folder"``)."""
    try:
        yield
    except OSError as exc:
        if not getattr(exc, "solo_operation", None):
            exc.solo_operation = operation  # type: ignore[attr-defined]
        raise


def describe_os_error(exc: OSError) -> str:
    """``PATH: OPERATION: reason`` (``PATH -> PATH2`` for a rename), one line."""
    reason = _REASONS.get(exc.errno or -1) or (exc.strerror or str(exc) or type(exc).__name__).lower()
    if exc.errno == errno.EEXIST and exc.filename is not None and os.path.isfile(os.fsdecode(exc.filename)):
        reason = "exists and is not a folder"  # mkdir(parents=True) met a file where a folder belongs
    operation: Optional[str] = getattr(exc, "solo_operation", None)
    parts = []
    if exc.filename is not None:
        where = _real_path(exc.filename)
        if exc.filename2 is not None:
            where += f" -> {_real_path(exc.filename2)}"
        parts.append(where)
    if operation:
        parts.append(operation)
    if exc.errno is None and not exc.strerror and str(exc):
        reason = str(exc)  # e.g. PIL's "image file is truncated (3 bytes not processed)"
    parts.append(reason)
    return ": ".join(parts)


def _worker_message(message: str) -> str:
    """The original error line of an exception re-raised from a DataLoader worker process
    ("Caught UserError in DataLoader worker process 0. Original Traceback ...")."""
    if "Original Traceback" not in message:
        return message
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else message
    # "solo_surgical.errors.UserError: PATH: unreadable image" -> "PATH: unreadable image"
    return re.sub(r"^[A-Za-z_][\w.]*(Error|Exception)\b:\s*", "", last)


def one_line(exc: BaseException) -> str:
    """The one-line message of a user-facing error."""
    if isinstance(exc, OSError) and (exc.errno is not None or exc.filename is not None):
        message = describe_os_error(exc)
    else:
        message = _worker_message(str(exc))
        if isinstance(exc, OSError):
            message = f"{getattr(exc, 'solo_operation', '') or 'input/output'}: {message}".strip(": ")
    return " ".join(message.split()) or type(exc).__name__


@contextlib.contextmanager
def one_line_errors() -> Iterator[_Status]:
    status = _Status()
    try:
        yield status
    except BrokenPipeError:
        raise  # the reader went away (``| head``); the command line ends quietly, see cli.main
    except _user_facing() as exc:
        print(f"solo-surgical: error: {one_line(exc)}", file=sys.stderr)
        if os.environ.get("SOLO_SURGICAL_TRACEBACK"):
            raise
        status.code = 2
    except KeyboardInterrupt:
        print("solo-surgical: interrupted", file=sys.stderr)
        status.code = 130
