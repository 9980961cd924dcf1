"""Run folders: one run per folder, a record per launch, resumes that check before writing, and
recovery from a kill -9 during a checkpoint write (see solo_surgical/hosts/lightly/rundir.py)."""
from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import yaml

from solo_surgical.cli import main
from solo_surgical.hosts.lightly.rundir import META_KEY
from solo_surgical.hosts.lightly.runner import PAUSE_WRITE_ENV

from conftest import TINY

# 32 images, batches of 8: 4 steps per epoch
STEPS_PER_EPOCH = 4


# Folders outside pytest's numbered basetemp: pytest sessions started meanwhile by others on the shared
# machine remove all but the newest three basetemps, which can delete a folder while a test uses it.
@pytest.fixture(scope="module")
def image_dir():
    from solo_surgical.data.images import generate_images

    root = Path(tempfile.mkdtemp(prefix="solo-surgical-run-folders-"))
    try:
        yield generate_images(root / "images", count=32, size=32)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def tmp_path():
    root = Path(tempfile.mkdtemp(prefix="solo-surgical-run-folders-"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _args(run: Path, image_dir: Path, *extra: str, method: str = "mocov2plus") -> list[str]:
    kw = ["method.kwargs.queue_size=16"] if "moco" in method else []
    return ["pretrain", *TINY, f"method={method}", *kw, f"data.root={image_dir}", f"run.dir={run}",
            "trainer.max_epochs=1", *extra]


def _run(capsys, argv: list[str]) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def _error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("solo-surgical: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])


def _launch(path: Path) -> tuple[str, dict]:
    text = path.read_text()
    return text.splitlines()[0], yaml.safe_load(text)


def test_launches_resume_and_overwrite(tmp_path, image_dir, capsys):
    run = tmp_path / "run"
    assert _run(capsys, _args(run, image_dir))[0] == 0
    ckpts = run / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["epoch-000.ckpt", "last.ckpt"]  # no '=' in names
    meta = torch.load(ckpts / "last.ckpt", weights_only=False)[META_KEY]
    assert meta == {"method": "mocov2plus", "backbone": "tiny"}

    # resume from an explicit epoch checkpoint, passed to Hydra unquoted
    code, err = _run(capsys, _args(run, image_dir, f"run.resume={ckpts / 'epoch-000.ckpt'}", "trainer.max_epochs=2"))
    assert code == 0, err
    assert _step(ckpts / "last.ckpt") == 2 * STEPS_PER_EPOCH
    assert sorted(p.name for p in ckpts.iterdir()) == ["epoch-000.ckpt", "epoch-001.ckpt", "last.ckpt"]
    head1, first = _launch(run / "launches" / "001-config.yaml")
    head2, second = _launch(run / "launches" / "002-config.yaml")
    assert "a new run" in head1 and first["trainer"]["max_epochs"] == 1  # the first launch's record is kept
    # what bit-for-bit reproduction also depends on: torch's version and its thread count
    second_line = (run / "launches" / "001-config.yaml").read_text().splitlines()[1]
    assert second_line == f"# torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
    assert "resumed from" in head2 and "epoch-000.ckpt" in head2 and second["trainer"]["max_epochs"] == 2
    assert yaml.safe_load((run / "config.yaml").read_text()) == second  # config.yaml: the latest launch

    # a new run replacing this one: old checkpoints gone, logs and launch records kept
    assert _run(capsys, _args(run, image_dir, "run.overwrite=true", "run.seed=3"))[0] == 0
    assert sorted(p.name for p in ckpts.iterdir()) == ["epoch-000.ckpt", "last.ckpt"]
    assert _step(ckpts / "last.ckpt") == STEPS_PER_EPOCH
    head3, third = _launch(run / "launches" / "003-config.yaml")
    assert "replacing" in head3 and third["run"]["seed"] == 3
    assert len(list((run / "logs").glob("version_*/metrics.csv"))) == 3


def test_resume_last_falls_back_to_the_newest_complete_checkpoint(tmp_path, image_dir, capsys):
    run = tmp_path / "run"
    assert _run(capsys, _args(run, image_dir))[0] == 0
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])  # torn
    stray = run / "checkpoints" / ".epoch-001.ckpt.k2j3h4.tmp"
    stray.write_bytes(b"half a checkpoint")
    code, err = _run(capsys, _args(run, image_dir, "run.resume=last", "trainer.max_epochs=2"))
    assert code == 0, err
    warning = [line for line in err.splitlines() if "warning" in line]
    assert len(warning) == 1 and "last.ckpt: not a readable torch checkpoint" in warning[0] \
        and "epoch-000.ckpt" in warning[0], err
    assert _step(last) == 2 * STEPS_PER_EPOCH  # continued from epoch 0's 4 steps, last.ckpt rewritten whole
    assert not stray.exists()
    assert not list((run / "checkpoints").glob("last-v*.ckpt"))


def test_old_checkpoint_names_are_still_read(tmp_path, image_dir, capsys):
    run = tmp_path / "run"
    assert _run(capsys, _args(run, image_dir))[0] == 0
    ckpts = run / "checkpoints"
    (ckpts / "epoch-000.ckpt").rename(ckpts / "epoch=000.ckpt")  # the name earlier versions wrote
    (ckpts / "last.ckpt").unlink()
    code, err = _run(capsys, _args(run, image_dir, "run.resume=last", "trainer.max_epochs=2"))
    assert code == 0 and "resuming from" in err and "epoch=000.ckpt" in err, err
    assert _step(ckpts / "last.ckpt") == 2 * STEPS_PER_EPOCH


def test_checkpoint_of_an_older_version_is_checked_by_its_keys(tmp_path, image_dir, capsys):
    """Without the recorded method, another method is still refused: its weights do not fit."""
    run = tmp_path / "run"
    assert _run(capsys, _args(run, image_dir))[0] == 0
    last = run / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=False)
    del ckpt[META_KEY]
    torch.save(ckpt, last)
    config = (run / "config.yaml").read_bytes()
    before = {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()}
    code, err = _run(capsys, _args(run, image_dir, "run.resume=last", method="simclr"))
    line = _error_line(err)
    # MoCo's momentum branch and queue are not in SimCLR
    assert code == 2 and "last.ckpt: does not fit the configured method" in line and "unexpected keys" in line \
        and "backbone_momentum." in line
    assert (run / "config.yaml").read_bytes() == config
    assert {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()} == before
    assert sorted(p.name for p in (run / "launches").iterdir()) == ["001-config.yaml"]


def _pretrain_killed_during_write(run: Path, image_dir: Path, nth_write: int) -> None:
    """Start a pretraining in a subprocess, kill -9 it while its n-th checkpoint write is half done."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", PAUSE_WRITE_ENV: str(nth_write)}
    proc = subprocess.Popen([sys.executable, "-m", "solo_surgical.cli", *_args(run, image_dir)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline, seen = time.time() + 300, ""
    try:
        while time.time() < deadline and proc.poll() is None:
            ready, _, _ = select.select([proc.stderr], [], [], 1.0)
            if ready:
                line = proc.stderr.readline()
                seen += line
                if line.startswith(PAUSE_WRITE_ENV):
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(timeout=60)
                    return
        raise AssertionError(f"the checkpoint write never paused (exit {proc.poll()}):\n{seen[-3000:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_kill_during_the_first_checkpoint_write(tmp_path, image_dir, capsys):
    run = tmp_path / "run"
    _pretrain_killed_during_write(run, image_dir, 1)  # writing epoch-000.ckpt: nothing complete on disk
    leftovers = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert len(leftovers) == 1 and leftovers[0].startswith(".epoch-000.ckpt.") and leftovers[0].endswith(".tmp")
    code, err = _run(capsys, _args(run, image_dir, "run.resume=last"))
    line = _error_line(err)
    assert code == 2 and "no complete checkpoint" in line and leftovers[0] in line and "run.overwrite=true" in line
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == leftovers  # a refusal changes nothing
    # starting over as the message says works and removes the temporary file
    assert _run(capsys, _args(run, image_dir, "run.overwrite=true"))[0] == 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch-000.ckpt", "last.ckpt"]


def test_kill_during_the_first_last_ckpt_write(tmp_path, image_dir, capsys):
    run = tmp_path / "run"
    _pretrain_killed_during_write(run, image_dir, 2)  # epoch-000.ckpt complete, last.ckpt half written
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names[0].startswith(".last.ckpt.") and names[1:] == ["epoch-000.ckpt"], names
    code, err = _run(capsys, _args(run, image_dir, "run.resume=last", "trainer.max_epochs=2"))
    assert code == 0, err
    assert "last.ckpt: missing; resuming from" in err and "epoch-000.ckpt" in err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch-000.ckpt", "epoch-001.ckpt", "last.ckpt"]
    assert _step(run / "checkpoints" / "last.ckpt") == 2 * STEPS_PER_EPOCH
