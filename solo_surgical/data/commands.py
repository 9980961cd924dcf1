"""CLI: ``prepare``, ``synth`` (alias ``synthesize``) and ``export-solo-learn``.

Heavy modules (av, numpy, torch) are imported inside the commands so ``--help`` stays fast.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..errors import UserError
from .registry import dataset_names

PREPARE_EPILOG = """\
frame selection: source frames are numbered 0,1,2,... in presentation order (as annotations count
them); output frame k is the first source frame whose timestamp, measured from the first frame, is
>= k/fps minus a quarter native frame. At 25 fps with --fps 1 that is source frames 0, 25, 50, ...

output: DATA/manifest.json; DATA/<video>/<k:06d>.jpg; DATA/<video>/frames.tsv with columns
frame, source_frame, time, phase (index into the manifest's phases, -1 unlabeled), tools...
Reruns skip finished videos and redo partial ones. Exit status 1 if any video failed.
"""


# Frames are held whole in memory (and synth renders a world 1.8x the frame): a larger side is a
# typo, refused here rather than ending in the OOM killer.
MAX_SIDE = 4096


def _size(text: str) -> tuple[int, int] | None:
    try:
        if text in ("0", "none"):
            return None
        if "x" in text.lower():
            w, h = (int(v) for v in text.lower().split("x"))
        else:
            w = h = int(text)
        if w <= 0 or h <= 0:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r}: expected N, WxH or 0") from None
    if max(w, h) > MAX_SIDE:
        raise argparse.ArgumentTypeError(f"size {text!r}: at most {MAX_SIDE} pixels a side")
    return w, h


def _fps(text: str) -> str:
    from fractions import Fraction

    try:
        if Fraction(text) <= 0:
            raise ValueError
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"fps {text!r}: expected a positive number like 1, 0.5 or 5/2") from None
    return text


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "prepare", help="decode surgical videos into cropped JPEG frames with aligned phase labels",
        description="Decode Cholec80, M2CAI16 or a folder of videos into frames and labels.",
        epilog=PREPARE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, choices=dataset_names())
    p.add_argument("--root", required=True, type=Path, help="the raw dataset folder (published layout)")
    p.add_argument("--out", required=True, type=Path, help="the prepared folder DATA")
    p.add_argument("--fps", type=_fps, default="1", help="output frame rate (default 1)")
    p.add_argument("--size", type=_size, default=(250, 250),
                   help="output size N (NxN), WxH, or 0 for no resize (default 250)")
    p.add_argument("--keep-aspect", action="store_true",
                   help="preserve the aspect ratio: the shorter side becomes N (use with --size N)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality (default 90)")
    p.add_argument("--no-crop", action="store_true", help="keep black margins")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="videos prepared in parallel (processes; default min(4, cores))")
    p.add_argument("--phases", help="folder dataset: comma-separated phase names, in order")
    p.add_argument("--videos", nargs="+", metavar="NAME", help="only these videos (by name, e.g. video01)")
    p.set_defaults(func=cmd_prepare)

    s = subparsers.add_parser(
        "synth", aliases=["synthesize"], help="generate the synthetic surgical video set (Cholec80 layout)",
        description="Write procedurally generated laparoscopic-like H.264 videos with Cholec80-format "
                    "phase and tool annotations; deterministic from the seed.")
    s.add_argument("--out", required=True, type=Path, help="the raw folder to create (RAW)")
    s.add_argument("--videos", type=int, default=8, help="number of videos, 1-80 (default 8)")
    s.add_argument("--seconds", type=float, default=120.0, help="mean video length (default 120, +-20%%)")
    s.add_argument("--fps", type=int, default=25, help="frame rate (default 25)")
    s.add_argument("--size", type=_size, default=(384, 216), help="frame size WxH (default 384x216)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="videos rendered in parallel")
    s.set_defaults(func=cmd_synthesize)

    e = subparsers.add_parser(
        "export-solo-learn", help="symlink a prepared folder into solo-learn's custom dataset layouts",
        description="EXPORT/pretrain/train (flat, data.no_labels=True) and EXPORT/linear/{train,val}/<i>_<Phase>/.")
    e.add_argument("--data", required=True, type=Path, help="the prepared folder")
    e.add_argument("--out", required=True, type=Path, help="the export folder (replaced if it is an export)")
    e.add_argument("--protocol", help="split protocol (default: the dataset's default_protocol; "
                                      "cholec80: standard, whose val videos 41-48 become linear/val)")
    e.add_argument("--budget", help="training videos: a fraction (0.25, 25%%) or a count (10); default all")
    e.add_argument("--seed", type=int, default=0)
    e.set_defaults(func=cmd_export_solo_learn)


@dataclass
class PrepareArgs:
    """What ``solo-surgical prepare`` takes, for callers in Python (the benchmark). ``fps`` and ``size``
    are read like the options (``"1"``, ``"1/5"``; ``64``, ``"192x108"``, ``0``)."""

    dataset: str
    root: Path
    out: Path
    fps: Any = "1"
    size: Any = (250, 250)
    keep_aspect: bool = False
    quality: int = 90
    no_crop: bool = False
    workers: int = 1
    phases: Optional[str] = None
    videos: Optional[list[str]] = None

    def __post_init__(self) -> None:
        self.root, self.out = Path(self.root), Path(self.out)
        self.fps = _fps(str(self.fps))
        if not isinstance(self.size, tuple) and self.size is not None:
            self.size = _size(str(self.size))


@dataclass
class SynthArgs:
    """What ``solo-surgical synth`` takes, for callers in Python; ``size`` ``"192x108"`` or ``(192, 108)``."""

    out: Path
    videos: int = 8
    seconds: float = 120.0
    fps: int = 25
    size: Any = (384, 216)
    seed: int = 0
    workers: int = 1

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if not isinstance(self.size, tuple):
            self.size = _size(str(self.size))


def cmd_prepare(args: argparse.Namespace) -> int:
    """The ``prepare`` command: :func:`run_prepare` on the parsed options."""
    return run_prepare(args)


def cmd_synthesize(args: argparse.Namespace) -> int:
    """The ``synth`` command: :func:`run_synth` on the parsed options."""
    return run_synth(args)


def run_prepare(args: argparse.Namespace | PrepareArgs) -> int:
    """Prepare a dataset (see ``prepare --help``); returns 0, or 1 when some videos failed."""
    from .prepare import Options, prepare
    from .registry import get_dataset

    phases = [p.strip() for p in args.phases.split(",") if p.strip()] if args.phases else None
    if phases and args.dataset != "folder":
        raise UserError("--phases is only for --dataset folder (the others have fixed phase lists)")
    if args.keep_aspect and args.size and args.size[0] != args.size[1]:
        raise UserError("--keep-aspect takes --size N (the shorter side), not WxH")
    if not 1 <= args.quality <= 100:
        raise UserError(f"--quality {args.quality}: expected 1-100")
    if args.workers < 1:
        raise UserError(f"--workers {args.workers}: expected at least 1")
    spec = get_dataset(args.dataset, phases=phases)
    opts = Options(fps=args.fps, size=args.size, keep_aspect=args.keep_aspect, quality=args.quality,
                   crop=not args.no_crop)
    started = time.monotonic()
    manifest, failed = prepare(spec, args.root, args.out, opts, workers=max(1, args.workers), only=args.videos)
    frames = sum(v["output_frames"] for v in manifest["videos"].values())
    summary = (f"prepare: {len(manifest['videos'])} videos ready in {args.out} ({frames} frames), "
               f"{time.monotonic() - started:.1f} s")
    if failed:
        summary += f"; {len(failed)} failed: {', '.join(sorted(failed))}"
    print(summary, file=sys.stderr)
    return 1 if failed else 0


def run_synth(args: argparse.Namespace | SynthArgs) -> int:
    """Write the synthetic set (see ``synth --help``); returns 0."""
    from .synth import SynthConfig, synthesize

    if not 1 <= args.videos <= 80:
        raise UserError(f"--videos {args.videos}: the Cholec80 layout holds 1 to 80 videos")
    if args.size is None or args.size[0] % 2 or args.size[1] % 2:
        raise UserError("--size must be WxH with even width and height (H.264 4:2:0)")
    if not 0 < args.seconds <= 4 * 3600 or not 1 <= args.fps <= 120:
        raise UserError("--seconds must be in (0, 14400] and --fps in 1-120")
    if args.workers < 1:
        raise UserError(f"--workers {args.workers}: expected at least 1")
    cfg = SynthConfig(videos=args.videos, seconds=args.seconds, fps=args.fps, width=args.size[0],
                      height=args.size[1], seed=args.seed)

    def progress(done: int, total: int, name: str, frames: int) -> None:
        print(f"synth: [{done}/{total}] {name}: {frames} frames", file=sys.stderr, flush=True)

    started = time.monotonic()
    meta = synthesize(args.out, cfg, progress=progress, workers=max(1, args.workers))
    print(f"synth: {len(meta['videos'])} videos in {args.out} ({time.monotonic() - started:.1f} s); "
          f"next: solo-surgical prepare --dataset cholec80 --root {args.out} --out DATA", file=sys.stderr)
    return 0


def cmd_export_solo_learn(args: argparse.Namespace) -> int:
    from .datasets import parse_budget
    from .sololearn import export_solo_learn

    counts = export_solo_learn(args.data, args.out, args.protocol, parse_budget(args.budget), args.seed)
    print("export-solo-learn: " + ", ".join(f"{k}: {v} links" for k, v in counts.items()), file=sys.stderr)
    return 0
