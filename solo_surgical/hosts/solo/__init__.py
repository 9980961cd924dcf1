"""The solo-learn host: ``distill_*`` and ``teacher_*`` methods for solo-learn's own scripts.

solo-learn is optional (it installs only from its source repository). Importing this package
never imports it; :func:`register` does, and fails with a one-line :class:`UserError` when it
is absent. Configs in solo-learn's schema ship in ``configs/`` (found by Hydra through the
``hydra_plugins/solo_surgical_searchpath`` plugin as ``pkg://solo_surgical.hosts.solo.configs``).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import MutableMapping, Optional

from ...errors import UserError
from .distill import DistillMixin
from .teacher import TeacherStageMixin

CONFIG_MODULE = "solo_surgical.hosts.solo.configs"
CONFIG_SEARCH_PATH = f"pkg://{CONFIG_MODULE}"
INSTALL_HINT = ("solo-learn is not installed; install it from its repository "
                "(see the README section 'solo-learn host')")


def available() -> bool:
    """Whether solo-learn is importable, checked without importing it (its import is heavy)."""
    spec = importlib.util.find_spec("solo")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    return any((Path(loc) / "methods" / "base.py").is_file() for loc in locations)


def register(methods: Optional[MutableMapping[str, type]] = None) -> list[str]:
    """Register ``distill_<name>`` / ``teacher_<name>`` into solo-learn's ``METHODS``; see :mod:`.registry`."""
    if not available():
        raise UserError(INSTALL_HINT)
    from .registry import register as _register

    return _register(methods)


__all__ = ["CONFIG_MODULE", "CONFIG_SEARCH_PATH", "DistillMixin", "TeacherStageMixin", "available", "register"]
