"""The lightly + Lightning host: SSL methods built from lightly's pieces, trained by Lightning.

Mirrors ``hosts/solo/``: the method classes (``base.py``, ``methods.py``, ``siamese.py``, ``nnclr.py``,
``dino.py``, ``swav.py``), their registry (``registry.py``), the Hydra configs (``configs/``, composed by
``config.py`` and checked by ``validate.py``), the runner (``runner.py``, run folders in ``rundir.py``)
and the command-line entry points (``commands.py``). Importing the package is cheap: the classes (and
lightly, torch) load on first use, so ``solo-surgical --help`` does not pay for them.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "OptimConfig": ".base", "SSLMethod": ".base", "SSLOutput": ".base", "DINO": ".dino", "BYOL": ".methods",
    "SimCLR": ".methods", "MoCoV2Plus": ".methods", "NNCLR": ".nnclr", "BarlowTwins": ".siamese",
    "SimSiam": ".siamese", "VICReg": ".siamese", "SwAV": ".swav",
    "resolve_method": ".registry", "method_names": ".registry", "register_method": ".registry",
    "ResolvedMethod": ".registry",
}
CONFIG_MODULE = "solo_surgical.hosts.lightly.configs"


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)


__all__ = sorted([*_EXPORTS, "CONFIG_MODULE"])
