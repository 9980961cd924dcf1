"""Bad input to the training, evaluation and zoo commands: exit status 2, one line naming the cause,
no traceback, and nothing that existed before changed.

Every case runs ``solo_surgical.cli.main`` in-process against one shared folder (``world``: images,
a prepared folder, a finished run, features, label files, corrupt files). The folder is hashed file
by file before and after each case: a refused case must leave it byte for byte as it was, with no
file added (``may_create``: cases that fail during work, e.g. a corrupt image met while training,
may add files under their own new output folder but change nothing that existed).

Data preparation and synthetic-set cases live in the data helper's own module.
"""
from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from solo_surgical.cli import main

from conftest import TINY, make_teacher_checkpoint

C80 = ["Preparation", "CalotTriangleDissection", "ClippingCutting", "GallbladderDissection",
       "GallbladderPackaging", "CleaningCoagulation", "GallbladderRetraction"]
VIDEOS = {"video01": "train", "video02": "train", "video41": "val", "video50": "test"}


def _write_prepared(root: Path, frames: int = 4, size: int = 32) -> Path:
    """A prepared Cholec80-style folder written by hand (independent of `prepare`): 1 fps frames."""
    import json

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    entries = {}
    for video in VIDEOS:
        (root / video).mkdir(parents=True)
        rows = ["frame\tsource_frame\ttime\tphase"]
        for k in range(frames):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / video / f"{k:06d}.jpg")
            rows.append(f"{k}\t{25 * k}\t{k:.3f}\t{k % 2}")
        (root / video / "frames.tsv").write_text("\n".join(rows) + "\n")
        entries[video] = {"native_fps": 25.0, "frames": frames}
    manifest = {"dataset": "cholec80", "phases": C80, "tools": [], "videos": entries,
                "options": {"fps": "1", "size": [size, size]}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.fixture(scope="module")
def world():
    # Not under pytest's numbered basetemp: a pytest session started meanwhile (several run in parallel
    # on the shared machine) removes all but the newest three, which deleted this folder mid-module.
    w = Path(tempfile.mkdtemp(prefix="solo-surgical-bad-input-"))
    try:
        yield _build_world(w)
    finally:
        shutil.rmtree(w, ignore_errors=True)


def _build_world(w: Path) -> Path:
    from solo_surgical.data.images import generate_images
    from solo_surgical.evaluation.labels import write_phase_file

    generate_images(w / "images", count=16, size=32)
    make_teacher_checkpoint(w / "teacher.pth")
    _write_prepared(w / "data")
    # a copy of the prepared folder with one truncated frame
    shutil.copytree(w / "data", w / "data_bad")
    _truncate(w / "data_bad" / "video01" / "000001.jpg")
    # an image folder with one truncated JPEG among good PNGs
    # 15 good + 1 bad = 2 full batches of 8: drop_last never leaves the bad one out
    shutil.copytree(w / "images", w / "images_bad", ignore=lambda folder, names: ["00015.png"])
    shutil.copy(w / "data" / "video01" / "000000.jpg", w / "images_bad" / "zz_truncated.jpg")
    _truncate(w / "images_bad" / "zz_truncated.jpg")
    # a prepared folder whose manifest lacks its keys, one with a malformed frames.tsv line
    shutil.copytree(w / "data", w / "data_no_keys")
    (w / "data_no_keys" / "manifest.json").write_text("{}\n")
    shutil.copytree(w / "data", w / "data_bad_tsv")
    with open(w / "data_bad_tsv" / "video01" / "frames.tsv", "a") as handle:
        handle.write("4\tfour\t4.0\t0\n")
    (w / "random.ckpt").write_bytes(os.urandom(4096))
    (w / "a_file").write_text("not a folder\n")
    (w / "a_dir").mkdir()
    # a finished run (1 epoch, plain MoCo v2+, tiny backbone)
    assert main(["pretrain", *TINY, "method=mocov2plus", "method.kwargs.queue_size=16", f"data.root={w / 'images'}",
                 f"run.dir={w / 'run'}", "trainer.max_epochs=1"]) == 0
    # the same run with its only checkpoints torn: last.ckpt truncated, no epoch checkpoint
    shutil.copytree(w / "run", w / "run_torn")
    for path in (w / "run_torn" / "checkpoints").glob("epoch-*.ckpt"):
        path.unlink()
    _truncate(w / "run_torn" / "checkpoints" / "last.ckpt")
    assert main(["extract", "--data", str(w / "data"), "--out", str(w / "feats"), "--backbone", "tiny",
                 "--image-size", "32"]) == 0
    for name in ("gt", "pred"):
        write_phase_file(w / name / (f"video50-phase.txt" if name == "gt" else "video50_pred.txt"),
                         list(range(0, 250, 25)), [C80[i % 3] for i in range(10)])
    # features with one corrupt feature file; predictions with an unknown phase name
    shutil.copytree(w / "feats", w / "feats_bad")
    (w / "feats_bad" / "video02.pt").write_bytes(os.urandom(2048))
    shutil.copytree(w / "pred", w / "pred_bad")
    text = (w / "pred_bad" / "video50_pred.txt").read_text().replace("Preparation", "Teatime", 1)
    (w / "pred_bad" / "video50_pred.txt").write_text(text)
    return w


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder below ``root``: relative path -> SHA-256 ('dir' for folders)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        out[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@dataclass
class Case:
    id: str
    argv: list[str]  # {W} is the world folder
    expect: list[str]  # substrings of the error line (the key, option or file named)
    may_create: bool = False  # fails during work: may add files, never change existing ones


def _pretrain(*extra: str, method: str = "mocov2plus", run: str = "{W}/new_run") -> list[str]:
    kw = ["method.kwargs.queue_size=16"] if "moco" in method else []
    return ["pretrain", *TINY, f"method={method}", *kw, "data.root={W}/images", f"run.dir={run}",
            "trainer.max_epochs=1", *extra]


def _distill(*extra: str) -> list[str]:
    return _pretrain("distill.teacher={W}/teacher.pth", *extra, method="distill_mocov2plus")


def _teacher(*extra: str) -> list[str]:
    return ["teacher", *TINY, "method=simclr", "teacher.source={W}/teacher.pth", "data.root={W}/images",
            "run.dir={W}/new_teacher", "trainer.max_epochs=1", *extra]


EXTRACT = ["extract", "--data", "{W}/data", "--out", "{W}/new_feats", "--backbone", "tiny", "--image-size", "32"]
LINEAR = ["linear", "--data", "{W}/data", "--out", "{W}/new_lin", "--backbone", "tiny", "--image-size", "32"]
TEMPORAL = ["temporal", "--features", "{W}/feats", "--out", "{W}/new_tcn", "--epochs", "1"]
EVALUATE = ["evaluate", "--dataset", "cholec80", "--gt", "{W}/gt", "--pred", "{W}/pred", "--fps", "1",
            "--protocol", "strict"]

CASES = [
    # --- pretrain: trainer keys and values --------------------------------------------------
    Case("trainer-unknown-key", _pretrain("+trainer.foo=1"), ["trainer.foo", "Trainer"]),
    Case("trainer-reserved-key", _pretrain("+trainer.logger=false"), ["trainer.logger"]),
    Case("trainer-max-epochs-negative", _pretrain("trainer.max_epochs=-5"), ["trainer.max_epochs=-5"]),
    Case("trainer-max-epochs-text", _pretrain("trainer.max_epochs=abc"), ["trainer.max_epochs=abc"]),
    Case("trainer-devices-zero", _pretrain("trainer.devices=0"), ["trainer.devices=0"]),
    Case("trainer-num-nodes-zero", _pretrain("trainer.num_nodes=0"), ["trainer.num_nodes=0"]),
    Case("trainer-limit-batches-zero", _pretrain("trainer.limit_train_batches=0"), ["trainer.limit_train_batches=0"]),
    Case("trainer-log-every-zero", _pretrain("trainer.log_every_n_steps=0"), ["trainer.log_every_n_steps=0"]),
    Case("trainer-precision-bogus", _pretrain("trainer.precision=bogus"), ["bogus"]),
    # --- optimizer ------------------------------------------------------------------------
    Case("optimizer-lr-negative", _pretrain("optimizer.lr=-0.5"), ["optimizer.lr=-0.5"]),
    Case("optimizer-lr-nan", _pretrain("optimizer.lr=nan"), ["optimizer.lr=nan"]),
    Case("optimizer-lr-inf", _pretrain("optimizer.lr=inf"), ["optimizer.lr=inf"]),
    Case("optimizer-name", _pretrain("optimizer.name=adam"), ["optimizer.name=adam", "adamw"]),
    Case("optimizer-momentum", _pretrain("optimizer.momentum=1.5"), ["optimizer.momentum=1.5"]),
    Case("optimizer-weight-decay", _pretrain("optimizer.weight_decay=-1"), ["optimizer.weight_decay=-1"]),
    Case("optimizer-warmup", _pretrain("optimizer.warmup_epochs=-1"), ["optimizer.warmup_epochs=-1"]),
    Case("optimizer-unknown-key", _pretrain("+optimizer.betas=1"), ["optimizer.betas"]),
    # --- data -----------------------------------------------------------------------------
    Case("data-image-size-zero", _pretrain("data.image_size=0"), ["data.image_size=0"]),
    Case("data-image-size-huge", _pretrain("data.image_size=100000"), ["data.image_size=100000", "4096"]),
    Case("data-batch-size-zero", _pretrain("data.batch_size=0"), ["data.batch_size=0"]),
    Case("data-workers-negative", _pretrain("data.num_workers=-1"), ["data.num_workers"]),
    Case("data-min-scale-zero", _pretrain("data.min_scale=0"), ["data.min_scale=0"]),
    Case("data-std-zero", _pretrain("data.std=[0,1,1]"), ["data.std"]),
    Case("data-root-missing", _pretrain("data.root={W}/absent"), ["data.root=", "absent"]),
    Case("data-budget-zero", _pretrain("data.budget=0"), ["data.budget=0"]),
    Case("data-typo-key", _pretrain("+data.imagesize=64"), ["data.imagesize"]),
    Case("data-truncated-image", _pretrain("run.dir={W}/new_run_bad", "data.root={W}/images_bad"),
         ["zz_truncated.jpg", "truncated"], may_create=True),
    Case("data-truncated-image-in-worker",
         _pretrain("run.dir={W}/new_run_bad2", "data.root={W}/images_bad", "data.num_workers=1"),
         ["zz_truncated.jpg", "truncated"], may_create=True),
    Case("data-truncated-prepared-frame", _pretrain("run.dir={W}/new_run_bad3", "data.root={W}/data_bad"),
         ["data_bad/video01/000001.jpg", "truncated"], may_create=True),
    Case("data-manifest-without-keys", _pretrain("data.root={W}/data_no_keys"), ["manifest.json", "malformed"]),
    # --- backbone, distillation, method ----------------------------------------------------
    Case("backbone-unknown", _pretrain("backbone.name=resnet19"), ["backbone.name=resnet19", "resnet50", "tiny"]),
    Case("backbone-init-missing", _pretrain("backbone.init={W}/absent.pth"), ["backbone.init=", "absent.pth"]),
    Case("distill-weight-nan", _distill("distill.weight=nan"), ["distill.weight=nan"]),
    Case("distill-ssl-weight-inf", _distill("distill.ssl_weight=inf"), ["distill.ssl_weight=inf"]),
    Case("distill-temperature-zero", _distill("distill.student_temperature=0"), ["distill.student_temperature=0"]),
    Case("distill-memory-negative", _distill("distill.memory_size=-1"), ["distill.memory_size=-1"]),
    Case("distill-teacher-missing", _distill("distill.teacher={W}/absent.pth"), ["absent.pth"]),
    Case("method-temperature", _pretrain("method.kwargs.temperature=-1"), ["method.kwargs.temperature=-1"]),
    Case("method-dim-zero", _pretrain("method.kwargs.proj_output_dim=0"), ["method.kwargs.proj_output_dim=0"]),
    Case("method-momentum", _pretrain("method.kwargs.momentum=2"), ["method.kwargs.momentum=2"]),
    Case("method-unknown-kwarg", _pretrain("+method.kwargs.foo=1"), ["method.kwargs.foo"]),
    Case("unknown-top-key", _pretrain("+foo=1"), ["'foo'"]),
    # --- run folders -----------------------------------------------------------------------
    Case("run-seed-negative", _pretrain("run.seed=-1"), ["run.seed=-1"]),
    Case("run-checkpoint-every-negative", _pretrain("run.checkpoint_every_n_epochs=-1"),
         ["run.checkpoint_every_n_epochs=-1"]),
    Case("run-into-existing-run", _pretrain(run="{W}/run"), ["already holds a run", "run.resume=last", "run.overwrite"]),
    Case("run-resume-and-overwrite", _pretrain("run.resume=last", "run.overwrite=true", run="{W}/run"),
         ["run.resume", "run.overwrite"]),
    Case("run-resume-missing-file", _pretrain("run.resume={W}/absent.ckpt"), ["absent.ckpt", "not found"]),
    Case("run-resume-last-nothing", _pretrain("run.resume=last"), ["no complete checkpoint"]),
    Case("run-resume-random-bytes", _pretrain("run.resume={W}/random.ckpt"), ["random.ckpt", "not a readable"]),
    Case("run-resume-not-a-run", _pretrain("run.resume={W}/teacher.pth"), ["teacher.pth", "not a training checkpoint"]),
    Case("run-resume-torn-last", _pretrain("run.resume=last", run="{W}/run_torn"),
         ["no complete checkpoint", "last.ckpt"]),
    Case("run-resume-other-method", _pretrain("run.resume=last", method="simclr", run="{W}/run"),
         ["mocov2plus", "method=simclr"]),
    Case("run-resume-other-backbone", _pretrain("run.resume=last", "backbone.name=resnet18", run="{W}/run"),
         ["tiny", "backbone.name=resnet18"]),
    Case("run-dir-is-a-file", _pretrain(run="{W}/a_file"), ["a_file", "not a folder"]),
    # --- teacher stage ---------------------------------------------------------------------
    Case("teacher-bn", _teacher("teacher.bn=bogus"), ["teacher.bn=bogus"]),
    Case("teacher-distilled-method", _teacher("method=distill_simclr", "distill.teacher={W}/teacher.pth"),
         ["plain method"]),
    Case("teacher-source-missing", _teacher("teacher.source={W}/absent.pth"), ["absent.pth"]),
    Case("teacher-source-random-bytes", _teacher("teacher.source={W}/random.ckpt"), ["random.ckpt"]),
    Case("teacher-out-is-a-folder", _teacher("teacher.out={W}/a_dir"), ["teacher.out=", "a_dir", "folder"]),
    Case("teacher-out-under-a-file", _teacher("teacher.out={W}/a_file/t.pth"), ["teacher.out=", "a_file", "not a folder"]),
    # --- extract -----------------------------------------------------------------------------
    Case("extract-image-size-zero", [*EXTRACT, "--image-size", "0"], ["--image-size", "0"]),
    Case("extract-image-size-huge", [*EXTRACT, "--image-size", "100000"], ["--image-size", "100000"]),
    Case("extract-batch-size-zero", [*EXTRACT, "--batch-size", "0"], ["--batch-size"]),
    Case("extract-workers-negative", [*EXTRACT, "--workers", "-1"], ["--workers"]),
    Case("extract-fps-zero", [*EXTRACT, "--fps", "0"], ["--fps"]),
    Case("extract-fps-nan", [*EXTRACT, "--fps", "nan"], ["--fps", "nan"]),
    Case("extract-fps-above-prepared", [*EXTRACT, "--fps", "5"], ["--fps 5", "1 fps"]),
    Case("extract-data-missing", ["extract", "--data", "{W}/absent", "--out", "{W}/new_feats", "--backbone", "tiny"],
         ["absent", "manifest"]),
    Case("extract-checkpoint-random", ["extract", "--data", "{W}/data", "--out", "{W}/new_feats",
                                       "--checkpoint", "{W}/random.ckpt"], ["random.ckpt"]),
    Case("extract-backbone-unknown", [*EXTRACT[:-4], "--backbone", "resnet19"], ["resnet19", "resnet50"]),
    Case("extract-out-is-a-file", ["extract", "--data", "{W}/data", "--out", "{W}/a_file", "--backbone", "tiny"],
         ["a_file", "not a folder"]),
    Case("extract-unknown-part", [*EXTRACT, "--parts", "train,bogus"], ["bogus"]),
    Case("extract-unknown-protocol", [*EXTRACT, "--protocol", "bogus"], ["bogus", "standard"]),
    Case("extract-malformed-frames-tsv", ["extract", "--data", "{W}/data_bad_tsv", "--out", "{W}/new_feats",
                                          "--backbone", "tiny", "--image-size", "32"],
         ["data_bad_tsv/video01/frames.tsv", "line 6"]),
    Case("extract-truncated-frame", ["extract", "--data", "{W}/data_bad", "--out", "{W}/new_feats", "--backbone",
                                     "tiny", "--image-size", "32"], ["000001.jpg", "truncated"], may_create=True),
    # --- linear ------------------------------------------------------------------------------
    Case("linear-epochs-zero", [*LINEAR, "--epochs", "0"], ["--epochs"]),
    Case("linear-lr-negative", [*LINEAR, "--lr", "-1"], ["--lr"]),
    Case("linear-lr-nan", [*LINEAR, "--lr", "nan"], ["--lr", "nan"]),
    Case("linear-batch-size-zero", [*LINEAR, "--batch-size", "0"], ["--batch-size"]),
    Case("linear-image-size-zero", [*LINEAR, "--image-size", "0"], ["--image-size"]),
    Case("linear-weight-decay-negative", [*LINEAR, "--weight-decay", "-1"], ["--weight-decay"]),
    Case("linear-checkpoint-missing", [*LINEAR[:-4], "--checkpoint", "{W}/absent.ckpt"], ["absent.ckpt"]),
    Case("linear-budget-zero", [*LINEAR, "--budget", "0"], ["budget 0"]),
    # --- temporal ----------------------------------------------------------------------------
    Case("temporal-stages-zero", [*TEMPORAL, "--stages", "0"], ["--stages"]),
    Case("temporal-layers-zero", [*TEMPORAL, "--layers", "0"], ["--layers"]),
    Case("temporal-layers-huge", [*TEMPORAL, "--layers", "100"], ["--layers"]),
    Case("temporal-dropout", [*TEMPORAL, "--dropout", "1.5"], ["--dropout"]),
    Case("temporal-smooth-nan", [*TEMPORAL, "--smooth-weight", "nan"], ["--smooth-weight"]),
    Case("temporal-lr-zero", [*TEMPORAL, "--lr", "0"], ["--lr"]),
    Case("temporal-features-missing", ["temporal", "--features", "{W}/absent", "--out", "{W}/new_tcn"],
         ["absent", "features.json"]),
    Case("temporal-gt-missing", [*TEMPORAL, "--gt", "{W}/absent"], ["--gt", "absent"]),
    Case("temporal-corrupt-feature-file", ["temporal", "--features", "{W}/feats_bad", "--out", "{W}/new_tcn"],
         ["feats_bad/video02.pt", "not a feature file"]),
    # --- evaluate ----------------------------------------------------------------------------
    Case("evaluate-fps-zero", [*EVALUATE[:-4], "--fps", "0", "--protocol", "strict"], ["--fps 0"]),
    Case("evaluate-fps-nan", [*EVALUATE[:-4], "--fps", "nan", "--protocol", "strict"], ["--fps nan"]),
    Case("evaluate-json-is-a-folder", [*EVALUATE, "--json", "{W}/a_dir"], ["--json", "a_dir"]),
    Case("evaluate-json-under-a-file", [*EVALUATE, "--json", "{W}/a_file/out.json"], ["a_file", "not a folder"]),
    Case("evaluate-gt-missing", ["evaluate", "--dataset", "cholec80", "--gt", "{W}/absent", "--pred", "{W}/pred",
                                 "--fps", "1", "--protocol", "strict"], ["absent"]),
    Case("evaluate-protocol-bogus", [*EVALUATE[:-2], "--protocol", "bogus"], ["--protocol", "bogus"]),
    Case("evaluate-unknown-phase", ["evaluate", "--dataset", "cholec80", "--gt", "{W}/gt", "--pred", "{W}/pred_bad",
                                    "--fps", "1", "--protocol", "strict"], ["video50_pred.txt", "Teatime"]),
    # --- zoo / export ------------------------------------------------------------------------
    Case("zoo-verify-missing", ["zoo", "verify", "{W}/absent.pth"], ["absent.pth", "not found"]),
    Case("zoo-verify-random-bytes", ["zoo", "verify", "{W}/random.ckpt"], ["random.ckpt"]),
    Case("zoo-convert-random-bytes", ["zoo", "convert", "{W}/random.ckpt", "--out", "{W}/new_init.pth"],
         ["random.ckpt"]),
    Case("zoo-convert-out-is-a-folder", ["zoo", "convert", "{W}/run/checkpoints/last.ckpt", "--out", "{W}/a_dir"],
         ["--out", "a_dir", "folder"]),
    Case("export-run-missing", ["export", "{W}/absent_run"], ["absent_run"]),
    Case("export-ckpt-random-bytes", ["export", "{W}/run", "--ckpt", "{W}/random.ckpt", "--out", "{W}/new_export"],
         ["random.ckpt"]),
]


def _error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert "Traceback" not in err
    assert lines[0].startswith("solo-surgical") and ": error: " in lines[0], lines[0]
    return lines[0]


def _call(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse refuses an option value
        return int(exc.code)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, world: Path, capsys):
    before = snapshot(world)
    capsys.readouterr()
    code = _call([a.replace("{W}", str(world)) for a in case.argv])
    err = capsys.readouterr().err
    after = snapshot(world)
    assert code == 2, err
    line = _error_line(err)
    for expected in case.expect:
        assert expected.replace("{W}", str(world)).lower() in line.lower(), line
    changed = sorted(k for k in before if after.get(k) != before[k])
    assert changed == [], f"changed or removed: {changed}"
    if not case.may_create:
        assert sorted(set(after) - set(before)) == [], "a refused command created files"
    for new in set(after) - set(before):  # whatever it created is under a new output folder
        assert new.split("/")[0].startswith("new_"), new


def test_at_least_45_cases():
    assert len(CASES) >= 45


# --- OS errors met while writing, turned into one line naming the file -------------------------

def test_disk_full_names_the_file(world: Path, capsys, monkeypatch):
    """ENOSPC in write() names no file; the line must name the output being written."""
    import solo_surgical.atomic as atomic

    real = os.fdopen

    class FullDisk:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    class OsWithFullDisk:  # the os module as atomic.py sees it, with a disk that is full
        def __getattr__(self, name):
            return getattr(os, name)

        @staticmethod
        def fdopen(fd, *args, **kwargs):
            return FullDisk(real(fd, *args, **kwargs))

    monkeypatch.setattr(atomic, "os", OsWithFullDisk())
    before = snapshot(world)
    code = _call([a.replace("{W}", str(world)) for a in EVALUATE] + ["--json", str(world / "new.json")])
    line = _error_line(capsys.readouterr().err)
    assert code == 2 and str(world / "new.json") in line and "no space left on device" in line
    assert snapshot(world) == before  # no temporary file left behind either


def test_permission_denied_names_the_destination_not_the_temporary(world: Path, capsys, monkeypatch):
    import tempfile

    def denied(prefix="", suffix="", dir=None, **_):
        raise PermissionError(errno.EACCES, "Permission denied", os.path.join(dir, f"{prefix}abc123{suffix}"))

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    before = snapshot(world)
    code = _call([a.replace("{W}", str(world)) for a in EVALUATE] + ["--json", str(world / "new.json")])
    line = _error_line(capsys.readouterr().err)
    assert code == 2 and line.endswith(f"{world / 'new.json'}: permission denied"), line
    assert snapshot(world) == before


def test_failed_resume_keeps_the_run_config(world: Path, capsys):
    """A resume refused for another method leaves config.yaml and the launch records as they were."""
    config = (world / "run" / "config.yaml").read_bytes()
    launches = snapshot(world / "run" / "launches")
    code = _call([a.replace("{W}", str(world)) for a in _pretrain("run.resume=last", method="simclr", run="{W}/run")])
    assert code == 2 and "made by method mocov2plus" in _error_line(capsys.readouterr().err)
    assert (world / "run" / "config.yaml").read_bytes() == config
    assert snapshot(world / "run" / "launches") == launches


# --- a reader that goes away (`| head -1`) ends the command quietly ------------------------------

@pytest.mark.parametrize("argv", [["methods"], ["pretrain", "--cfg", "method=simclr"]], ids=["methods", "cfg"])
def test_broken_pipe_is_quiet(argv):
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line: every write fails with EPIPE
    try:
        result = subprocess.run([sys.executable, "-m", "solo_surgical.cli", *argv], stdout=write,
                                stderr=subprocess.PIPE, text=True, timeout=300,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
    finally:
        os.close(write)
    assert result.stderr == "" and result.returncode == 141, result.stderr
