"""Benchmark outputs: results.csv / results.json, table.md (probe ladder, paired deltas, plain
sentences) and plots (accuracy vs budget per method, one bar chart per metric).

Statistics come from :mod:`solo_surgical.benchmark.stats`: means over seeds, and deltas between
two variants of one method and budget *paired by seed* (a seed present in one variant only is
not paired), with a 95 % Student-t interval when there are at least two pairs.
"""
from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..atomic import write_bytes, write_text
from .stats import Estimate, PairedDelta, estimate, paired_delta, verdict

REFERENCE = "-"
VARIANT_ORDER = ("random", "public", "plain", "distill", "public_init")
DELTA_METRICS = ("linear_test_acc", "strict_jaccard", "strict_accuracy")
KEY_METRICS = ("linear_test_acc", "strict_accuracy", "strict_jaccard", "strict_f1", "matlab_accuracy", "matlab_jaccard")
TIMED_STAGES = ("teacher", "pretrain", "linear", "extract", "temporal", "evaluate")


# (column name, path into a cell's result.json, label in the table)
def metric_columns(protocols: Sequence[str]) -> list[tuple[str, tuple[str, ...], str]]:
    columns = [("linear_test_acc", ("linear", "test_acc"), "linear probe acc (test frames)")]
    for protocol in protocols:
        names = ["accuracy", "precision", "recall", "jaccard"] + (["f1"] if protocol == "strict" else [])
        columns += [(f"{protocol}_{m}", ("temporal", protocol, m), f"{m} ({protocol})") for m in names]
    return columns


def _get(doc: dict, path: tuple[str, ...]) -> float:
    for key in path:
        if not isinstance(doc, dict) or doc.get(key) is None:
            return math.nan
        doc = doc[key]
    return float(doc)


def _kind(variant: str) -> str:
    return variant.split("@")[0]


def _source(variant: str) -> str:
    return variant.split("@", 1)[1] if "@" in variant else ""


def variant_key(variant: str) -> tuple:
    kind = _kind(variant)
    return (VARIANT_ORDER.index(kind) if kind in VARIANT_ORDER else len(VARIANT_ORDER), variant)


def _budget_value(budget: Any) -> Optional[float]:
    try:
        return float(str(budget).rstrip("%"))
    except ValueError:
        return None


def _budget_order(budgets) -> list[str]:
    """Largest budget first; budgets that are not numbers keep their order, after the numbers."""
    seen = list(dict.fromkeys(str(b) for b in budgets))
    return sorted(seen, key=lambda b: (_budget_value(b) is None, -(_budget_value(b) or 0.0), seen.index(b)))


def _methods(results: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["method"] for r in results if r["method"] != REFERENCE))


# --- summaries -----------------------------------------------------------------------------------
def summarise(results: list[dict], protocols: Sequence[str]) -> list[dict[str, Any]]:
    """The probe ladder: one row per (budget, method, variant) with an Estimate over seeds per metric.
    Per budget: the references (method ``-``) first, then each method's variants in ladder order."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in results:
        groups[(str(r["budget"]), r["method"], r["variant"])].append(r)
    methods = [REFERENCE, *_methods(results)]
    budgets = _budget_order(r["budget"] for r in results)
    rows = []
    for key in sorted(groups, key=lambda k: (budgets.index(k[0]), methods.index(k[1]), variant_key(k[2]))):
        members = groups[key]
        row: dict[str, Any] = {"budget": key[0], "method": key[1], "variant": key[2], "n": len(members),
                               "seeds": sorted(int(m["seed"]) for m in members)}
        for name, path, _ in metric_columns(protocols):
            row[name] = estimate([_get(m, path) for m in members])
        rows.append(row)
    return rows


def comparisons(variants: Sequence[str]) -> list[tuple[str, str]]:
    """(a, b) pairs reported as a - b: distill - plain, public_init - plain, distill - public_init
    (the last with the same teacher source when there are several)."""
    present = sorted(set(variants), key=variant_key)
    distill = [v for v in present if _kind(v) == "distill"]
    init = [v for v in present if _kind(v) == "public_init"]
    pairs = []
    if "plain" in present:
        pairs += [(d, "plain") for d in distill] + [(p, "plain") for p in init]
    pairs += [(d, p) for d in distill for p in init if _source(d) == _source(p)]
    return pairs


def paired_rows(results: list[dict], metrics: Sequence[str], protocols: Sequence[str]) -> list[dict[str, Any]]:
    """One row per (metric, method, comparison, budget) with the PairedDelta matched by seed."""
    paths = {name: path for name, path, _ in metric_columns(protocols)}
    values: dict[tuple, dict[int, float]] = defaultdict(dict)
    for r in results:
        for name in metrics:
            if name in paths:
                values[(name, r["method"], r["variant"], str(r["budget"]))][int(r["seed"])] = _get(r, paths[name])
    budgets = _budget_order(r["budget"] for r in results)
    rows = []
    for name in metrics:
        if name not in paths:
            continue
        for method in _methods(results):
            variants = [r["variant"] for r in results if r["method"] == method]
            for a, b in comparisons(variants):
                for budget in budgets:
                    pair = paired_delta(values.get((name, method, a, budget), {}),
                                        values.get((name, method, b, budget), {}))
                    rows.append({"metric": name, "method": method, "a": a, "b": b, "budget": budget, "paired": pair})
    return rows


# --- formatting -----------------------------------------------------------------------------------
def _signed(value: float) -> str:
    return f"{value:+.1f}"


def format_mean(est: Estimate) -> str:
    """``mean ± sd`` with two or more values, the bare mean with one (never ``± 0.0``), n/a with none."""
    if est.n == 0:
        return "n/a"
    return f"{est.mean:.1f}" if est.sd is None else f"{est.mean:.1f} ± {est.sd:.1f}"


def format_ci(est: Estimate) -> str:
    if est.n == 0:
        return "n/a (no paired seeds)"
    if est.ci_low is None:
        return f"n/a (n = {est.n})"
    return f"[{_signed(est.ci_low)}, {_signed(est.ci_high)}]"


def ladder_table(rows: list[dict], protocols: Sequence[str], metrics: Sequence[str] = KEY_METRICS) -> str:
    columns = [c for c in metric_columns(protocols) if c[0] in metrics]
    lines = ["| budget | method | variant | n | " + " | ".join(label for _, _, label in columns) + " |",
             "|" + "---|" * (4 + len(columns))]
    for row in rows:
        method = f"{REFERENCE} (reference)" if row["method"] == REFERENCE else row["method"]
        cells = [format_mean(row[name]) for name, _, _ in columns]
        lines.append(f"| {row['budget']} | {method} | {row['variant']} | {row['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"



def ladder_lines(rows: list[dict], metric: str = "linear_test_acc") -> list[str]:
    """Per method and budget, its variants and the references ordered by the mean of ``metric``."""
    lines = []
    budgets = list(dict.fromkeys(r["budget"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows if r["method"] != REFERENCE)) or [REFERENCE]
    for method in methods:
        for budget in budgets:
            members = [r for r in rows if r["budget"] == budget and r["method"] in (method, REFERENCE)
                       and r[metric].n > 0]
            if not members:
                continue
            members.sort(key=lambda r: (r[metric].mean, variant_key(r["variant"])))
            same_n = len({r[metric].n for r in members}) == 1

            def item(row: dict) -> str:
                return f"{row['variant']} {row[metric].mean:.1f}" + ("" if same_n else f" (n = {row[metric].n})")

            text = item(members[0])
            for prev, row in zip(members, members[1:]):
                sign = "=" if f"{prev[metric].mean:.1f}" == f"{row[metric].mean:.1f}" else "<"
                text += f" {sign} {item(row)}"
            each = f" (n = {members[0][metric].n} each)" if same_n else ""
            lines.append(f"{method}, budget {budget}: {text}{each}")
    return lines


def delta_table(rows: list[dict], metric: str) -> str:
    lines = ["| method | comparison | budget | n | mean Δ | sd | 95% CI | per-seed Δ |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if row["metric"] != metric:
            continue
        pair: PairedDelta = row["paired"]
        est = pair.estimate
        mean = "n/a" if est.n == 0 else _signed(est.mean)
        sd = "–" if est.sd is None else f"{est.sd:.1f}"
        seeds = ", ".join(f"s{s} {_signed(d)}" for s, d in zip(pair.seeds, pair.deltas)) or "–"
        lines.append(f"| {row['method']} | {row['a']} - {row['b']} | {row['budget']} | {est.n} | {mean} | {sd} | "
                     f"{format_ci(est)} | {seeds} |")
    return "\n".join(lines) + "\n"


_WHAT = {("distill", "plain"): "distillation",
         ("public_init", "plain"): "initialising from the public model",
         ("distill", "public_init"): "distillation instead of public initialisation"}


def _budgets_phrase(budgets: list[str]) -> str:
    word = "budget" if len(budgets) == 1 else "budgets"
    listed = budgets[0] if len(budgets) == 1 else ", ".join(budgets[:-1]) + " and " + budgets[-1]
    return f"{word} {listed}"


def sentences(rows: list[dict], metric: str = "linear_test_acc", label: str = "linear-probe accuracy") -> list[str]:
    """One plain sentence per method and comparison, from the paired deltas of ``metric``."""
    out = []
    keys = list(dict.fromkeys((r["method"], r["a"], r["b"]) for r in rows if r["metric"] == metric))
    for method, a, b in keys:
        members = [r for r in rows if r["metric"] == metric and (r["method"], r["a"], r["b"]) == (method, a, b)]
        what = _WHAT.get((_kind(a), _kind(b)), f"{a} instead of {b}")
        groups: dict[str, list[dict]] = defaultdict(list)
        for r in members:
            groups[verdict(r["paired"].estimate)].append(r)

        def detail(rs: list[dict], ci: bool) -> str:
            parts = []
            for r in rs:
                est = r["paired"].estimate
                where = f"{r['budget']}: " if len(rs) > 1 else ""
                parts.append(where + (f"{_signed(est.mean)} points [{_signed(est.ci_low)}, {_signed(est.ci_high)}], "
                                      f"n = {est.n}" if ci else f"{_signed(est.mean)} points"))
            return "; ".join(parts)

        clauses = []
        if groups["up"]:
            clauses.append(f"raised {label} at {_budgets_phrase([r['budget'] for r in groups['up']])} "
                           f"(95% CI above 0: {detail(groups['up'], True)})")
        if groups["down"]:
            clauses.append(f"lowered {label} at {_budgets_phrase([r['budget'] for r in groups['down']])} "
                           f"(95% CI below 0: {detail(groups['down'], True)})")
        if groups["unclear"]:
            clauses.append(f"showed no clear effect at {_budgets_phrase([r['budget'] for r in groups['unclear']])} "
                           f"(95% CI includes 0: {detail(groups['unclear'], True)})")
        if groups["single"]:
            clauses.append(f"cannot be judged at {_budgets_phrase([r['budget'] for r in groups['single']])} "
                           f"with one paired seed (Δ = {detail(groups['single'], False)}, n = 1; "
                           f"no confidence interval)")
        if groups["none"]:
            clauses.append(f"has no paired seeds at {_budgets_phrase([r['budget'] for r in groups['none']])}")
        if clauses:
            out.append(f"{method}: {what} ({a} - {b}) " + "; it ".join(clauses) + ".")
    return out


# --- plots ----------------------------------------------------------------------------------------
def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def plot_accuracy_vs_budget(path: Path, rows: list[dict], metric: str = "linear_test_acc",
                            label: str = "linear probe acc (test frames)") -> Path:
    """Per method a panel: ``metric`` vs budget, one line per variant (the references dashed),
    error bars = 95% t-interval of the mean over seeds where n >= 2."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r["method"] for r in rows if r["method"] != REFERENCE)) or [REFERENCE]
    budgets = _budget_order(r["budget"] for r in rows)
    numeric = all(_budget_value(b) is not None for b in budgets)
    xs = {b: (_budget_value(b) if numeric else i) for i, b in enumerate(budgets)}
    palette = {"random": "tab:gray", "public": "black", "plain": "tab:blue", "distill": "tab:red",
               "public_init": "tab:green"}
    all_variants = sorted({r["variant"] for r in rows}, key=variant_key)
    extra = iter(["tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan"] * 4)
    colours = {v: (palette[_kind(v)] if "@" not in v and _kind(v) in palette else next(extra)) for v in all_variants}
    fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 3.4), squeeze=False, sharey=True)
    for ax, method in zip(axes[0], methods):
        variants = sorted({r["variant"] for r in rows if r["method"] in (method, REFERENCE)}, key=variant_key)
        for variant in variants:
            members = sorted((r for r in rows if r["variant"] == variant and r["method"] in (method, REFERENCE)
                              and r[metric].n > 0), key=lambda r: xs[r["budget"]])
            if not members:
                continue
            x = [xs[r["budget"]] for r in members]
            y = [r[metric].mean for r in members]
            err = [r[metric].half_width or 0.0 for r in members]
            reference = _kind(variant) in ("random", "public")
            ax.errorbar(x, y, yerr=err if any(err) else None, marker="o", capsize=3, color=colours[variant],
                        linestyle="--" if reference else "-", alpha=0.8 if reference else 1.0,
                        label=f"{variant} (reference)" if reference else variant)
        ax.set_title(method if method != REFERENCE else "references")
        ax.set_xlabel("budget (training videos)")
        ax.set_xticks(list(xs.values()))
        ax.set_xticklabels(budgets)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel(label)
    fig.suptitle("error bars: 95% CI of the mean over seeds (n ≥ 2)", fontsize=8)
    fig.tight_layout()
    data = _png(fig)
    plt.close(fig)
    return write_bytes(path, data)


def plot_metrics(out: Path, rows: list[dict], protocols: Sequence[str]) -> list[Path]:
    """Per metric: grouped bars (one per variant) per method and budget, 95% CI error bars (n >= 2)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    groups = list(dict.fromkeys((r["method"], r["budget"]) for r in rows))
    variants = sorted({r["variant"] for r in rows}, key=variant_key)
    written = []
    for name, _, label in metric_columns(protocols):
        fig, ax = plt.subplots(figsize=(max(4, 1.6 * len(groups)), 3.2))
        width = 0.8 / max(1, len(variants))
        for j, variant in enumerate(variants):
            lookup = {(r["method"], r["budget"]): r[name] for r in rows if r["variant"] == variant}
            ests = [lookup.get(g) for g in groups]
            means = [e.mean if e is not None else math.nan for e in ests]
            errs = [(e.half_width or 0.0) if e is not None else 0.0 for e in ests]
            ax.bar(np.arange(len(groups)) + j * width, means, width, yerr=errs if any(errs) else None,
                   label=variant, capsize=3)
        ax.set_xticks(np.arange(len(groups)) + width * (len(variants) - 1) / 2)
        ax.set_xticklabels([f"{'reference' if m == REFERENCE else m}\nbudget {b}" for m, b in groups], fontsize=8)
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
        fig.tight_layout()
        data = _png(fig)
        plt.close(fig)
        written.append(write_bytes(out / f"{name}.png", data))
    return written


# --- everything -----------------------------------------------------------------------------------
def render_table(rows: list[dict], deltas: list[dict], protocols: Sequence[str], failures: dict[str, str]) -> str:
    labels = {name: label for name, _, label in metric_columns(protocols)}
    text = ["## (a) Probe ladder",
            "",
            "Mean over seeds (± sample sd when n ≥ 2; n = seeds). Method `-`: the frozen references "
            "(random = randomly initialised student backbone, public = the public model itself), the same "
            "for every method.",
            "",
            ladder_table(rows, protocols),
            "Ordered by linear-probe accuracy:",
            "",
            *[f"- {line}" for line in ladder_lines(rows)],
            "",
            "## (b) Paired deltas (a - b, matched by seed; 95% CI from Student's t, none when n < 2)",
            ""]
    for metric in DELTA_METRICS:
        if metric in labels and any(d["metric"] == metric for d in deltas):
            text += [f"{labels[metric]}, percentage points:", "", delta_table(deltas, metric)]
    if not deltas:
        text += ["No pairs to compare (plain and distill / public_init of one method are needed).", ""]
    said = sentences(deltas)
    text += ["## (c) What it says", ""]
    text += [f"- {s}" for s in said] if said else ["- Nothing to compare yet."]
    text.append("")
    table = "\n".join(text)
    if failures:
        table += "\nFailed cells:\n" + "".join(f"- {name}: {msg}\n" for name, msg in sorted(failures.items()))
    return table


def write_reports(out: Path, results: list[dict], failures: dict[str, str],
                  protocols: Sequence[str]) -> dict[str, Path]:
    out = Path(out)
    columns = metric_columns(protocols)
    fields = ["cell", "method", "variant", "budget", "seed", *[c[0] for c in columns], "linear_val_acc",
              "source", "fingerprint", *[f"seconds_{s}" for s in TIMED_STAGES]]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    for r in results:
        row = {k: r.get(k) for k in ("cell", "method", "variant", "budget", "seed", "fingerprint")}
        row["source"] = r.get("teacher_source")
        row.update({name: _get(r, path) for name, path, _ in columns})
        row["linear_val_acc"] = _get(r, ("linear", "val_acc"))
        row.update({f"seconds_{k}": round(v, 1) for k, v in r.get("seconds", {}).items()})
        writer.writerow(row)
    write_text(out / "results.csv", buffer.getvalue())
    rows = summarise(results, protocols)
    deltas = paired_rows(results, DELTA_METRICS, protocols)

    def ready(row: dict) -> dict:
        return {k: (v.as_dict() if isinstance(v, (Estimate, PairedDelta)) else v) for k, v in row.items()}

    write_text(out / "results.json", json.dumps(
        {"cells": results, "failures": failures, "summary": [ready(r) for r in rows],
         "paired": [{**{k: v for k, v in d.items() if k != "paired"}, **d["paired"].as_dict()} for d in deltas],
         "ladder": ladder_lines(rows), "sentences": sentences(deltas)},
        indent=1, default=str) + "\n")
    write_text(out / "table.md", render_table(rows, deltas, protocols, failures))
    plots = []
    if rows:
        plots = plot_metrics(out / "plots", rows, protocols)
        plots.append(plot_accuracy_vs_budget(out / "plots" / "accuracy_vs_budget.png", rows))
    return {"csv": out / "results.csv", "json": out / "results.json", "table": out / "table.md",
            "plots": out / "plots" if plots else None}
