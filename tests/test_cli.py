"""The command line: one-line errors for bad input, nothing lost, resume, DDP, and the demo."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from solo_surgical.cli import main

from conftest import TINY, make_teacher_checkpoint


def _run(capsys, *args):
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("solo-surgical: error:")]
    assert len(lines) == 1, err
    return lines[0]


def _base(tmp_path, image_dir, *extra):
    return ["pretrain", *TINY, f"data.root={image_dir}", f"run.dir={tmp_path / 'run'}", "trainer.max_epochs=1",
            "method.kwargs.queue_size=16", *extra]


def test_methods_lists_registry(capsys):
    code, out, _ = _run(capsys, "methods")
    assert code == 0
    names = {line.split()[0] for line in out.splitlines()}
    assert {"simclr", "mocov2plus", "moco", "byol", "distill_simclr", "distill_mocov2plus", "distill_moco",
            "distill_byol"} <= names


def test_unknown_method(capsys, tmp_path, image_dir):
    code, _, err = _run(capsys, *_base(tmp_path, image_dir, "method=distill_nosuch"))
    assert code == 2 and "distill_nosuch" in _error_line(err) and "mocov2plus" in _error_line(err)


def test_missing_teacher_file(capsys, tmp_path, image_dir):
    code, _, err = _run(capsys, *_base(tmp_path, image_dir, f"distill.teacher={tmp_path / 'absent.pth'}"))
    assert code == 2 and "absent.pth: checkpoint file not found" in _error_line(err)


def test_teacher_not_given(capsys, tmp_path, image_dir):
    code, _, err = _run(capsys, *_base(tmp_path, image_dir))
    assert code == 2 and "distill.teacher is required" in _error_line(err)


def test_teacher_with_wrong_keys_and_shapes(capsys, tmp_path, image_dir):
    ckpt = torch.load(make_teacher_checkpoint(tmp_path / "t.pth"), weights_only=False)
    ckpt["backbone"]["state_dict"]["features.0.weight"] = torch.zeros(16, 3, 5, 5)
    ckpt["backbone"]["state_dict"]["extra.weight"] = torch.zeros(1)
    torch.save(ckpt, tmp_path / "bad.pth")
    code, _, err = _run(capsys, *_base(tmp_path, image_dir, f"distill.teacher={tmp_path / 'bad.pth'}"))
    line = _error_line(err)
    assert code == 2 and "bad.pth" in line and "extra.weight" in line and "features.0.weight (16, 3, 5, 5)" in line


def test_memory_smaller_than_batch(capsys, tmp_path, image_dir, teacher_ckpt):
    code, _, err = _run(capsys, *_base(tmp_path, image_dir, f"distill.teacher={teacher_ckpt}", "distill.memory_size=4"))
    assert code == 2 and "distill.memory_size=4 is smaller than the global batch 8" in _error_line(err)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_resume_restores_memories_and_nan_loses_nothing(capsys, tmp_path, image_dir, teacher_ckpt):
    common = _base(tmp_path, image_dir, f"distill.teacher={teacher_ckpt}", "distill.memory_size=24",
                   "trainer.enable_progress_bar=false")
    # a MoCo queue of 24 (not a multiple of 32 keys per epoch), so a resume that lost it would show
    common = ["method.kwargs.queue_size=24" if a == "method.kwargs.queue_size=16" else a for a in common]
    assert _run(capsys, *common)[0] == 0
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    first = torch.load(last, weights_only=False)
    assert first["global_step"] == 4 and int(first["state_dict"]["distill.memory.pointer"]) == 32 % 24
    # MoCo's per-view queues are state_dict buffers; one enqueue of the batch (8) per step
    assert "moco_queue" not in first and first["state_dict"]["queue.keys"].shape == (2, 24, 16)
    assert int(first["state_dict"]["queue.pointer"]) == (4 * 8) % 24
    # resume for a second epoch: memory continues where it stopped (64 % 24 = 16, not 32 % 24 again)
    assert _run(capsys, *common, "run.resume=last", "trainer.max_epochs=2")[0] == 0
    second = torch.load(last, weights_only=False)
    assert second["global_step"] == 8 and int(second["state_dict"]["distill.memory.pointer"]) == 64 % 24
    assert int(second["state_dict"]["queue.pointer"]) == (8 * 8) % 24
    assert len(list((tmp_path / "run" / "logs").glob("version_*/metrics.csv"))) == 2  # first log kept
    # a fresh launch into the same run folder is refused before any work (resume or overwrite it),
    # and the checkpoint already on disk is untouched
    before = _sha(last)
    code, _, err = _run(capsys, *common)
    assert code == 2 and "already holds a run" in _error_line(err) and "run.resume=last" in _error_line(err)
    assert _sha(last) == before
    # a diverging run ends with one line naming the cause (optimizer.lr=nan itself is refused up front)
    diverging = [a for a in common if not a.startswith("run.dir=")] + [f"run.dir={tmp_path / 'diverging'}"]
    code, _, err = _run(capsys, *diverging, "optimizer.lr=1e30")
    assert code == 2 and "non-finite loss" in _error_line(err)
    code, _, err = _run(capsys, *diverging, "optimizer.lr=nan", "run.overwrite=true")
    assert code == 2 and "optimizer.lr=nan: must be a finite number > 0" in _error_line(err)


@pytest.mark.slow
def test_ddp_two_processes_via_cli(tmp_path, image_dir, teacher_ckpt):
    """`trainer.strategy=ddp trainer.devices=2` on CPU (gloo): keys from both ranks fill the memory."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "solo_surgical.cli", *_base(tmp_path, image_dir, f"distill.teacher={teacher_ckpt}",
           "distill.memory_size=48", "trainer.strategy=ddp", "trainer.devices=2", "trainer.enable_progress_bar=false")]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    # 32 images / (2 ranks x 8) = 2 steps; each step enqueues the global batch of 16
    assert ckpt["global_step"] == 2
    assert int(ckpt["state_dict"]["distill.memory.filled"]) == 32
    assert int(ckpt["state_dict"]["distill.memory.pointer"]) == 32 % 48


def test_unknown_weight_preset(capsys, tmp_path, image_dir, teacher_ckpt):
    code, _, err = _run(capsys, *_base(tmp_path, image_dir, f"distill.teacher={teacher_ckpt}", "distill.preset=paper"))
    assert code == 2 and "unknown distill.preset 'paper'" in _error_line(err)
