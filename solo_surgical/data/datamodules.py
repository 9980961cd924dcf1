"""Lightning data modules over a prepared folder (thin wrappers of :mod:`.datasets`)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from .datasets import LabeledFrames, PreparedData, Transform, UnlabeledFrames, VideoSequences


class _Base(pl.LightningDataModule):
    def __init__(self, data_dir: str | Path, protocol: str | None = None, budget: float | int | None = None,
                 seed: int = 0, batch_size: int = 64, num_workers: int = 0) -> None:
        super().__init__()
        self.data_dir, self.protocol, self.budget, self.seed = Path(data_dir), protocol, budget, seed
        self.batch_size, self.num_workers = batch_size, num_workers
        self._data: PreparedData | None = None

    @property
    def data(self) -> PreparedData:
        if self._data is None:
            self._data = PreparedData(self.data_dir)
        return self._data

    @property
    def num_classes(self) -> int:
        return len(self.data.phases)

    def _loader(self, dataset, shuffle: bool, drop_last: bool = False) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, drop_last=drop_last,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          pin_memory=False)


class SSLDataModule(_Base):
    """Unlabeled training frames (budgeted by videos); batches of ``(views, indices)``.

    ``transform``: applied to each PIL image (e.g. a lightly multi-view transform returning a
    list of tensors, which the default collate turns into a list of ``(B, C, H, W)`` tensors).
    """

    def __init__(self, data_dir: str | Path, transform: Transform, protocol: str | None = None,
                 budget: float | int | None = None, seed: int = 0, batch_size: int = 64,
                 num_workers: int = 0, drop_last: bool = True) -> None:
        super().__init__(data_dir, protocol, budget, seed, batch_size, num_workers)
        self.transform, self.drop_last = transform, drop_last
        self.train_set: UnlabeledFrames | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = UnlabeledFrames(self.data, "train", self.protocol, self.budget, self.seed, self.transform)

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.train_set, shuffle=True, drop_last=self.drop_last and len(self.train_set) > self.batch_size)


class _PartsModule(_Base):
    """Loaders over ``self.sets`` (part name -> dataset), filled by the subclass's ``setup``."""

    sets: dict

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.sets["train"], shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        self.setup()
        # an empty list makes Lightning skip validation rather than select on test videos
        return self._loader(self.sets["val"], shuffle=False) if "val" in self.sets else []

    def test_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.sets["test"], shuffle=False)


class PhaseDataModule(_PartsModule):
    """Labeled frames for linear evaluation: ``train`` (budgeted), ``val`` and ``test`` parts.

    When the protocol has no validation videos (cholec80 ``paper``) there is no validation
    loader: model selection must never look at the test videos (use the ``standard`` protocol
    to select on videos 41-48).
    """

    def __init__(self, data_dir: str | Path, train_transform: Transform, eval_transform: Transform,
                 protocol: str | None = None, budget: float | int | None = None, seed: int = 0,
                 batch_size: int = 64, num_workers: int = 0) -> None:
        super().__init__(data_dir, protocol, budget, seed, batch_size, num_workers)
        self.train_transform, self.eval_transform = train_transform, eval_transform
        self.sets: dict[str, LabeledFrames] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.sets:
            return
        self.sets["train"] = LabeledFrames(self.data, "train", self.protocol, self.budget, self.seed, self.train_transform)
        self.sets["test"] = LabeledFrames(self.data, "test", self.protocol, transform=self.eval_transform)
        if self.data.part("val", self.protocol):
            self.sets["val"] = LabeledFrames(self.data, "val", self.protocol, transform=self.eval_transform)


class SequenceDataModule(_PartsModule):
    """Per-video clips (see :class:`VideoSequences`); ``batch_size`` counts clips."""

    def __init__(self, data_dir: str | Path, transform: Transform | None = None, clip_len: int | None = 64,
                 stride: int | None = None, protocol: str | None = None, budget: float | int | None = None,
                 seed: int = 0, batch_size: int = 1, num_workers: int = 0,
                 parts: Sequence[str] = ("train", "val", "test")) -> None:
        super().__init__(data_dir, protocol, budget, seed, batch_size, num_workers)
        self.transform, self.clip_len, self.stride, self.parts = transform, clip_len, stride, tuple(parts)
        self.sets: dict[str, VideoSequences] = {}

    def setup(self, stage: str | None = None) -> None:
        for part in self.parts:
            if part not in self.sets and self.data.part(part, self.protocol):
                self.sets[part] = VideoSequences(self.data, part, self.protocol, self.budget if part == "train" else None,
                                                 self.seed, self.transform, self.clip_len,
                                                 self.stride if part == "train" else None)
