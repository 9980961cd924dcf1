"""The lightly host's method registry: a name in, a method class (and whether it is distilled) out.

The method modules of this package register *base* SSL methods with :func:`register_method`. Every base method that exposes its query/key
embeddings (``supports_distillation = True``) automatically gets a distilled form
``distill_<name>``: the registry grows by registering a base method only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ...errors import UserError

DISTILL_PREFIX = "distill_"
_METHODS: dict[str, type] = {}
_ALIASES: dict[str, str] = {}


@dataclass(frozen=True)
class ResolvedMethod:
    name: str          # canonical name, e.g. "distill_mocov2plus"
    base_name: str     # e.g. "mocov2plus"
    cls: type          # the host's method class
    distilled: bool


def register_method(name: str, aliases: tuple[str, ...] = ()) -> Callable[[type], type]:
    """Class decorator registering a base method under ``name`` (and ``aliases``)."""

    def wrap(cls: type) -> type:
        for key in (name, *aliases):
            if key.startswith(DISTILL_PREFIX):
                raise ValueError(f"{key!r}: the {DISTILL_PREFIX} prefix is reserved for distilled forms")
            owner = _METHODS.get(key) or _METHODS.get(_ALIASES.get(key, ""))
            if owner is not None and owner is not cls:
                raise ValueError(f"method name {key!r} is already taken by {owner.__module__}.{owner.__qualname__}")
        _METHODS[name] = cls
        for alias in aliases:
            _ALIASES[alias] = name
        cls.method_name = name
        return cls

    return wrap


def _load_hosts() -> None:
    """Import the method modules, which register their classes (plain imports, resolved at call time
    because each of them imports this module for the decorator)."""
    from . import dino, methods, nnclr, siamese, swav  # noqa: F401


def method_names(include_aliases: bool = False) -> list[str]:
    """Every runnable method name: base methods and their ``distill_`` forms."""
    _load_hosts()
    names = set(_METHODS)
    if include_aliases:
        names |= set(_ALIASES)
    distilled = {DISTILL_PREFIX + n for n in names
                 if getattr(_METHODS[_ALIASES.get(n, n)], "supports_distillation", False)}
    return sorted(names | distilled)


def aliases() -> dict[str, str]:
    _load_hosts()
    return dict(_ALIASES)


def resolve_method(name: str) -> ResolvedMethod:
    """``"distill_moco"`` -> ResolvedMethod("distill_mocov2plus", "mocov2plus", MoCoV2Plus, True)."""
    _load_hosts()
    distilled = name.startswith(DISTILL_PREFIX)
    base = name[len(DISTILL_PREFIX):] if distilled else name
    base = _ALIASES.get(base, base)
    cls = _METHODS.get(base)
    if cls is None:
        raise UserError(f"unknown method {name!r}; registered: {', '.join(method_names(include_aliases=True))}")
    if distilled and not getattr(cls, "supports_distillation", False):
        raise UserError(f"method {base!r} does not expose query/key embeddings, so it cannot be distilled")
    return ResolvedMethod(DISTILL_PREFIX + base if distilled else base, base, cls, distilled)
