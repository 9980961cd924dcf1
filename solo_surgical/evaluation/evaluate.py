"""``solo-surgical evaluate``: pair label files, check them, score, print a table, write JSON."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from . import metrics
from ..atomic import write_text
from ..data.registry import get_dataset, labelled_dataset_names
from .labels import encode_labels, pair_files, read_phase_file


def label_rate(frames: np.ndarray, native_fps: float) -> float | None:
    """Labels per second implied by evenly stepped frame indices; None if irregular."""
    steps = np.diff(frames)
    if steps.size == 0 or steps[0] <= 0 or np.any(steps != steps[0]):
        return None
    return native_fps / float(steps[0])


def check_fps(fps: float, rates: dict[str, float | None], protocol: str, native_fps: float) -> list[str]:
    """Warnings when ``--fps`` disagrees with the frame indices (the window is 10*fps frames)."""
    warnings = []
    irregular = [v for v, r in rates.items() if r is None]
    if irregular:
        warnings.append(f"frame indices are not evenly stepped in {len(irregular)} video(s) "
                        f"(first: {irregular[0]}); --fps {fps:g} cannot be checked there")
    seen = sorted({r for r in rates.values() if r is not None})
    if len(seen) > 1:
        warnings.append("videos have different label rates: " + ", ".join(f"{r:g} fps" for r in seen))
    for rate in seen:
        if math.isclose(rate, fps, rel_tol=1e-6):
            continue
        videos = [v for v, r in rates.items() if r == rate]
        message = (f"--fps {fps:g} but the frame indices of video {videos[0]}"
                   f"{f' (and {len(videos) - 1} more)' if len(videos) > 1 else ''} step at "
                   f"{rate:g} labels/s of a {native_fps:g} fps video")
        if protocol != "strict":
            message += (f": the relaxed window of {10 * fps:g} frames spans {10 * fps / rate:g} s "
                        f"instead of 10 s (scoring {rate:g} fps labels with fps={fps:g} is a known "
                        "mistake; keep it only to reproduce such numbers)")
        warnings.append(message)
    return warnings


def evaluate_dirs(gt_dir: str | Path, pred_dir: str | Path, dataset: str, fps: float, protocol: str,
                  videos: set[int] | None = None) -> tuple[dict[str, Any], list[str]]:
    """Score every paired video; return the report document and the warnings."""
    if dataset not in labelled_dataset_names():
        raise UserError(f"unknown dataset {dataset!r} to score; known: {', '.join(labelled_dataset_names())}")
    spec = get_dataset(dataset)  # the phase list and the frame rate of the label files' frame indices
    phases, native = spec.phases, float(spec.native_fps or 0)
    if protocol not in metrics.PROTOCOLS:
        raise UserError(f"unknown protocol {protocol!r}; known: {', '.join(metrics.PROTOCOLS)}")
    if not (fps > 0 and math.isfinite(fps)):
        raise UserError(f"--fps {fps:g}: must be a positive number")
    if protocol != "strict":
        metrics.window_frames(fps)
    warnings: list[str] = []
    scores, rates = [], {}
    for video, gt_path, pred_path in pair_files(gt_dir, pred_dir, videos):
        gt_frames, gt_labels = read_phase_file(gt_path)
        pred_frames, pred_labels = read_phase_file(pred_path)
        if gt_frames.size != pred_frames.size:
            raise UserError(f"video {video}: ground truth {gt_path.name} has {gt_frames.size} frames, "
                            f"prediction {pred_path.name} has {pred_frames.size}")
        if np.any(gt_frames != pred_frames):
            first = int(np.flatnonzero(gt_frames != pred_frames)[0])
            raise UserError(f"video {video}: frame indices differ from data line {first + 1} "
                            f"(ground truth {gt_frames[first]}, prediction {pred_frames[first]})")
        rates[video] = label_rate(gt_frames, native)
        prepared = metrics.prepare_ids(
            video, encode_labels(gt_labels, phases), encode_labels(pred_labels, phases), protocol,
            gt_labels, pred_labels, gt_name=gt_path.name, pred_name=pred_path.name)
        warnings += prepared.warnings
        scores.append(metrics.score(video, prepared, protocol, dataset, len(phases), fps))
    warnings = check_fps(fps, rates, protocol, native) + warnings
    known = sorted({r for r in rates.values() if r is not None})
    doc = metrics.report(scores, protocol, dataset, fps, phases,
                         extra={"label_fps": known[0] if len(known) == 1 else None})
    return doc, warnings


def format_table(doc: dict[str, Any]) -> str:
    """Per-phase table and overall means, in the MATLAB script's layout (values in percent)."""
    summary, strict = doc["summary"], doc["protocol"] == "strict"
    columns = ["jaccard", "precision", "recall"] + (["f1"] if strict else [])
    heads = {"jaccard": "Jacc", "precision": "Prec", "recall": "Rec", "f1": "F1"}
    width = max(25, *(len(p) for p in doc["phases"]))
    rule = "=" * (width + 8 * len(columns) + 1)

    def num(x: float | None) -> str:
        return f"{x:7.2f}" if x is not None and math.isfinite(x) else f"{'nan':>7}"

    lines = [f"protocol {doc['protocol']}, dataset {doc['dataset']}, fps {doc['fps']:g}"
             + (f", window {doc['window_frames']} frames" if "window_frames" in doc else "")
             + f", {len(doc['videos'])} videos", rule,
             f"{'Phase':>{width}}|" + "|".join(f"{heads[c]:>7}" for c in columns) + "|", rule]
    for phase in doc["phases"]:
        lines.append(f"{phase:>{width}}|" + "|".join(num(summary["per_phase"][c][phase]) for c in columns) + "|")
    lines.append(rule)
    for name in ["accuracy"] + columns:
        lines.append(f"Mean {name}: {num(summary[name]['mean']).strip()} +- {num(summary[name]['std']).strip()}")
    if strict:
        lines.append("(strict: per-video values, mean +- std over videos)")
    else:
        lines.append("(accuracy over videos; jaccard/precision/recall over phases of per-phase means)")
    return "\n".join(lines)


def cmd_evaluate(args: Any) -> int:
    # output paths checked before scoring, so a bad one fails at once and nothing is half-written
    if args.json and Path(args.json).is_dir():
        raise UserError(f"--json {args.json}: is a folder; give a file path")
    if args.plots and Path(args.plots).exists() and not Path(args.plots).is_dir():
        raise UserError(f"--plots {args.plots}: exists and is not a folder")
    videos = None
    if args.videos:
        from .labels import parse_video_selection

        videos = parse_video_selection(args.videos)
    doc, warnings = evaluate_dirs(args.gt, args.pred, args.dataset, args.fps, args.protocol, videos)
    for warning in warnings:
        print(f"solo-surgical: warning: {warning}", file=sys.stderr)
    print(format_table(doc))
    if args.json:
        write_text(args.json, json.dumps(metrics.json_ready(doc), indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.plots:
        from .plots import plot_evaluation

        written = plot_evaluation(args.gt, args.pred, doc, args.plots, videos)
        print(f"wrote {len(written)} plots to {args.plots}")
    return 0


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "evaluate", help="score phase predictions against ground truth (matlab / relaxed / strict)",
        description="Pair ground-truth and prediction label files by video number and score them. "
                    "'matlab' reproduces the field's MATLAB script (quirks included), 'relaxed' fixes "
                    "its early-transition indexing bug, 'strict' has no relaxation and reports "
                    "per-video mean +- std.")
    p.add_argument("--dataset", required=True, choices=labelled_dataset_names())
    p.add_argument("--gt", required=True, help="folder of ground-truth files (video41-phase.txt, ...)")
    p.add_argument("--pred", required=True, help="folder of prediction files (video41_pred.txt, 41_pred.txt, ...)")
    p.add_argument("--fps", required=True, type=float,
                   help="label rate of the files; the relaxed window is 10*fps frames")
    p.add_argument("--protocol", required=True, choices=list(metrics.PROTOCOLS))
    p.add_argument("--videos", help="only these video numbers, e.g. 41-80 or 1,3,5-7 (default: all files)")
    p.add_argument("--json", help="write the full report as JSON here")
    p.add_argument("--plots", help="write phase ribbons, per-phase bars and a confusion matrix (PNG) here")
    p.set_defaults(func=cmd_evaluate)

