"""Dataset registry: where a dataset's videos and annotations live, its phases, tools, native frame
rate, its splits and which split a stage uses when none is named.

This is the one home of these facts: labels, evaluation, preparation and every training stage read
them from the spec (``get_dataset(name).phases``, ``.native_fps``, ``.resolve_protocol(None)``).
Adding a dataset is one small subclass of :class:`DatasetSpec` decorated with :func:`register`.
Video *names* (``video01``, ``workflow_video_03``) are the output folder names after ``prepare`` and
the unit of every split and low-data subset.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Sequence

from ..errors import UserError

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mpg", ".mpeg")

CHOLEC80_PHASES = (
    "Preparation",
    "CalotTriangleDissection",
    "ClippingCutting",
    "GallbladderDissection",
    "GallbladderPackaging",
    "CleaningCoagulation",
    "GallbladderRetraction",
)
CHOLEC80_TOOLS = ("Grasper", "Bipolar", "Hook", "Scissors", "Clipper", "Irrigator", "SpecimenBag")
M2CAI16_PHASES = ("TrocarPlacement",) + CHOLEC80_PHASES


@dataclass(frozen=True)
class VideoSource:
    """One raw video and its annotation files (``None``: no such file expected/found)."""

    name: str
    video: Path
    phase_file: Path | None = None
    tool_file: Path | None = None
    # The dataset requires a phase file: its absence is an error, not an unlabeled video.
    needs_phases: bool = False


class DatasetSpec:
    """Base class; subclasses set ``name``, ``split_names``, ``default_protocol``, ``phases`` (and
    ``tools``, ``native_fps`` where known) and implement ``videos`` and ``split``."""

    name: ClassVar[str]
    split_names: ClassVar[tuple[str, ...]]
    # The split every stage (pretrain, linear, extract, temporal, export) uses when none is named.
    default_protocol: ClassVar[str]
    # Frame rate of the published videos, i.e. the unit of the frame indices in the annotation
    # files; None when the dataset does not fix one (a folder of any videos).
    native_fps: ClassVar[float | None] = None
    phases: tuple[str, ...] = ()
    tools: tuple[str, ...] = ()

    def resolve_protocol(self, protocol: str | None) -> str:
        """``protocol``, or the dataset's default when None / empty; an unknown name is refused."""
        chosen = protocol or self.default_protocol
        if chosen not in self.split_names:
            raise self._unknown_split(chosen)
        return chosen

    def videos(self, root: Path) -> list[VideoSource]:
        """The raw videos under ``root``, sorted by name."""
        raise NotImplementedError

    def split(self, split: str, names: Sequence[str]) -> dict[str, list[str]]:
        """``{"train": [...], "val": [...], "test": [...]}`` restricted to the present ``names``."""
        raise NotImplementedError

    def _unknown_split(self, split: str) -> UserError:
        return UserError(
            f"dataset {self.name!r} has no split {split!r} (known: {', '.join(self.split_names)})"
        )


_REGISTRY: dict[str, Callable[..., DatasetSpec]] = {}


def register(cls: type[DatasetSpec]) -> type[DatasetSpec]:
    _REGISTRY[cls.name] = cls
    return cls


def dataset_names() -> list[str]:
    return sorted(_REGISTRY)


def labelled_dataset_names() -> list[str]:
    """The datasets whose spec fixes the phase list and the native frame rate (what ``evaluate`` scores)."""
    return [n for n in dataset_names() if _REGISTRY[n].phases and _REGISTRY[n].native_fps]


def get_dataset(name: str, phases: Sequence[str] | None = None) -> DatasetSpec:
    """The spec for ``name``; ``phases`` overrides the phase list (needed by ``folder``)."""
    if name not in _REGISTRY:
        raise UserError(f"unknown dataset {name!r} (known: {', '.join(dataset_names())})")
    spec = _REGISTRY[name]()
    if phases is not None:
        spec.phases = tuple(phases)
    return spec


def _number(name: str) -> int:
    match = re.search(r"(\d+)$", name)
    return int(match.group(1)) if match else -1


def _by_number(names: Sequence[str], ranges: dict[str, range]) -> dict[str, list[str]]:
    return {part: [n for n in names if _number(n) in r] for part, r in ranges.items()}


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise UserError(f"{path}: no such folder ({what})")
    return path


@register
class Cholec80(DatasetSpec):
    """Cholec80: ``ROOT/videos/videoNN.mp4``, ``ROOT/phase_annotations/videoNN-phase.txt``,
    ``ROOT/tool_annotations/videoNN-tool.txt`` (optional); 25 fps; 7 phases."""

    name = "cholec80"
    split_names = ("paper", "standard")
    # standard has validation videos for model selection; its training videos are paper's (1-40)
    default_protocol = "standard"
    native_fps = 25.0
    phases = CHOLEC80_PHASES
    tools = CHOLEC80_TOOLS

    def videos(self, root: Path) -> list[VideoSource]:
        folder = _require_dir(root / "videos", "expected the Cholec80 layout ROOT/videos/videoNN.mp4")
        found = []
        for video in sorted(folder.iterdir()):
            if video.suffix.lower() in VIDEO_SUFFIXES and re.fullmatch(r"video\d+", video.stem):
                tool = root / "tool_annotations" / f"{video.stem}-tool.txt"
                found.append(VideoSource(
                    video.stem, video, root / "phase_annotations" / f"{video.stem}-phase.txt",
                    tool if tool.exists() else None, needs_phases=True))
        return found

    def split(self, split: str, names: Sequence[str]) -> dict[str, list[str]]:
        if split == "paper":  # the MICCAI 2022 paper: 40 videos to train, 40 to test
            return _by_number(names, {"train": range(1, 41), "val": range(0), "test": range(41, 81)})
        if split == "standard":  # 40 / 8 / 32, as in TeCNO and most phase-recognition work
            return _by_number(names, {"train": range(1, 41), "val": range(41, 49), "test": range(49, 81)})
        raise self._unknown_split(split)


@register
class M2CAI16(DatasetSpec):
    """M2CAI16-workflow: ``ROOT/train_dataset/workflow_video_NN.{mp4,txt}`` (27) and
    ``ROOT/test_dataset/test_workflow_video_NN.{mp4,txt}`` (14); 25 fps; 8 phases."""

    name = "m2cai16"
    split_names = ("default",)
    default_protocol = "default"
    native_fps = 25.0
    phases = M2CAI16_PHASES

    def videos(self, root: Path) -> list[VideoSource]:
        found = []
        for folder, prefix in (("train_dataset", "workflow_video_"), ("test_dataset", "test_workflow_video_")):
            base = _require_dir(root / folder, "expected the M2CAI16-workflow layout")
            for video in sorted(base.iterdir()):
                if video.suffix.lower() in VIDEO_SUFFIXES and re.fullmatch(prefix + r"\d+", video.stem):
                    found.append(VideoSource(video.stem, video, video.with_suffix(".txt"), needs_phases=True))
        return found

    def split(self, split: str, names: Sequence[str]) -> dict[str, list[str]]:
        if split != "default":
            raise self._unknown_split(split)
        return {
            "train": [n for n in names if n.startswith("workflow_video_")],
            "val": [],
            "test": [n for n in names if n.startswith("test_workflow_video_")],
        }


@register
class Folder(DatasetSpec):
    """Any videos under ROOT (recursive). With a phase list, ``<stem>-phase.txt`` or ``<stem>.txt``
    beside a video (Cholec80 phase format) labels it; videos without one stay unlabeled."""

    name = "folder"
    split_names = ("all",)
    default_protocol = "all"

    def videos(self, root: Path) -> list[VideoSource]:
        _require_dir(root, "the folder of videos")
        found = []
        for video in sorted(root.rglob("*")):
            if video.suffix.lower() not in VIDEO_SUFFIXES or not video.is_file():
                continue
            rel = video.relative_to(root).with_suffix("")
            name = "__".join(rel.parts)  # unique and flat: a/b.mp4 -> a__b
            phase = None
            if self.phases:
                for candidate in (video.with_name(video.stem + "-phase.txt"), video.with_suffix(".txt")):
                    if candidate.exists():
                        phase = candidate
                        break
            found.append(VideoSource(name, video, phase))
        return found

    def split(self, split: str, names: Sequence[str]) -> dict[str, list[str]]:
        if split != "all":
            raise self._unknown_split(split)
        return {"train": list(names), "val": [], "test": []}
