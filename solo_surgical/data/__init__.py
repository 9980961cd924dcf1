"""Surgical video data: preparation, dataset registry, torch datasets.

Public API (imported lazily, so ``import solo_surgical.data`` stays light)::

    prepare(spec, root, out, Options(...), workers)       raw videos -> DATA (see .prepare)
    synthesize(out, SynthConfig(...))                     synthetic Cholec80-layout set
    get_dataset(name), register, DatasetSpec              dataset registry
    PreparedData, UnlabeledFrames, LabeledFrames, VideoSequences, select_videos
    SSLDataModule, PhaseDataModule, SequenceDataModule    lightning.pytorch data modules
    export_solo_learn(data_dir, out, ...)                 solo-learn custom-dataset symlinks
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "prepare": ".prepare", "Options": ".prepare",
    "synthesize": ".synth", "SynthConfig": ".synth",
    "get_dataset": ".registry", "register": ".registry", "DatasetSpec": ".registry",
    "dataset_names": ".registry", "CHOLEC80_PHASES": ".registry", "M2CAI16_PHASES": ".registry",
    "PreparedData": ".datasets", "UnlabeledFrames": ".datasets", "LabeledFrames": ".datasets",
    "VideoSequences": ".datasets", "select_videos": ".datasets",
    "SSLDataModule": ".datamodules", "PhaseDataModule": ".datamodules", "SequenceDataModule": ".datamodules",
    "export_solo_learn": ".sololearn",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
