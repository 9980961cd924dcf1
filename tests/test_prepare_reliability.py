"""prepare and synth under bad input and kill -9 (issue 12, items 1, 4, 5 and 7 for the data stage).

Every bad-input case asserts: a non-zero exit status, no traceback, one error line naming the
cause (the file and the problem), and that nothing that existed before changed (every file's
bytes and mtime in the output folder; for a per-video failure the manifest may only gain the
failure). The kill tests kill ``prepare`` (1 and 2 workers) and the benchmark's prepare step with
SIGKILL mid-run and assert that no worker survives and that a rerun gives exactly the frames of
an uninterrupted run. Real MP4/MKV files are written with PyAV (``data_fixtures``).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from data_fixtures import cholec80_video, env, frame_image, truncate, write_phase_file  # noqa: E402

from solo_surgical.cli import main  # noqa: E402
from solo_surgical.data.registry import CHOLEC80_PHASES  # noqa: E402
from solo_surgical.data.workers import LOCK_NAME, FolderLock, worker_pids  # noqa: E402

FRAMES = 60  # per base video: 2.4 s at 25 fps, 3 output frames at 1 fps


def prepare_args(work: Path, *extra: str, out: str = "out") -> list[str]:
    return ["prepare", "--dataset", "cholec80", "--root", str(work / "raw"), "--out", str(work / out),
            "--size", "32", "--workers", "1", *extra]


def snapshot(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file under ``folder`` (hidden ones too): size, mtime and content."""
    if not folder.exists():
        return {}
    if folder.is_file():
        return {".": (folder.stat().st_size, folder.stat().st_mtime_ns, folder.read_bytes())}
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def run_main(argv: list[str], capsys) -> tuple[int, str]:
    """The CLI in-process; argparse's own exit counts as the exit status."""
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = int(exc.code or 0)
    return rc, capsys.readouterr().err


def run_unprivileged(argv: list[str]) -> tuple[int, str]:
    """The CLI in a subprocess that file permissions bind: as root, the capabilities that override
    them are dropped (setpriv), so a read-only folder is read-only as for any user."""
    cmd = [sys.executable, "-m", "solo_surgical.cli", *argv]
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: permissions cannot be made to bind")
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--", *cmd]
    result = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=120)
    return result.returncode, result.stderr


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "error:" in line]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """raw/ (Cholec80 layout, videos 1-2 with phase and tool files) and out/ prepared from it."""
    root = tmp_path_factory.mktemp("base")
    for n in (1, 2):
        cholec80_video(root / "raw", n, FRAMES, CHOLEC80_PHASES, seed=n, tools=True)
    assert main(prepare_args(root)) == 0
    return root


@pytest.fixture
def work(base: Path, tmp_path: Path) -> Path:
    for sub in ("raw", "out"):
        shutil.copytree(base / sub, tmp_path / sub, copy_function=shutil.copy2)
    return tmp_path


# --- whole-run refusals: exit 2 before anything is written ------------------------------------
def _manifest(w: Path) -> Path:
    return w / "out" / "manifest.json"


def _hold_lock(w: Path):
    return FolderLock(w / "out").acquire()  # a live holder (this process); released by the test


WHOLE_RUN: dict[str, tuple[Callable[[Path], object], Callable[[Path], list[str]], str, str]] = {
    # name: (setup, argv, file named in the error, problem named in the error)
    "other-size": (lambda w: None, lambda w: prepare_args(w, "--size", "48"), "manifest.json", "same options"),
    "other-fps": (lambda w: None, lambda w: prepare_args(w, "--fps", "2"), "manifest.json", "same options"),
    "missing-manifest-other-size": (lambda w: _manifest(w).unlink(), lambda w: prepare_args(w, "--size", "48"),
                                    "video.json", "same options"),
    "corrupt-manifest-other-fps": (lambda w: _manifest(w).write_text("{not json"),
                                   lambda w: prepare_args(w, "--fps", "2"), "video.json", "same options"),
    "manifest-not-an-object": (lambda w: _manifest(w).write_text("[]"), lambda w: prepare_args(w, "--size", "48"),
                               "video.json", "same options"),
    "manifest-is-a-folder": (lambda w: (_manifest(w).unlink(), _manifest(w).mkdir()), lambda w: prepare_args(w),
                             "manifest.json", "cannot read"),
    "corrupt-video-record": (lambda w: (w / "out" / "video02" / "video.json").write_text("{"),
                             lambda w: prepare_args(w), "video02/video.json", "corrupt video record"),
    "other-dataset-phases": (lambda w: None,
                             lambda w: ["prepare", "--dataset", "folder", "--root", str(w / "raw"), "--out",
                                        str(w / "out"), "--size", "32", "--phases", "A,B"],
                             "manifest.json", "same options"),
    "lock-held": (_hold_lock, lambda w: prepare_args(w), LOCK_NAME, f"pid {os.getpid()}"),
    "out-is-a-file": (lambda w: (w / "file").write_text("x"), lambda w: prepare_args(w, out="file"),
                      "file", "not a folder"),
    "no-layout": (lambda w: None, lambda w: ["prepare", "--dataset", "cholec80", "--root", str(w / "nothing"),
                                             "--out", str(w / "out")], "nothing/videos", "no such folder"),
    "root-is-a-file": (lambda w: (w / "rootfile").write_text("x"),
                       lambda w: ["prepare", "--dataset", "folder", "--root", str(w / "rootfile"), "--out",
                                  str(w / "out")], "rootfile", "no such folder"),
    "quality-0": (lambda w: None, lambda w: prepare_args(w, "--quality", "0"), "--quality 0", "1-100"),
    "workers-0": (lambda w: None, lambda w: prepare_args(w, "--workers", "0"), "--workers 0", "at least 1"),
    "huge-size": (lambda w: None, lambda w: prepare_args(w, "--size", "100000"), "--size", "at most 4096"),
    "bad-size": (lambda w: None, lambda w: prepare_args(w, "--size", "12xq"), "--size", "expected N, WxH"),
    "bad-fps": (lambda w: None, lambda w: prepare_args(w, "--fps", "-1"), "--fps", "positive number"),
    "phases-for-cholec80": (lambda w: None, lambda w: prepare_args(w, "--phases", "A,B"), "--phases",
                            "only for --dataset folder"),
    "keep-aspect-wxh": (lambda w: None, lambda w: prepare_args(w, "--keep-aspect", "--size", "32x16"),
                        "--keep-aspect", "--size N"),
    "no-such-video": (lambda w: None, lambda w: prepare_args(w, "--videos", "video77"), "raw", "no cholec80 videos"),
    # synth
    "synth-out-is-a-file": (lambda w: (w / "file").write_text("x"),
                            lambda w: ["synth", "--out", str(w / "file"), "--videos", "1", "--seconds", "1"],
                            "file", "not a folder"),
    "synth-other-settings": (lambda w: main(["synth", "--out", str(w / "syn"), "--videos", "1", "--seconds", "1",
                                             "--size", "64x36", "--workers", "1"]),
                             lambda w: ["synth", "--out", str(w / "syn"), "--videos", "1", "--seconds", "2",
                                        "--size", "64x36"], "synth.json", "seconds=1.0"),
    "synth-corrupt-record": (lambda w: (w / "syn").mkdir() or (w / "syn" / "synth.json").write_text("{"),
                             lambda w: ["synth", "--out", str(w / "syn"), "--videos", "1"], "synth.json",
                             "unreadable synth record"),
    "synth-huge-size": (lambda w: None, lambda w: ["synth", "--out", str(w / "syn"), "--size", "99999x99999"],
                        "--size", "at most 4096"),
    "synth-odd-size": (lambda w: None, lambda w: ["synth", "--out", str(w / "syn"), "--size", "65x36"],
                       "--size", "even width and height"),
    "synth-seconds-0": (lambda w: None, lambda w: ["synth", "--out", str(w / "syn"), "--seconds", "0"],
                        "--seconds", "(0, 14400]"),
    "synth-seconds-nan": (lambda w: None, lambda w: ["synth", "--out", str(w / "syn"), "--seconds", "nan"],
                          "--seconds", "(0, 14400]"),
    "synth-seconds-huge": (lambda w: None, lambda w: ["synth", "--out", str(w / "syn"), "--seconds", "1e9"],
                           "--seconds", "(0, 14400]"),
    "synth-fps-0": (lambda w: None, lambda w: ["synth", "--out", str(w / "syn"), "--fps", "0"], "--fps", "1-120"),
    "synth-videos-0": (lambda w: None, lambda w: ["synth", "--out", str(w / "syn"), "--videos", "0"],
                       "--videos 0", "1 to 80"),
    "synth-workers-0": (lambda w: None, lambda w: ["synth", "--out", str(w / "syn"), "--workers", "0"],
                        "--workers 0", "at least 1"),
}


@pytest.mark.parametrize("case", sorted(WHOLE_RUN))
def test_whole_run_refusals_change_nothing(work, capsys, case):
    setup, argv, file, problem = WHOLE_RUN[case]
    held = setup(work)
    capsys.readouterr()
    before = snapshot(work)
    try:
        rc, err = run_main(argv(work), capsys)
    finally:
        if isinstance(held, FolderLock):
            held.release()
    assert rc == 2, err
    assert "Traceback" not in err
    lines = error_lines(err)
    assert len(lines) == 1 and file in lines[0] and problem in lines[0], (case, err)
    after = snapshot(work)
    if isinstance(held, FolderLock):  # the holder's own lock file is not the refused run's doing
        before = {k: v for k, v in before.items() if not k.endswith(LOCK_NAME)}
        after = {k: v for k, v in after.items() if not k.endswith(LOCK_NAME)}
    assert after == before, (case, sorted(set(after) ^ set(before)))


# --- per-video failures: exit 1, one line naming the file, the other videos untouched -------------
def _add(w: Path, make: Callable[[Path], None], n: int = 3, suffix: str = ".mp4") -> None:
    """Add video ``n`` to raw/ with good labels, then let ``make`` spoil something."""
    cholec80_video(w / "raw", n, FRAMES, CHOLEC80_PHASES, seed=n, tools=True)
    if suffix != ".mp4":
        mp4 = w / "raw" / "videos" / f"video{n:02d}.mp4"
        _write_mkv(mp4.with_suffix(suffix), FRAMES)
        mp4.unlink()
    make(w)


def _write_mkv(path: Path, frames: int) -> None:
    import av

    with av.open(str(path), "w", format="matroska") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        stream.options = {"crf": "8", "preset": "ultrafast"}
        for i in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame_image(i), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _jpeg_as_mp4(w: Path) -> None:
    from PIL import Image

    Image.fromarray(frame_image(0)).save(w / "raw" / "videos" / "video03.mp4", format="JPEG")


def _ann(w: Path, kind: str = "phase") -> Path:
    return w / "raw" / f"{kind}_annotations" / f"video03-{kind}.txt"


PER_VIDEO: dict[str, tuple[Callable[[Path], None], str, str]] = {
    # name: (spoil video03, file named in the error, problem named in the error)
    "jpeg-renamed-mp4": (lambda w: _add(w, lambda w: _jpeg_as_mp4(w)), "video03.mp4", "not a video"),
    "mkv-cut-to-60": (lambda w: _add(w, lambda w: truncate(w / "raw" / "videos" / "video03.mkv", 0.6),
                                     suffix=".mkv"), "video03.mkv", "truncated"),
    "text-renamed-mp4": (lambda w: _add(w, lambda w: (w / "raw" / "videos" / "video03.mp4").write_text("hi\n" * 50)),
                         "video03.mp4", "cannot open"),
    "empty-video": (lambda w: _add(w, lambda w: (w / "raw" / "videos" / "video03.mp4").write_bytes(b"")),
                    "video03.mp4", "empty file"),
    "annotation-to-5000": (lambda w: _add(w, lambda w: write_phase_file(_ann(w), ["Preparation"] * 5000)),
                           "video03-phase.txt", "labels run to source frame 4999"),
    "tool-annotation-too-long": (lambda w: _add(w, lambda w: _ann(w, "tool").write_text(
        "Frame\t" + "\t".join("ABCDEFG") + "\n" + "".join(f"{f}\t0\t0\t0\t0\t0\t0\t0\n" for f in range(0, 500, 25)))),
        "video03-tool.txt", "labels run to source frame 475"),
    "annotation-too-short": (lambda w: _add(w, lambda w: write_phase_file(_ann(w), ["Preparation"] * 20)),
                             "video03-phase.txt", "labels cover source frames 0-19"),
    "unknown-phase": (lambda w: _add(w, lambda w: write_phase_file(_ann(w), ["Lunch"] * FRAMES)),
                      "video03-phase.txt", "unknown phase 'Lunch'"),
    "missing-annotation": (lambda w: _add(w, lambda w: _ann(w).unlink()), "video03-phase.txt",
                           "missing phase annotation"),
    "binary-annotation": (lambda w: _add(w, lambda w: _ann(w).write_bytes(bytes(range(128, 256)))),
                          "video03-phase.txt", "not a text annotation"),
    # The output side is in the way, not the video: the error names the output path, which is kept.
    "output-name-taken-by-a-file": (lambda w: _add(w, lambda w: (w / "out" / "video03").write_text("mine")),
                                    "out/video03", "in the way"),
    "output-folder-not-prepares": (lambda w: _add(w, lambda w: (w / "out" / "video03").mkdir() or (
        w / "out" / "video03" / "notes.txt").write_text("mine")), "out/video03", "in the way"),
}


def _check_per_video(work: Path, before: dict, rc: int, err: str, file: str, problem: str, case: str) -> None:
    assert rc == 1, err
    assert "Traceback" not in err
    lines = error_lines(err)
    assert len(lines) == 1 and file in lines[0] and problem in lines[0], (case, err)
    after = snapshot(work)
    manifest = json.loads((work / "out" / "manifest.json").read_text())
    old = json.loads(before["out/manifest.json"][2])
    assert manifest["videos"] == old["videos"] and sorted(manifest["failed"]) == ["video03"]
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert changed == {"out/manifest.json"}, (case, changed)


@pytest.mark.parametrize("case", sorted(PER_VIDEO))
def test_per_video_failures_name_the_file_and_change_nothing_else(work, capsys, case):
    spoil, file, problem = PER_VIDEO[case]
    spoil(work)
    before = snapshot(work)
    rc, err = run_main(prepare_args(work), capsys)
    _check_per_video(work, before, rc, err, file, problem, case)


# --- permissions (a read-only output folder, an unreadable annotation) ---------------------------
@pytest.mark.parametrize("where", ["out", "parent"])
def test_read_only_output_folder_prepare(work, where):
    """A read-only --out (work left to do) or a new --out under a read-only folder."""
    _add(work, lambda w: None)  # something left to do
    if where == "out":
        locked, argv = work / "out", prepare_args(work)
        named, operation = f"out/{LOCK_NAME}", "cannot create the lock file"
    else:
        locked, argv = work / "ro", prepare_args(work, out="ro/new")
        locked.mkdir()
        named, operation = "ro/new", "cannot create the output folder"
    locked.chmod(0o555)
    before = snapshot(work)
    try:
        rc, err = run_unprivileged(argv)
    finally:
        locked.chmod(0o755)
    assert rc == 2 and "Traceback" not in err, err
    lines = error_lines(err)
    assert len(lines) == 1 and named in lines[0] and operation in lines[0] and "Permission denied" in lines[0], err
    assert snapshot(work) == before and not (work / "ro" / "new").exists()


def test_read_only_output_folder_synth(tmp_path):
    out = tmp_path / "syn"
    out.mkdir()
    out.chmod(0o555)
    try:
        rc, err = run_unprivileged(["synth", "--out", str(out), "--videos", "1", "--seconds", "1", "--workers", "1"])
    finally:
        out.chmod(0o755)
    assert rc == 2 and "Traceback" not in err, err
    lines = error_lines(err)
    assert len(lines) == 1 and str(out) in lines[0] and "Permission denied" in lines[0], err
    assert snapshot(out) == {} and sorted(p.name for p in out.iterdir()) == []


def test_unreadable_annotation_is_named(work):
    _add(work, lambda w: _ann(w).chmod(0))
    before = snapshot(work)
    rc, err = run_unprivileged(prepare_args(work))
    _check_per_video(work, before, rc, err, "video03-phase.txt", "cannot read the annotations", "unreadable")


def test_failed_frame_write_names_the_output_file(work, capsys, monkeypatch):
    """A write error (here a full disk) inside the output folder names the file being written and
    the operation, not the source video."""
    import errno

    from PIL import Image

    def full_disk(self, fp, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    _add(work, lambda w: None)
    monkeypatch.setattr(Image.Image, "save", full_disk)
    before = snapshot(work)
    rc, err = run_main(prepare_args(work), capsys)
    _check_per_video(work, before, rc, err, "out/.tmp-video03-", "000000.jpg: cannot write a frame (No space",
                     "disk full")


# --- the lock --------------------------------------------------------------------------------------
def test_stale_lock_of_a_dead_process_is_taken_over(work, capsys):
    _add(work, lambda w: None)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (work / "out" / LOCK_NAME).write_text(f"{dead.pid}\n")
    rc, err = run_main(prepare_args(work), capsys)
    assert rc == 0, err
    assert f"took over {work / 'out' / LOCK_NAME} from pid {dead.pid}" in err
    assert not (work / "out" / LOCK_NAME).exists()  # released at the end
    assert "video03" in json.loads((work / "out" / "manifest.json").read_text())["videos"]


@pytest.mark.slow
def test_two_prepares_into_one_folder(tmp_path):
    raw = tmp_path / "raw"
    for n in (1, 2, 3):
        cholec80_video(raw, n, 400, CHOLEC80_PHASES, seed=n)
    argv = prepare_args(tmp_path, "--fps", "25")
    first = subprocess.Popen([sys.executable, "-m", "solo_surgical.cli", *argv], env=env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lock = tmp_path / "out" / LOCK_NAME
    deadline = time.monotonic() + 60
    while not lock.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    second = subprocess.run([sys.executable, "-m", "solo_surgical.cli", *argv], env=env(), capture_output=True,
                            text=True, timeout=120)
    _, first_err = first.communicate(timeout=120)
    assert first.returncode == 0, first_err
    assert second.returncode == 2 and "Traceback" not in second.stderr
    lines = error_lines(second.stderr)
    assert len(lines) == 1 and str(lock) in lines[0] and f"pid {first.pid}" in lines[0], second.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert sorted(manifest["videos"]) == ["video01", "video02", "video03"] and manifest["failed"] == {}


# --- kill -9 ------------------------------------------------------------------------------------------
def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _frames(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.glob("video*/*"))
            if p.name != "video.json"}


def _kill_when(cmd: list[str], ready: Callable[[], bool], timeout: float = 90) -> set[int]:
    """Start ``cmd``, SIGKILL it once ``ready()``, and return the pids of its descendants then."""
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed: make the input longer"
    kids = set(worker_pids(proc.pid))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return kids


def _no_survivors(kids: set[int], grace: float = 10.0) -> None:
    deadline = time.monotonic() + grace
    while any(_alive(p) for p in kids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in kids if _alive(p)], "processes of the killed run are still running"


@pytest.fixture(scope="module")
def long_raw(tmp_path_factory) -> tuple[Path, Path]:
    """4 videos of 300-375 frames and their uninterrupted preparation at 25 fps (every frame)."""
    root = tmp_path_factory.mktemp("long")
    for n in range(1, 5):
        cholec80_video(root / "raw", n, 275 + 25 * n, CHOLEC80_PHASES, seed=n)
    assert main(prepare_args(root, "--fps", "25", out="ref")) == 0
    return root / "raw", root / "ref"


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_kill_9_mid_prepare_leaves_no_workers_and_resumes(tmp_path, long_raw, workers):
    raw, ref = long_raw
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "solo_surgical.cli", "prepare", "--dataset", "cholec80", "--root", str(raw),
           "--out", str(out), "--size", "32", "--fps", "25", "--workers", str(workers)]

    def mid_run() -> bool:  # every worker has written frames of an unfinished video
        busy = [d for d in out.glob(".tmp-*") if len(list(d.glob("*.jpg"))) >= 5]
        return len(busy) >= workers

    kids = _kill_when(cmd, mid_run)
    if workers > 1:
        assert len(kids) >= workers  # the worker processes (and the fork server) were seen
    _no_survivors(kids)
    # Nothing writes any more: the temporary folders stay as they were.
    partial = snapshot(out)
    time.sleep(0.5)
    assert snapshot(out) == partial and any(k.startswith(".tmp-") for k in partial)
    assert (out / LOCK_NAME).exists()  # left by the dead run, taken over by the rerun
    result = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "took over" in result.stderr, result.stderr
    assert _frames(out) == _frames(ref)
    assert not list(out.glob(".tmp-*")) and not (out / LOCK_NAME).exists()


BENCH_SCRIPT = """
import sys
from solo_surgical.benchmark.run import Benchmark
from solo_surgical.benchmark.plan import compose_benchmark
cfg = compose_benchmark(["out=" + sys.argv[1], "data.synth.videos=3", "data.synth.seconds=12",
                            "data.synth.size=64x36", "data.fps=25", "data.size=16"])
print(Benchmark(cfg, log=lambda m: None).ensure_data())
"""


@pytest.mark.slow
def test_kill_9_during_the_benchmark_prepare_step_is_redone(tmp_path):
    from solo_surgical.benchmark.run import data_complete
    from solo_surgical.data.prepare import Options, prepare
    from solo_surgical.data.registry import get_dataset

    out = tmp_path / "bench"
    data = out / "data"
    cmd = [sys.executable, "-c", BENCH_SCRIPT, str(out)]
    kids = _kill_when(cmd, lambda: any(data.glob("video*/video.json")), timeout=240)
    _no_survivors(kids)
    assert (data / "manifest.json").is_file() and not data_complete(data)  # partial, and known to be
    partial = json.loads((data / "manifest.json").read_text())
    assert partial["failed"] == {} and len(partial["videos"]) < 3  # what the old check took as complete
    rerun = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert data_complete(data)
    manifest = json.loads((data / "manifest.json").read_text())
    synth = json.loads((out / "raw" / "synth.json").read_text())
    assert sorted(manifest["videos"]) == sorted(synth["videos"]) and manifest["failed"] == {}
    ref = tmp_path / "ref"
    prepare(get_dataset("cholec80"), out / "raw", ref, Options(fps="25", size=(16, 16)))
    assert _frames(data) == _frames(ref)


@pytest.mark.slow
def test_kill_9_mid_synth_leaves_no_workers_and_resynthesizes(tmp_path):
    argv = ["--videos", "2", "--seconds", "6", "--size", "96x54", "--workers", "2"]
    out, ref = tmp_path / "syn", tmp_path / "ref"
    cmd = [sys.executable, "-m", "solo_surgical.cli", "synth", "--out", str(out), *argv]
    # both workers are encoding (their temporary videos exist)
    kids = _kill_when(cmd, lambda: len(list((out / "videos").glob(".*.tmp-*"))) >= 2)
    assert len(kids) >= 2
    _no_survivors(kids)
    assert not (out / "synth.json").exists()  # written last: the set is known to be incomplete
    rerun = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert main(["synth", "--out", str(ref), *argv]) == 0
    assert snapshot(out / "videos").keys() == snapshot(ref / "videos").keys()  # no leftover temporaries
    for sub in ("videos", "phase_annotations", "tool_annotations"):
        assert {k: v[2] for k, v in snapshot(out / sub).items()} == {k: v[2] for k, v in snapshot(ref / sub).items()}
