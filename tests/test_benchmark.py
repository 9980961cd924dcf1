"""The benchmark and the README's main job (`solo-surgical demo`), end to end at toy size."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from solo_surgical.benchmark.commands import QUICK
from solo_surgical.cli import main


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "demo"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "solo_surgical.cli", "demo", "--quick", "--out", str(out)],
                            env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return out, result.stdout


def test_outputs_have_the_documented_structure(demo):
    out, stdout = demo
    cells = sorted(p.name for p in (out / "cells").iterdir())
    assert cells == ["mocov2plus-distill-b1.0-s0", "mocov2plus-plain-b1.0-s0"]
    for cell in cells:
        for part in ("pretrain/checkpoints/last.ckpt", "linear/linear.json", "features/features.json",
                     "temporal/predictions", "temporal/ribbons", "eval/strict.json", "eval/matlab.json", "result.json"):
            assert (out / "cells" / cell / part).exists(), (cell, part)
    assert (out / "teachers" / "generic-b1.0" / "teacher.pth").is_file()
    assert len(list((out / "plots").glob("*.png"))) >= 6
    table = (out / "table.md").read_text()
    assert "| 1.0 | mocov2plus | plain | 1 |" in table and "| 1.0 | mocov2plus | distill | 1 |" in table
    assert table in stdout  # the main job prints the final table


def test_results_agree_with_the_per_stage_files(demo):
    out, _ = demo
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 2
    for row in rows:
        cell = out / "cells" / row["cell"]
        linear = json.loads((cell / "linear" / "linear.json").read_text())
        assert float(row["linear_test_acc"]) == pytest.approx(linear["test_acc"])
        strict = json.loads((cell / "eval" / "strict.json").read_text())
        # recomputed independently: mean of the per-video accuracies
        assert float(row["strict_accuracy"]) == pytest.approx(np.mean([v["accuracy"] for v in strict["videos"]]))
        assert float(row["seconds_pretrain"]) > 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["failures"] == {} and len(doc["summary"]) == 2
    distill = next(c for c in doc["cells"] if c["variant"] == "distill")
    assert distill["teacher"].endswith("teachers/generic-b1.0/teacher.pth")


def test_resume_recomputes_nothing(demo, capsys):
    out, _ = demo
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and "plots" not in p.parts
              and p.name not in ("results.csv", "results.json", "table.md", "timings.json", "benchmark.yaml")}
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    log = capsys.readouterr().out
    assert log.count("done earlier, kept") == 2 and "pretrain ->" not in log
    changed = [p for p, t in stamps.items() if p.stat().st_mtime_ns != t]
    assert changed == []


def test_interrupted_cell_restarts_and_broken_cell_is_reported(demo, tmp_path, capsys):
    out, _ = demo
    bench = tmp_path / "bench"
    partial = bench / "cells" / ".mocov2plus-plain-b1.0-s0.partial"
    partial.mkdir(parents=True)
    (partial / "half-written.ckpt").write_bytes(b"junk")  # what a killed run leaves
    missing = tmp_path / "no-such-teacher.pth"
    code = main(["benchmark", *QUICK, f"out={bench}", f"data.prepared={out / 'data'}", "methods=[mocov2plus]",
                 f"teacher.sources=[{missing}]"])
    log = capsys.readouterr().out
    assert code == 1
    assert not partial.exists()
    assert (bench / "cells" / "mocov2plus-plain-b1.0-s0" / "result.json").is_file()
    failed = [line for line in log.splitlines() if "FAILED" in line]
    assert len(failed) == 1 and "mocov2plus-distill-b1.0-s0" in failed[0] and str(missing) in failed[0]
    assert "no-such-teacher.pth" in (bench / "table.md").read_text()
    doc = json.loads((bench / "results.json").read_text())
    assert list(doc["failures"]) == ["mocov2plus-distill-b1.0-s0"] and len(doc["cells"]) == 1


def test_plan_and_overrides():
    from omegaconf import OmegaConf

    from solo_surgical.benchmark.run import as_overrides, plan_cells

    cfg = OmegaConf.create({"teacher": {"sources": ["generic", "/x/resnet50-0676ba61.pth"]}, "budgets": [1.0, 0.25],
                            "methods": ["byol"], "seeds": [0, 1], "variants": ["plain", "distill"]})
    cells = plan_cells(cfg)
    # per budget and seed: one plain cell and one distilled cell per teacher source
    assert len(cells) == 2 * 2 * (1 + 2)
    assert {c.variant for c in cells} == {"plain", "distill@generic", "distill@resnet50_0676ba61"}
    assert len({c.name for c in cells}) == len(cells)
    assert as_overrides(OmegaConf.create({"trainer": {"max_epochs": 3}, "data": {"mean": [0.5, 0.4]},
                                          "backbone": {"init": None}})) == \
        ["trainer.max_epochs=3", "data.mean=[0.5,0.4]", "backbone.init=null"]
