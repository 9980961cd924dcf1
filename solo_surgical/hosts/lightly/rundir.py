"""Run folders: refuse to mix two runs, resume only what fits, keep one config per launch.

Layout of ``RUN_DIR`` (``run.dir``)::

    config.yaml                   the resolved config of the latest launch
    launches/NNN-config.yaml      the resolved config of every launch (001 = the first), never rewritten
    checkpoints/last.ckpt         latest state; epoch-NNN.ckpt every run.checkpoint_every_n_epochs
    backbone.pth                  the finished run's student backbone (torchvision key names)
    logs/version_N/metrics.csv    one CSV log per launch; tensorboard/version_N likewise

Rules, all checked before anything is written:

* a new run (no ``run.resume``) into a folder that already holds a run is refused unless
  ``run.overwrite=true`` (which removes the old checkpoints; its logs and launch configs stay);
* ``run.resume=last|PATH`` loads the checkpoint first and refuses one made by another method or
  for another architecture (metadata recorded in every checkpoint, then a strict key/shape
  comparison with the model about to be trained);
* ``run.resume=last`` with a torn or unreadable ``last.ckpt`` falls back to the newest complete
  checkpoint (saying so), or ends with one line when there is none; temporary files left by a
  killed checkpoint write are removed once the launch is accepted.

Checkpoint names are ``epoch-003.ckpt``: no ``=``, so a path can be passed to Hydra
(``run.resume=RUN/checkpoints/epoch-003.ckpt``) unquoted. Folders written by earlier versions
(``epoch=003.ckpt``) are still read; such a path must be quoted for Hydra (``'run.resume="..."'``).
"""
from __future__ import annotations

import os
import contextlib
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from omegaconf import DictConfig, OmegaConf

from ...atomic import write_text
from ...checkpoints import CheckpointError, load_file
from ...errors import UserError, doing

CHECKPOINTS = "checkpoints"
LAUNCHES = "launches"
CHECKPOINT_FILENAME = "epoch-{epoch:03d}"  # Lightning's template: epoch-000.ckpt, epoch-001.ckpt, ...
META_KEY = "solo_surgical"  # what every checkpoint records about the run that wrote it
_TEMPORARY = re.compile(r"^\..+\.tmp$")  # solo_surgical.atomic's temporary names: .NAME.<random>.tmp


@dataclass
class Launch:
    """What this launch does in its run folder, decided before any write."""

    run_dir: Path
    number: int  # 1 for the first launch into the folder
    kind: str  # "new" | "resume" | "overwrite" | "worker" (an extra DDP process: writes nothing)
    ckpt_path: Optional[Path] = None  # checkpoint to resume from
    checkpoint: Optional[dict] = None  # its contents (already loaded and checked)
    notes: list[str] = field(default_factory=list)  # said on stderr once the launch is accepted


def checkpoint_files(run_dir: Path) -> list[Path]:
    folder = run_dir / CHECKPOINTS
    return sorted(p for p in folder.glob("*.ckpt") if not p.name.startswith(".")) if folder.is_dir() else []


def temporaries(run_dir: Path) -> list[Path]:
    """Temporary files of writes that were killed before their rename."""
    return sorted(p for folder in (run_dir, run_dir / CHECKPOINTS) if folder.is_dir()
                  for p in folder.iterdir() if p.is_file() and _TEMPORARY.match(p.name))


def run_contents(run_dir: Path) -> list[str]:
    """What marks ``run_dir`` as holding a run (empty: it holds none)."""
    marks = [name for name in ("config.yaml", "teacher.pth") if (run_dir / name).is_file()]
    return marks + [f"{CHECKPOINTS}/{p.name}" for p in checkpoint_files(run_dir)]


def _launch_numbers(run_dir: Path) -> list[int]:
    folder = run_dir / LAUNCHES
    return sorted(int(m.group(1)) for p in (folder.glob("*-config.yaml") if folder.is_dir() else [])
                  if (m := re.match(r"^(\d+)-config\.yaml$", p.name)))


def _training_checkpoint(path: Path) -> dict:
    """A Lightning training checkpoint, loaded; :class:`CheckpointError` naming the file if not."""
    obj = load_file(path)
    if not isinstance(obj, dict) or "state_dict" not in obj or "global_step" not in obj:
        raise CheckpointError(f"{path}: not a training checkpoint of a run (no state_dict / global_step); "
                              f"run.resume takes RUN_DIR/checkpoints/*.ckpt")
    return obj


def _resume_last(run_dir: Path, launch: Launch) -> None:
    """``run.resume=last``: last.ckpt, else the newest complete checkpoint."""
    last = run_dir / CHECKPOINTS / "last.ckpt"
    # last.ckpt first, then the others newest first
    candidates = sorted(checkpoint_files(run_dir), key=lambda p: (p == last, p.stat().st_mtime), reverse=True)
    problems = [] if last in candidates else [f"{last.name}: missing"]
    for path in candidates:
        try:
            launch.checkpoint, launch.ckpt_path = _training_checkpoint(path), path
        except CheckpointError as exc:
            problems.append(str(exc).replace(str(path.parent) + "/", ""))
            continue
        if problems:
            launch.notes.append(f"{'; '.join(problems)}; resuming from {path} instead, the newest complete checkpoint")
        return
    leftovers = [p.name for p in temporaries(run_dir)]
    raise UserError(f"{run_dir / CHECKPOINTS}: no complete checkpoint to resume from ("
                    + "; ".join(problems + ([f"an interrupted write left {', '.join(leftovers)}"] if leftovers else []))
                    + "); start the run again with run.overwrite=true")


def is_main_process() -> bool:
    """False in the extra processes of a multi-process launch (Lightning's DDP launcher re-runs the
    command with LOCAL_RANK / NODE_RANK set; torchrun sets RANK): only the main one decides and writes."""
    return all(os.environ.get(key, "0") in ("", "0") for key in ("RANK", "LOCAL_RANK", "NODE_RANK"))


@contextlib.contextmanager
def run_folder_lock(cfg: DictConfig) -> Iterator[None]:
    """One launch at a time per run folder: two launches started together into one ``run.dir`` would
    both see it empty and write into each other's checkpoints. The lock is an ``flock`` on
    ``<parent>/.<run dir name>.lock`` (beside the folder, so the folder itself is not created before
    the launch is accepted), released by the kernel if the holder dies. DDP's extra processes run
    inside the main process's launch and take no lock."""
    from ...data.workers import FolderLock

    if not is_main_process():
        yield
        return
    run_dir = Path(str(cfg.run.dir)).absolute()
    if not run_dir.parent.is_dir():
        yield  # nothing can be in a folder whose parent does not exist yet; mkdir happens at start
        return
    with FolderLock(run_dir, command="training launch", path=run_dir.parent / f".{run_dir.name}.lock"):
        yield


def plan_launch(cfg: DictConfig) -> Launch:
    """Decide what this launch does in ``run.dir``; raise before any write if it must not run.

    In the extra processes of a DDP launch the folder was already checked (and written) by the main
    process: they only find the checkpoint to resume from, and write nothing.
    """
    run_dir = Path(str(cfg.run.dir))
    if not is_main_process():
        launch = Launch(run_dir, 0, "worker")
        if cfg.run.resume is not None:
            if str(cfg.run.resume) == "last":
                _resume_last(run_dir, launch)
            else:
                launch.ckpt_path = Path(str(cfg.run.resume))
        launch.notes, launch.checkpoint = [], None
        return launch
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"run.dir={run_dir}: exists and is not a folder")
    numbers = _launch_numbers(run_dir)
    existing = run_contents(run_dir)
    # a folder written before launches/ existed: its config.yaml becomes launch 001
    number = (max(numbers) if numbers else (1 if (run_dir / "config.yaml").is_file() else 0)) + 1
    resume = cfg.run.resume
    if resume is None:
        if existing and not cfg.run.get("overwrite", False):
            shown = ", ".join(existing[:3]) + (f" (+{len(existing) - 3} more)" if len(existing) > 3 else "")
            raise UserError(f"run.dir={run_dir} already holds a run ({shown}); continue it with run.resume=last, "
                            f"replace it with run.overwrite=true, or choose another run.dir")
        return Launch(run_dir, number, "overwrite" if existing else "new")
    launch = Launch(run_dir, number, "resume")
    if str(resume) == "last":
        _resume_last(run_dir, launch)
    else:
        path = Path(str(resume))
        if not path.is_file():
            raise UserError(f"run.resume={path}: checkpoint to resume from not found")
        launch.checkpoint, launch.ckpt_path = _training_checkpoint(path), path
    check_resume_meta(launch, cfg)
    return launch


def run_meta(cfg: DictConfig, arch: str) -> dict[str, Any]:
    """Recorded in every checkpoint under :data:`META_KEY`."""
    from .registry import resolve_method

    return {"method": resolve_method(str(cfg.method.name)).name, "backbone": arch}


def check_resume_meta(launch: Launch, cfg: DictConfig) -> None:
    """Refuse a checkpoint recorded as made by another method or for another backbone."""
    from .registry import resolve_method

    meta = (launch.checkpoint or {}).get(META_KEY) or {}
    method = resolve_method(str(cfg.method.name)).name
    if meta.get("method") and meta["method"] != method:
        raise UserError(f"{launch.ckpt_path}: made by method {meta['method']}, cannot resume it as method={method} "
                        f"(resume with method={meta['method']}, or start a new run.dir)")
    arch = str(cfg.backbone.name)
    if meta.get("backbone") and meta["backbone"] != arch:
        raise UserError(f"{launch.ckpt_path}: a {meta['backbone']} backbone, cannot resume it with "
                        f"backbone.name={arch}")


def check_resume_fits(launch: Launch, model: Any) -> None:
    """The checkpoint's weights must fit ``model`` key for key and shape for shape (checkpoints of
    older versions have no metadata; a mismatch would otherwise end in Lightning's traceback)."""
    if launch.checkpoint is None:
        return
    state = dict(launch.checkpoint["state_dict"])
    if hasattr(model, "complete_checkpoint_state"):  # the teacher, stored by reference (file + SHA-256)
        model.complete_checkpoint_state({**launch.checkpoint, "state_dict": state}, str(launch.ckpt_path))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape))
    problems = [f"{len(keys)} {what} ({', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''})"
                for keys, what in ((missing, "missing keys"), (unexpected, "unexpected keys"),
                                   (shapes, "keys of another shape")) if keys]
    if problems:
        raise UserError(f"{launch.ckpt_path}: does not fit the configured method and backbone "
                        f"({type(model).__name__}): {'; '.join(problems)}")


def start_launch(launch: Launch, cfg: DictConfig) -> Path:
    """The first writes of an accepted launch: old checkpoints (overwrite) and temporaries removed,
    ``launches/NNN-config.yaml`` and ``config.yaml`` written. Returns the launch's config file."""
    from .config import save_config

    run_dir = launch.run_dir
    if launch.kind == "worker":
        return run_dir / "config.yaml"
    for note in launch.notes:
        print(f"solo-surgical: warning: {note}", file=sys.stderr)
    with doing("preparing the run folder"):
        run_dir.mkdir(parents=True, exist_ok=True)
        for path in temporaries(run_dir):
            path.unlink(missing_ok=True)
        if launch.kind == "overwrite":
            shutil.rmtree(run_dir / CHECKPOINTS, ignore_errors=False) if (run_dir / CHECKPOINTS).is_dir() else None
            (run_dir / "teacher.pth").unlink(missing_ok=True)
            (run_dir / "backbone.pth").unlink(missing_ok=True)
        old = run_dir / "config.yaml"
        if old.is_file() and not _launch_numbers(run_dir):
            write_text(run_dir / LAUNCHES / "001-config.yaml", "# launch 1 (recorded before launches/ existed)\n"
                       + old.read_text())
    how = {"new": "a new run", "overwrite": "a new run replacing the previous one (its checkpoints removed)",
           "resume": f"resumed from {launch.ckpt_path}"}[launch.kind]
    import torch

    # the same seed reproduces bit for bit only with the same torch and thread count: with 1 and 2
    # threads torch sums in another order (a tiny MoCo v2+, 2 epochs: 61 of 74 tensors differ)
    where = f"# torch {torch.__version__}, {torch.get_num_threads()} CPU threads\n"
    with doing("writing the launch's config"):
        path = write_text(run_dir / LAUNCHES / f"{launch.number:03d}-config.yaml",
                          f"# launch {launch.number}: {how}\n{where}" + OmegaConf.to_yaml(cfg, resolve=True))
        save_config(cfg, run_dir / "config.yaml")
    return path
