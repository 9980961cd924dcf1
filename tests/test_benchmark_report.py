"""Benchmark reports written from made-up cell results: csv, ladder, paired deltas, sentences, plots."""
from __future__ import annotations

import csv
import json
import math

import pytest

from solo_surgical.benchmark.report import write_reports

PNG = b"\x89PNG\r\n\x1a\n"


def _cell(method, variant, budget, seed, acc, jaccard=20.0):
    prefix = "frozen" if method == "-" else method
    return {"cell": f"{prefix}-{variant}-b{budget}-s{seed}", "method": method, "variant": variant, "budget": budget,
            "seed": seed, "teacher_source": None if variant in ("random", "plain") else "generic",
            "linear": {"test_acc": acc, "val_acc": acc - 1},
            "temporal": {"strict": {"accuracy": acc + 30, "jaccard": jaccard, "precision": 50.0, "recall": 40.0,
                                    "f1": jaccard + 5},
                         "matlab": {"accuracy": 90.0, "jaccard": 80.0, "precision": 85.0, "recall": 88.0}},
            "seconds": {"linear": 1.0, **({} if method == "-" else {"pretrain": 10.0})}, "fingerprint": "f" * 16}


# linear probe accuracy by (method, variant, budget) -> per seed
ACC = {
    ("-", "random", 1.0): [20.0, 21.0, 22.0], ("-", "public", 1.0): [40.0, 41.0, 42.0],
    ("-", "random", 0.5): [19.0, 20.0, 21.0], ("-", "public", 0.5): [38.0, 39.0, 40.0],
    ("mocov2plus", "plain", 1.0): [30.0, 31.0, 35.0], ("mocov2plus", "distill", 1.0): [29.0, 34.0, 36.0],
    ("mocov2plus", "plain", 0.5): [28.0, 29.0, 30.0], ("mocov2plus", "distill", 0.5): [31.0, 32.5, None],
    ("mocov2plus", "public_init", 1.0): [33.0, None, None], ("mocov2plus", "public_init", 0.5): [32.0, None, None],
    ("byol", "plain", 1.0): [30.0, 30.0, 30.0], ("byol", "distill", 1.0): [27.0, 28.0, 27.5],
    ("byol", "plain", 0.5): [30.0, None, None], ("byol", "distill", 0.5): [31.0, None, None],
}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("report")
    results = [_cell(m, v, b, seed, acc, jaccard=20.0 + seed + (2 if v == "distill" else 0))
               for (m, v, b), accs in ACC.items() for seed, acc in enumerate(accs) if acc is not None]
    write_reports(tmp_path, results, {"mocov2plus-distill-b0.5-s2": "ran out of memory"}, ["strict", "matlab"])
    return tmp_path, results


def test_csv_has_one_row_per_cell_and_the_metric_columns(report):
    out, results = report
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == len(results)
    assert {"method", "variant", "budget", "seed", "linear_test_acc", "strict_accuracy", "strict_jaccard",
            "strict_f1", "matlab_accuracy", "source", "fingerprint"} <= set(rows[0])
    random = next(r for r in rows if r["cell"] == "frozen-random-b1.0-s1")
    assert random["method"] == "-" and float(random["linear_test_acc"]) == 21.0 and random["seconds_pretrain"] == ""


def test_ladder_lists_references_first_with_n(report):
    out, _ = report
    table = (out / "table.md").read_text()
    ladder = table[table.index("## (a)"):table.index("## (b)")]
    lines = [line for line in ladder.splitlines() if line.startswith("| 1.0 |")]
    assert [line.split(" | ")[1:3] for line in lines] == [
        ["- (reference)", "random"], ["- (reference)", "public"], ["mocov2plus", "plain"],
        ["mocov2plus", "distill"], ["mocov2plus", "public_init"], ["byol", "plain"], ["byol", "distill"]]
    assert "| 1.0 | - (reference) | random | 3 | 21.0 ± 1.0 |" in ladder
    assert "| 1.0 | mocov2plus | public_init | 1 | 33.0 |" in ladder  # n = 1: no "± 0.0"
    assert "| 0.5 | mocov2plus | distill | 2 | 31.8 ± 1.1 |" in ladder
    assert "| 1.0 | byol | plain | 3 | 30.0 ± 0.0 |" in ladder  # three equal values: a real sd of 0
    assert not [line for line in ladder.splitlines() if "| 1 |" in line and "±" in line]
    assert "- mocov2plus, budget 1.0: random 21.0 (n = 3) < plain 32.0 (n = 3) < public_init 33.0 (n = 1) " \
           "< distill 33.0 (n = 3) < public 41.0 (n = 3)" not in ladder  # 33.0 = 33.0 is a tie
    assert "- mocov2plus, budget 1.0: random 21.0 (n = 3) < plain 32.0 (n = 3) < distill 33.0 (n = 3) " \
           "= public_init 33.0 (n = 1) < public 41.0 (n = 3)" in ladder
    assert "- byol, budget 1.0: random 21.0 < distill 27.5 < plain 30.0 < public 41.0 (n = 3 each)" in ladder


def test_paired_delta_table_matches_a_hand_computation(report):
    out, _ = report
    doc = json.loads((out / "results.json").read_text())
    rows = {(d["metric"], d["method"], d["a"], d["b"], d["budget"]): d for d in doc["paired"]}
    # mocov2plus, budget 1.0, distill - plain: -1, +3, +1 -> mean 1, sd 2, t(0.975, 2) = 4.3027
    d = rows[("linear_test_acc", "mocov2plus", "distill", "plain", "1.0")]
    half = 4.302652729911275 * 2.0 / math.sqrt(3)
    assert d["seeds"] == [0, 1, 2] and d["deltas"] == [-1.0, 3.0, 1.0]
    assert d["mean"] == pytest.approx(1.0) and d["sd"] == pytest.approx(2.0)
    assert (d["ci_low"], d["ci_high"]) == (pytest.approx(1 - half), pytest.approx(1 + half))
    # budget 0.5: seed 2 has no distilled cell -> not paired; +3, +3.5 -> mean 3.25, sd sqrt(0.125)
    d = rows[("linear_test_acc", "mocov2plus", "distill", "plain", "0.5")]
    half = 12.706204736174698 * math.sqrt(0.125) / math.sqrt(2)
    assert d["seeds"] == [0, 1] and d["n"] == 2 and d["mean"] == pytest.approx(3.25)
    assert d["ci_low"] == pytest.approx(3.25 - half) and d["ci_high"] == pytest.approx(3.25 + half)
    # public_init exists for seed 0 only: n = 1 and no interval
    d = rows[("linear_test_acc", "mocov2plus", "public_init", "plain", "1.0")]
    assert d["n"] == 1 and d["mean"] == pytest.approx(3.0) and d["ci_low"] is None and d["sd"] is None
    assert rows[("linear_test_acc", "mocov2plus", "distill", "public_init", "1.0")]["deltas"] == [-4.0]
    # byol has no public_init variant: no such comparison
    assert not [k for k in rows if k[1] == "byol" and "public_init" in k[2:4]]
    assert rows[("strict_jaccard", "byol", "distill", "plain", "1.0")]["mean"] == pytest.approx(2.0)
    assert {k[0] for k in rows} == {"linear_test_acc", "strict_jaccard", "strict_accuracy"}
    table = (out / "table.md").read_text()
    assert "| mocov2plus | distill - plain | 1.0 | 3 | +1.0 | 2.0 | [-4.0, +6.0] | s0 -1.0, s1 +3.0, s2 +1.0 |" in table
    assert "| mocov2plus | public_init - plain | 1.0 | 1 | +3.0 | – | n/a (n = 1) | s0 +3.0 |" in table
    assert "jaccard (strict), percentage points:" in table and "accuracy (strict), percentage points:" in table
    assert "- mocov2plus-distill-b0.5-s2: ran out of memory" in table


def test_sentences_say_what_the_intervals_say(report):
    out, _ = report
    said = json.loads((out / "results.json").read_text())["sentences"]
    moco = next(s for s in said if s.startswith("mocov2plus: distillation (distill - plain)"))
    # 1.0: CI [-4.0, +6.0] holds 0; 0.5: two pairs close together, CI [+0.1, +6.4] above 0
    assert moco == ("mocov2plus: distillation (distill - plain) raised linear-probe accuracy at budget 0.5 "
                    "(95% CI above 0: +3.2 points [+0.1, +6.4], n = 2); it showed no clear effect at budget 1.0 "
                    "(95% CI includes 0: +1.0 points [-4.0, +6.0], n = 3).")
    byol = next(s for s in said if s.startswith("byol: distillation (distill - plain)"))
    # 1.0: -3, -2, -2.5 -> CI below 0; 0.5: one pair
    assert "lowered linear-probe accuracy at budget 1.0 (95% CI below 0: -2.5 points [" in byol
    assert "cannot be judged at budget 0.5 with one paired seed (Δ = +1.0 points, n = 1; no confidence interval)" in byol
    assert any(s.startswith("mocov2plus: initialising from the public model (public_init - plain) cannot be judged")
               for s in said)
    assert all("± 0.0" not in s for s in said)
    assert "## (c) What it says" in (out / "table.md").read_text()


def test_plots_are_png_files(report):
    out, _ = report
    assert (out / "plots" / "accuracy_vs_budget.png").read_bytes()[:8] == PNG
    assert (out / "plots" / "linear_test_acc.png").read_bytes()[:8] == PNG


def test_a_raised_verdict(tmp_path):
    results = [_cell("simclr", v, 1.0, s, acc) for s, (p, d) in enumerate([(30, 33), (31, 34.5), (29, 32)])
               for v, acc in (("plain", p), ("distill", d))]
    write_reports(tmp_path, results, {}, ["strict"])
    said = json.loads((tmp_path / "results.json").read_text())["sentences"]
    assert said == [f"simclr: distillation (distill - plain) raised linear-probe accuracy at budget 1.0 "
                    f"(95% CI above 0: +3.2 points [+2.4, +3.9], n = 3)."]
