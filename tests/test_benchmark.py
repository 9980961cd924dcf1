"""The benchmark and the README's main job (`solo-surgical demo`), end to end at toy size, plus
cell planning, settings fingerprints and the reports on made-up results."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from omegaconf import OmegaConf

from solo_surgical.benchmark.commands import QUICK
from solo_surgical.cli import main
from solo_surgical.errors import UserError

DEMO_CELLS = ["frozen-public-b1.0-s0", "frozen-random-b1.0-s0", "mocov2plus-distill-b1.0-s0",
              "mocov2plus-plain-b1.0-s0", "mocov2plus-public_init-b1.0-s0"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")  # the generic public model's per-user cache, kept out of ~


@pytest.fixture(scope="module")
def demo(tmp_path_factory, cache):
    out = tmp_path_factory.mktemp("bench") / "demo"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SOLO_SURGICAL_CACHE": str(cache)}
    result = subprocess.run([sys.executable, "-m", "solo_surgical.cli", "demo", "--quick", "--out", str(out)],
                            env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return out, result.stdout


def test_outputs_have_the_documented_structure(demo):
    out, stdout = demo
    cells = sorted(p.name for p in (out / "cells").iterdir())
    assert cells == DEMO_CELLS
    for cell in cells:
        for part in ("linear/linear.json", "features/features.json", "temporal/predictions", "temporal/ribbons",
                     "eval/strict.json", "eval/matlab.json", "result.json"):
            assert (out / "cells" / cell / part).exists(), (cell, part)
        trained = not cell.startswith("frozen-")
        assert (out / "cells" / cell / "pretrain/checkpoints/last.ckpt").exists() == trained
        # no record inside a finished cell names the temporary folder it was built in
        assert not [p for p in (out / "cells" / cell).rglob("*") if p.suffix in (".yaml", ".json")
                    and ".partial" in p.read_text()], cell
        if trained:  # a cell keeps its final weights only, however many epochs it trained
            assert sorted(p.name for p in (out / "cells" / cell / "pretrain/checkpoints").iterdir()) == ["last.ckpt"]
    assert (out / "teachers" / "generic-b1.0" / "teacher.pth").is_file()
    assert not list((out / "teachers").rglob("epoch*.ckpt"))
    assert (out / "plots" / "accuracy_vs_budget.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((out / "plots").glob("*.png"))) >= 7
    table = (out / "table.md").read_text()
    for row in ("| 1.0 | - (reference) | random | 1 |", "| 1.0 | - (reference) | public | 1 |",
                "| 1.0 | mocov2plus | plain | 1 |", "| 1.0 | mocov2plus | distill | 1 |",
                "| 1.0 | mocov2plus | public_init | 1 |", "| mocov2plus | distill - plain | 1.0 | 1 |"):
        assert row in table
    assert table in stdout  # the main job prints the final table
    # one seed: n = 1 everywhere, no interval and no "± 0.0"
    assert "± 0.0" not in stdout and "n/a (n = 1)" in stdout
    answer = stdout[stdout.index("Does distilling the public model"):]
    assert "ladder  mocov2plus, budget 1.0: " in answer and "random" in answer and "public" in answer
    assert "answer  mocov2plus: distillation (distill - plain) cannot be judged at budget 1.0 with one paired seed" \
        in answer


def test_every_variant_is_probed_the_same_way(demo):
    out, _ = demo
    cells = {c: json.loads((out / "cells" / c / "result.json").read_text()) for c in DEMO_CELLS}
    linear = {c: json.loads((out / "cells" / c / "linear" / "linear.json").read_text()) for c in DEMO_CELLS}
    probe = {k: v for k, v in cells["frozen-random-b1.0-s0"]["settings"].items()
             if k in ("data", "linear", "extract", "temporal", "evaluate", "budget", "seed")}
    for name, doc in cells.items():
        assert {k: doc["settings"][k] for k in probe} == probe, name
        assert linear[name]["protocol"] == "standard"
    # random: the student architecture, from a file saved in the cell; public: the teacher's source itself
    assert cells["frozen-random-b1.0-s0"]["method"] == "-"
    assert linear["frozen-random-b1.0-s0"]["backbone"] == "tiny"
    assert linear["frozen-random-b1.0-s0"]["checkpoint"].endswith("backbone/random-tiny-s0.pth")
    public = cells["frozen-public-b1.0-s0"]["public_model"]
    assert linear["frozen-public-b1.0-s0"]["checkpoint"] == public["path"]
    assert cells["mocov2plus-distill-b1.0-s0"]["public_model"] == public
    teacher_source = json.loads((out / "teachers" / "generic-b1.0" / "settings.json").read_text())["source"]
    assert teacher_source == cells["frozen-public-b1.0-s0"]["settings"]["source"]
    # public_init: the SSL method started from the public weights
    run_cfg = OmegaConf.load(out / "cells" / "mocov2plus-public_init-b1.0-s0" / "pretrain" / "config.yaml")
    assert str(run_cfg.backbone.init) == public["path"] and str(run_cfg.method.name) == "mocov2plus"


def test_results_agree_with_the_per_stage_files(demo):
    out, _ = demo
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 5
    assert {"method", "variant", "budget", "seed", "linear_test_acc", "strict_accuracy", "strict_jaccard",
            "strict_f1", "strict_precision", "strict_recall"} <= set(rows[0])
    for row in rows:
        cell = out / "cells" / row["cell"]
        linear = json.loads((cell / "linear" / "linear.json").read_text())
        assert float(row["linear_test_acc"]) == pytest.approx(linear["test_acc"])
        strict = json.loads((cell / "eval" / "strict.json").read_text())
        # recomputed independently: mean of the per-video accuracies
        assert float(row["strict_accuracy"]) == pytest.approx(np.mean([v["accuracy"] for v in strict["videos"]]))
        assert (row["seconds_pretrain"] != "") == (row["method"] != "-")
    doc = json.loads((out / "results.json").read_text())
    assert doc["failures"] == {} and len(doc["summary"]) == 5
    distill = next(c for c in doc["cells"] if c["variant"] == "distill")
    assert distill["teacher"].endswith("teachers/generic-b1.0/teacher.pth")
    delta = next(d for d in doc["paired"] if d["metric"] == "linear_test_acc" and d["a"] == "distill")
    by_variant = {r["variant"]: float(r["linear_test_acc"]) for r in rows}
    assert delta["n"] == 1 and delta["ci_low"] is None
    assert delta["mean"] == pytest.approx(by_variant["distill"] - by_variant["plain"])


def test_resume_recomputes_nothing(demo, cache, capsys, monkeypatch):
    out, _ = demo
    monkeypatch.setenv("SOLO_SURGICAL_CACHE", str(cache))
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and "plots" not in p.parts
              and p.name not in ("results.csv", "results.json", "table.md", "timings.json", "benchmark.yaml")}
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    log = capsys.readouterr().out
    assert log.count("done earlier, kept") == 5 and "pretrain ->" not in log
    changed = [p for p, t in stamps.items() if p.stat().st_mtime_ns != t]
    assert changed == []


def test_other_settings_in_the_same_out_folder_are_refused(demo, cache, capsys, monkeypatch):
    out, _ = demo
    monkeypatch.setenv("SOLO_SURGICAL_CACHE", str(cache))
    before = (out / "benchmark.yaml").read_text()
    assert main(["demo", "--quick", "--out", str(out), "linear.epochs=3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(out) in err[0] and "linear.epochs: 1 -> 3" in err[0]
    assert (out / "benchmark.yaml").read_text() == before and not list(out.glob("benchmark.*.yaml"))


def test_interrupted_cell_restarts_and_broken_cell_is_reported(demo, tmp_path, capsys):
    out, _ = demo
    bench = tmp_path / "bench"
    partial = bench / "cells" / ".mocov2plus-plain-b1.0-s0.partial"
    partial.mkdir(parents=True)
    (partial / "half-written.ckpt").write_bytes(b"junk")  # what a killed run leaves
    missing = tmp_path / "no-such-teacher.pth"
    code = main(["benchmark", *QUICK, f"out={bench}", f"data.prepared={out / 'data'}", "methods=[mocov2plus]",
                 "variants=[plain,distill]", f"teacher.sources=[{missing}]"])
    log = capsys.readouterr().out
    assert code == 1
    assert not partial.exists()
    assert (bench / "cells" / "mocov2plus-plain-b1.0-s0" / "result.json").is_file()
    failed = [line for line in log.splitlines() if "FAILED" in line]
    assert len(failed) == 1 and "mocov2plus-distill-b1.0-s0" in failed[0] and str(missing) in failed[0]
    assert "no-such-teacher.pth" in (bench / "table.md").read_text()
    doc = json.loads((bench / "results.json").read_text())
    assert list(doc["failures"]) == ["mocov2plus-distill-b1.0-s0"] and len(doc["cells"]) == 1


def _numbers(path) -> dict[str, dict[str, str]]:
    """results.csv rows by cell, without timings and the settings fingerprint (data.prepared differs)."""
    rows = {r["cell"]: r for r in csv.DictReader(open(path))}
    return {cell: {k: v for k, v in r.items() if not k.startswith("seconds_") and k != "fingerprint"}
            for cell, r in rows.items()}


@pytest.mark.slow
def test_cells_side_by_side_give_the_numbers_of_one_at_a_time(demo, cache, tmp_path, capsys, monkeypatch):
    out, _ = demo
    monkeypatch.setenv("SOLO_SURGICAL_CACHE", str(cache))
    import torch

    assert torch.get_num_threads() == 1  # the demo ran under OMP_NUM_THREADS=1: cells at one thread each
    bench = tmp_path / "jobs2"
    assert main(["demo", "--quick", "--out", str(bench), f"data.prepared={out / 'data'}", "jobs=2"]) == 0
    log = capsys.readouterr().out
    assert "5 cells on 2 worker processes, 1 torch thread(s) each" in log
    ours, theirs = _numbers(bench / "results.csv"), _numbers(out / "results.csv")
    assert sorted(ours) == DEMO_CELLS
    assert ours == theirs  # every metric of every cell, the teacher's distill cell included
    assert sorted(p.stem for p in (bench / "logs").glob("*.log")) == sorted(DEMO_CELLS + ["teacher-generic-b1.0"])
    assert "epoch 1/1" in (bench / "logs" / "mocov2plus-plain-b1.0-s0.log").read_text()  # a worker's own output
    assert json.loads((bench / "cells" / DEMO_CELLS[2] / "result.json").read_text())["threads"] == 1
    # a public model that cannot be loaded fails its cells, not the run; the others finish
    missing = tmp_path / "no-such-teacher.pth"
    code = main(["benchmark", *QUICK, f"out={tmp_path / 'broken'}", f"data.prepared={out / 'data'}", "jobs=2",
                 "methods=[mocov2plus]", "variants=[plain,distill]", f"teacher.sources=[{missing}]"])
    failed = [line for line in capsys.readouterr().out.splitlines() if "FAILED" in line]
    assert code == 1 and len(failed) == 1 and "mocov2plus-distill-b1.0-s0" in failed[0] and str(missing) in failed[0]
    assert (tmp_path / "broken" / "cells" / "mocov2plus-plain-b1.0-s0" / "result.json").is_file()


def test_jobs_must_be_a_positive_whole_number(tmp_path, capsys):
    for bad in ("0", "1.5", "two"):
        assert main(["benchmark", f"out={tmp_path / 'b'}", *QUICK, f"jobs={bad}"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "jobs" in err[0]
    assert not (tmp_path / "b").exists()


# --- planning and settings (no training) --------------------------------------------------------
def _plan_cfg(**over):
    base = {"teacher": {"sources": ["generic"]}, "budgets": [1.0, 0.5], "methods": ["simclr", "mocov2plus"],
            "seeds": [0, 1, 2], "variants": ["random", "public", "plain", "distill", "public_init"],
            "public_init_methods": ["mocov2plus"]}
    return OmegaConf.create({**base, **over})


def test_plan_runs_frozen_cells_once_per_budget_and_seed():
    from solo_surgical.benchmark.run import plan_cells

    cells = plan_cells(_plan_cfg())
    names = [c.name for c in cells]
    assert len(set(names)) == len(names)
    frozen = [c for c in cells if c.frozen]
    assert sorted(c.name for c in frozen if c.budget == 0.5) == \
        ["frozen-public-b0.5-s0", "frozen-public-b0.5-s1", "frozen-public-b0.5-s2",
         "frozen-random-b0.5-s0", "frozen-random-b0.5-s1", "frozen-random-b0.5-s2"]
    assert len(frozen) == 2 * 3 * 2 and {c.method for c in frozen} == {"-"}
    assert {c.source for c in frozen if c.kind == "public"} == {"generic"}
    assert {c.source for c in frozen if c.kind == "random"} == {None}
    # public_init only for the configured methods
    assert {c.method for c in cells if c.kind == "public_init"} == {"mocov2plus"}
    per_method = {m: sum(c.method == m for c in cells) for m in ("simclr", "mocov2plus")}
    assert per_method == {"simclr": 2 * 3 * 2, "mocov2plus": 2 * 3 * 3}
    # null: every method gets one
    assert {c.method for c in plan_cells(_plan_cfg(public_init_methods=None)) if c.kind == "public_init"} == \
        {"simclr", "mocov2plus"}
    # per budget, the cheap frozen cells come first
    assert [c.frozen for c in cells[:6]] == [True] * 6 and cells[0].budget == 1.0
    with pytest.raises(UserError, match="unknown 'finetune'"):
        plan_cells(_plan_cfg(variants=["plain", "finetune"]))


def test_plan_and_overrides():
    from solo_surgical.benchmark.run import as_overrides, plan_cells

    cfg = OmegaConf.create({"teacher": {"sources": ["generic", "/x/resnet50-0676ba61.pth"]}, "budgets": [1.0, 0.25],
                            "methods": ["byol"], "seeds": [0, 1], "variants": ["plain", "distill", "public"]})
    cells = plan_cells(cfg)
    # per budget and seed: one plain cell, one distilled cell and one public cell per teacher source
    assert len(cells) == 2 * 2 * (1 + 2 + 2)
    assert {c.variant for c in cells} == {"plain", "distill@generic", "distill@resnet50_0676ba61",
                                          "public@generic", "public@resnet50_0676ba61"}
    assert "frozen-public-resnet50_0676ba61-b0.25-s1" in {c.name for c in cells}
    assert len({c.name for c in cells}) == len(cells)
    assert as_overrides(OmegaConf.create({"trainer": {"max_epochs": 3}, "data": {"mean": [0.5, 0.4]},
                                          "backbone": {"init": None}})) == \
        ["trainer.max_epochs=3", "data.mean=[0.5,0.4]", "backbone.init=null"]


def test_benchmark_pretrain_block_sets_transform_arguments():
    """data.augment is an empty open dict in pretrain.yaml: the benchmark's pretrain block must add its keys
    (a plain ``data.augment.cj_prob=0`` is refused by Hydra), while a misspelt fixed key is still refused."""
    from solo_surgical.benchmark.run import as_overrides
    from solo_surgical.hosts.lightly.config import compose

    block = OmegaConf.create({"data": {"augment": {"cj_prob": 0.0, "random_gray_scale": 0.0}, "min_scale": 0.5}})
    cfg = compose("pretrain", as_overrides(block))
    assert dict(cfg.data.augment) == {"cj_prob": 0.0, "random_gray_scale": 0.0} and cfg.data.min_scale == 0.5
    with pytest.raises(UserError):
        compose("pretrain", as_overrides(OmegaConf.create({"data": {"min_scal": 0.5}})))


def test_a_missing_key_error_says_how_to_add_only_where_adding_is_checked(tmp_path):
    """benchmark.yaml's pretrain block lists only what it changes: pretrain.distill.weight is a real pretrain
    key that must be added with +, and the error says so; a misspelt benchmark key gets no such hint."""
    def error(*overrides):
        with pytest.raises(UserError) as info:
            _bench_cfg(tmp_path / "b", *overrides)
        return str(info.value)

    assert error("pretrain.distill.weight=5").endswith("no such key (to add it: +pretrain.distill.weight=5)")
    assert error("linear.epochz=5").endswith("'linear.epochz': no such key")
    assert _bench_cfg(tmp_path / "b", "+pretrain.distill.weight=5").pretrain.distill.weight == 5


def _bench_cfg(out, *overrides):
    from solo_surgical.benchmark.plan import compose_benchmark

    return compose_benchmark([f"out={out}", *QUICK, *overrides])


def test_cell_settings_hold_what_changes_a_cell(tmp_path):
    from solo_surgical.benchmark.run import Cell, cell_settings, fingerprint

    cfg = _bench_cfg(tmp_path)
    random = cell_settings(cfg, Cell("-", "random", 1.0, 0))
    public = cell_settings(cfg, Cell("-", "public", 1.0, 0, "generic"))
    plain = cell_settings(cfg, Cell("mocov2plus", "plain", 1.0, 0))
    distill = cell_settings(cfg, Cell("mocov2plus", "distill", 1.0, 0, "generic"))
    assert "pretrain" not in random and random["random"] == {"arch": "tiny"}
    assert "pretrain" not in public and public["source"]["generic"]["scenes"] == 64
    assert "teacher" not in plain and "source" not in plain and plain["method_overrides"]
    assert distill["teacher"]["method"] == "mocov2plus" and distill["source"] == public["source"]
    # the plan does not change a cell; a probe setting does
    more_seeds = _bench_cfg(tmp_path, "seeds=[0,1,2]", "methods=[byol,mocov2plus]")
    assert fingerprint(cell_settings(more_seeds, Cell("mocov2plus", "plain", 1.0, 0))) == fingerprint(plain)
    epochs = _bench_cfg(tmp_path, "linear.epochs=4")
    assert fingerprint(cell_settings(epochs, Cell("-", "random", 1.0, 0))) != fingerprint(random)


def test_config_refusal_names_the_keys_and_a_new_plan_is_kept(tmp_path):
    from solo_surgical.benchmark.run import Benchmark

    out = tmp_path / "out"
    first = Benchmark(_bench_cfg(out), log=lambda m: None)
    out.mkdir()
    first.record_config(first.check_config())
    original = (out / "benchmark.yaml").read_text()
    with pytest.raises(UserError) as info:
        Benchmark(_bench_cfg(out, "temporal.epochs=9", "generic.epochs=2")).check_config()
    message = str(info.value)
    assert str(out) in message and "temporal.epochs: 2 -> 9" in message and "generic.epochs: 1 -> 2" in message
    assert (out / "benchmark.yaml").read_text() == original
    # another plan (more seeds) is allowed; the previous config is kept, not overwritten
    logged = []
    wider = Benchmark(_bench_cfg(out, "seeds=[0,1]"), log=logged.append)
    wider.record_config(wider.check_config())
    assert (out / "benchmark.1.yaml").read_text() == original
    assert "seeds: [0] -> [0, 1]" in logged[0]
    assert OmegaConf.load(out / "benchmark.yaml").seeds == [0, 1]


def test_a_finished_cell_with_other_settings_is_refused(tmp_path):
    from solo_surgical.benchmark.run import Benchmark, Cell, cell_settings, plan_cells

    out = tmp_path / "out"
    old = _bench_cfg(out, "temporal.channels=16")
    cell = Cell("mocov2plus", "plain", 1.0, 0)
    done = out / "cells" / cell.name / "result.json"
    done.parent.mkdir(parents=True)
    done.write_text(json.dumps({"settings": json.loads(json.dumps(cell_settings(old, cell)))}))
    bench = Benchmark(_bench_cfg(out))  # no benchmark.yaml: only the cell knows its settings
    with pytest.raises(UserError) as info:
        bench.check_cells(plan_cells(bench.cfg))
    message = str(info.value)
    assert str(out) in message and cell.name in message and "temporal.channels: 16 -> 8" in message
    Benchmark(old).check_cells([cell])  # the same settings pass
    done.write_text(json.dumps({"cell": cell.name}))  # made before settings were recorded
    with pytest.raises(UserError, match="no settings record"):
        bench.check_cells([cell])


def test_random_backbone_is_seeded_by_the_cell_seed(tmp_path):
    import torch

    from solo_surgical.benchmark.run import Benchmark

    bench = Benchmark(_bench_cfg(tmp_path))
    state = torch.get_rng_state()
    a, arch = bench.random_backbone(tmp_path / "a", 0)
    b, _ = bench.random_backbone(tmp_path / "b", 0)
    c, _ = bench.random_backbone(tmp_path / "c", 1)
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is left alone
    sa, sb, sc = (torch.load(p) for p in (a, b, c))
    assert arch == "tiny" and a.name == "random-tiny-s0.pth"
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["features.0.weight"], sc["features.0.weight"])


def test_a_finished_teacher_is_reused_by_the_next_cell(demo, cache, monkeypatch):
    # every distill cell after the first reads the teacher made for its (source, budget): its settings
    # record must match, or every seed after the first would fail
    out, _ = demo
    from solo_surgical.benchmark.run import Benchmark

    monkeypatch.setenv("SOLO_SURGICAL_CACHE", str(cache))
    bench = Benchmark(_bench_cfg(out, "methods=[mocov2plus]", "public_init_methods=[mocov2plus]"), log=lambda m: None)
    bench.ensure_data()
    teacher = out / "teachers" / "generic-b1.0" / "teacher.pth"
    before = teacher.stat().st_mtime_ns
    assert bench.ensure_teacher("generic", 1.0) == teacher
    # the generic public model's sidecar records its probe on the surgical frames, equal to the public cell's
    sidecar = json.loads(bench.source_path("generic").with_suffix(".json").read_text())
    public = json.loads((out / "cells" / "frozen-public-b1.0-s0" / "result.json").read_text())
    assert sidecar["surgical_probe"]["linear_test_acc_mean_over_seeds"] == {"1.0": round(public["linear"]["test_acc"], 2)}
    assert set(sidecar["heldout"]) == {"main-object", "main-colour", "background-hue", "texture", "other-objects"}
    assert teacher.stat().st_mtime_ns == before  # reused, not retrained
    with pytest.raises(UserError, match="other settings"):
        Benchmark(_bench_cfg(out, "teacher.bn=recompute"), log=lambda m: None).ensure_teacher("generic", 1.0)


def test_export_of_a_cell_carries_the_metrics_its_stages_wrote(demo, tmp_path, capsys):
    out, _ = demo
    cell = out / "cells" / "mocov2plus-distill-b1.0-s0"
    assert main(["export", str(cell / "pretrain"), "--out", str(tmp_path / "card")]) == 0
    card = json.loads((tmp_path / "card" / "card.json").read_text())
    by_file = {e["file"]: e for e in card["evaluation"]}
    assert set(by_file) == {"eval/linear.json", "eval/strict.json", "eval/matlab.json"}
    result = json.loads((cell / "result.json").read_text())
    assert by_file["eval/linear.json"]["metrics"]["test_acc"] == result["linear"]["test_acc"]
    assert (tmp_path / "card" / "eval" / "strict.json").read_bytes() == (cell / "eval" / "strict.json").read_bytes()
    capsys.readouterr()


@pytest.mark.parametrize("override,named", [
    ("pretrain.trainer.max_epochs=-5", "trainer.max_epochs=-5"),
    ("+pretrain.optimizer.lr=nan", "optimizer.lr=nan"),
    ("+pretrain.trainer.foo=1", "trainer.foo"),
    ("pretrain.data.image_size=0", "data.image_size=0"),
    ("linear.epochs=0", "epochs=0"),
    ("temporal.layers=0", "layers=0"),
])
def test_bad_stage_values_are_refused_before_any_work(tmp_path, capsys, override, named):
    out = tmp_path / "bench"
    code = main(["benchmark", f"out={out}", *QUICK, override])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("solo-surgical: error:")]
    assert code == 2 and len(lines) == 1 and named in lines[0] and "Traceback" not in err, err
    assert not out.exists()  # nothing synthesized, prepared or recorded
