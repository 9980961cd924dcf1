"""Build methods from a config and train them with Lightning (pretraining and teacher stage)."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from ...atomic import torch_save
from ...checkpoints import load_backbone
from ...data.images import ImageFolderDataset, generate_images
from ...distill import DistillationHead, DistillConfig, check_global_batch, load_teacher, save_teacher_checkpoint
from ...errors import UserError, doing
from .registry import resolve_method
from .config import global_batch_size, require
from .rundir import (run_folder_lock, CHECKPOINT_FILENAME, CHECKPOINTS, META_KEY, Launch, check_resume_fits, plan_launch, run_meta,
                     start_launch)
from ...train.loggers import build_loggers
from ...train.progress import EpochLines, progress_mode
from .validate import validate_config
from . import device_data
from ...train.devices import prepare_model, resolve_run_devices, run_loader_options


# Test hook (tests/test_run_folders.py): the N-th checkpoint write of the process stops half-way
# through its temporary file and waits to be killed, as a kill -9 during that write would find it.
PAUSE_WRITE_ENV = "SOLO_SURGICAL_TEST_PAUSE_CHECKPOINT_WRITE"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints are written under a temporary name and renamed: a kill never leaves a torn file."""

    writes = 0

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        AtomicCheckpointIO.writes += 1
        with doing("writing a checkpoint"):
            if os.environ.get(PAUSE_WRITE_ENV) != str(AtomicCheckpointIO.writes):
                torch_save(checkpoint, path)
                return
            from io import BytesIO

            from ...atomic import _write

            def half_then_wait(handle: Any) -> None:
                buffer = BytesIO()
                torch.save(checkpoint, buffer)
                handle.write(buffer.getvalue()[: buffer.tell() // 2])
                handle.flush()
                print(f"{PAUSE_WRITE_ENV}: paused writing {path}", file=sys.stderr, flush=True)
                time.sleep(3600)

            _write(path, "wb", half_then_wait)


class RunMetadata(Callback):
    """Records the method and backbone in every checkpoint, so a resume can refuse another one."""

    def __init__(self, meta: dict[str, Any]) -> None:
        self.meta = meta

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[META_KEY] = dict(self.meta)


def method_transform(method_name: str, cfg: DictConfig):
    """The method's own two-view augmentation at the configured size.

    ``data.augment`` holds extra keyword arguments for it, e.g. ``+data.augment.cj_prob=0.5``.
    """
    kwargs = dict(input_size=int(cfg.data.image_size), min_scale=float(cfg.data.min_scale),
                  normalize={"mean": list(cfg.data.mean), "std": list(cfg.data.std)},
                  **OmegaConf.to_container(cfg.data.augment, resolve=True))
    try:
        return resolve_method(method_name).cls.make_transform(**kwargs)
    except TypeError as exc:
        raise UserError(f"data.augment: {exc}") from None


def build_model(cfg: DictConfig, *, freeze_backbone: Optional[str] = None,
                backbone_module: Optional[torch.nn.Module] = None, arch: Optional[str] = None):
    """Instantiate the configured method (and its distillation head for ``distill_*``)."""
    resolved = resolve_method(str(cfg.method.name))
    if freeze_backbone and resolved.distilled:
        raise UserError(f"the teacher stage trains a plain method, not {resolved.name}")
    if backbone_module is None and cfg.backbone.init:
        loaded = load_backbone(str(cfg.backbone.init), str(cfg.backbone.name), ask="set backbone.name")
        backbone_module, arch = loaded.module, loaded.arch
        if arch != str(cfg.backbone.name):
            # training another architecture than config.yaml records would be a silent wrong result
            raise UserError(f"backbone.init={cfg.backbone.init} holds a {arch}, but backbone.name={cfg.backbone.name}; "
                            f"set backbone.name={arch}")
    model = resolved.cls(
        backbone=arch or str(cfg.backbone.name),
        hparams=OmegaConf.to_container(cfg.method.kwargs, resolve=True),
        optim=OmegaConf.to_container(cfg.optimizer, resolve=True),
        freeze_backbone=freeze_backbone, backbone_module=backbone_module,
        max_epochs=int(cfg.trainer.max_epochs), batch_size=global_batch_size(cfg),
    )
    if resolved.distilled:
        try:
            dcfg = DistillConfig(**OmegaConf.to_container(cfg.distill, resolve=True))
        except (TypeError, ValueError) as exc:
            raise UserError(f"distill: {exc}") from None
        require(cfg, "distill.teacher", f"{resolved.name} distils from a teacher checkpoint "
                                        f"(make one with `solo-surgical teacher`)")
        try:
            check_global_batch(dcfg, global_batch_size(cfg), "data.batch_size x devices x nodes")
        except ValueError as exc:
            raise UserError(str(exc)) from None
        teacher = load_teacher(dcfg.teacher, input_mean=cfg.data.mean, input_std=cfg.data.std)
        model.distill = DistillationHead(teacher, model.hp.proj_output_dim, dcfg)
    return model


def train_loader(cfg: DictConfig, run_dir: Path) -> DataLoader:
    root = cfg.data.root
    if root is None:
        root = generate_images(run_dir / "generated_images", int(cfg.data.generated_count),
                               int(cfg.data.generated_size), int(cfg.run.seed))
    transform = method_transform(str(cfg.method.name), cfg)
    if (Path(str(root)) / "manifest.json").is_file():
        # prepared surgical videos: only the split's training videos (a budget picks whole videos)
        from ...data.datasets import UnlabeledFrames, parse_budget

        budget = None if cfg.data.budget is None else parse_budget(str(cfg.data.budget))
        dataset = UnlabeledFrames(str(root), "train", cfg.data.protocol, budget, int(cfg.data.budget_seed), transform)
    else:
        dataset = ImageFolderDataset(root, transform=transform)
    if len(dataset) < int(cfg.data.batch_size):
        raise UserError(f"{root}: {len(dataset)} images, fewer than data.batch_size={cfg.data.batch_size}")
    collate = None
    if device_data.enabled(cfg):  # JPEG bytes only; decoded and augmented on the device (device_data.py)
        dataset, collate = device_data.jpeg_dataset(dataset)
    # workers / pinned memory / prefetch from the machine (devices.py; data.num_workers=auto)
    options = run_loader_options(cfg)
    # an explicit generator: the shuffling order depends on run.seed only, not on how much of the
    # global RNG model construction consumed
    generator = torch.Generator().manual_seed(int(cfg.run.seed))
    return DataLoader(dataset, batch_size=int(cfg.data.batch_size), shuffle=True, drop_last=True,
                      generator=generator, collate_fn=collate, **options.kwargs())


def _quiet_lightning() -> None:
    """Silence Lightning chatter that says nothing about this run (tips, device banners) and the
    warning about modules in eval mode, which the frozen teacher / backbone are on purpose."""
    import logging
    import warnings

    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    # a resume writes into its own checkpoint folder on purpose (rundir.py decides when that is allowed)
    warnings.filterwarnings("ignore", message=r".*Checkpoint directory .* exists and is not empty.*")


def seed_run(cfg: DictConfig) -> None:
    """Seed every generator (python, numpy, torch, DataLoader workers) *before* anything random is
    built: the model's initial weights, the generated images and the augmentations all draw from it."""
    pl.seed_everything(int(cfg.run.seed), workers=True, verbose=False)


def build_trainer(cfg: DictConfig, run_dir: Path, meta: dict[str, Any]) -> pl.Trainer:
    """Lightning's Trainer for the run folder; a value Lightning refuses ends in one line."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    checkpoint = ModelCheckpoint(dirpath=run_dir / CHECKPOINTS, filename=CHECKPOINT_FILENAME,
                                 auto_insert_metric_name=False, save_last=True,
                                 # the newest k epoch checkpoints (by step), not all: 200 epochs x 200 MB
                                 save_top_k=int(cfg.run.get("keep_checkpoints", -1)), monitor="step", mode="max",
                                 every_n_epochs=int(cfg.run.checkpoint_every_n_epochs),
                                 # never last-v1.ckpt: the run folder holds one run (see rundir.py)
                                 enable_version_counter=False)
    trainer_kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    show_bar, epoch_lines = progress_mode(trainer_kwargs.get("enable_progress_bar", True),
                                          cfg.run.get("epoch_lines", True))
    trainer_kwargs["enable_progress_bar"] = show_bar
    progress = [EpochLines()] if epoch_lines else []
    try:
        return pl.Trainer(
            **trainer_kwargs,
            default_root_dir=str(run_dir),
            # New log versions on resume (logs/version_N): Lightning would otherwise overwrite metrics.csv.
            logger=build_loggers(cfg.run.get("loggers", ["csv", "tensorboard"]), run_dir),
            callbacks=[checkpoint, LearningRateMonitor(logging_interval="step"), RunMetadata(meta), *progress],
            plugins=[AtomicCheckpointIO()],
            enable_model_summary=False,
        )
    except (MisconfigurationException, ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"trainer: {first}") from None


def fit(cfg: DictConfig, model: pl.LightningModule, launch: Launch | Path | str) -> pl.Trainer:
    """Train ``model`` in ``launch.run_dir`` (layout: :mod:`solo_surgical.hosts.lightly.rundir`).

    ``launch`` may also be a run folder: the launch is then planned here (``run.dir`` set to it).
    Everything that can refuse (devices, the loader, the Trainer, the resume checkpoint against the
    model) is built before the first write to the run folder.
    """
    _quiet_lightning()
    if not isinstance(launch, Launch):
        OmegaConf.update(cfg, "run.dir", str(launch))
        validate_config(cfg, "teacher" if "teacher" in cfg else "pretrain")
        launch = plan_launch(cfg)
    run_dir = launch.run_dir
    check_resume_fits(launch, model)
    resolve_run_devices(cfg)  # "auto" -> this machine's accelerator, precision, workers (recorded in config.yaml)
    model = prepare_model(model, str(cfg.trainer.accelerator))
    model.device_views = device_data.device_views_for(cfg, method_transform(str(cfg.method.name), cfg))
    loader = train_loader(cfg, run_dir)
    trainer = build_trainer(cfg, run_dir, run_meta(cfg, str(cfg.backbone.name)))
    start_launch(launch, cfg)
    launch.checkpoint = None  # Lightning reads the file itself; free the copy
    trainer.fit(model, loader, ckpt_path=str(launch.ckpt_path) if launch.ckpt_path else None)
    return trainer


def run_pretrain(cfg: DictConfig) -> Path:
    resolve_sources(cfg)
    validate_config(cfg, "pretrain")
    with run_folder_lock(cfg):
        return _run_pretrain(cfg)


def _run_pretrain(cfg: DictConfig) -> Path:
    launch = plan_launch(cfg)
    seed_run(cfg)
    model = build_model(cfg)
    trainer = fit(cfg, model, launch)
    if trainer.global_rank == 0:
        export_backbone(model.backbone, launch.run_dir / EXPORTED_BACKBONE)
    return launch.run_dir


# Written next to checkpoints/ by every finished pretraining: the student backbone alone, torchvision
# key names (a ResNet's file loads into torchvision's model with strict=False; only fc.* is missing).
EXPORTED_BACKBONE = "backbone.pth"


def export_backbone(backbone: torch.nn.Module, path: Path) -> Path:
    """The backbone's state dict (CPU tensors), written atomically."""
    return torch_save({k: v.detach().cpu().clone() for k, v in backbone.state_dict().items()}, path)


def resolve_sources(cfg: DictConfig) -> dict[str, str]:
    """``teacher.source`` and ``backbone.init`` may name a zoo entry (``tv-resnet50-v1``, ``mocov2-800ep``):
    replace it by the local file (fetched into the zoo cache, or found there, hash checked), before
    any check or write. Returns ``{key: zoo name}`` for what was replaced."""
    from ...zoo.fetch import resolve_local

    named = {}
    for key in ("teacher.source", "backbone.init"):
        value = OmegaConf.select(cfg, key, throw_on_missing=False) if not OmegaConf.is_missing(cfg, key) else None
        if value is not None and not Path(str(value)).expanduser().is_file():
            try:
                local = resolve_local(str(value))
            except UserError as exc:  # name the config key, as every other config refusal does
                raise UserError(f"{key}={value}: {str(exc).removeprefix(str(value) + ': ')}") from None
            if str(local) != str(value):
                named[key] = str(value)
                OmegaConf.update(cfg, key, str(local))
    return named


def run_teacher_stage(cfg: DictConfig) -> Path:
    """Freeze a public backbone, train the method's heads on surgical frames, export a teacher."""
    require(cfg, "teacher.source", "the public backbone checkpoint (torchvision, MoCo v2 or ours)")
    zoo_names = resolve_sources(cfg)
    validate_config(cfg, "teacher")
    with run_folder_lock(cfg):
        return _run_teacher_stage(cfg, zoo_names)


def _run_teacher_stage(cfg: DictConfig, zoo_names: dict[str, str]) -> Path:
    source = str(cfg.teacher.source)
    seed_run(cfg)
    loaded = load_backbone(source, str(cfg.backbone.name), ask="set backbone.name")
    backbone, arch, info = loaded.module, loaded.arch, loaded.meta
    OmegaConf.update(cfg, "backbone.name", arch)
    launch = plan_launch(cfg)
    model = build_model(cfg, freeze_backbone=str(cfg.teacher.bn), backbone_module=backbone, arch=arch)
    run_dir = launch.run_dir
    trainer = fit(cfg, model, launch)
    out = Path(str(cfg.teacher.out)) if cfg.teacher.out else run_dir / "teacher.pth"
    if trainer.global_rank == 0:
        heads = model.embedding_heads()
        save_teacher_checkpoint(
            out, arch=arch, backbone=model.backbone, projector=heads["projector"], predictor=heads.get("predictor"),
            meta={**info, **({"zoo_name": zoo_names["teacher.source"]} if "teacher.source" in zoo_names else {}),
                  "method": model.method_name, "bn": str(cfg.teacher.bn), "mean": list(cfg.data.mean),
                  "std": list(cfg.data.std), "image_size": int(cfg.data.image_size),
                  "steps": int(trainer.global_step), "method_kwargs": model.hparams_dict()})
    return out
