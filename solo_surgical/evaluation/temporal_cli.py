"""``solo-surgical temporal``: train the MS-TCN over feature files, write predictions.

Outputs in ``OUT``: ``temporal.pt`` (config + weights), ``history.json``,
``predictions/<video>_pred.txt`` for the test videos (official format; at the frame indices of the
``--gt`` files when given, else at the feature frames), ``gt/<video>-phase.txt`` (the labels of the
feature frames, to evaluate against when no ``--gt``), and ``ribbons/<video>.png`` with ``--plots``.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from .. import argtypes as at
from ..atomic import torch_save, write_json
from ..errors import UserError


def hold_previous(source_frames: np.ndarray, values: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Value of the last source frame <= each frame of ``at`` (an online system can only know the
    past); frames before the first source frame take the first value."""
    order = np.argsort(source_frames, kind="stable")
    pos = np.searchsorted(source_frames[order], at, side="right") - 1
    return values[order][np.clip(pos, 0, None)]


# The rule of each numeric option: argparse's type= and TemporalConfig's check, one table for both.
# (layer l has dilation 2^l: beyond ~16 layers the receptive field exceeds any surgery's length)
RULES = {"stages": at.int_range(1, 32), "layers": at.int_range(1, 16), "channels": at.int_range(1, 4096),
         "dropout": at.probability, "smooth_weight": at.non_negative_float, "epochs": at.int_range(1, 100_000),
         "lr": at.positive_float, "weight_decay": at.non_negative_float, "seed": at.non_negative_int,
         "budget_seed": at.non_negative_int, "threads": at.threads}


@dataclass
class TemporalConfig:
    """Everything ``solo-surgical temporal`` takes (same names as its options, ``--smooth-weight`` ->
    ``smooth_weight``): an MS-TCN on the feature files of ``features``, predictions under ``out``."""

    features: str
    out: str
    protocol: Optional[str] = None
    stages: int = 2
    layers: int = 9
    channels: int = 64
    acausal: bool = False
    dropout: float = 0.5
    smooth_weight: float = 0.15
    epochs: int = 50
    lr: float = 5e-4
    weight_decay: float = 0.0
    seed: int = 0
    budget: Union[str, float, int, None] = None
    budget_seed: int = 0
    threads: int = 1
    gt: Optional[str] = None
    plots: bool = False

    def __post_init__(self) -> None:
        self.features, self.out = str(self.features), str(self.out)
        self.gt = None if self.gt is None else str(self.gt)
        self.budget = None if self.budget is None else str(self.budget)
        at.check_fields(self, RULES, "temporal")

    @classmethod
    def from_args(cls, args: Any) -> "TemporalConfig":
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


def cmd_temporal(args: Any) -> int:
    run_temporal(TemporalConfig.from_args(args))
    return 0


def run_temporal(args: TemporalConfig) -> Path:
    """Train the temporal model and write its predictions (and ribbons with ``plots``); returns ``out``."""
    import torch

    from ..data.registry import get_dataset
    from .features import load_feature_dir
    from .labels import pair_files, read_phase_file, write_phase_file
    from .temporal import IGNORE, TCNConfig, VideoFeatures, predict, train_tcn

    torch.set_num_threads(max(1, args.threads))
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    if args.gt and not Path(args.gt).is_dir():
        raise UserError(f"--gt {args.gt}: folder not found")
    files, index = load_feature_dir(args.features)
    phases = list(index["phases"])
    spec = get_dataset(index["dataset"], phases=phases)
    protocol = spec.resolve_protocol(args.protocol)
    parts = spec.split(protocol, sorted(files))

    def seqs(names):
        out = []
        for v in names:
            f = files[v]
            targets = torch.where(f.labels >= 0, f.labels, torch.full_like(f.labels, IGNORE))
            out.append(VideoFeatures(v, f.features, targets, f.frame_indices))
        return out
    from ..data.datasets import parse_budget, select_videos

    # a budget keeps whole training videos, chosen as every other stage chooses them
    train_names = select_videos(parts.get("train", []), parse_budget(args.budget), args.budget_seed)
    train, val, test = seqs(train_names), seqs(parts.get("val", [])), seqs(parts.get("test", []))
    if not train:
        raise UserError(f"{args.features}: no training videos under protocol {protocol!r}")
    cfg = TCNConfig(in_dim=train[0].features.shape[1], num_classes=len(phases), stages=args.stages,
                    layers=args.layers, channels=args.channels, causal=not args.acausal, dropout=args.dropout)
    model, history = train_tcn(cfg, train, val, args.epochs, args.lr, args.weight_decay,
                               args.smooth_weight, args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch_save({"config": cfg.__dict__, "state_dict": model.state_dict(), "phases": phases,
                "protocol": protocol, "smooth_weight": args.smooth_weight}, out / "temporal.pt")
    write_json(out / "history.json", history)
    gt_files = {}
    if args.gt:
        gt_files = {int(number): path for number, path, _ in pair_files(args.gt, args.gt)}
    written = []
    for video in test:
        pred = predict(model, video.features).numpy()
        frames = video.frames.numpy()
        labeled = video.targets.numpy() != IGNORE
        write_phase_file(out / "gt" / f"{video.video}-phase.txt", frames[labeled],
                         [phases[i] for i in video.targets.numpy()[labeled]])
        at = frames
        if args.gt:
            from .labels import video_number

            key = int(video_number(video.video) or -1)
            if key not in gt_files:
                raise UserError(f"video {video.video}: no ground-truth file in {args.gt}")
            at, _ = read_phase_file(gt_files[key])
            pred = hold_previous(frames, pred, at)
        write_phase_file(out / "predictions" / f"{video.video}_pred.txt", at, [phases[i] for i in pred])
        written.append(video.video)
        if args.plots:
            from .plots import phase_ribbon

            ribbon_gt = video.targets.numpy()
            phase_ribbon(np.where(ribbon_gt == IGNORE, -1, ribbon_gt), hold_previous(frames, pred, frames)
                         if args.gt else pred, phases, out / "ribbons" / f"{video.video}.png", title=video.video)
    best = max((h.get("val_acc", -1) for h in history), default=-1)
    print(f"trained on {len(train)} videos, selected on {len(val)} (best val frame acc {best:.2f}); "
          f"wrote predictions for {len(written)} test videos to {out / 'predictions'}")
    if written:
        # with --gt the predictions are written at the label files' frame indices: the native rate
        fps = spec.native_fps if args.gt and spec.native_fps else (index.get("fps") or 1)
        print(f"evaluate: solo-surgical evaluate --dataset {index['dataset']} --gt {args.gt or out / 'gt'} "
              f"--pred {out / 'predictions'} --fps {fps:g} --protocol relaxed")
    return out


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "temporal", help="train an MS-TCN / TeCNO temporal model on feature files and predict",
        description="Multi-stage temporal convolutional network over per-video features (solo-surgical "
                    "extract). Loss: cross-entropy + smooth-weight x truncated MSE (MS-TCN: 0.15; the "
                    "authors' single-stage causal TCN: 1.0). Model selection on validation videos.")
    p.add_argument("--features", required=True, help="folder written by 'solo-surgical extract'")
    p.add_argument("--out", required=True)
    p.add_argument("--protocol", help="split scheme (default: the dataset's default_protocol; "
                                      "cholec80: standard)")
    p.add_argument("--stages", type=RULES["stages"], default=2)
    p.add_argument("--layers", type=RULES["layers"], default=9)
    p.add_argument("--channels", type=RULES["channels"], default=64)
    p.add_argument("--acausal", action="store_true", help="offline model (default: causal, online)")
    p.add_argument("--dropout", type=RULES["dropout"], default=0.5)
    p.add_argument("--smooth-weight", type=RULES["smooth_weight"], default=0.15)
    p.add_argument("--epochs", type=RULES["epochs"], default=50)
    p.add_argument("--lr", type=RULES["lr"], default=5e-4)
    p.add_argument("--weight-decay", type=RULES["weight_decay"], default=0.0)
    p.add_argument("--seed", type=RULES["seed"], default=0)
    p.add_argument("--budget", help="training videos: fraction, percentage or count (default: all)")
    p.add_argument("--budget-seed", type=RULES["budget_seed"], default=0, help="seed of the video subset (default 0)")
    p.add_argument("--threads", type=RULES["threads"], default=1)
    p.add_argument("--gt", help="ground-truth label files: write predictions at their frame indices")
    p.add_argument("--plots", action="store_true", help="phase ribbons of the test videos")
    p.set_defaults(func=cmd_temporal)
