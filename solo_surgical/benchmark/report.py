"""Benchmark outputs: results.csv / results.json, a markdown table (mean ± std over seeds), plots."""
from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..atomic import write_bytes, write_text

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


def _mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.array([v for v in values if not math.isnan(v)], dtype=float)
    if arr.size == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def summarise(results: list[dict], protocols: Sequence[str]) -> list[dict[str, Any]]:
    """One row per (budget, method, variant): mean, std and n over seeds of every metric."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in results:
        groups[(str(r["budget"]), r["method"], r["variant"])].append(r)
    rows = []
    order = lambda item: (item[0][0], item[0][1], item[0][2] != "plain", item[0][2])  # noqa: E731 plain first
    for (budget, method, variant), members in sorted(groups.items(), key=order):
        row: dict[str, Any] = {"budget": budget, "method": method, "variant": variant, "seeds": len(members)}
        for name, path, _ in metric_columns(protocols):
            row[name] = _mean_std([_get(m, path) for m in members])
        rows.append(row)
    return rows


def markdown_table(rows: list[dict], protocols: Sequence[str], key_metrics: Sequence[str] | None = None) -> str:
    columns = [c for c in metric_columns(protocols) if key_metrics is None or c[0] in key_metrics]
    head = "| budget | method | variant | seeds | " + " | ".join(label for _, _, label in columns) + " |"
    lines = [head, "|" + "---|" * (4 + len(columns))]
    for row in rows:
        cells = [f"{row[name][0]:.1f} ± {row[name][1]:.1f}" if not math.isnan(row[name][0]) else "n/a"
                 for name, _, _ in columns]
        lines.append(f"| {row['budget']} | {row['method']} | {row['variant']} | {row['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


KEY_METRICS = ("linear_test_acc", "strict_accuracy", "strict_jaccard", "strict_f1", "matlab_accuracy", "matlab_jaccard")


def plot_metrics(out: Path, rows: list[dict], protocols: Sequence[str]) -> list[Path]:
    """Per metric: grouped bars (plain vs distill variants) per method and budget, std error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    groups = sorted({(r["method"], r["budget"]) for r in rows})
    variants = sorted({r["variant"] for r in rows}, key=lambda v: (v != "plain", v))
    written = []
    for name, _, label in metric_columns(protocols):
        fig, ax = plt.subplots(figsize=(max(4, 1.6 * len(groups)), 3.2))
        width = 0.8 / max(1, len(variants))
        for j, variant in enumerate(variants):
            lookup = {(r["method"], r["budget"]): r[name] for r in rows if r["variant"] == variant}
            means = [lookup.get(g, (math.nan, math.nan))[0] for g in groups]
            stds = [lookup.get(g, (math.nan, math.nan))[1] for g in groups]
            ax.bar(np.arange(len(groups)) + j * width, means, width, yerr=stds, label=variant, capsize=3)
        ax.set_xticks(np.arange(len(groups)) + width * (len(variants) - 1) / 2)
        ax.set_xticklabels([f"{m}\nbudget {b}" for m, b in groups], fontsize=8)
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / f"{name}.png"
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110)
        plt.close(fig)
        written.append(write_bytes(path, buffer.getvalue()))
    return written


def write_reports(out: Path, results: list[dict], failures: dict[str, str], protocols: Sequence[str]) -> dict[str, Path]:
    columns = metric_columns(protocols)
    fields = ["cell", "method", "variant", "budget", "seed", *[c[0] for c in columns],
              *[f"seconds_{s}" for s in ("teacher", "pretrain", "linear", "extract", "temporal", "evaluate")]]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    for r in results:
        row = {k: r.get(k) for k in ("cell", "method", "variant", "budget", "seed")}
        row.update({name: _get(r, path) for name, path, _ in columns})
        row.update({f"seconds_{k}": round(v, 1) for k, v in r.get("seconds", {}).items()})
        writer.writerow(row)
    write_text(out / "results.csv", buffer.getvalue())
    rows = summarise(results, protocols)
    write_text(out / "results.json", json.dumps({"cells": results, "failures": failures,
                                             "summary": [{k: (list(v) if isinstance(v, tuple) else v)
                                                          for k, v in r.items()} for r in rows]},
                                            indent=1, default=str) + "\n")
    table = markdown_table(rows, protocols, KEY_METRICS)
    if failures:
        table += "\nFailed cells:\n" + "".join(f"- {name}: {msg}\n" for name, msg in sorted(failures.items()))
    write_text(out / "table.md", table)
    plots = plot_metrics(out / "plots", rows, protocols) if rows else []
    return {"csv": out / "results.csv", "json": out / "results.json", "table": out / "table.md",
            "plots": out / "plots" if plots else None}
