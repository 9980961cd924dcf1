"""Per-video feature files, backbone loading for evaluation, and ``solo-surgical extract``.

Feature file ``FEATS/<video>.pt`` (``torch.save`` of a dict):

    features       float32 (T, F)  backbone output per sampled frame
    frame_indices  int64 (T,)      source frame index at the video's native rate
    labels         int64 (T,)      phase index into ``phases`` (-1: unlabeled)
    video, dataset, phases, fps, native_fps, backbone, checkpoint   provenance

``FEATS/features.json`` lists the videos and the same provenance.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from .. import argtypes as at
from ..atomic import torch_save, write_json
from ..errors import UserError

FEATURES_INDEX = "features.json"


@dataclass
class FeatureFile:
    video: str
    features: Any  # torch.Tensor (T, F)
    frame_indices: Any  # torch.Tensor (T,)
    labels: Any  # torch.Tensor (T,)
    meta: dict


def save_feature_file(path: Path, features, frame_indices, labels, meta: dict) -> None:
    torch_save({"features": features.float().contiguous(), "frame_indices": frame_indices.long(),
                "labels": labels.long(), **meta}, path)


def load_feature_file(path: Path) -> FeatureFile:
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
        feats, frames, labels = obj["features"], obj["frame_indices"], obj["labels"]
    except Exception as exc:
        raise UserError(f"{path}: not a feature file ({type(exc).__name__})") from None
    if feats.ndim != 2 or frames.shape != (feats.shape[0],) or labels.shape != (feats.shape[0],):
        raise UserError(f"{path}: inconsistent shapes features {tuple(feats.shape)}, "
                        f"frame_indices {tuple(frames.shape)}, labels {tuple(labels.shape)}")
    meta = {k: v for k, v in obj.items() if k not in ("features", "frame_indices", "labels")}
    return FeatureFile(str(obj.get("video", path.stem)), feats.float(), frames.long(), labels.long(), meta)


def load_feature_dir(folder: str | Path) -> tuple[dict[str, FeatureFile], dict]:
    """All ``*.pt`` feature files of a folder and its index (phases, dataset, ...)."""
    folder = Path(folder)
    index_path = folder / FEATURES_INDEX
    if not index_path.exists():
        raise UserError(f"{index_path}: missing; run 'solo-surgical extract' first")
    index = json.loads(index_path.read_text())
    files = {}
    for video in index["videos"]:
        path = folder / f"{video}.pt"
        if not path.exists():
            raise UserError(f"{path}: listed in {FEATURES_INDEX} but missing")
        files[video] = load_feature_file(path)
    return files, index


def evaluation_backbone(checkpoint: str | None, backbone: str | None, init_seed: int = 0):
    """``(module, feature_dim, name, layout)`` for ``linear`` / ``extract``: their options over the one
    reader (:func:`solo_surgical.checkpoints.load_backbone`, any layout; ``--backbone`` wins over the
    file) or, without a checkpoint, ``--backbone`` randomly initialised from ``init_seed``."""
    from ..checkpoints import load_backbone as read

    if checkpoint is None and backbone is None:
        raise UserError("give --checkpoint, or --backbone for a randomly initialised one")
    loaded = read(checkpoint, arch=backbone, init_seed=init_seed, ask="give --backbone")
    return loaded.module, loaded.feature_dim, loaded.arch, loaded.layout


def eval_transform(image_size: int):
    from torchvision import transforms as T

    from ..backbones import IMAGENET_MEAN, IMAGENET_STD

    return T.Compose([T.Resize(image_size), T.CenterCrop(image_size), T.ToTensor(),
                      T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def subsample(records: Sequence, fps: float | None, native_fps: float) -> list:
    """Keep the first prepared frame in each ``1/fps`` second bin of source frames."""
    if fps is None:
        return list(records)
    kept, last_bin = [], None
    for r in records:
        b = math.floor(r.source * fps / native_fps + 1e-9)
        if b != last_bin:
            kept.append(r)
            last_bin = b
    return kept


class _RecordImages:
    """Dataset over prepared frame records: ``(transform(image), i)``."""

    def __init__(self, records: Sequence, transform) -> None:
        self.records, self.transform = list(records), transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        from ..data.datasets import load_rgb

        return self.transform(load_rgb(self.records[i].path)), i  # a corrupt frame: UserError naming it


# The rule of each numeric option, keyed by ExtractArgs' field: argparse's type= and ExtractArgs' check,
# one table for both (``--workers`` is the field ``num_workers``; ``--threads`` is the command's alone).
RULES = {"init_seed": at.non_negative_int, "fps": at.positive_float, "image_size": at.image_size,
         "batch_size": at.batch_size, "num_workers": at.workers}


@dataclass
class ExtractArgs:
    """The arguments of :func:`extract` as one value (``solo_surgical.api.extract``). Numbers are checked
    when it is made, by the rules of the command's options (one-line :class:`UserError`)."""

    data_dir: str
    out: str
    checkpoint: Optional[str] = None
    backbone: Optional[str] = None
    fps: Optional[float] = None
    parts: Sequence[str] = ("train", "val", "test")
    protocol: Optional[str] = None
    image_size: int = 224
    batch_size: int = 64
    num_workers: int = 0
    device: str = "auto"
    init_seed: int = 0

    def __post_init__(self) -> None:
        at.check_fields(self, RULES, "extract")


def extract(data_dir: str | Path, out: str | Path, checkpoint: str | None, backbone: str | None,
            fps: float | None = None, parts: Sequence[str] = ("train", "val", "test"),
            protocol: str | None = None, image_size: int = 224, batch_size: int = 64,
            num_workers: int = 0, device: str = "auto", log=print, init_seed: int = 0) -> dict:
    """Write one feature file per video of the chosen parts; returns the index."""
    import torch
    from torch.utils.data import DataLoader

    from ..data.datasets import PreparedData
    from ..data.video import FALLBACK_FPS

    from ..train.devices import resolve_device

    device = resolve_device(device)  # "auto" -> cuda when available, else cpu
    data = PreparedData(data_dir)
    module, dim, name, layout = evaluation_backbone(checkpoint, backbone, init_seed)
    module.eval().to(device)
    videos = sorted({v for part in parts for v in data.part(part, protocol)})
    if not videos:
        raise UserError(f"{data.root}: no videos in parts {', '.join(parts)}")
    prepared_fps = prepared_rate(data)
    if fps is not None and prepared_fps is not None and fps > prepared_fps * (1 + 1e-9):
        # more frames per second than were prepared cannot be sampled: the file would say fps 5 of 1 fps frames
        raise UserError(f"--fps {fps:g}: {data.root} holds frames at {prepared_fps:g} fps; "
                        f"give --fps {prepared_fps:g} or less (or prepare again at a higher rate)")
    fps = fps if fps is not None else prepared_fps
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    transform = eval_transform(image_size)
    index = {"dataset": data.manifest["dataset"], "phases": data.phases, "fps": fps,
             "backbone": name, "checkpoint": str(checkpoint) if checkpoint else None, "layout": layout,
             "feature_dim": dim, "data": str(data.root), "videos": []}
    for video in videos:
        # the rate the stream declared at prepare time, else the dataset's (a folder of videos has none)
        native = float(data.manifest["videos"][video].get("native_fps") or data.spec.native_fps or FALLBACK_FPS)
        records = subsample(data.frames(video), fps, native)
        loader = DataLoader(_RecordImages(records, transform), batch_size=batch_size, num_workers=num_workers)
        chunks = []
        with torch.inference_mode():
            for images, _ in loader:
                chunks.append(module(images.to(device)).float().cpu())
        meta = {k: index[k] for k in ("dataset", "phases", "fps", "backbone", "checkpoint")}
        save_feature_file(out / f"{video}.pt", torch.cat(chunks),
                          torch.tensor([r.source for r in records]), torch.tensor([r.phase for r in records]),
                          {**meta, "video": video, "native_fps": native})
        index["videos"].append(video)
        log(f"{video}: {len(records)} frames -> {out / (video + '.pt')}")
    write_json(out / FEATURES_INDEX, index)
    return index


def prepared_rate(data: Any) -> float | None:
    """Frames per second of a prepared folder (``manifest.json`` options; None when not recorded)."""
    from fractions import Fraction

    value = (data.manifest.get("options") or {}).get("fps")
    try:
        return float(Fraction(str(value))) if value is not None else None
    except (ValueError, ZeroDivisionError):
        return None


def cmd_extract(args: Any) -> int:
    import torch

    torch.set_num_threads(max(1, args.threads))
    extract(args.data, args.out, args.checkpoint, args.backbone, args.fps, args.parts.split(","),
            args.protocol, args.image_size, args.batch_size, args.workers, args.device, init_seed=args.init_seed)
    return 0


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "extract", help="per-video backbone features of a prepared folder",
        description="Run a frozen backbone over the frames of a prepared folder (solo-surgical prepare) "
                    "and save FEATS/<video>.pt with features (T, F), frame_indices (T,), labels (T,).")
    p.add_argument("--data", required=True, help="prepared folder (with manifest.json)")
    p.add_argument("--out", required=True, help="folder for the feature files")
    p.add_argument("--checkpoint", help="our pretraining/linear checkpoint, a teacher checkpoint, "
                                        "a torchvision or MoCo v2 state dict")
    p.add_argument("--backbone", help="architecture (default: from the checkpoint); alone: random init")
    p.add_argument("--init-seed", type=RULES["init_seed"], default=0, help="seed of the random init (--backbone alone)")
    p.add_argument("--fps", type=RULES["fps"], help="sample this many frames per second (default: all prepared)")
    p.add_argument("--parts", default="train,val,test", help="comma-separated parts (default: all)")
    p.add_argument("--protocol", help="split scheme of the dataset, for --parts (default: its "
                                      "default_protocol; cholec80: standard)")
    p.add_argument("--image-size", type=RULES["image_size"], default=224, help=f"16 to {at.MAX_IMAGE_SIZE} (default 224)")
    p.add_argument("--batch-size", type=RULES["batch_size"], default=64)
    p.add_argument("--workers", type=RULES["num_workers"], default=0, help="data loader processes")
    p.add_argument("--threads", type=at.threads, default=1, help="torch CPU threads")
    p.add_argument("--device", default="auto", help="auto (cuda when available, else cpu), cpu, cuda, cuda:N")
    p.set_defaults(func=cmd_extract)
