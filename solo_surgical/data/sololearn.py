"""Export a prepared folder as symlinks in the layouts solo-learn's ``custom`` dataset reads.

::

    EXPORT/pretrain/train/<video>_<k:06d>.jpg       flat: data.no_labels=True pretraining
    EXPORT/linear/train/<i>_<Phase>/<video>_<k>.jpg  ImageFolder classes for linear evaluation
    EXPORT/linear/val/<i>_<Phase>/<video>_<k>.jpg    (val = the protocol's val part, else test)
    EXPORT/.solo_surgical_export                     marker: this folder may be replaced

Class folders are prefixed with the zero-padded phase index, so ImageFolder's alphabetical class
order equals the dataset's phase order. Links are absolute; nothing is copied.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..errors import UserError
from .datasets import PreparedData, select_videos

MARKER = ".solo_surgical_export"


def export_solo_learn(data_dir: Path, out: Path, protocol: str | None = None,
                      budget: float | int | None = None, seed: int = 0) -> dict[str, int]:
    """Build the export under a temporary name, then swap it in. Returns link counts per folder."""
    data = PreparedData(data_dir)
    if out.exists() and not (out / MARKER).exists():
        raise UserError(f"{out}: exists and is not a solo-surgical export; choose another folder")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    width = len(str(len(data.phases) - 1))
    classes = [f"{i:0{width}d}_{name}" for i, name in enumerate(data.phases)]
    train = select_videos(data.part("train", protocol), budget, seed)
    val = data.part("val", protocol) or data.part("test", protocol)
    counts = {"pretrain/train": 0, "linear/train": 0, "linear/val": 0}
    (tmp / "pretrain" / "train").mkdir(parents=True)
    for part, videos in (("train", train), ("val", val)):
        for c in classes:
            (tmp / "linear" / part / c).mkdir(parents=True)
        for video in videos:
            for r in data.frames(video):
                target = r.path.resolve()
                name = f"{video}_{r.frame:06d}.jpg"
                if part == "train":
                    os.symlink(target, tmp / "pretrain" / "train" / name)
                    counts["pretrain/train"] += 1
                if r.phase >= 0:
                    os.symlink(target, tmp / "linear" / part / classes[r.phase] / name)
                    counts[f"linear/{part}"] += 1
    (tmp / MARKER).write_text(f"from {data.root.resolve()}\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return counts
