"""The benchmark's plan and the fingerprints of what each stage was made with.

* :func:`plan_cells`: the cells of a config (methods x variants x budgets x seeds; frozen
  references once per budget and seed);
* :func:`cell_settings` / :func:`teacher_settings`: everything that changes a cell's or a teacher's
  numbers, and :func:`fingerprint` of it, so a rerun with other settings is recomputed or refused,
  never relabelled; :func:`differences` names what changed.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from ..errors import UserError

FROZEN = ("random", "public")
TRAINED = ("plain", "distill", "public_init")
VARIANTS = FROZEN + TRAINED
REFERENCE = "-"  # the method of the frozen cells, which no SSL method produces
# A cell needs only its final weights: no per-epoch checkpoints (a value under `pretrain.run` wins).
# Not part of any fingerprint, since it does not change a single weight.
KEEP_LAST_ONLY = ("run.checkpoint_every_n_epochs=0",)
PLAN_KEYS = ("methods", "variants", "budgets", "seeds", "public_init_methods")
RUN_KEYS = ("out", "jobs")  # how and where a benchmark runs, not what it computes


@dataclass(frozen=True)
class Cell:
    method: str       # the SSL method; "-" for the frozen variants
    variant: str      # one of VARIANTS, or "<variant>@<source label>" with several teacher sources
    budget: Any
    seed: int
    source: Optional[str] = None  # the public checkpoint (public, distill, public_init)

    @property
    def kind(self) -> str:
        return self.variant.split("@")[0]

    @property
    def frozen(self) -> bool:
        return self.kind in FROZEN

    @property
    def name(self) -> str:
        prefix = "frozen" if self.frozen else self.method
        return f"{prefix}-{self.variant.replace('@', '-')}-b{self.budget}-s{self.seed}"


def _source_label(source: str) -> str:
    return "generic" if source == "generic" else Path(source).stem.replace("-", "_")


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def plan_cells(cfg: DictConfig) -> list[Cell]:
    """Per budget: the frozen cells once per seed, then per method and seed its trained variants."""
    sources = [str(s) for s in cfg.teacher.sources]
    variants = [str(v) for v in cfg.variants]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise UserError(f"benchmark variants: unknown {', '.join(map(repr, unknown))} ({', '.join(VARIANTS)})")
    listed = cfg.get("public_init_methods")
    init_methods = None if listed is None else {str(m) for m in listed}

    def label(kind: str, source: str) -> str:
        return kind if len(sources) == 1 else f"{kind}@{_source_label(source)}"

    cells = []
    for budget in cfg.budgets:
        for seed in cfg.seeds:
            if "random" in variants:
                cells.append(Cell(REFERENCE, "random", budget, int(seed)))
            if "public" in variants:
                cells += [Cell(REFERENCE, label("public", s), budget, int(seed), s) for s in sources]
        for method in map(str, cfg.methods):
            for seed in cfg.seeds:
                for variant in variants:
                    if variant == "plain":
                        cells.append(Cell(method, "plain", budget, int(seed)))
                    elif variant == "distill" or (variant == "public_init" and
                                                  (init_methods is None or method in init_methods)):
                        cells += [Cell(method, label(variant, s), budget, int(seed), s) for s in sources]
    return cells


CONFIG_MODULE = "solo_surgical.benchmark.configs"  # benchmark.yaml


def compose_benchmark(overrides: Sequence[str] = ()) -> DictConfig:
    """``benchmark.yaml`` with Hydra ``key=value`` overrides (the stages' own configs are the lightly host's)."""
    from ..hosts.lightly.config import compose

    # pretrain / method_overrides / teacher.overrides list only what the benchmark changes; the pretrain
    # config they are passed to refuses unknown keys, so adding one (+pretrain.distill.weight=5) is safe
    return compose("benchmark", overrides, config_module=CONFIG_MODULE,
                   addable=("pretrain.", "method_overrides.", "teacher.overrides."))


# Config nodes that are open dictionaries (empty by default): their keys are added, not overridden.
OPEN_NODES = ("data.augment.",)


def as_overrides(node: Any, prefix: str = "") -> list[str]:
    """Nested config values -> Hydra ``key=value`` overrides (``{trainer: {max_epochs: 3}}`` -> trainer.max_epochs=3).

    Keys under an open node (``data.augment``: the transform's extra arguments) become ``++key=value``
    so that they are added; every other key must already exist, so a misspelt one is still refused.
    """
    if node is None and not prefix:
        return []
    if OmegaConf.is_config(node):
        node = OmegaConf.to_container(node, resolve=True)
    if isinstance(node, dict):
        return [o for key, value in node.items() for o in as_overrides(value, f"{prefix}{key}.")]
    key = prefix.rstrip(".")
    if prefix.startswith(OPEN_NODES):
        key = "++" + key
    if isinstance(node, (list, tuple)):
        return [f"{key}=[{','.join(str(v) for v in node)}]"]
    return [f"{key}={'null' if node is None else node}"]


# --- settings fingerprints ----------------------------------------------------------------------
def fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        flat: dict[str, Any] = {}
        for key, value in node.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat if flat or not prefix else {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): node}


def differences(before: dict, after: dict) -> list[str]:
    """``key: old -> new`` for every dotted key whose value differs (``<absent>`` when missing)."""
    a, b = _flatten(before), _flatten(after)
    absent = "<absent>"
    return [f"{k}: {a.get(k, absent)} -> {b.get(k, absent)}" for k in sorted(set(a) | set(b))
            if a.get(k, absent) != b.get(k, absent)]


def _describe(diffs: list[str], limit: int = 4) -> str:
    return "; ".join(diffs[:limit]) + (f"; and {len(diffs) - limit} more" if len(diffs) > limit else "")


def _source_settings(cfg: DictConfig, source: str) -> dict:
    if source != "generic":
        return {"path": str(source)}
    from ..zoo import generic_model

    return {"generic": _plain(cfg.generic), "recipe": getattr(generic_model, "GENERIC_RECIPE_VERSION", None)}


def _method_settings(cfg: DictConfig, method: str) -> Any:
    return _plain((cfg.get("method_overrides") or {}).get(method))


def teacher_settings(cfg: DictConfig, source: str, budget: Any) -> dict:
    t = cfg.teacher
    return {"source": _source_settings(cfg, source), "budget": str(budget), "data": _plain(cfg.data),
            "pretrain": _plain(cfg.pretrain), "method": str(t.method), "bn": str(t.bn),
            "overrides": _plain(t.overrides), "method_overrides": _method_settings(cfg, str(t.method))}


def cell_settings(cfg: DictConfig, cell: Cell) -> dict:
    """Everything that changes a cell's numbers (the plan keys do not: they choose cells)."""
    settings: dict[str, Any] = {
        "method": cell.method, "variant": cell.kind, "budget": str(cell.budget), "seed": int(cell.seed),
        "data": _plain(cfg.data), "linear": _plain(cfg.linear), "extract": _plain(cfg.extract),
        "temporal": _plain(cfg.temporal), "evaluate": _plain(cfg.evaluate)}
    if cell.kind == "random":
        settings["random"] = {"arch": str(cfg.pretrain.backbone.name)}
    if cell.source is not None:
        settings["source"] = _source_settings(cfg, cell.source)
    if not cell.frozen:
        settings["pretrain"] = _plain(cfg.pretrain)
        settings["method_overrides"] = _method_settings(cfg, cell.method)
    if cell.kind == "distill":
        settings["teacher"] = teacher_settings(cfg, cell.source, cell.budget)
    return settings
