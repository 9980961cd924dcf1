"""solo-surgical: distil public pretrained models into self-supervised learning on surgical video.

The public API is small: the distillation core (:mod:`solo_surgical.distill`), the method
registry (:func:`method_names`, :func:`resolve_method`) and the backbone registry
(:func:`build_backbone`, :func:`backbone_names`). Names are imported lazily so that the
command line (``solo-surgical evaluate --help``, ``prepare`` workers) does not pay for torch.
Hosts (lightly + Lightning, solo-learn) live in :mod:`solo_surgical.hosts`.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
_EXPORTS = {"build_backbone": ".backbones", "backbone_names": ".backbones",
            "method_names": ".hosts.lightly.registry", "resolve_method": ".hosts.lightly.registry"}
__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
