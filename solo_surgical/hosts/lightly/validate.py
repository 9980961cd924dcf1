"""Check every value of a ``pretrain`` / ``teacher`` config before any work or any write.

Hydra accepts any value for any key (``trainer.max_epochs=-5``, ``optimizer.lr=nan``,
``+trainer.foo=1``, ``data.image_size=100000``); left unchecked they end in a traceback deep in
Lightning or torch, in an out-of-memory kill, or -- worse -- in a run that silently trains something
else. :func:`validate_config` refuses each with one line naming the key, the value and the rule:

* unknown keys in every section (the packaged ``pretrain.yaml`` / ``teacher.yaml`` are the schema;
  ``data.augment`` is open, it holds the method transform's own arguments);
* ``trainer.*`` keys against the parameters of Lightning's ``Trainer``, keys solo-surgical sets itself
  refused, and the ranges of the common numeric ones;
* ranges, types and finiteness of ``data``, ``optimizer``, ``distill``, ``run`` and ``method.kwargs``
  values (types from the method's ``Hparams`` dataclass), sizes bounded above
  (:data:`solo_surgical.argtypes.MAX_IMAGE_SIZE`);
* ``backbone.name`` among the registered backbones, input files that exist.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import MISSING, fields
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf

from ...argtypes import MAX_BATCH, MAX_IMAGE_SIZE, MAX_WORKERS, MIN_IMAGE_SIZE
from ...errors import UserError

# Trainer arguments solo-surgical sets itself: the run folder layout depends on them.
RESERVED_TRAINER_KEYS = {
    "default_root_dir": "the run folder is run.dir",
    "logger": "logs go to RUN_DIR/logs and RUN_DIR/tensorboard",
    "callbacks": "checkpointing is set by run.*",
    "plugins": "checkpoints are written atomically by solo-surgical",
    "enable_checkpointing": "checkpoints are part of every run (run.checkpoint_every_n_epochs)",
    "enable_model_summary": "set by solo-surgical",
}
OPTIMIZERS = ("sgd", "lars", "adamw")
TEACHER_BN = ("frozen", "recompute")


def _show(value: Any) -> str:
    return OmegaConf.to_yaml(value).strip().replace("\n", " ") if isinstance(value, (DictConfig, ListConfig)) \
        else str(value)


def _fail(key: str, value: Any, rule: str) -> UserError:
    return UserError(f"{key}={_show(value)}: {rule}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_int(key: str, value: Any, lo: Optional[int] = None, hi: Optional[int] = None, *,
              none_ok: bool = False) -> None:
    """An integer in ``[lo, hi]`` (``None`` allowed with ``none_ok``)."""
    if value is None and none_ok:
        return
    rule = "must be an integer" + (f" >= {lo}" if lo is not None and hi is None else "") + \
        (f" between {lo} and {hi}" if lo is not None and hi is not None else "")
    if not _is_int(value) or (lo is not None and value < lo) or (hi is not None and value > hi):
        raise _fail(key, value, rule)


def check_float(key: str, value: Any, lo: Optional[float] = None, hi: Optional[float] = None, *,
                lo_open: bool = False, hi_open: bool = False, none_ok: bool = False) -> None:
    """A finite number in the interval (bounds excluded with ``lo_open`` / ``hi_open``)."""
    if value is None and none_ok:
        return
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo:g}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {hi:g}")
    rule = "must be a finite number" + (" " + " and ".join(parts) if parts else "")
    if not _is_number(value) or not math.isfinite(value):
        raise _fail(key, value, rule)
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise _fail(key, value, rule)
    if hi is not None and (value >= hi if hi_open else value > hi):
        raise _fail(key, value, rule)


def check_bool(key: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise _fail(key, value, "must be true or false")


def check_choice(key: str, value: Any, choices: Iterable[Any], *, none_ok: bool = False) -> None:
    choices = list(choices)
    if value is None and none_ok:
        return
    if value not in choices:
        raise _fail(key, value, f"must be one of {', '.join(str(c) for c in choices)}")


def _schema(config_name: str) -> DictConfig:
    """The packaged config file(s), whose keys are the known keys."""
    folder = resources.files("solo_surgical.hosts.lightly.configs")
    schema = OmegaConf.load(str(folder / "pretrain.yaml"))
    if config_name == "teacher":
        schema = OmegaConf.merge(schema, OmegaConf.load(str(folder / "teacher.yaml")))
    return schema


def check_known_keys(cfg: DictConfig, config_name: str) -> None:
    """Refuse keys the schema does not have (``+data.imag_size=64`` would otherwise be ignored)."""
    schema = _schema(config_name)
    known_top = {k for k in schema if k != "defaults"} | {"method"}
    for key in cfg:
        if key not in known_top:
            raise UserError(f"unknown config key {key!r}; known: {', '.join(sorted(known_top))}")
    for section in sorted(known_top - {"trainer", "method"}):
        if section not in cfg or not isinstance(cfg[section], DictConfig):
            raise UserError(f"config section {section!r} must be a mapping of keys")
        known = set(schema[section])
        for key in cfg[section]:
            if key not in known:
                raise UserError(f"unknown config key {section}.{key}; known: {', '.join(sorted(known))}")


def trainer_parameters() -> set[str]:
    import lightning.pytorch as pl

    return {n for n in inspect.signature(pl.Trainer.__init__).parameters if n != "self"}


def check_trainer(trainer: DictConfig) -> None:
    """Keys against ``lightning.pytorch.Trainer``'s signature, then the ranges of the usual ones."""
    allowed = trainer_parameters()
    for key in trainer:
        if key in RESERVED_TRAINER_KEYS:
            raise UserError(f"trainer.{key} cannot be set: {RESERVED_TRAINER_KEYS[key]}")
        if key not in allowed:
            close = sorted(a for a in allowed if a.split("_")[0] == str(key).split("_")[0])
            raise UserError(f"trainer.{key} is not an argument of Lightning's Trainer"
                            + (f" (did you mean {', '.join(close)}?)" if close else ""))
    t = trainer
    check_int("trainer.max_epochs", t.get("max_epochs"), 1, 1_000_000)
    check_int("trainer.min_epochs", t.get("min_epochs"), 0, int(t.max_epochs), none_ok=True)
    max_steps = t.get("max_steps", -1)
    if not (_is_int(max_steps) and (max_steps == -1 or max_steps >= 1)):
        raise _fail("trainer.max_steps", max_steps, "must be -1 (no limit) or an integer >= 1")
    check_int("trainer.num_nodes", t.get("num_nodes", 1), 1, 100_000)
    devices = t.get("devices", "auto")
    ok_devices = devices == "auto" or (_is_int(devices) and (devices >= 1 or devices == -1)) or (
        isinstance(devices, ListConfig) and len(devices) > 0 and all(_is_int(d) and d >= 0 for d in devices)) or (
        isinstance(devices, str) and devices.replace(",", "").replace(" ", "").isdigit())
    if not ok_devices:
        raise _fail("trainer.devices", devices, "must be auto, -1 (all), a count >= 1 or a list of device indices")
    check_int("trainer.log_every_n_steps", t.get("log_every_n_steps"), 1, none_ok=True)
    check_int("trainer.accumulate_grad_batches", t.get("accumulate_grad_batches", 1), 1, 100_000)
    check_float("trainer.gradient_clip_val", t.get("gradient_clip_val"), 0.0, none_ok=True)
    limit = t.get("limit_train_batches")
    if limit is not None and not ((_is_int(limit) and limit >= 1) or (isinstance(limit, float) and 0 < limit <= 1)):
        raise _fail("trainer.limit_train_batches", limit,
                    "must be null, a fraction in (0, 1] or a number of batches >= 1")
    check_choice("trainer.deterministic", t.get("deterministic"), [True, False, "warn", None])
    for key in ("enable_progress_bar", "benchmark", "detect_anomaly", "sync_batchnorm", "inference_mode",
                "use_distributed_sampler", "barebones"):
        if key in t and t[key] is not None:
            check_bool(f"trainer.{key}", t[key])
    for key, value in t.items():  # whatever else: numbers must at least be finite
        if _is_number(value) and not math.isfinite(value):
            raise _fail(f"trainer.{key}", value, "must be a finite number")


def check_data(data: DictConfig) -> None:
    from ...data.datasets import parse_budget

    if data.root is not None:
        root = Path(str(data.root))
        if not root.is_dir():
            raise UserError(f"data.root={root}: folder not found" if not root.exists() else
                            f"data.root={root}: not a folder")
    if data.protocol is not None and not isinstance(data.protocol, str):
        raise _fail("data.protocol", data.protocol, "must be the name of a split scheme (e.g. paper, standard)")
    if data.budget is not None:
        budget = parse_budget(str(data.budget))
        if budget is not None and not ((isinstance(budget, float) and 0 < budget <= 1) or
                                       (_is_int(budget) and budget >= 1)):
            raise _fail("data.budget", data.budget, "must be a fraction in (0, 1], a percentage or a video count >= 1")
    check_int("data.budget_seed", data.budget_seed, 0)
    check_int("data.image_size", data.image_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
    check_float("data.min_scale", data.min_scale, 0.0, 1.0, lo_open=True)
    if not isinstance(data.augment, DictConfig):
        raise _fail("data.augment", data.augment, "must be a mapping of transform arguments (+data.augment.KEY=VALUE)")
    check_int("data.batch_size", data.batch_size, 1, MAX_BATCH)
    if "device_augment" in data:
        check_bool("data.device_augment", data.device_augment)
    if data.num_workers != "auto":  # auto: chosen from the machine (train/devices.py)
        check_int("data.num_workers", data.num_workers, 0, MAX_WORKERS)
    for key, positive in (("mean", False), ("std", True)):
        values = data[key]
        if not isinstance(values, ListConfig) or len(values) != 3 or not all(
                _is_number(v) and math.isfinite(v) and (v > 0 if positive else True) for v in values):
            raise _fail(f"data.{key}", values, "must be a list of 3 finite numbers" + (" > 0" if positive else ""))
    check_int("data.generated_count", data.generated_count, 1, 1_000_000)
    check_int("data.generated_size", data.generated_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)


def check_optimizer(opt: DictConfig, max_epochs: int) -> None:
    check_choice("optimizer.name", opt.name, OPTIMIZERS)
    check_float("optimizer.lr", opt.lr, 0.0, lo_open=True)
    check_float("optimizer.weight_decay", opt.weight_decay, 0.0)
    check_float("optimizer.momentum", opt.momentum, 0.0, 1.0, hi_open=True)
    check_int("optimizer.warmup_epochs", opt.warmup_epochs, 0, max_epochs)
    check_bool("optimizer.scale_lr_by_batch", opt.scale_lr_by_batch)


def check_distill(distill: DictConfig) -> None:
    from ...distill.head import WEIGHT_PRESETS

    check_float("distill.weight", distill.weight, 0.0)
    check_float("distill.ssl_weight", distill.ssl_weight, 0.0)
    check_int("distill.memory_size", distill.memory_size, 0, 10_000_000)
    check_float("distill.student_temperature", distill.student_temperature, 0.0, lo_open=True)
    check_float("distill.teacher_temperature", distill.teacher_temperature, 0.0, lo_open=True)
    check_bool("distill.symmetric", distill.symmetric)
    if distill.preset is not None and distill.preset not in WEIGHT_PRESETS:
        raise UserError(f"unknown distill.preset {distill.preset!r}; known: {', '.join(WEIGHT_PRESETS)}")


def check_method_kwargs(method: DictConfig) -> None:
    """``method.kwargs`` against the method's ``Hparams`` dataclass: known keys, the type of each
    default, and the ranges every method shares by name (sizes, temperatures, momenta, queues)."""
    from .registry import resolve_method

    resolved = resolve_method(str(method.name))
    specs = {f.name: f for f in fields(resolved.cls.Hparams)}
    for key, value in method.kwargs.items():
        name = f"method.kwargs.{key}"
        if key not in specs:
            raise UserError(f"{name} is not a hyper-parameter of {resolved.name}; known: {', '.join(sorted(specs))}")
        default = specs[key].default if specs[key].default is not MISSING else None
        if isinstance(default, bool):
            check_bool(name, value)
        elif _is_int(default):
            hi = 1 << 16 if key.endswith("_dim") else 10_000_000
            check_int(name, value, 1 if key.endswith("_dim") else 0, hi)
        elif isinstance(default, float):
            if "temperature" in key:
                check_float(name, value, 0.0, lo_open=True)
            elif "momentum" in key:
                check_float(name, value, 0.0, 1.0)
            else:
                check_float(name, value)


def check_run(run: DictConfig) -> None:
    if not isinstance(run.dir, str) or not run.dir.strip():
        raise _fail("run.dir", run.dir, "must be a folder path")
    check_int("run.seed", run.seed, 0, 2**32 - 1)
    # 0: no epoch checkpoints, only last.ckpt (Lightning's every_n_epochs=0)
    check_int("run.checkpoint_every_n_epochs", run.checkpoint_every_n_epochs, 0)
    check_bool("run.overwrite", run.get("overwrite", False))
    if "keep_checkpoints" in run:  # -1: every epoch checkpoint kept
        check_int("run.keep_checkpoints", run.keep_checkpoints, -1)
    if run.resume is not None and not (isinstance(run.resume, str) and run.resume.strip()):
        raise _fail("run.resume", run.resume, "must be 'last' or a checkpoint path")
    if run.resume is not None and run.get("overwrite", False):
        raise UserError(f"run.resume={run.resume} and run.overwrite=true contradict each other; give one")


def check_backbone(backbone: DictConfig) -> None:
    from ...backbones import backbone_names

    check_choice("backbone.name", backbone.name, backbone_names())
    if backbone.init is not None and not Path(str(backbone.init)).is_file():
        raise UserError(f"backbone.init={backbone.init}: checkpoint file not found")


def validate_config(cfg: DictConfig, config_name: str) -> None:
    """Raise :class:`UserError` naming the first bad key of a composed ``pretrain`` / ``teacher`` config."""
    from .registry import resolve_method

    check_known_keys(cfg, config_name)
    check_trainer(cfg.trainer)
    check_backbone(cfg.backbone)
    check_data(cfg.data)
    check_optimizer(cfg.optimizer, int(cfg.trainer.max_epochs))
    check_distill(cfg.distill)
    check_method_kwargs(cfg.method)
    check_run(cfg.run)
    resolved = resolve_method(str(cfg.method.name))
    if resolved.distilled and cfg.distill.teacher is not None and not Path(str(cfg.distill.teacher)).is_file():
        raise UserError(f"{cfg.distill.teacher}: checkpoint file not found (distill.teacher)")
    if config_name == "teacher":
        if resolved.distilled:
            raise UserError(f"method={resolved.name}: the teacher stage trains a plain method, not a distilled one")
        check_choice("teacher.bn", cfg.teacher.bn, TEACHER_BN)
        if not OmegaConf.is_missing(cfg.teacher, "source") and cfg.teacher.source is not None \
                and not Path(str(cfg.teacher.source)).is_file():
            raise UserError(f"teacher.source={cfg.teacher.source}: checkpoint file not found")
        if cfg.teacher.out is not None:  # written after training: a bad path must fail now, not then
            out = Path(str(cfg.teacher.out))
            if out.is_dir():
                raise UserError(f"teacher.out={out}: is a folder; give a file path")
            blocking = next((p for p in out.parents if p.exists()), None)
            if blocking is not None and not blocking.is_dir():
                raise UserError(f"teacher.out={out}: {blocking} is a file, not a folder")
