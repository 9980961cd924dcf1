"""Phase recognition metrics under three protocols.

``matlab``
    Identical to the field's MATLAB evaluation (M2CAI challenge ``Evaluate.m`` + ``Main.m``,
    in the Cholec80 revision copied by TMRNet / Trans-SVNet), quirks included:

    * relaxed boundary of ``t = 10 * fps`` frames per ground-truth segment (``t`` shrinks to the
      segment length for short segments); in the first ``t`` frames a *late* transition
      (prediction = previous phase, diff ``-1``; also ``-2`` for the last two phases) counts as
      correct; near the end an *early* transition (diff ``+1``; also ``+2`` for the four last
      phases) counts as correct;
    * the early-transition mask is computed on the **last** ``t`` frames of the segment but used
      as a logical index into the whole segment, so it clears the **first** ``t`` frames;
    * a relaxed frame is a true positive for every phase whose union (GT or prediction) holds it,
      so precision and recall can exceed 100 (and precision is ``Inf`` for a phase never predicted
      yet relaxed); Jaccard, precision and recall are clipped to 100 before averaging;
    * labels matching no phase become 0 (``Main.m`` grows the id vector by assignment: trailing
      unmatched labels are dropped, and GT frames labelled 0 always count as correct);
    * a phase absent from a video's ground truth is NaN in that video;
    * per-phase values are NaN-means over videos; mean Jaccard and recall are ``mean``/``std``
      over phases (NaN if one phase is absent everywhere), precision ``nanmean``/``nanstd``;
      accuracy is mean and sample std over videos.

``relaxed``
    The same relaxation and averaging with the indexing bug fixed (early-transition frames are
    cleared at the end of the segment) and every label required to name a phase.

``strict``
    No relaxation. Per video and phase from the counts (NaN where the denominator is 0):
    precision TP/(TP+FP), recall TP/(TP+FN), Jaccard TP/(TP+FP+FN), F1 2TP/(2TP+FP+FN);
    each video's value is the NaN-mean over phases; summaries are mean and sample std over
    videos (Funke et al., "Metrics Matter in Surgical Phase Recognition", 2023).

All values are percentages (0-100). Arrays of ids are 1-based phase ids (0 = no phase).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..data.registry import get_dataset
from ..errors import UserError

PROTOCOLS = ("matlab", "relaxed", "strict")
METRICS = ("jaccard", "precision", "recall")

# (late-transition diffs, early-transition diffs) for the ids that differ from the default
# ({-1}, {+1}). Cholec80 ids 4/5 (dissection, packaging) may jump two phases ahead; 6/7
# (cleaning, retraction) may also lag two behind. M2CAI16 adds TrocarPlacement first, so the
# same rule sits one id later.
_DEFAULT_RULE = (frozenset({-1}), frozenset({1}))
_JUMPY_END = (frozenset({-1}), frozenset({1, 2}))
_JUMPY_BOTH = (frozenset({-1, -2}), frozenset({1, 2}))


# The phases those rules name; their ids come from the dataset spec's phase list.
_RELAXED_PHASES = (("GallbladderDissection", _JUMPY_END), ("GallbladderPackaging", _JUMPY_END),
                   ("CleaningCoagulation", _JUMPY_BOTH), ("GallbladderRetraction", _JUMPY_BOTH))


def transition_rules(dataset: str, n_phases: int) -> dict[int, tuple[frozenset, frozenset]]:
    """``{phase id: (late diffs, early diffs)}`` of the MATLAB script for ``dataset``."""
    ids = {name: i + 1 for i, name in enumerate(get_dataset(dataset).phases)}
    rules = {p: _DEFAULT_RULE for p in range(1, n_phases + 1)}
    rules.update({ids[name]: rule for name, rule in _RELAXED_PHASES})
    return rules


def _runs(ids: np.ndarray) -> list[tuple[int, int, int]]:
    """Maximal constant runs ``[(value, start, stop)]`` (stop exclusive) of a 1-D array."""
    if ids.size == 0:
        return []
    cuts = np.flatnonzero(ids[1:] != ids[:-1]) + 1
    starts = np.concatenate(([0], cuts))
    stops = np.concatenate((cuts, [ids.size]))
    return [(int(ids[a]), int(a), int(b)) for a, b in zip(starts, stops)]


def relaxed_diff(gt: np.ndarray, pred: np.ndarray, window: int,
                 rules: dict[int, tuple[frozenset, frozenset]], fix_bug: bool) -> np.ndarray:
    """``updatedDiff`` (T,): ``pred - gt`` with relaxed transitions set to 0; 0 means correct.

    Frames whose GT id is not in ``rules`` (id 0) stay 0, as MATLAB fills the gaps of a vector
    grown by assignment with zeros.
    """
    diff = pred.astype(np.int64) - gt.astype(np.int64)
    updated = np.zeros_like(diff)
    for phase, start, stop in _runs(gt):
        if phase not in rules:
            continue
        late, early = rules[phase]
        cur = diff[start:stop].copy()
        t = min(window, cur.size)
        head = cur[:t]  # a view: clearing it edits cur
        head[np.isin(head, list(late))] = 0
        if fix_bug:
            tail = cur[cur.size - t:]
            tail[np.isin(tail, list(early))] = 0
        else:
            # MATLAB: curDiff(curDiff(end-t+1:end)==1) = 0 -- a length-t logical index, so it
            # addresses the first t frames; computed after the late-transition step above.
            mask = np.isin(cur[cur.size - t:], list(early))
            head[mask] = 0
        updated[start:stop] = cur
    return updated


@dataclass
class VideoScores:
    """One video's scores in percent; arrays are (N phases,), NaN where undefined."""

    video: str
    accuracy: float
    jaccard: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray | None = None
    frames: int = 0
    short_segments: int = 0


def _clip100(x: np.ndarray) -> np.ndarray:
    return np.where(x > 100, 100.0, x)  # NaN > 100 is False: NaN stays NaN, Inf becomes 100


def score_relaxed(video: str, gt: np.ndarray, pred: np.ndarray, n_phases: int, window: int,
                  rules: dict[int, tuple[frozenset, frozenset]], fix_bug: bool) -> VideoScores:
    """Evaluate.m on id vectors gt, pred (T,), then Main.m's clipping to 100."""
    correct = relaxed_diff(gt, pred, window, rules, fix_bug) == 0
    jac, prec, rec = (np.full(n_phases, np.nan) for _ in range(3))
    with np.errstate(divide="ignore", invalid="ignore"):
        for p in range(1, n_phases + 1):
            in_gt, in_pred = gt == p, pred == p
            sum_gt = int(in_gt.sum())
            if sum_gt == 0:
                continue
            union = in_gt | in_pred
            tp = int((correct & union).sum())
            jac[p - 1] = tp / int(union.sum()) * 100
            prec[p - 1] = np.float64(tp * 100) / np.float64(in_pred.sum())  # Inf or NaN if never predicted
            rec[p - 1] = tp * 100 / sum_gt
    acc = int(correct.sum()) / gt.size * 100 if gt.size else math.nan
    short = sum(1 for phase, a, b in _runs(gt) if phase in rules and b - a < window)
    return VideoScores(video, acc, _clip100(jac), _clip100(prec), _clip100(rec),
                       frames=int(gt.size), short_segments=short)


def score_strict(video: str, gt: np.ndarray, pred: np.ndarray, n_phases: int) -> VideoScores:
    """Frame-wise counts per phase, no relaxation; NaN where a denominator is 0."""
    phases = np.arange(1, n_phases + 1)[:, None]
    in_gt, in_pred = gt[None, :] == phases, pred[None, :] == phases  # (N, T)
    tp = (in_gt & in_pred).sum(1).astype(np.float64)
    fp = (~in_gt & in_pred).sum(1)
    fn = (in_gt & ~in_pred).sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        prec = 100 * tp / (tp + fp)
        rec = 100 * tp / (tp + fn)
        jac = 100 * tp / (tp + fp + fn)
        f1 = 200 * tp / (2 * tp + fp + fn)
    acc = float((gt == pred).mean() * 100) if gt.size else math.nan
    return VideoScores(video, acc, jac, prec, rec, f1=f1, frames=int(gt.size))


# MATLAB's reductions: std is the sample std and 0 for one value; nan* drop NaNs first.
def matlab_mean(x: Sequence[float]) -> float:
    x = np.asarray(x, dtype=np.float64)
    return float(x.mean()) if x.size else math.nan


def matlab_std(x: Sequence[float]) -> float:
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return math.nan
    return 0.0 if x.size == 1 else float(np.sqrt(((x - x.mean()) ** 2).sum() / (x.size - 1)))


def nanmean(x: Sequence[float]) -> float:
    x = np.asarray(x, dtype=np.float64)
    return matlab_mean(x[~np.isnan(x)])


def nanstd(x: Sequence[float]) -> float:
    x = np.asarray(x, dtype=np.float64)
    return matlab_std(x[~np.isnan(x)])


def _stack(videos: Sequence[VideoScores], metric: str) -> np.ndarray:
    return np.stack([getattr(v, metric) for v in videos], axis=1)  # (N phases, V videos)


def summarise(videos: Sequence[VideoScores], protocol: str, phases: Sequence[str]) -> dict[str, Any]:
    """The ``summary`` block: overall mean/std, per-phase NaN-means (and NaN-stds) over videos."""
    if not videos:
        raise UserError("no videos to evaluate")
    acc = [v.accuracy for v in videos]
    summary: dict[str, Any] = {"accuracy": {"mean": matlab_mean(acc), "std": matlab_std(acc)}}
    metrics = METRICS + (("f1",) if protocol == "strict" else ())
    per_phase: dict[str, dict[str, float]] = {}
    per_phase_std: dict[str, dict[str, float]] = {}
    for metric in metrics:
        table = _stack(videos, metric)
        phase_means = [nanmean(row) for row in table]
        per_phase[metric] = dict(zip(phases, phase_means))
        per_phase_std[metric] = dict(zip(phases, (nanstd(row) for row in table)))
        if protocol == "strict":
            per_video = [nanmean(col) for col in table.T]
            summary[metric] = {"mean": matlab_mean(per_video), "std": matlab_std(per_video)}
        elif metric == "precision":  # Main.m: nanmean/nanstd for precision only
            summary[metric] = {"mean": nanmean(phase_means), "std": nanstd(phase_means)}
        else:
            summary[metric] = {"mean": matlab_mean(phase_means), "std": matlab_std(phase_means)}
    summary["per_phase"] = per_phase
    summary["per_phase_std"] = per_phase_std
    return summary


@dataclass
class Prepared:
    """Id vectors ready for scoring, and what was noticed on the way."""

    gt: np.ndarray
    pred: np.ndarray
    warnings: list[str] = field(default_factory=list)


def _main_m_ids(ids: np.ndarray) -> np.ndarray:
    """Main.m builds the ids with ``x(find(strcmp(...))) = j`` on ``[]``: the vector ends at the
    last frame that matched a phase (earlier unmatched frames are 0)."""
    nonzero = np.flatnonzero(ids)
    return ids[: nonzero[-1] + 1] if nonzero.size else ids[:0]


def prepare_ids(video: str, gt_ids: np.ndarray, pred_ids: np.ndarray, protocol: str,
                gt_labels: Sequence[str] | None = None, pred_labels: Sequence[str] | None = None,
                gt_name: str = "ground truth", pred_name: str = "prediction") -> Prepared:
    """Apply the protocol's rule for labels matching no phase (id 0).

    ``matlab``: reproduce Main.m (0 ids, trailing ones dropped), with a warning; an input on
    which the MATLAB script stops with an error is a ``UserError``. Others: any is an error.
    """
    warnings = []
    for ids, labels, name in ((gt_ids, gt_labels, gt_name), (pred_ids, pred_labels, pred_name)):
        bad = np.flatnonzero(ids == 0)
        if bad.size == 0:
            continue
        first = f"{labels[bad[0]]!r} " if labels is not None else ""
        where = f"video {video}: {name}: {bad.size} labels match no phase (first {first}on data line {bad[0] + 1})"
        if protocol != "matlab":
            raise UserError(where)
        warnings.append(where + "; scored as phase 0 as the MATLAB script does")
    if protocol == "matlab":
        gt, pred = _main_m_ids(gt_ids), _main_m_ids(pred_ids)
        if gt.size == 0:
            raise UserError(f"video {video}: {gt_name}: no label matches a phase")
        if gt.size != pred.size:
            raise UserError(f"video {video}: after dropping trailing labels that match no phase, "
                            f"ground truth has {gt.size} frames and prediction {pred.size}; "
                            "the MATLAB script fails on this input")
        return Prepared(gt, pred, warnings)
    return Prepared(gt_ids, pred_ids, warnings)


def window_frames(fps: float) -> int:
    """The relaxed window ``10 * fps`` in frames; MATLAB indexing needs it to be an integer."""
    window = 10 * fps
    if fps <= 0 or abs(window - round(window)) > 1e-9:
        raise UserError(f"--fps {fps:g}: the relaxed window 10*fps = {window:g} frames must be a "
                        "positive whole number (MATLAB indexes with it)")
    return int(round(window))


def score(video: str, prepared: Prepared, protocol: str, dataset: str, n_phases: int,
          fps: float) -> VideoScores:
    if protocol not in PROTOCOLS:
        raise UserError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    if protocol == "strict":
        return score_strict(video, prepared.gt, prepared.pred, n_phases)
    return score_relaxed(video, prepared.gt, prepared.pred, n_phases, window_frames(fps),
                         transition_rules(dataset, n_phases), fix_bug=protocol == "relaxed")


def report(videos: Sequence[VideoScores], protocol: str, dataset: str, fps: float,
           phases: Sequence[str], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON document (NaN kept as float here; :func:`json_ready` turns it into null)."""
    def named(values: np.ndarray) -> dict[str, float]:
        return {p: float(x) for p, x in zip(phases, values)}

    rows = []
    for v in videos:
        row: dict[str, Any] = {"video": v.video, "accuracy": v.accuracy, "frames": v.frames}
        for metric in METRICS + (("f1",) if v.f1 is not None else ()):
            row[metric] = named(getattr(v, metric))
        rows.append(row)
    doc = {"protocol": protocol, "dataset": dataset, "fps": fps, "phases": list(phases),
           "videos": rows, "summary": summarise(videos, protocol, phases)}
    if protocol != "strict":
        doc["window_frames"] = window_frames(fps)
    doc.update(extra or {})
    return doc


def json_ready(obj: Any) -> Any:
    """NaN/Inf -> None, numpy scalars -> Python numbers, recursively."""
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
