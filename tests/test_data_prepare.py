"""prepare: frame selection, crop, label alignment, resumability, per-video errors (real MP4s)."""
from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from data_fixtures import (BOX, cholec80_video, corrupt, decode_index, env,  # noqa: E402
                           truncate, write_phase_file, write_video)

from solo_surgical.cli import main  # noqa: E402
from solo_surgical.data.prepare import Options, prepare  # noqa: E402
from solo_surgical.data.registry import CHOLEC80_PHASES, get_dataset  # noqa: E402
from solo_surgical.data.video import content_box, sample_frames  # noqa: E402

CHOLEC = get_dataset("cholec80")


def expected_sources(n: int, native: int, fps: Fraction) -> list[int]:
    """The documented rule, computed independently: k -> ceil(k*R/fps - 1/4) while <= last frame."""
    out, k = [], 0
    while True:
        src = math.ceil(Fraction(k) * native / fps - Fraction(1, 4))
        if src > n - 1:
            return out
        out.append(max(src, 0))
        k += 1


def outputs(folder: Path) -> list[list[str]]:
    return [line.split("\t") for line in (folder / "frames.tsv").read_text().splitlines()[1:]]


@pytest.mark.parametrize("native,fps,frames", [(25, "1", 130), (25, "2", 61), (30, "1", 95), (25, "25", 40), (25, "0.5", 140)])
def test_selected_frames_follow_the_documented_rule(tmp_path, native, fps, frames):
    raw = tmp_path / "raw"
    labels = cholec80_video(raw, 1, frames, CHOLEC80_PHASES, fps=native)
    _, failed = prepare(CHOLEC, raw, tmp_path / "out", Options(fps=fps, size=(64, 64)))
    assert failed == {}
    folder = tmp_path / "out" / "video01"
    want = expected_sources(frames, native, Fraction(fps))
    rows = outputs(folder)
    assert [int(r[1]) for r in rows] == want
    assert [int(r[0]) for r in rows] == list(range(len(want)))
    # The pixels of each JPEG say which source frame they came from.
    assert [decode_index(folder / f"{k:06d}.jpg") for k in range(len(want))] == want
    assert sorted(p.name for p in folder.glob("*.jpg")) == [f"{k:06d}.jpg" for k in range(len(want))]
    # Labels are the annotation at the source frame.
    assert [CHOLEC80_PHASES[int(r[3])] for r in rows] == [labels[s] for s in want]
    entry = json.loads((tmp_path / "out" / "manifest.json").read_text())["videos"]["video01"]
    assert entry["native_frames"] == frames and entry["output_frames"] == len(want)
    assert entry["native_fps"] == native


@pytest.mark.parametrize("box", [(8, 4, 88, 60), (20, 0, 76, 64), (0, 10, 96, 54), (0, 0, 96, 64), (30, 6, 70, 58)])
def test_crop_box_matches_drawn_content(tmp_path, box):
    path = write_video(tmp_path / "v.mp4", 60, box=box)
    found = content_box(sample_frames(path))
    assert all(abs(a - b) <= 2 for a, b in zip(found, box)), (found, box)
    # Never crop into content: the found box contains the drawn one up to the 2 px tolerance
    # (which is only used to snap to the frame edge).
    assert found[0] <= box[0] + 2 and found[1] <= box[1] + 2 and found[2] >= box[2] - 2 and found[3] >= box[3] - 2


def test_black_video_and_no_margin_video_are_left_alone():
    black = [np.zeros((64, 96, 3), np.uint8) for _ in range(6)]
    assert content_box(black) == (0, 0, 96, 64)
    full = [np.full((64, 96, 3), 120, np.uint8) for _ in range(6)]
    assert content_box(full) == (0, 0, 96, 64)
    # One bright frame of noise in the margin does not widen the box; dark frames do not shrink it.
    frames = [np.zeros((64, 96, 3), np.uint8) for _ in range(8)]
    for f in frames[:6]:
        f[10:50, 20:70] = 150
    frames[0][0:5, 0:5] = 255
    assert content_box(frames) == (20, 10, 70, 50)


def test_tool_labels_and_keep_aspect(tmp_path):
    raw = tmp_path / "raw"
    cholec80_video(raw, 1, 120, CHOLEC80_PHASES, tools=True, seed=3)
    _, failed = prepare(CHOLEC, raw, tmp_path / "out", Options(fps="1", size=(40, 40), keep_aspect=True))
    assert failed == {}
    rows = outputs(tmp_path / "out" / "video01")
    tool_rows = [line.split("\t") for line in (raw / "tool_annotations" / "video01-tool.txt").read_text().splitlines()[1:]]
    by_frame = {int(r[0]): r[1:] for r in tool_rows}
    assert [r[4:] for r in rows] == [by_frame[int(r[1])] for r in rows]
    from PIL import Image

    w, h = Image.open(tmp_path / "out" / "video01" / "000000.jpg").size
    cw, ch = BOX[2] - BOX[0], BOX[3] - BOX[1]
    assert min(w, h) == 40 and abs(w / h - cw / ch) < 0.05


def _interrupt_after(monkeypatch, video_name: str, frames: int) -> None:
    """Make select_frames raise KeyboardInterrupt part-way through one video (a simulated kill)."""
    import solo_surgical.data.prepare as prep

    real = prep.select_frames

    def broken(path, fps, stats=None):
        for i, sel in enumerate(real(path, fps, stats)):
            if path.stem == video_name and i == frames:
                raise KeyboardInterrupt
            yield sel

    monkeypatch.setattr(prep, "select_frames", broken)


def test_interrupted_run_resumes_without_duplicates(tmp_path, monkeypatch):
    raw, out = tmp_path / "raw", tmp_path / "out"
    lengths = {1: 100, 2: 160, 3: 80}
    for n, frames in lengths.items():
        cholec80_video(raw, n, frames, CHOLEC80_PHASES, seed=n)
    _interrupt_after(monkeypatch, "video01", 3)  # longest first: video02 finishes, video01 breaks
    with pytest.raises(KeyboardInterrupt):
        prepare(CHOLEC, raw, out, Options(size=(64, 64)))
    assert (out / "video02" / "video.json").exists()
    assert not (out / "video01").exists() and list(out.glob(".tmp-video01-*"))
    finished = (out / "video02" / "video.json").stat().st_mtime_ns
    monkeypatch.undo()
    manifest, failed = prepare(CHOLEC, raw, out, Options(size=(64, 64)))
    assert failed == {} and sorted(manifest["videos"]) == ["video01", "video02", "video03"]
    assert (out / "video02" / "video.json").stat().st_mtime_ns == finished  # skipped, not redone
    assert not list(out.glob(".tmp-*"))
    for n, frames in lengths.items():
        folder = out / f"video{n:02d}"
        want = expected_sources(frames, 25, Fraction(1))
        assert [decode_index(p) for p in sorted(folder.glob("*.jpg"))] == want


@pytest.mark.slow
def test_killed_process_resumes(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    lengths = {n: 250 + 25 * n for n in range(1, 5)}
    for n, frames in lengths.items():
        cholec80_video(raw, n, frames, CHOLEC80_PHASES, seed=n)
    cmd = [sys.executable, "-m", "solo_surgical.cli", "prepare", "--dataset", "cholec80", "--root", str(raw),
           "--out", str(out), "--size", "64", "--workers", "1", "--fps", "5"]
    proc = subprocess.Popen(cmd, env=env(), stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not list(out.glob("video*/video.json")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = {p.parent.name for p in out.glob("video*/video.json")}
    assert done_before, "the first video should have finished before the kill"
    result = subprocess.run(cmd, env=env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["videos"]) == [f"video{n:02d}" for n in lengths]
    for n, frames in lengths.items():
        folder = out / f"video{n:02d}"
        want = expected_sources(frames, 25, Fraction(5))
        assert [int(r[1]) for r in outputs(folder)] == want
        assert len(list(folder.glob("*.jpg"))) == len(want)
    assert not list(out.glob(".tmp-*"))


def test_bad_inputs_give_one_line_each_and_the_rest_finishes(tmp_path, capsys):
    raw, out = tmp_path / "raw", tmp_path / "out"
    for n in range(1, 10):
        cholec80_video(raw, n, 60, CHOLEC80_PHASES, seed=n)
    videos, ann = raw / "videos", raw / "phase_annotations"
    corrupt(videos / "video02.mp4")
    truncate(videos / "video03.mp4", 0.6)  # moov at the end: not even openable
    (videos / "video04.mp4").write_bytes(b"")
    write_video(videos / "video05.mp4", 60, faststart=True)  # moov first: opens, decodes part
    truncate(videos / "video05.mp4", 0.7)
    write_phase_file(ann / "video06-phase.txt", ["Preparation"] * 30 + ["Lunch"] * 30)
    write_phase_file(ann / "video07-phase.txt", ["Preparation"] * 40)  # shorter than the video
    (ann / "video08-phase.txt").write_text("Frame\tPhase\n0\tPreparation\nten\tPreparation\n")
    (ann / "video09-phase.txt").unlink()
    rc = main(["prepare", "--dataset", "cholec80", "--root", str(raw), "--out", str(out), "--size", "32",
               "--workers", "1"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("solo-surgical: error:")]
    assert rc == 1
    expect = {
        "video02": ("video02.mp4", "cannot open"),
        "video03": ("video03.mp4", "cannot open"),
        "video04": ("video04.mp4", "empty file"),
        "video05": ("video05.mp4", "truncated"),
        "video06": ("video06-phase.txt", "unknown phase 'Lunch'"),
        "video07": ("video07-phase.txt", "labels cover source frames 0-39"),
        "video08": ("video08-phase.txt", "line 3"),
        "video09": ("video09-phase.txt", "missing phase annotation"),
    }
    assert len(errors) == len(expect), err
    for name, (file, problem) in expect.items():
        mine = [e for e in errors if file in e]
        assert len(mine) == 1 and problem in mine[0], (name, errors)
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["videos"]) == ["video01"]
    assert sorted(manifest["failed"]) == sorted(expect)
    assert not any((out / n).exists() for n in expect) and not list(out.glob(".tmp-*"))
    assert "1 videos ready" in err and "8 failed" in err


def test_rerun_with_other_options_is_refused(tmp_path, capsys):
    raw, out = tmp_path / "raw", tmp_path / "out"
    cholec80_video(raw, 1, 30, CHOLEC80_PHASES)
    assert main(["prepare", "--dataset", "cholec80", "--root", str(raw), "--out", str(out), "--size", "32"]) == 0
    assert main(["prepare", "--dataset", "cholec80", "--root", str(raw), "--out", str(out), "--size", "48"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("solo-surgical: error:") and "manifest.json" in err and "same options" in err


def test_missing_layout_and_fps_above_native(tmp_path, capsys):
    assert main(["prepare", "--dataset", "cholec80", "--root", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "videos: no such folder" in capsys.readouterr().err
    raw = tmp_path / "raw"
    cholec80_video(raw, 1, 30, CHOLEC80_PHASES)
    assert main(["prepare", "--dataset", "cholec80", "--root", str(raw), "--out", str(tmp_path / "o2"),
                 "--fps", "50", "--size", "32"]) == 1
    assert "exceeds the native rate 25" in capsys.readouterr().err


def test_annotation_parsing_errors(tmp_path):
    from solo_surgical.data.annotations import read_phases
    from solo_surgical.errors import UserError

    cases = {
        "": "empty annotation file",
        "0\tPreparation\n": "missing header",
        "Frame\tPhase\n": "no annotation rows",
        "Frame\tPhase\n0\tPreparation\tx\n": "expected 2 columns",
        "Frame\tPhase\n5\tPreparation\n5\tPreparation\n": "does not follow",
    }
    for i, (text, problem) in enumerate(cases.items()):
        path = tmp_path / f"a{i}.txt"
        path.write_text(text)
        with pytest.raises(UserError, match=problem):
            read_phases(path, CHOLEC80_PHASES)
    # Sparse rows are a step function covering up to the last row.
    path = tmp_path / "sparse.txt"
    path.write_text("Frame Phase\n0 Preparation\n10 ClippingCutting\n20 ClippingCutting\n")
    labels = read_phases(path, CHOLEC80_PHASES)
    assert [labels.at(f) for f in (0, 9, 10, 20, 21)] == [0, 0, 2, 2, None]


def _write_bframe_video(path: Path, frames: int, gop: int, x264_params: str) -> Path:
    """Like data_fixtures.write_video but with B-frames (non-reference frames the planned decoder
    skips) and a chosen GOP structure; the fixture's ultrafast preset has no B-frames."""
    import av

    from data_fixtures import SIZE, frame_image

    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = SIZE[0], SIZE[1], "yuv420p"
        stream.codec_context.gop_size = gop
        stream.options = {"crf": "8", "preset": "veryfast", "x264-params": x264_params}
        for i in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame_image(i), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.mark.parametrize("gop,params", [
    (1, "bframes=0"),  # every frame a keyframe: only wanted frames are decoded
    (25, "bframes=3:b-pyramid=normal"),  # keyframe every second, B-pyramid (some Bs are references)
    (12, "bframes=2:b-pyramid=none"),  # shorter than the 1 s sampling step: whole GOPs skipped
    (40, "bframes=3:open-gop=1:scenecut=0"),  # open GOPs: leading Bs reference the previous GOP
    (250, "bframes=3"),  # long GOP: sequential decode with non-reference frames skipped
])
@pytest.mark.parametrize("fps", ["1", "2", "0.5", "25"])
def test_planned_decode_matches_sequential(tmp_path, monkeypatch, gop, params, fps):
    import solo_surgical.data.video as video
    from solo_surgical.data.video import _plan, select_frames

    path = _write_bframe_video(tmp_path / "v.mp4", 150, gop, params)
    assert _plan(path, Fraction(fps)) is not None  # the fast path is really taken
    got, decoded = {}, {}
    for mode in ("auto", "sequential"):
        stats: dict = {}
        with monkeypatch.context() as m:
            if mode == "auto":  # the planned path must not fall back to sequential decoding
                m.setattr(video, "_select_sequential", None)
            got[mode] = [(s.k, s.source, s.time, s.frame.to_ndarray(format="rgb24"))
                         for s in select_frames(path, Fraction(fps), stats, mode=mode)]
        decoded[mode] = stats["decoded"]
        if mode == "auto" and gop <= 25 and fps in ("1", "0.5"):
            assert stats["fed"] < 150 / 2  # whole stretches of packets were never decoded
    auto, seq = got["auto"], got["sequential"]
    assert decoded["auto"] == decoded["sequential"] == 150
    assert [a[:3] for a in auto] == [s[:3] for s in seq]
    assert [s[1] for s in seq] == expected_sources(150, 25, Fraction(fps))
    for a, s in zip(auto, seq):
        assert np.array_equal(a[3], s[3]), (a[0], a[1])
