"""The benchmark: every cell (method, variant, budget, seed) runs the whole pipeline.

Variants (``variants`` in the config):

* ``random``: a frozen, randomly initialised student backbone (``pretrain.backbone.name``),
  initialised with ``torch.manual_seed(seed)`` and saved in the cell, so every stage and every
  rerun sees the same weights;
* ``public``: the frozen public backbone itself (the teacher *source* checkpoint);
* ``plain``: the SSL method from scratch;
* ``distill``: ``distill_<method>`` from the teacher made from the public backbone;
* ``public_init``: the SSL method started from the public weights (``backbone.init``), only
  for the methods listed in ``public_init_methods`` (null: every method).

``random`` and ``public`` do not depend on the SSL method: they run once per budget and seed
(cells ``frozen-random-b<budget>-s<seed>``, method ``-``) and are shown as references for every
method. Every cell, frozen or trained, then goes through the same linear probe, feature
extraction, temporal model and evaluation (same split, budget, probe settings and seed).

Layout of ``OUT``::

    benchmark.yaml                  the config of this folder (see "Settings" below)
    raw/ data/                      synthetic (or given) videos, prepared frames
    teachers/<source>-b<budget>/    teacher stage run + teacher.pth + settings.json
    cells/<method>-<variant>-b<budget>-s<seed>/   (frozen-<variant>-b<budget>-s<seed>/ for random, public)
        [pretrain/ | backbone/] linear/ features/ temporal/ eval/<protocol>.json  result.json
    results.csv results.json table.md plots/ timings.json

The generic public model (teacher source ``generic``) lives in the per-user cache
(:func:`solo_surgical.zoo.generic_model.cached_generic_model`), keyed by its settings.

A cell or teacher is built in a ``.<name>.partial`` folder that is renamed when complete, so
a finished cell is never recomputed and an interrupted one restarts from scratch.

Settings: an out folder belongs to one set of settings. A rerun whose config differs from
``OUT/benchmark.yaml`` in anything but the plan (``methods``, ``variants``, ``budgets``,
``seeds``, ``public_init_methods``) is refused with one line naming the differing keys; a
changed plan is allowed (finished cells are kept, new ones computed) and the previous config is
kept as ``benchmark.<n>.yaml``. Each cell (and teacher) also stores the settings it was computed
with and their fingerprint; a finished cell whose settings differ from the current ones is
refused the same way, never silently reused. The choice is to refuse rather than recompute:
recomputing would delete finished work on a typo.
"""
from __future__ import annotations

import json
import os
import shutil
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

from omegaconf import DictConfig, OmegaConf

from ..atomic import torch_save, write_json, write_text
from ..errors import UserError, one_line

from .plan import (FROZEN, KEEP_LAST_ONLY, PLAN_KEYS, REFERENCE, RUN_KEYS, TRAINED, VARIANTS, Cell,  # noqa: F401
                   _describe, _method_settings, _plain, _source_label, as_overrides, cell_settings, differences,
                   fingerprint, plan_cells, teacher_settings)


DATA_COMPLETE = ".benchmark-complete.json"  # in OUT/data, written after a successful prepare


def data_complete(data: Path) -> bool:
    """Whether ``data`` was prepared completely by the benchmark (not a partial folder left by a
    run killed during prepare, whose manifest lists only the videos finished so far)."""
    return (data / DATA_COMPLETE).is_file()


def relocate_records(folder: Path, old: Path) -> list[Path]:
    """After ``old`` was renamed to ``folder``: the configs and JSON records inside still name ``old``
    (a run writes its own path into config.yaml); point them at ``folder``. Returns the files changed."""
    changed = []
    for path in sorted(folder.rglob("*")):
        if path.suffix in (".yaml", ".json") and path.is_file():
            text = path.read_text()
            if str(old) in text:
                write_text(path, text.replace(str(old), str(folder)))
                changed.append(path)
    return changed


class Benchmark:
    def __init__(self, cfg: DictConfig, log: Callable[[str], None] = print) -> None:
        self.cfg = cfg
        self.out = Path(str(cfg.out))
        self.log = log
        self.data_dir: Optional[Path] = None
        self.stage_seconds: dict[str, float] = {}  # shared stages timed in this launch
        self._sources: dict[str, Path] = {}
        self._hashes: dict[str, str] = {}

    def _timed(self, stage: str, fn: Callable[[], Any]) -> Any:
        start = time.time()
        try:
            return fn()
        finally:
            self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + time.time() - start

    # --- settings ------------------------------------------------------------------------
    def check_config(self) -> list[str]:
        """Refuse a config that differs from OUT/benchmark.yaml outside the plan; return the plan changes."""
        path = self.out / "benchmark.yaml"
        if not path.is_file():
            return []
        previous = _plain(OmegaConf.load(path)) or {}
        current = _plain(self.cfg)

        def part(doc: dict, plan: bool) -> dict:
            return {k: v for k, v in doc.items() if k not in RUN_KEYS and ((k in PLAN_KEYS) == plan)}

        diffs = differences(part(previous, False), part(current, False))
        if diffs:
            raise UserError(f"{self.out}: this out folder holds a benchmark made with other settings "
                            f"({_describe(diffs)}); use another out= folder, or rerun with the settings "
                            f"of {path}")
        return differences(part(previous, True), part(current, True))

    def record_config(self, plan_changes: list[str]) -> None:
        """Write OUT/benchmark.yaml; a previous one with another plan is kept as benchmark.<n>.yaml."""
        path = self.out / "benchmark.yaml"
        if plan_changes:
            n = 1
            while (self.out / f"benchmark.{n}.yaml").exists():
                n += 1
            os.replace(path, self.out / f"benchmark.{n}.yaml")
            self.log(f"plan changed ({_describe(plan_changes)}): finished cells are kept; the previous "
                     f"config is kept as {self.out / f'benchmark.{n}.yaml'}")
        write_text(path, OmegaConf.to_yaml(self.cfg, resolve=True))

    def check_cells(self, cells: list[Cell]) -> None:
        """Refuse finished cells computed with settings other than the current ones."""
        stale = []
        for cell in cells:
            done = self.out / "cells" / cell.name / "result.json"
            if not done.is_file():
                continue
            stored = json.loads(done.read_text()).get("settings")
            if stored is None:
                stale.append((cell.name, ["no settings record (made by an older version)"]))
                continue
            diffs = differences(stored, json.loads(json.dumps(cell_settings(self.cfg, cell), default=str)))
            if diffs:
                stale.append((cell.name, diffs))
        if stale:
            name, diffs = stale[0]
            more = f" (and {len(stale) - 1} more cells)" if len(stale) > 1 else ""
            raise UserError(f"{self.out}: cell {name}{more} was computed with other settings "
                            f"({_describe(diffs)}); use another out= folder, or delete "
                            f"{self.out / 'cells' / name} to recompute it")

    # --- shared inputs -------------------------------------------------------------------
    def ensure_data(self) -> Path:
        from ..data.commands import PrepareArgs, SynthArgs, run_prepare, run_synth

        cfg = self.cfg.data
        if cfg.prepared:
            self.data_dir = Path(str(cfg.prepared))
            return self.data_dir
        raw = Path(str(cfg.raw)) if cfg.raw else self.out / "raw"
        if not cfg.raw and not (raw / "synth.json").is_file():
            s = cfg.synth
            self.log(f"synthesizing {s.videos} videos of {s.seconds}s into {raw}")
            self._timed("synthesize", lambda: run_synth(SynthArgs(out=raw, videos=int(s.videos), seconds=float(s.seconds),
                                                                  size=str(s.size), seed=int(s.seed),
                                                                  workers=min(4, os.cpu_count() or 1))))
        data = self.out / "data"
        if data_complete(data):
            self.data_dir = data  # prepared earlier, completely
            return data
        # A folder without the marker may be partial (a killed run): prepare resumes it, keeping
        # finished videos, and the marker is written last, once prepare reported no failure.
        self.log(f"preparing {raw} -> {data} at {cfg.fps} fps, {cfg.size}px")
        status = self._timed("prepare", lambda: run_prepare(PrepareArgs(
            dataset=str(cfg.dataset), root=raw, out=data, fps=str(cfg.fps), size=str(cfg.size), workers=1)))
        if status:
            raise UserError(f"{data}: prepare failed for some videos (see above); fix them and rerun")
        write_json(data / DATA_COMPLETE, {"raw": str(raw), "fps": cfg.fps, "size": cfg.size})
        self.data_dir = data
        return data

    def source_path(self, source: str) -> Path:
        """The public checkpoint: a path, a zoo name, or the cached generic public model for the config's settings."""
        if source not in self._sources:
            if source != "generic":  # a file, or a zoo name (fetched into the zoo cache, hash checked)
                from ..zoo.fetch import resolve_local

                self._sources[source] = resolve_local(source)
            else:
                from ..zoo.generic_model import cached_generic_model

                settings = _plain(self.cfg.generic)
                self._sources[source] = Path(self._timed("generic public model", lambda: cached_generic_model(
                    **settings, log=self.log)))
        return self._sources[source]

    def _source_info(self, source: str) -> dict:
        from ..checkpoints import sha256_file

        path = self.source_path(source)
        if source not in self._hashes:
            self._hashes[source] = sha256_file(path)
        return {"source": source, "path": str(path), "sha256": self._hashes[source]}

    def _data_overrides(self, budget: Any) -> list[str]:
        return [f"data.root={self.data_dir}", f"data.protocol={self.cfg.data.protocol}",
                f"data.budget={budget}"]

    def ensure_teacher(self, source: str, budget: Any) -> Path:
        from ..hosts.lightly.config import compose
        from ..hosts.lightly.runner import run_teacher_stage

        final = self.out / "teachers" / f"{_source_label(source)}-b{budget}"
        settings = json.loads(json.dumps(teacher_settings(self.cfg, source, budget), default=str))
        if (final / "teacher.pth").is_file():
            stored = final / "settings.json"
            recorded = {k: v for k, v in json.loads(stored.read_text()).items() if k != "fingerprint"} \
                if stored.is_file() else None
            diffs = differences(recorded, settings) if recorded is not None else \
                ["no settings record (made by an older version)"]
            if diffs:
                raise UserError(f"{self.out}: teacher {final.name} was made with other settings "
                                f"({_describe(diffs)}); use another out= folder, or delete {final}")
            return final / "teacher.pth"
        work = self._fresh(final)
        self.log(f"  teacher stage: {source} (budget {budget})")
        cfg = compose("teacher", [*KEEP_LAST_ONLY, *as_overrides(self.cfg.pretrain), f"method={self.cfg.teacher.method}",
                                  *self._method_overrides(str(self.cfg.teacher.method)),
                                  *as_overrides(self.cfg.teacher.overrides),
                                  f"teacher.source={self.source_path(source)}", f"teacher.bn={self.cfg.teacher.bn}",
                                  f"run.dir={work}", *self._data_overrides(budget)])
        self._timed("teacher stage", lambda: run_teacher_stage(cfg))
        write_json(work / "settings.json", {**settings, "fingerprint": fingerprint(settings)})
        os.replace(work, final)
        relocate_records(final, work)
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

    def random_backbone(self, work: Path, seed: int) -> tuple[Path, str]:
        """The student architecture, randomly initialised from ``seed`` (global RNG untouched), saved.

        The same seeded init as ``linear`` / ``extract --backbone ARCH --init-seed SEED``."""
        from ..checkpoints import random_backbone

        arch = str(self.cfg.pretrain.backbone.name)
        module = random_backbone(arch, int(seed)).module
        return torch_save(module.state_dict(), work / "backbone" / f"random-{arch}-s{seed}.pth"), arch

    def _note_architectures(self, cells: list[Cell]) -> None:
        arch = str(self.cfg.pretrain.backbone.name)
        if any(c.kind == "public_init" and c.source == "generic" for c in cells) and str(self.cfg.generic.arch) != arch:
            self.log(f"note: the public model is a {self.cfg.generic.arch} but the students are {arch}: "
                     f"pretraining refuses backbone.init of another architecture, so public_init cells will fail")

    # --- one cell ------------------------------------------------------------------------
    def run_cell(self, cell: Cell) -> dict[str, Any]:
        from ..evaluation.evaluate import evaluate_dirs
        from ..evaluation.features import extract
        from ..evaluation.linear import LinearConfig, run_linear
        from ..evaluation.temporal_cli import TemporalConfig, run_temporal
        from ..evaluation.metrics import json_ready
        from ..hosts.lightly.config import compose
        from ..hosts.lightly.runner import run_pretrain
        import torch

        cfg = self.cfg
        final = self.out / "cells" / cell.name
        settings = json.loads(json.dumps(cell_settings(cfg, cell), default=str))
        times: dict[str, float] = {}
        teacher = None
        if cell.kind == "distill":
            start = time.time()
            teacher = self.ensure_teacher(cell.source, cell.budget)
            times["teacher"] = time.time() - start
        source = self._source_info(cell.source) if cell.source is not None else None
        work = self._fresh(final)
        backbone: Optional[str] = None  # the architecture, where the file does not say it
        if cell.kind == "random":
            ckpt, arch = self.random_backbone(work, cell.seed)
            backbone = arch
        elif cell.kind == "public":
            ckpt = self.source_path(cell.source)
            if cell.source == "generic":  # a non-ResNet generic model's architecture is not in its keys
                backbone = str(cfg.generic.arch)
        else:
            method = f"distill_{cell.method}" if cell.kind == "distill" else cell.method
            extra = [f"distill.teacher={teacher}"] if cell.kind == "distill" else \
                [f"backbone.init={self.source_path(cell.source)}"] if cell.kind == "public_init" else []
            start = time.time()
            pre = compose("pretrain", [*KEEP_LAST_ONLY, *as_overrides(cfg.pretrain), f"method={method}",
                                       *self._method_overrides(cell.method),
                                       f"run.dir={work / 'pretrain'}", f"run.seed={cell.seed}",
                                       *self._data_overrides(cell.budget), *extra])
            run_pretrain(pre)
            ckpt = work / "pretrain" / "checkpoints" / "last.ckpt"
            times["pretrain"] = time.time() - start

        protocol = str(cfg.data.protocol)
        start = time.time()
        linear = run_linear(LinearConfig(
            data=str(self.data_dir), out=str(work / "linear"), checkpoint=str(ckpt), backbone=backbone,
            protocol=protocol, budget=cell.budget, epochs=int(cfg.linear.epochs), solver=str(cfg.linear.solver),
            image_size=int(cfg.linear.image_size), seed=cell.seed, progress=False))  # seconds; the cell line says it
        times["linear"] = time.time() - start
        start = time.time()
        extract(self.data_dir, work / "features", str(ckpt), backbone, protocol=protocol,
                image_size=int(cfg.extract.image_size))
        times["extract"] = time.time() - start
        start = time.time()
        t = cfg.temporal
        run_temporal(TemporalConfig(
            features=str(work / "features"), out=str(work / "temporal"), protocol=protocol, budget=cell.budget,
            epochs=int(t.epochs), stages=int(t.stages), layers=int(t.layers), channels=int(t.channels),
            seed=cell.seed, plots=True))
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
        # where the probed backbone lies once the cell folder is final
        backbone_file = (final / "backbone" / Path(ckpt).name if cell.kind == "random" else Path(ckpt)
                         if cell.kind == "public" else final / "pretrain" / "checkpoints" / "last.ckpt")
        result = {"cell": cell.name, "method": cell.method, "variant": cell.variant, "budget": cell.budget,
                  "seed": cell.seed, "teacher_source": cell.source, "teacher": str(teacher) if teacher else None,
                  "public_model": source, "backbone": str(backbone_file),
                  "linear": {k: linear.get(k) for k in ("val_acc", "test_acc")},
                  "temporal": json_ready(evaluation), "seconds": times, "threads": torch.get_num_threads(),
                  "settings": settings, "fingerprint": fingerprint(settings)}
        write_json(work / "result.json", result, default=str)
        if final.exists():
            shutil.rmtree(final)
        os.replace(work, final)
        relocate_records(final, work)
        return result

    # --- all cells -----------------------------------------------------------------------
    def check_stage_values(self, cells: list[Cell]) -> None:
        """Every stage's values, checked before anything is prepared or trained: the pretraining config
        of each trained method (as its cells will compose it), the linear probe's and the temporal
        model's settings. A bad value ends in the same one line as on the stage's own command."""
        from ..evaluation.linear import LinearConfig
        from ..evaluation.temporal_cli import TemporalConfig
        from ..hosts.lightly.config import compose
        from ..hosts.lightly.validate import validate_config

        cfg = self.cfg
        methods = sorted({cell.method for cell in cells if not cell.frozen} |
                         ({str(cfg.teacher.method)} if any(c.kind == "distill" for c in cells) else set()))
        for method in methods:
            composed = compose("pretrain", [*KEEP_LAST_ONLY, *as_overrides(cfg.pretrain), f"method={method}",
                                            *self._method_overrides(method), "data.root=null",
                                            f"run.dir={self.out / 'cells' / '.check'}"])
            try:
                validate_config(composed, "pretrain")
            except UserError as exc:
                raise UserError(f"benchmark: pretrain ({method}): {exc}") from None
        t = cfg.temporal
        LinearConfig(data="-", out=str(self.out / "cells" / ".check"), epochs=int(cfg.linear.epochs),
                     image_size=int(cfg.linear.image_size), solver=str(cfg.linear.solver))
        TemporalConfig(features="-", out=str(self.out / "cells" / ".check"), epochs=int(t.epochs),
                       stages=int(t.stages), layers=int(t.layers), channels=int(t.channels))

    def run(self) -> tuple[list[dict], dict[str, str]]:
        cells = plan_cells(self.cfg)
        jobs = self.jobs()
        self.check_stage_values(cells)
        self.out.mkdir(parents=True, exist_ok=True)
        plan_changes = self.check_config()
        self.check_cells(cells)
        self.record_config(plan_changes)
        self._note_architectures(cells)
        self.ensure_data()
        finished: dict[str, dict] = {}
        failures: dict[str, str] = {}
        computed: set[str] = set()
        pending = []
        for i, cell in enumerate(cells, 1):
            done = self.out / "cells" / cell.name / "result.json"
            if done.is_file():
                self.log(f"[{i}/{len(cells)}] {cell.name}: done earlier, kept")
                finished[cell.name] = json.loads(done.read_text())
            else:
                pending.append((i, cell))

        def report(i: int, cell: Cell, status: str, payload: Any, seconds: float) -> None:
            if status == "ok":
                finished[cell.name] = payload
                computed.add(cell.name)
                self.log(f"[{i}/{len(cells)}] {cell.name}: finished in {seconds:.0f}s")
            else:
                failures[cell.name] = payload
                self.log(f"[{i}/{len(cells)}] {cell.name}: FAILED: {payload}")

        if jobs == 1:
            for i, cell in pending:
                stages = "linear" if cell.frozen else "pretrain -> linear"
                self.log(f"[{i}/{len(cells)}] {cell.name}: {stages} -> features -> temporal -> evaluate")
                start = time.time()
                try:
                    report(i, cell, "ok", self.run_cell(cell), time.time() - start)
                except Exception as exc:  # a broken cell is reported; the others still run
                    report(i, cell, "failed", one_line(exc), 0.0)
                    if os.environ.get("SOLO_SURGICAL_TRACEBACK"):
                        traceback.print_exc()
        elif pending:
            from .parallel import run_pending

            run_pending(self, pending, jobs, report)
        results = [finished[cell.name] for cell in cells if cell.name in finished]
        from .report import write_reports

        write_reports(self.out, results, failures, list(self.cfg.evaluate.protocols))
        for r in results:  # per-cell stages, summed over the cells computed in this launch
            if r["cell"] in computed:
                for stage, seconds in r["seconds"].items():
                    if stage != "teacher":
                        self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + seconds
        write_json(self.out / "timings.json", {k: round(v, 1) for k, v in self.stage_seconds.items()})
        self.record_public_probe(results)
        return results, failures

    def jobs(self) -> int:
        jobs = self.cfg.get("jobs", 1)
        if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
            raise UserError(f"benchmark: jobs must be a whole number >= 1 (cells run side by side), got {jobs!r}")
        return jobs

    def record_public_probe(self, results: list[dict]) -> None:
        """Write the generic public model's probe on these surgical frames into its sidecar."""
        probes = [r for r in results if r["variant"].split("@")[0] == "public" and r.get("teacher_source") == "generic"]
        if not probes or "generic" not in self._sources:
            return
        from ..zoo.generic_model import record_probe

        per_budget: dict[str, list[float]] = {}
        for r in probes:
            if r["linear"].get("test_acc") is not None:
                per_budget.setdefault(str(r["budget"]), []).append(float(r["linear"]["test_acc"]))
        record_probe(self._sources["generic"], {
            "benchmark": str(self.out), "data": str(self.data_dir), "protocol": str(self.cfg.data.protocol),
            "linear_test_acc_mean_over_seeds": {b: round(sum(v) / len(v), 2) for b, v in per_budget.items()},
            "seeds": sorted({int(r["seed"]) for r in probes})})
