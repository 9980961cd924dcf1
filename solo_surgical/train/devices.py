"""One place that turns ``auto`` into concrete device, precision and data-loader settings.

Rules (each resolved from what the machine has, never from a guess about the user):

* accelerator ``auto``: ``cuda`` when ``torch.cuda.is_available()``, else ``cpu``. Apple's MPS is
  never picked automatically (untested here); ask for it with ``trainer.accelerator=mps``.
* precision ``auto``: ``bf16-mixed`` on CUDA devices that support bfloat16 (Ampere and later),
  ``16-mixed`` on older CUDA devices, ``32-true`` on CPU (bf16 autocast on CPU measured 7-23x
  slower than fp32 here). An explicit value is always kept.
* ``data.num_workers: auto``: on CPU **0 workers** -- the training step already uses every core,
  and the augmentation random stream stays the one of the main process, so a CPU run gives the
  same numbers as before ``auto`` existed. On CUDA every local process gets
  ``cores // processes - 1`` workers (one core left for the process driving the GPU), pinned
  memory, persistent workers and a prefetch of 4 batches per worker.
* ``channels_last`` memory format for the model on CUDA (NHWC convolutions run on tensor cores;
  a conv with channels_last weights also converts its input, so batches need no change).
* ``--device auto`` of ``linear`` / ``extract``: ``cuda`` when available, else ``cpu``.

Asking for CUDA on a machine without it is a one-line :class:`UserError`, not a Lightning trace.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from ..errors import UserError

PREFETCH_ON_CUDA = 4
"""Batches each worker keeps ready on CUDA (torch's default is 2): absorbs slow JPEG decodes."""


def cuda_available() -> bool:
    """Whether a CUDA device is visible (a function, so tests can pretend one is)."""
    return torch.cuda.is_available()


def cuda_bf16_supported() -> bool:
    """Whether the current CUDA device computes in bfloat16 natively (compute capability >= 8.0)."""
    return cuda_available() and torch.cuda.is_bf16_supported()


def available_cpus() -> int:
    """Cores this process may run on: the affinity mask where the OS has one (containers, taskset,
    Slurm), else ``os.cpu_count()``; at least 1."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    return max(1, count)


def resolve_accelerator(value: Any, key: str = "trainer.accelerator") -> str:
    """``auto`` -> ``cuda`` / ``cpu``; ``gpu`` is spelled ``cuda``; others (``cpu``, ``mps``, ...) kept.

    Raises:
        UserError: CUDA asked for explicitly but not available.
    """
    name = str(value).lower()
    if name == "auto":
        return "cuda" if cuda_available() else "cpu"
    if name in ("gpu", "cuda"):
        if not cuda_available():
            raise UserError(f"{key}={value}: no CUDA device is visible (torch.cuda.is_available() is False); "
                            f"use {key}=auto or cpu")
        return "cuda"
    return name


def resolve_precision(value: Any, accelerator: str) -> Any:
    """``auto`` -> ``bf16-mixed`` (CUDA with bf16), ``16-mixed`` (older CUDA) or ``32-true``.
    Any explicit value (``32-true``, ``bf16-mixed``, ``32``, ...) is returned unchanged."""
    if str(value).lower() != "auto":
        return value
    if accelerator == "cuda":
        return "bf16-mixed" if cuda_bf16_supported() else "16-mixed"
    return "32-true"


def resolve_device(value: str, option: str = "--device") -> str:
    """The torch device of ``linear`` / ``extract``: ``auto`` -> ``cuda`` if available, else ``cpu``.

    Raises:
        UserError: ``cuda`` (or ``cuda:N``) asked for but not available.
    """
    name = str(value).lower()
    if name == "auto":
        return "cuda" if cuda_available() else "cpu"
    if name.startswith("cuda") or name == "gpu":
        if not cuda_available():
            raise UserError(f"{option} {value}: no CUDA device is visible (torch.cuda.is_available() is False); "
                            f"use {option} auto or cpu")
        return "cuda" if name == "gpu" else name
    return name


@dataclass(frozen=True)
class LoaderOptions:
    """DataLoader keyword arguments that depend on the machine (not on the data)."""

    num_workers: int
    pin_memory: bool
    persistent_workers: bool
    prefetch_factor: Optional[int]

    def kwargs(self) -> dict[str, Any]:
        """For ``DataLoader(**kwargs)``; ``prefetch_factor`` only with workers (torch refuses it otherwise)."""
        out = asdict(self)
        if out["prefetch_factor"] is None:
            del out["prefetch_factor"]
        return out


def local_processes(accelerator: str, devices: Any) -> int:
    """Training processes on this machine (one per device under DDP); ``auto``/``-1`` count the GPUs."""
    if OmegaConf.is_list(devices) or isinstance(devices, (list, tuple)):
        return max(1, len(devices))
    text = str(devices).strip()
    if text.lstrip("-").isdigit() and int(text) > 0:
        return int(text)
    if accelerator == "cuda" and text in ("auto", "-1"):
        return max(1, torch.cuda.device_count())
    return 1


def loader_options(num_workers: Any, accelerator: str, processes: int = 1,
                   cpus: Optional[int] = None, key: str = "data.num_workers") -> LoaderOptions:
    """Workers, pinned memory, persistence and prefetch for one training process.

    Args:
        num_workers: ``auto`` or an integer >= 0 (an explicit count is always kept).
        accelerator: resolved accelerator (``cuda``, ``cpu``, ...).
        processes: training processes sharing this machine's cores (DDP devices per node).
        cpus: cores available (default :func:`available_cpus`).

    Raises:
        UserError: a value that is neither ``auto`` nor an integer >= 0.
    """
    cuda = accelerator == "cuda"
    if str(num_workers).lower() == "auto":
        if not cuda:
            workers = 0  # CPU: the step uses the cores; same augmentation stream as always
        else:
            cores = available_cpus() if cpus is None else cpus
            workers = max(1, cores // max(1, processes) - 1)
    else:
        text = str(num_workers).strip()
        if not text.isdigit():
            raise UserError(f"{key} must be an integer >= 0 or auto, got {num_workers!r}")
        workers = int(text)
    return LoaderOptions(num_workers=workers, pin_memory=cuda, persistent_workers=workers > 0,
                         prefetch_factor=PREFETCH_ON_CUDA if cuda and workers > 0 else None)


def run_loader_options(cfg: DictConfig) -> LoaderOptions:
    """The loader options of a pretrain / teacher config (``data.num_workers``, ``trainer.*``)."""
    accelerator = resolve_accelerator(cfg.trainer.accelerator)
    return loader_options(cfg.data.num_workers, accelerator, local_processes(accelerator, cfg.trainer.devices))


def resolve_run_devices(cfg: DictConfig) -> LoaderOptions:
    """Replace ``auto`` in ``trainer.accelerator``, ``trainer.precision`` and ``data.num_workers``
    by what this machine gets, in place (so ``config.yaml`` records what ran), and return the
    loader options. Called before the run folder is written."""
    accelerator = resolve_accelerator(cfg.trainer.accelerator)
    precision = resolve_precision(cfg.trainer.precision, accelerator)
    options = run_loader_options(cfg)
    OmegaConf.update(cfg, "trainer.accelerator", accelerator)
    OmegaConf.update(cfg, "trainer.precision", precision)
    OmegaConf.update(cfg, "data.num_workers", options.num_workers)
    return options


def prepare_model(model: torch.nn.Module, accelerator: str) -> torch.nn.Module:
    """``channels_last`` weights on CUDA (a no-op for 1-D/2-D parameters); unchanged elsewhere.
    Lightning's later ``.to(device)`` preserves the memory format."""
    if accelerator == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def autocast(device: str, precision: Any):
    """The autocast context Lightning uses for ``precision`` on ``device`` (for scripts that run
    steps themselves, e.g. ``scripts/bench_throughput.py``); a disabled context for true precision."""
    text = str(precision)
    device_type = "cuda" if str(device).startswith("cuda") else "cpu"
    if text in ("bf16-mixed", "bf16"):
        return torch.autocast(device_type, dtype=torch.bfloat16)
    if text in ("16-mixed", "16"):
        return torch.autocast(device_type, dtype=torch.float16)
    return torch.autocast(device_type, enabled=False)
