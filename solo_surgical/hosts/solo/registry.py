"""Registration of ``distill_<name>`` and ``teacher_<name>`` into solo-learn's ``METHODS`` dict.

``main_pretrain.py`` looks ``cfg.method`` up in ``solo.methods.METHODS`` (a plain dict) at run
time, so adding entries before its ``main()`` runs is enough: the Hydra search-path plugin
(``hydra_plugins/solo_surgical_searchpath``) calls :func:`register` when a Hydra app that has
imported ``solo.methods`` starts; users' own scripts call ``solo_surgical.solo.register()``.

Registration is idempotent (derived classes are cached per base class) and refuses to replace
an entry held by a different class.
"""
from __future__ import annotations

from typing import Callable, MutableMapping, Optional

from omegaconf import DictConfig

from ...errors import UserError
from .contracts import contract_for
from .distill import DistillMixin, add_and_assert_distill_cfg
from .teacher import TeacherStageMixin, add_and_assert_teacher_cfg

KINDS: dict[str, tuple[type, Callable[[DictConfig], DictConfig], str]] = {
    "distill": (DistillMixin, add_and_assert_distill_cfg, "Distill"),
    "teacher": (TeacherStageMixin, add_and_assert_teacher_cfg, "Teacher"),
}
# solo-learn entries that are not two-large-crop SSL methods: base and linear are not SSL methods,
# MAE reconstructs masked patches of one crop. (main_pretrain also lets wmse use other crop counts,
# but its own recipes train it with two; distill_wmse refuses any other count at config time.)
EXCLUDED = frozenset({"base", "linear", "mae"})
# extra names, as in the lightly host: distill_moco == distill_mocov2plus
ALIASES = {"moco": "mocov2plus"}
# the methods the paper's recipe is tested with; every other eligible method gets the generic wrapper
PRIMARY = ("simclr", "mocov2plus", "byol")

_DERIVED: dict[tuple[str, type], type] = {}


def derive(kind: str, base: type, method: Optional[str] = None) -> type:
    """The ``kind`` ("distill" | "teacher") form of solo-learn method class ``base`` (cached), with the
    distillation contract of the upstream method registered as ``method`` (:mod:`.contracts`)."""
    key = (kind, base)
    if key not in _DERIVED:
        mixin, validate, prefix = KINDS[kind]

        def add_and_assert_specific_cfg(cfg: DictConfig) -> DictConfig:
            return validate(base.add_and_assert_specific_cfg(cfg))

        name = f"{prefix}{base.__name__}"
        _DERIVED[key] = type(name, (mixin, base), {
            "__module__": __name__, "__qualname__": name,
            "__doc__": f"{base.__name__} ({base.__module__}) with solo-surgical's {mixin.__name__}.",
            "add_and_assert_specific_cfg": staticmethod(add_and_assert_specific_cfg),
            "solo_surgical_kind": kind, "solo_surgical_base": base,
            "solo_surgical_contract": contract_for(method or ""),
        })
    return _DERIVED[key]


def _eligible(methods: MutableMapping[str, type], base_class: type) -> dict[str, type]:
    return {name: cls for name, cls in methods.items()
            if name not in EXCLUDED and isinstance(cls, type) and issubclass(cls, base_class)
            and not hasattr(cls, "solo_surgical_kind") and not name.startswith(tuple(f"{k}_" for k in KINDS))}


def register(methods: Optional[MutableMapping[str, type]] = None) -> list[str]:
    """Add ``distill_<name>`` / ``teacher_<name>`` (and aliases) for every eligible solo-learn method.

    Args:
        methods: the registry to extend; defaults to ``solo.methods.METHODS`` (imported here).

    Returns:
        The names added by this call (empty when everything was already registered).

    Raises:
        UserError: a name is already taken by a different class.
    """
    from solo.methods.base import BaseMethod

    if methods is None:
        from solo.methods import METHODS as methods  # noqa: N811 - solo-learn's own name
    planned: dict[str, type] = {}
    for base_name, cls in _eligible(methods, BaseMethod).items():
        names = [base_name] + [alias for alias, target in ALIASES.items() if target == base_name]
        for kind in KINDS:
            for name in names:
                planned[f"{kind}_{name}"] = derive(kind, cls, base_name)
    taken = [f"{name!r} (held by {methods[name].__module__}.{methods[name].__qualname__})"
             for name, cls in planned.items() if name in methods and methods[name] is not cls]
    if taken:  # check everything before writing anything: no half-registered state
        raise UserError(f"solo-learn method names already taken by different classes: {', '.join(taken)}")
    added = [name for name in planned if name not in methods]
    methods.update(planned)
    return sorted(added)
