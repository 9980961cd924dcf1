"""The official phase-label text format (read, write, pair by video number).

The format, shared by Cholec80 and M2CAI16 annotations and by the predictions the field's
MATLAB script reads: one header line (ignored), then one ``frameIndex<whitespace>PhaseName``
line per labelled frame. The phase lists and the frame rate of the frame indices are facts of the
dataset: ``solo_surgical.data.registry.get_dataset(name).phases`` / ``.native_fps``.
"""
from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..atomic import write_text
from ..errors import UserError

HEADER = "Frame\tPhase"


def read_phase_file(path: str | Path) -> tuple[np.ndarray, list[str]]:
    """Return ``(frames (T,) int64, labels (T,))`` of one label file; the header is skipped."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: label file not found")
    text = path.read_text(encoding="utf-8", errors="replace")
    body = text.split("\n", 1)[1] if "\n" in text else ""
    tokens = body.split()
    if not tokens:
        raise UserError(f"{path}: no labelled frames after the header line")
    try:
        # A line with a missing or extra column shifts a phase name into the frame column,
        # which then fails to parse; only then pay for the line-by-line check.
        if len(tokens) % 2:
            raise ValueError
        frames = np.array(tokens[0::2], dtype=np.int64)
    except ValueError:
        for number, line in enumerate(body.splitlines(), start=2):
            parts = line.split()
            if parts and (len(parts) != 2 or not re.fullmatch(r"[+-]?\d+", parts[0])):
                raise UserError(f"{path}: line {number} is not 'frameIndex PhaseName': "
                                f"{line.strip()[:60]!r}") from None
        raise UserError(f"{path}: cannot read frame indices") from None
    return frames, tokens[1::2]


def write_phase_file(path: str | Path, frames: Sequence[int] | np.ndarray,
                     labels: Sequence[str] | np.ndarray, header: str = HEADER) -> None:
    """Write the official format atomically (temporary name in the same folder, then rename)."""
    path = Path(path)
    if len(frames) != len(labels):
        raise ValueError(f"{path}: {len(frames)} frames but {len(labels)} labels")
    body = "".join(f"{int(f)}\t{label}\n" for f, label in zip(frames, labels))
    write_text(path, f"{header}\n{body}")



def label_table(phases: Sequence[str]) -> dict[str, int]:
    """Accepted spellings -> 1-based phase id: the phase names (case-sensitive, as MATLAB's
    ``strcmp``) and the 0-based indices ``"0".."N-1"`` that TMRNet's M2CAI script matches."""
    table = {name: i + 1 for i, name in enumerate(phases)}
    table.update({str(i): i + 1 for i in range(len(phases))})
    return table


def encode_labels(labels: Sequence[str], phases: Sequence[str]) -> np.ndarray:
    """Map label strings (T,) to ids (T,) int64: 1..N for a phase, 0 for a label matching none."""
    table = label_table(phases)
    return np.fromiter(map(table.get, labels, itertools.repeat(0)), dtype=np.int64, count=len(labels))


def decode_ids(ids: Iterable[int], phases: Sequence[str]) -> list[str]:
    """0-based class indices -> phase names."""
    return [phases[int(i)] for i in ids]


_VIDEO_NUMBER = re.compile(r"video[_-]?(\d+)", re.IGNORECASE)


def video_number(name: str) -> str | None:
    """The video number written in a file name: after ``video`` if present, else the only digit
    run (``41_pred.txt``). None when there is no digit, ``ValueError`` when it is ambiguous."""
    stem = Path(name).stem
    match = _VIDEO_NUMBER.search(stem)
    if match:
        return match.group(1)
    runs = re.findall(r"\d+", stem)
    if not runs:
        return None
    if len(runs) > 1:
        raise ValueError(f"{name}: several numbers ({', '.join(runs)}) and no 'video<N>' to tell the video")
    return runs[0]


def _index_dir(folder: Path, role: str) -> dict[int, tuple[str, Path]]:
    if not folder.is_dir():
        raise UserError(f"{folder}: {role} folder not found")
    found: dict[int, tuple[str, Path]] = {}
    for path in sorted(folder.glob("*.txt")):
        try:
            number = video_number(path.name)
        except ValueError as exc:
            raise UserError(f"{role} {exc}") from None
        if number is None:
            continue  # README.txt and the like
        key = int(number)
        if key in found:
            raise UserError(f"{role} folder {folder}: two files for video {number}: "
                            f"{found[key][1].name} and {path.name}")
        found[key] = (number, path)
    if not found:
        raise UserError(f"{folder}: no {role} .txt files with a video number in their name")
    return found


def parse_video_selection(text: str) -> set[int]:
    """``"41-80"``, ``"1,3,5-7"`` -> set of video numbers."""
    chosen: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise UserError(f"--videos: {part!r} is not a number or a range like 41-80")
        low, high = int(match.group(1)), int(match.group(2) or match.group(1))
        if high < low:
            raise UserError(f"--videos: empty range {part!r}")
        chosen.update(range(low, high + 1))
    return chosen


def pair_files(gt_dir: str | Path, pred_dir: str | Path,
               videos: set[int] | None = None) -> list[tuple[str, Path, Path]]:
    """``[(video, gt_path, pred_path)]`` sorted by video number; pairs by the number in the name
    (``video41-phase.txt`` <-> ``41_pred.txt``, ``workflow_video_01.txt`` <-> ``01_pred.txt``).

    Every selected video (all of those in either folder when ``videos`` is None) must have both.
    """
    gts, preds = _index_dir(Path(gt_dir), "ground-truth"), _index_dir(Path(pred_dir), "prediction")
    keys = set(gts) | set(preds) if videos is None else set(videos)
    pairs = []
    for key in sorted(keys):
        if key not in gts:
            raise UserError(f"video {preds[key][0] if key in preds else key}: no ground-truth file in {gt_dir}")
        if key not in preds:
            raise UserError(f"video {gts[key][0]}: no prediction file in {pred_dir} "
                            f"(ground truth {gts[key][1].name})")
        pairs.append((gts[key][0], gts[key][1], preds[key][1]))
    return pairs
