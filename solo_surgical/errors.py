"""Errors caused by bad input end in one line naming the cause, never a traceback."""
from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from typing import Iterator


class UserError(Exception):
    """Bad input (file, config value, method name). The message is one line naming the cause."""


@dataclass
class _Status:
    code: int = 0


# Errors whose message is meant for the user. Anything else is a bug and keeps its traceback.
def _user_facing() -> tuple[type[BaseException], ...]:
    from .checkpoints import CheckpointError

    return (UserError, CheckpointError, FileNotFoundError, FloatingPointError)


@contextlib.contextmanager
def one_line_errors() -> Iterator[_Status]:
    status = _Status()
    try:
        yield status
    except _user_facing() as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"solo-surgical: error: {message}", file=sys.stderr)
        if os.environ.get("SOLO_SURGICAL_TRACEBACK"):
            raise
        status.code = 2
    except KeyboardInterrupt:
        print("solo-surgical: interrupted", file=sys.stderr)
        status.code = 130
