"""Parse phase and tool annotation files into per-source-frame lookups.

Formats (all whitespace separated, first line a header, frames at the video's native rate):

* Cholec80 ``videoNN-phase.txt``: ``Frame<TAB>Phase``, then one ``frame<TAB>PhaseName`` row per
  frame (0-based frame numbers at 25 fps).
* Cholec80 ``videoNN-tool.txt``: ``Frame<TAB>Grasper<TAB>Bipolar ...``, then ``frame<TAB>0/1 ...``
  rows, usually one every 25 frames.
* M2CAI16 ``workflow_video_NN.txt`` / ``test_workflow_video_NN.txt``: same as the Cholec80 phase file.

Rows may be sparse: a row's value holds until the next row (a step function), and the annotation
*covers* frames ``0 .. last row's frame``. Anything else (wrong column count, non-integer or
non-increasing frame numbers, a phase name outside the dataset's list, no rows) is malformed.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import UserError


@dataclass(frozen=True)
class StepLabels:
    """Values at annotated frames, held until the next annotated frame.

    ``frames``: strictly increasing source-frame numbers; ``values[i]`` holds on
    ``frames[i] <= f < frames[i+1]``; ``last_frame`` is the last covered frame.
    """

    frames: list[int]
    values: list  # list[int] for phases, list[tuple[int, ...]] for tools
    names: list[str]  # phase names or tool column names

    @property
    def last_frame(self) -> int:
        return self.frames[-1]

    def at(self, frame: int):
        """Value at a source frame; ``None`` when the frame is outside the annotation."""
        if frame < self.frames[0] or frame > self.last_frame:
            return None
        return self.values[bisect.bisect_right(self.frames, frame) - 1]


def _rows(path: Path) -> tuple[list[str], list[tuple[int, int, list[str]]]]:
    """Header fields and ``(line_number, frame, fields)`` rows, with shape checks."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text annotation file") from None
    lines = [(n, line.split()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise UserError(f"{path}: empty annotation file")
    header, body = lines[0][1], lines[1:]
    if header and header[0].lstrip("-").isdigit():
        raise UserError(f"{path}: line 1: missing header line (expected e.g. 'Frame Phase')")
    if not body:
        raise UserError(f"{path}: no annotation rows after the header")
    rows = []
    previous = -1
    for n, fields in body:
        if len(fields) != len(header):
            raise UserError(f"{path}: line {n}: expected {len(header)} columns, found {len(fields)}")
        try:
            frame = int(fields[0])
        except ValueError:
            raise UserError(f"{path}: line {n}: frame number {fields[0]!r} is not an integer") from None
        if frame <= previous:
            raise UserError(f"{path}: line {n}: frame {frame} does not follow frame {previous}")
        previous = frame
        rows.append((n, frame, fields[1:]))
    return header, rows


def read_phases(path: Path, phases: Sequence[str]) -> StepLabels:
    """Phase annotation -> step function of phase indices into ``phases``."""
    header, rows = _rows(path)
    if len(header) != 2:
        raise UserError(f"{path}: line 1: expected 2 columns (Frame, Phase), found {len(header)}")
    index = {name: i for i, name in enumerate(phases)}
    values = []
    for n, _, (name,) in rows:
        if name not in index:
            raise UserError(f"{path}: line {n}: unknown phase {name!r} (known: {', '.join(phases)})")
        values.append(index[name])
    return StepLabels([frame for _, frame, _ in rows], values, list(phases))


def read_tools(path: Path) -> StepLabels:
    """Tool presence annotation -> step function of 0/1 tuples, one entry per tool column."""
    header, rows = _rows(path)
    if len(header) < 2:
        raise UserError(f"{path}: line 1: expected Frame and at least one tool column")
    values = []
    for n, _, fields in rows:
        if any(f not in ("0", "1") for f in fields):
            raise UserError(f"{path}: line {n}: tool presence must be 0 or 1")
        values.append(tuple(int(f) for f in fields))
    return StepLabels([frame for _, frame, _ in rows], values, header[1:])
