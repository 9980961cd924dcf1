"""PNG plots: phase ribbons (ground truth over prediction), per-phase bars, confusion matrix.

Colours: phase ``i`` (0-based) always gets ``PALETTE[i]``; unlabeled / unknown frames are grey.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")
UNKNOWN = "#d9d9d9"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=100, bbox_inches="tight")
    tmp.replace(path)
    return path


def phase_ribbon(gt: np.ndarray, pred: np.ndarray, phases: Sequence[str], path: str | Path,
                 title: str = "") -> Path:
    """gt, pred (T,) 0-based phase indices (-1: none) -> two stacked colour ribbons with a legend."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    plt = _pyplot()
    colours = [UNKNOWN] + [PALETTE[i % len(PALETTE)] for i in range(len(phases))]
    cmap = ListedColormap(colours)
    rows = np.stack([np.asarray(gt), np.asarray(pred)]) + 1  # 0 = unknown
    fig, ax = plt.subplots(figsize=(10, 1.6))
    ax.imshow(rows, aspect="auto", cmap=cmap, vmin=0, vmax=len(colours) - 1, interpolation="nearest")
    ax.set_yticks([0, 1], ["ground truth", "prediction"])
    ax.set_xlabel("frame")
    ax.set_title(title)
    handles = [Patch(color=colours[i + 1], label=name) for i, name in enumerate(phases)]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.55), ncol=4, fontsize=7, frameon=False)
    try:
        return _save(fig, Path(path))
    finally:
        plt.close(fig)


def per_phase_bars(doc: dict[str, Any], path: str | Path) -> Path:
    """Grouped bars of the per-phase means of the report (jaccard, precision, recall[, f1])."""
    plt = _pyplot()
    phases = doc["phases"]
    metrics = [m for m in ("jaccard", "precision", "recall", "f1") if m in doc["summary"]["per_phase"]]
    x = np.arange(len(phases))
    width = 0.8 / len(metrics)
    fig, ax = plt.subplots(figsize=(max(6, len(phases) * 1.2), 3.5))
    for i, metric in enumerate(metrics):
        values = [doc["summary"]["per_phase"][metric][p] for p in phases]
        values = [np.nan if v is None else v for v in values]
        ax.bar(x + (i - (len(metrics) - 1) / 2) * width, values, width, label=metric)
    ax.set_xticks(x, phases, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel("%")
    ax.set_title(f"per-phase means ({doc['protocol']} protocol)")
    ax.legend(fontsize=8)
    try:
        return _save(fig, Path(path))
    finally:
        plt.close(fig)


def confusion(gt: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    """(n, n) counts: rows ground truth, columns prediction; ids outside 0..n-1 are ignored."""
    ok = (gt >= 0) & (gt < n) & (pred >= 0) & (pred < n)
    return np.bincount(gt[ok] * n + pred[ok], minlength=n * n).reshape(n, n)


def confusion_plot(matrix: np.ndarray, phases: Sequence[str], path: str | Path) -> Path:
    """Row-normalised confusion matrix (percent of each ground-truth phase)."""
    plt = _pyplot()
    rows = matrix.sum(1, keepdims=True)
    norm = np.divide(matrix * 100.0, rows, out=np.zeros(matrix.shape), where=rows > 0)
    fig, ax = plt.subplots(figsize=(1 + 0.7 * len(phases), 1 + 0.7 * len(phases)))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=100)
    for i in range(len(phases)):
        for j in range(len(phases)):
            ax.text(j, i, f"{norm[i, j]:.0f}", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 50 else "black")
    ax.set_xticks(range(len(phases)), phases, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(phases)), phases, fontsize=7)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    try:
        return _save(fig, Path(path))
    finally:
        plt.close(fig)


def plot_evaluation(gt_dir: str | Path, pred_dir: str | Path, doc: dict[str, Any], out: str | Path,
                    videos: set[int] | None = None) -> list[Path]:
    """Ribbons per video, per-phase bars and the confusion matrix of an ``evaluate`` run."""
    from .labels import encode_labels, pair_files, read_phase_file

    phases, out = doc["phases"], Path(out)
    n = len(phases)
    total = np.zeros((n, n), dtype=np.int64)
    written = []
    for video, gt_path, pred_path in pair_files(gt_dir, pred_dir, videos):
        gt = encode_labels(read_phase_file(gt_path)[1], phases) - 1
        pred = encode_labels(read_phase_file(pred_path)[1], phases) - 1
        total += confusion(gt, pred, n)
        written.append(phase_ribbon(gt, pred, phases, out / f"ribbon_{video}.png", title=f"video {video}"))
    written.append(per_phase_bars(doc, out / "per_phase.png"))
    written.append(confusion_plot(total, phases, out / "confusion.png"))
    return written
