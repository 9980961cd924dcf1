"""The benchmark: every cell (method, variant, budget, seed) runs the whole pipeline.

Layout of ``OUT``::

    raw/ data/                      synthetic (or given) videos, prepared frames
    public_model/                   the offline generic 'public' model (teacher source "generic")
    teachers/<source>-b<budget>/    teacher stage run + teacher.pth (once per source and budget)
    cells/<method>-<variant>-b<budget>-s<seed>/
        pretrain/ linear/ features/ temporal/ eval/<protocol>.json  result.json
    results.csv results.json table.md plots/

A cell or teacher is built in a ``.<name>.partial`` folder that is renamed when complete, so
a finished cell is never recomputed and an interrupted one restarts from scratch.
"""
from __future__ import annotations

import json
import os
import shutil
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from omegaconf import DictConfig, OmegaConf

from ..atomic import write_json, write_text
from ..errors import UserError


@dataclass(frozen=True)
class Cell:
    method: str
    variant: str      # "plain" or "distill" (or "distill@<source>" with several teacher sources)
    budget: Any
    seed: int
    source: Optional[str] = None

    @property
    def name(self) -> str:
        return f"{self.method}-{self.variant.replace('@', '-')}-b{self.budget}-s{self.seed}"


def _source_label(source: str) -> str:
    return "generic" if source == "generic" else Path(source).stem.replace("-", "_")


def plan_cells(cfg: DictConfig) -> list[Cell]:
    sources = [str(s) for s in cfg.teacher.sources]
    cells = []
    for budget in cfg.budgets:
        for method in cfg.methods:
            for seed in cfg.seeds:
                for variant in cfg.variants:
                    if variant == "plain":
                        cells.append(Cell(str(method), "plain", budget, int(seed)))
                    elif variant == "distill":
                        for source in sources:
                            label = "distill" if len(sources) == 1 else f"distill@{_source_label(source)}"
                            cells.append(Cell(str(method), label, budget, int(seed), source))
                    else:
                        raise UserError(f"benchmark variants: unknown {variant!r} (plain, distill)")
    return cells


def as_overrides(node: Any, prefix: str = "") -> list[str]:
    """Nested config values -> Hydra ``key=value`` overrides (``{trainer: {max_epochs: 3}}`` -> trainer.max_epochs=3)."""
    if node is None and not prefix:
        return []
    if OmegaConf.is_config(node):
        node = OmegaConf.to_container(node, resolve=True)
    if isinstance(node, dict):
        return [o for key, value in node.items() for o in as_overrides(value, f"{prefix}{key}.")]
    key = prefix.rstrip(".")
    if isinstance(node, (list, tuple)):
        return [f"{key}=[{','.join(str(v) for v in node)}]"]
    return [f"{key}={'null' if node is None else node}"]


def _cli(*argv: str) -> None:
    """Run one of our sub-commands in-process; errors propagate as exceptions."""
    from ..cli import build_parser

    args = build_parser().parse_args([str(a) for a in argv])
    code = args.func(args)
    if code:
        raise RuntimeError(f"`solo-surgical {argv[0]}` exited with status {code}")


class Benchmark:
    def __init__(self, cfg: DictConfig, log: Callable[[str], None] = print) -> None:
        self.cfg = cfg
        self.out = Path(str(cfg.out))
        self.log = log
        self.data_dir: Optional[Path] = None
        self.stage_seconds: dict[str, float] = {}  # shared stages timed in this launch

    def _timed(self, stage: str, fn: Callable[[], Any]) -> Any:
        start = time.time()
        try:
            return fn()
        finally:
            self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + time.time() - start

    # --- shared inputs -------------------------------------------------------------------
    def ensure_data(self) -> Path:
        cfg = self.cfg.data
        if cfg.prepared:
            self.data_dir = Path(str(cfg.prepared))
            return self.data_dir
        raw = Path(str(cfg.raw)) if cfg.raw else self.out / "raw"
        if not cfg.raw and not (raw / "synth.json").is_file():
            s = cfg.synth
            self.log(f"synthesizing {s.videos} videos of {s.seconds}s into {raw}")
            self._timed("synthesize", lambda: _cli("synth", "--out", raw, "--videos", s.videos, "--seconds",
                                                   s.seconds, "--size", s.size, "--seed", s.seed))
        data = self.out / "data"
        manifest = data / "manifest.json"
        if manifest.is_file() and not json.loads(manifest.read_text()).get("failed"):
            self.data_dir = data  # prepared earlier, completely
            return data
        self.log(f"preparing {raw} -> {data} at {cfg.fps} fps, {cfg.size}px")
        self._timed("prepare", lambda: _cli("prepare", "--dataset", cfg.dataset, "--root", raw, "--out", data,
                                            "--fps", cfg.fps, "--size", cfg.size, "--workers", 1))
        self.data_dir = data
        return data

    def source_path(self, source: str) -> Path:
        if source != "generic":
            return Path(source)
        from ..train.generic_model import train_generic_model

        g = self.cfg.generic
        return self._timed("generic public model", lambda: train_generic_model(
            self.out / "public_model", arch=str(g.arch), steps=int(g.steps), size=int(g.image_size), log_every=0))

    def _data_overrides(self, budget: Any) -> list[str]:
        return [f"data.root={self.data_dir}", f"data.protocol={self.cfg.data.protocol}",
                f"data.budget={budget}"]

    def ensure_teacher(self, source: str, budget: Any) -> Path:
        from ..train.config import compose
        from ..train.runner import run_teacher_stage

        final = self.out / "teachers" / f"{_source_label(source)}-b{budget}"
        if (final / "teacher.pth").is_file():
            return final / "teacher.pth"
        work = self._fresh(final)
        self.log(f"  teacher stage: {source} (budget {budget})")
        cfg = compose("teacher", [*as_overrides(self.cfg.pretrain), f"method={self.cfg.teacher.method}",
                                  *self._method_overrides(str(self.cfg.teacher.method)),
                                  *as_overrides(self.cfg.teacher.overrides),
                                  f"teacher.source={self.source_path(source)}", f"teacher.bn={self.cfg.teacher.bn}",
                                  f"run.dir={work}", *self._data_overrides(budget)])
        self._timed("teacher stage", lambda: run_teacher_stage(cfg))
        os.replace(work, final)
        return final / "teacher.pth"

    def _method_overrides(self, method: str) -> list[str]:
        per_method = self.cfg.get("method_overrides") or {}
        return as_overrides(per_method.get(method))

    @staticmethod
    def _fresh(final: Path) -> Path:
        work = final.with_name(f".{final.name}.partial")
        if work.exists():
            shutil.rmtree(work)  # an interrupted attempt: restart cleanly
        work.mkdir(parents=True)
        return work

    # --- one cell ------------------------------------------------------------------------
    def run_cell(self, cell: Cell) -> dict[str, Any]:
        from ..evaluation.evaluate import evaluate_dirs
        from ..evaluation.metrics import json_ready
        from ..train.config import compose
        from ..train.runner import run_pretrain

        cfg = self.cfg
        final = self.out / "cells" / cell.name
        times: dict[str, float] = {}
        teacher = None
        if cell.source is not None:
            start = time.time()
            teacher = self.ensure_teacher(cell.source, cell.budget)
            times["teacher"] = time.time() - start
        work = self._fresh(final)
        method = cell.method if cell.variant == "plain" else f"distill_{cell.method}"

        start = time.time()
        pre = compose("pretrain", [*as_overrides(cfg.pretrain), f"method={method}", *self._method_overrides(cell.method),
                                   f"run.dir={work / 'pretrain'}", f"run.seed={cell.seed}",
                                   *self._data_overrides(cell.budget),
                                   *([f"distill.teacher={teacher}"] if teacher else [])])
        run_pretrain(pre)
        ckpt = work / "pretrain" / "checkpoints" / "last.ckpt"
        times["pretrain"] = time.time() - start

        common = ["--protocol", cfg.data.protocol]
        start = time.time()
        _cli("linear", "--data", self.data_dir, "--out", work / "linear", "--checkpoint", ckpt, *common,
             "--budget", cell.budget, "--epochs", cfg.linear.epochs, "--image-size", cfg.linear.image_size,
             "--seed", cell.seed)
        times["linear"] = time.time() - start
        start = time.time()
        _cli("extract", "--data", self.data_dir, "--out", work / "features", "--checkpoint", ckpt, *common,
             "--image-size", cfg.extract.image_size)
        times["extract"] = time.time() - start
        start = time.time()
        t = cfg.temporal
        _cli("temporal", "--features", work / "features", "--out", work / "temporal", *common,
             "--budget", cell.budget, "--epochs", t.epochs, "--stages", t.stages, "--layers", t.layers,
             "--channels", t.channels, "--seed", cell.seed, "--plots")
        times["temporal"] = time.time() - start

        start = time.time()
        (work / "eval").mkdir()
        evaluation = {}
        for protocol in cfg.evaluate.protocols:
            doc, warnings = evaluate_dirs(work / "temporal" / "gt", work / "temporal" / "predictions",
                                          str(cfg.data.dataset), float(cfg.data.fps), str(protocol))
            doc["warnings"] = warnings
            write_json(work / "eval" / f"{protocol}.json", json_ready(doc))
            evaluation[str(protocol)] = {k: v["mean"] for k, v in doc["summary"].items()
                                         if isinstance(v, dict) and "mean" in v}
        times["evaluate"] = time.time() - start
        linear = json.loads((work / "linear" / "linear.json").read_text())
        result = {"cell": cell.name, "method": cell.method, "variant": cell.variant, "budget": cell.budget,
                  "seed": cell.seed, "teacher_source": cell.source, "teacher": str(teacher) if teacher else None,
                  "linear": {k: linear.get(k) for k in ("val_acc", "test_acc")},
                  "temporal": json_ready(evaluation), "seconds": times}
        write_json(work / "result.json", result, default=str)
        if final.exists():
            shutil.rmtree(final)
        os.replace(work, final)
        return result

    # --- all cells -----------------------------------------------------------------------
    def run(self) -> tuple[list[dict], dict[str, str]]:
        self.out.mkdir(parents=True, exist_ok=True)
        write_text(self.out / "benchmark.yaml", OmegaConf.to_yaml(self.cfg, resolve=True))
        self.ensure_data()
        cells = plan_cells(self.cfg)
        results, failures, computed = [], {}, set()
        for i, cell in enumerate(cells, 1):
            done = self.out / "cells" / cell.name / "result.json"
            if done.is_file():
                self.log(f"[{i}/{len(cells)}] {cell.name}: done earlier, kept")
                results.append(json.loads(done.read_text()))
                continue
            self.log(f"[{i}/{len(cells)}] {cell.name}: pretrain -> linear -> features -> temporal -> evaluate")
            start = time.time()
            try:
                results.append(self.run_cell(cell))
                computed.add(cell.name)
                self.log(f"[{i}/{len(cells)}] {cell.name}: finished in {time.time() - start:.0f}s")
            except Exception as exc:  # a broken cell is reported; the others still run
                message = " ".join(str(exc).split()) or type(exc).__name__
                failures[cell.name] = message
                self.log(f"[{i}/{len(cells)}] {cell.name}: FAILED: {message}")
                if os.environ.get("SOLO_SURGICAL_TRACEBACK"):
                    traceback.print_exc()
        from .report import write_reports

        write_reports(self.out, results, failures, list(self.cfg.evaluate.protocols))
        for r in results:  # per-cell stages, summed over the cells computed in this launch
            if r["cell"] in computed:
                for stage, seconds in r["seconds"].items():
                    if stage != "teacher":
                        self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + seconds
        write_json(self.out / "timings.json", {k: round(v, 1) for k, v in self.stage_seconds.items()})
        return results, failures
