"""Torch datasets over a prepared folder (see :mod:`solo_surgical.data.prepare` for the layout).

* :class:`UnlabeledFrames` -- ``(transform(PIL image), index)`` for self-supervised pretraining.
* :class:`LabeledFrames` -- ``(transform(PIL image), phase index)`` for linear evaluation.
* :class:`VideoSequences` -- per-video clips ``(frames (T, ...), phases (T,), source indices (T,))``.

Which videos: a *protocol* (the dataset's split scheme: ``paper``/``standard`` for cholec80,
``default`` for m2cai16, ``all`` for folder; when none is named, the spec's ``default_protocol``:
cholec80 ``standard``) and a *part* (``train``/``val``/``test``). Low-data
regimes take a ``budget`` of **training videos** -- a fraction in (0, 1] or a count >= 1 -- chosen by
a seeded permutation, so the same seed always gives the same videos and smaller budgets are
subsets of larger ones. Frames are never subsampled.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable, Sequence

from ..errors import UserError
from .registry import get_dataset

Transform = Callable[[object], object]


@dataclass(frozen=True)
class FrameRecord:
    video: str
    frame: int  # output index k
    source: int  # source frame index at the native rate
    phase: int  # index into PreparedData.phases; -1 when unlabeled
    path: Path


def select_videos(names: Sequence[str], budget: float | int | None, seed: int = 0) -> list[str]:
    """A deterministic subset of whole videos; returned in sorted order.

    ``budget``: ``None`` -> all; float in (0, 1] -> that fraction (rounded, at least one video);
    int >= 1 -> that many. Uses one seeded permutation so budgets nest.
    """
    names = sorted(names)
    if budget is None:
        return names
    problem = UserError(f"budget {budget} must be a fraction in (0, 1] or a video count >= 1")
    if isinstance(budget, float) and 0 < budget <= 1:
        count = max(1, round(budget * len(names)))
    elif float(budget).is_integer() and budget >= 1:
        count = int(budget)
        if count > len(names):
            raise UserError(f"budget of {count} videos but only {len(names)} training videos are prepared")
    else:
        raise problem
    order = names[:]
    random.Random(seed).shuffle(order)
    return sorted(order[:count])


def parse_budget(text: str | None) -> float | int | None:
    """CLI form: '0.25' or '25%' -> fraction, '10' -> count, None/'all' -> None."""
    if text is None or text == "all":
        return None
    try:
        if text.endswith("%"):
            return float(text[:-1]) / 100
        return float(text) if "." in text else int(text)
    except ValueError:
        raise UserError(f"budget {text!r} is not a fraction, a percentage or a count") from None


class PreparedData:
    """A prepared folder: its manifest, splits and per-video frame records."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        path = self.root / "manifest.json"
        if not path.exists():
            raise UserError(f"{path}: no manifest; run 'solo-surgical prepare' first")
        try:
            self.manifest = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{path}: malformed manifest ({exc})") from None
        missing = [k for k in ("dataset", "phases", "videos") if not isinstance(self.manifest, dict)
                   or k not in self.manifest]
        if missing:
            raise UserError(f"{path}: malformed manifest (no {', '.join(missing)}); run 'solo-surgical prepare' again")
        self.phases: list[str] = list(self.manifest["phases"])
        self.tools: list[str] = list(self.manifest.get("tools", []))
        self.spec = get_dataset(self.manifest["dataset"], phases=self.phases)

    @property
    def videos(self) -> list[str]:
        """Names of the successfully prepared videos."""
        return sorted(self.manifest["videos"])

    def part(self, part: str, protocol: str | None = None) -> list[str]:
        """Videos of ``part`` (train/val/test) under ``protocol`` (default: the spec's ``default_protocol``)."""
        parts = self.spec.split(self.spec.resolve_protocol(protocol), self.videos)
        if part not in parts:
            raise UserError(f"unknown part {part!r} (known: {', '.join(parts)})")
        return parts[part]

    def frames(self, video: str) -> list[FrameRecord]:
        path = self.root / video / "frames.tsv"
        if not path.exists():
            raise UserError(f"{path}: missing; the prepared folder is incomplete")
        lines = path.read_text().splitlines()[1:]
        records = []
        for number, line in enumerate(lines, start=2):
            try:
                k, source, _, phase, *_ = line.split("\t")
                records.append(FrameRecord(video, int(k), int(source), int(phase),
                                           self.root / video / f"{int(k):06d}.jpg"))
            except ValueError:
                raise UserError(f"{path}: line {number} is not 'frame source_frame time phase' "
                                f"({line[:60]!r}); run 'solo-surgical prepare' again") from None
        return records


def _load(path: Path):
    """The RGB image at ``path``; a missing, truncated or corrupt file is a :class:`UserError` naming it.

    Raised inside a DataLoader worker, PyTorch re-raises it in the main process, where the error
    boundary (``solo_surgical.errors``) reduces it to this line again.
    """
    return load_rgb(path)


def load_rgb(path: Path):
    """PIL RGB image, decoded now (PIL decodes lazily: a truncated JPEG opens fine and fails here)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise UserError(f"{path}: frame missing; the prepared folder is incomplete (run prepare again)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        # PIL: UnidentifiedImageError / "image file is truncated" are OSErrors, some decoders raise
        # ValueError or SyntaxError on garbage
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise UserError(f"{path}: unreadable image ({detail}); replace or delete it") from None


def _default_transform(image):
    from torchvision.transforms.functional import to_tensor

    return to_tensor(image)


class _Frames:
    """Shared construction: which videos, which frame records."""

    labeled_only = False

    def __init__(self, data: str | Path | PreparedData, part: str = "train", protocol: str | None = None,
                 budget: float | int | None = None, seed: int = 0, transform: Transform | None = None,
                 videos: Sequence[str] | None = None) -> None:
        self.data = data if isinstance(data, PreparedData) else PreparedData(data)
        if videos is None:
            videos = self.data.part(part, protocol)
            if part == "train":
                videos = select_videos(videos, budget, seed)
        unknown = sorted(set(videos) - set(self.data.videos))
        if unknown:
            raise UserError(f"{self.data.root}: videos not prepared: {', '.join(unknown)}")
        self.videos = sorted(videos)
        self.transform = transform or _default_transform
        self.records = [r for v in self.videos for r in self.data.frames(v) if r.phase >= 0 or not self.labeled_only]
        if not self.records:
            what = "labeled frames" if self.labeled_only else "frames"
            raise UserError(f"{self.data.root}: no {what} in part {part!r} ({len(self.videos)} videos)")

    def __len__(self) -> int:
        return len(self.records)

    @cached_property
    def phases(self) -> list[int]:
        return [r.phase for r in self.records]


class UnlabeledFrames(_Frames):
    """Frames for self-supervised pretraining: ``__getitem__(i) -> (transform(image), i)``."""

    def __getitem__(self, i: int):
        return self.transform(_load(self.records[i].path)), i


class LabeledFrames(_Frames):
    """Labeled frames for linear evaluation: ``__getitem__(i) -> (transform(image), phase)``.

    Frames without a phase label are left out.
    """

    labeled_only = True

    def __getitem__(self, i: int):
        record = self.records[i]
        return self.transform(_load(record.path)), record.phase


class VideoSequences:
    """Per-video clips for temporal models.

    ``__getitem__(i) -> (frames, phases, sources)``: ``frames`` is ``torch.stack`` of the
    transformed images, shape ``(T, C, H, W)`` with the default transform; ``phases`` and
    ``sources`` are ``LongTensor (T,)`` (phase -1: unlabeled). ``clip_len=None`` gives one item
    per whole video; otherwise windows of ``clip_len`` frames every ``stride`` (default
    ``clip_len``) frames, plus an end-aligned last window so every frame is covered; all windows
    have ``clip_len`` frames unless the video is shorter.
    """

    def __init__(self, data: str | Path | PreparedData, part: str = "train", protocol: str | None = None,
                 budget: float | int | None = None, seed: int = 0, transform: Transform | None = None,
                 clip_len: int | None = None, stride: int | None = None, videos: Sequence[str] | None = None) -> None:
        frames = UnlabeledFrames(data, part, protocol, budget, seed, transform, videos)
        self.videos, self.transform = frames.videos, frames.transform
        by_video: dict[str, list[FrameRecord]] = {}
        for r in frames.records:
            by_video.setdefault(r.video, []).append(r)
        self.clips: list[list[FrameRecord]] = []
        for video in self.videos:
            recs = by_video.get(video, [])
            if clip_len is None:
                self.clips.append(recs)
            else:
                step = stride or clip_len
                starts = list(range(0, max(len(recs) - clip_len, 0) + 1, step))
                if starts[-1] + clip_len < len(recs):  # end-aligned last window: every frame covered
                    starts.append(len(recs) - clip_len)
                self.clips += [recs[start:start + clip_len] for start in starts]

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int):
        import torch

        clip = self.clips[i]
        frames = [self.transform(_load(r.path)) for r in clip]
        frames = torch.stack(frames) if isinstance(frames[0], torch.Tensor) else frames
        return (frames, torch.tensor([r.phase for r in clip], dtype=torch.long),
                torch.tensor([r.source for r in clip], dtype=torch.long))
