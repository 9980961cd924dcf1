#!/usr/bin/env python
"""``prepare`` throughput against the ``ffmpeg`` command line doing the same job, side by side.

The job: sample at ``--fps`` (1), crop the black margins, scale to 250x250, write JPEGs. The video
set is synthetic (``solo_surgical.data.synth``, 854x480 by default like Cholec80) re-encoded
with several keyframe intervals, because whether skipping ahead beats decoding every frame
depends on it: 1 s (a keyframe per sampled frame), 4 s (synth's own), 10 s (x264's default) and
40 s (a long GOP). For each ``W`` in ``--workers`` and each round, interleaved (ours first in
even rounds, ffmpeg first in odd ones, so load drifts on this shared machine hit both):

* ours:   ``solo-surgical prepare --dataset cholec80 --workers W`` (the CLI, startup included)
* ffmpeg: ``ffmpeg -threads 1 -i V -vf fps=1,crop=<box prepare found>,scale=250:250 %06d.jpg``,
          one process per video, W at a time

Both run on the same W cores (``taskset`` when available) with single-threaded decoders, and
the ratio ffmpeg_time / our_time (> 1: we are faster; the goal is >= 1.5) is printed per round
with output and source frames per second.

    python scripts/bench_prepare.py --workers 1 2 --rounds 3
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

GOPS = (25, 100, 250, 1000)  # keyframe interval in frames at 25 fps: 1 s, 4 s, 10 s, 40 s


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def reencode(src: Path, dst: Path, gop: int) -> None:
    """``src`` re-encoded (libx264 veryfast, crf 23: synth's settings) with a keyframe every ``gop``."""
    import av

    tmp = dst.with_name(f".{dst.name}.tmp")
    with av.open(str(src)) as inp, av.open(str(tmp), "w", format="mp4") as out:
        vin = inp.streams.video[0]
        vout = out.add_stream("libx264", rate=vin.average_rate)
        vout.width, vout.height, vout.pix_fmt = vin.codec_context.width, vin.codec_context.height, "yuv420p"
        vout.codec_context.gop_size = gop
        # scenecut=0: keyframes exactly every `gop` frames, so each file has one known spacing.
        vout.options = {"crf": "23", "preset": "veryfast", "x264-params": "scenecut=0"}
        for i, frame in enumerate(inp.decode(vin)):
            frame.pts, frame.time_base = i, 1 / Fraction(vin.average_rate)  # frames 0, 1, 2, ... at the same rate
            frame.pict_type = 0  # AV_PICTURE_TYPE_NONE: else the source's I-frames stay keyframes
            for packet in vout.encode(frame):
                out.mux(packet)
        for packet in vout.encode():
            out.mux(packet)
    os.replace(tmp, dst)


def make_videos(raw: Path, base: int, seconds: float, size: str) -> list[Path]:
    """``base`` synthetic videos x len(GOPS) keyframe intervals, in the Cholec80 layout (cached)."""
    from solo_surgical.data.synth import SynthConfig, synthesize

    want = base * len(GOPS)
    videos = raw / "videos"
    if len(list(videos.glob("video*.mp4"))) == want:
        return sorted(videos.glob("video*.mp4"))
    w, h = (int(v) for v in size.split("x"))
    src = raw / "synth"
    if not (src / "synth.json").exists():
        log(f"bench: synthesizing {base} x {seconds:g} s at {size} (cached in {raw})")
        synthesize(src, SynthConfig(videos=base, seconds=seconds, width=w, height=h, duration_jitter=0),
                   workers=min(base, os.cpu_count() or 1))
    (raw / "phase_annotations").mkdir(parents=True, exist_ok=True)
    videos.mkdir(parents=True, exist_ok=True)
    n = 0
    for b, video in enumerate(sorted((src / "videos").glob("video*.mp4"))):
        labels = src / "phase_annotations" / f"{video.stem}-phase.txt"
        for gop in GOPS:
            n += 1
            log(f"bench: encoding video{n:02d} (base {b}, keyframe every {gop} frames)")
            reencode(video, videos / f"video{n:02d}.mp4", gop)
            shutil.copy(labels, raw / "phase_annotations" / f"video{n:02d}-phase.txt")
    return sorted(videos.glob("video*.mp4"))


def cpu_prefix(workers: int) -> list[str]:
    """Pin a command to ``workers`` cores, so both sides get the same number of cores."""
    cpus = sorted(os.sched_getaffinity(0))
    if shutil.which("taskset") is None or workers >= len(cpus):
        return []
    return ["taskset", "-c", ",".join(str(c) for c in cpus[:workers])]


def run_ours(raw: Path, out: Path, workers: int, fps: str) -> float:
    shutil.rmtree(out, ignore_errors=True)
    cmd = cpu_prefix(workers) + [sys.executable, "-m", "solo_surgical.cli", "prepare", "--dataset", "cholec80",
                                 "--root", str(raw), "--out", str(out), "--workers", str(workers),
                                 "--fps", fps, "--size", "250"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return time.perf_counter() - start


def ffmpeg_cmd(video: Path, out: Path, box: list[int], fps: str) -> list[str]:
    left, top, right, bottom = box
    vf = f"fps={fps},crop={right - left}:{bottom - top}:{left}:{top},scale=250:250:flags=bilinear"
    # -threads 1 before -i: one decoder thread, like each of our workers; -q:v 2 ~ PIL quality 90.
    return ["ffmpeg", "-nostdin", "-v", "error", "-threads", "1", "-filter_threads", "1", "-i", str(video),
            "-vf", vf, "-q:v", "2", "-start_number", "0", str(out / "%06d.jpg")]


def run_ffmpeg(videos: list[Path], out: Path, boxes: dict[str, list[int]], workers: int, fps: str) -> float:
    """One ffmpeg per video, at most ``workers`` at a time, all pinned to the same ``workers`` cores."""
    from concurrent.futures import ThreadPoolExecutor

    shutil.rmtree(out, ignore_errors=True)
    todo = sorted(videos, key=lambda v: v.stat().st_size, reverse=True)  # longest first, as prepare
    for video in todo:
        (out / video.stem).mkdir(parents=True)

    def one(video: Path) -> None:
        subprocess.run(cpu_prefix(workers) + ffmpeg_cmd(video, out / video.stem, boxes[video.stem], fps), check=True)

    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:  # threads only wait on the ffmpeg processes
        list(pool.map(one, todo))
    return time.perf_counter() - start


def count_jpgs(out: Path) -> int:
    return sum(1 for _ in out.glob("*/*.jpg"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, help="folder for videos (kept, reused) and outputs (default: temporary)")
    ap.add_argument("--base", type=int, default=2, help="synthetic videos; each is encoded once per keyframe interval")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--size", default="854x480")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--fps", default="1")
    ap.add_argument("--json", type=Path, help="also write the measurements here")
    args = ap.parse_args()
    if shutil.which("ffmpeg") is None:
        print("bench_prepare: skipped: the ffmpeg command line is not on PATH (e.g. apt-get install ffmpeg)")
        return 0
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_prepare-"))
    raw, ours_out, ff_out = work / "raw", work / "ours", work / "ffmpeg"
    videos = make_videos(raw, args.base, args.seconds, args.size)
    # Untimed warm-up: fills the page cache for both sides and gives the crop boxes prepare found.
    run_ours(raw, ours_out, max(args.workers), args.fps)
    manifest = json.loads((ours_out / "manifest.json").read_text())
    boxes = {name: entry["crop"] for name, entry in manifest["videos"].items()}
    source_frames = sum(entry["native_frames"] for entry in manifest["videos"].values())
    log(f"bench: {len(videos)} videos, {source_frames} source frames, keyframe intervals {GOPS} frames, "
        f"cpus {len(os.sched_getaffinity(0))}, ffmpeg {subprocess.run(['ffmpeg', '-version'], capture_output=True, text=True).stdout.split()[2]}")
    rows = []
    print(f"{'W':>2} {'round':>5} {'ours s':>8} {'ffmpeg s':>8} {'ffmpeg/ours':>11} {'ours out/s':>10} "
          f"{'ff out/s':>8} {'ours src/s':>10} {'ff src/s':>8} {'frames ours/ff':>14}")
    for workers in args.workers:
        for r in range(args.rounds):
            order = ("ours", "ffmpeg") if r % 2 == 0 else ("ffmpeg", "ours")
            t = {}
            for side in order:
                t[side] = (run_ours(raw, ours_out, workers, args.fps) if side == "ours"
                           else run_ffmpeg(videos, ff_out, boxes, workers, args.fps))
            n_ours, n_ff = count_jpgs(ours_out), count_jpgs(ff_out)
            row = {"workers": workers, "round": r, "ours_s": t["ours"], "ffmpeg_s": t["ffmpeg"],
                   "ratio": t["ffmpeg"] / t["ours"], "ours_frames": n_ours, "ffmpeg_frames": n_ff,
                   "source_frames": source_frames}
            rows.append(row)
            print(f"{workers:>2} {r:>5} {t['ours']:>8.2f} {t['ffmpeg']:>8.2f} {row['ratio']:>11.2f} "
                  f"{n_ours / t['ours']:>10.1f} {n_ff / t['ffmpeg']:>8.1f} {source_frames / t['ours']:>10.0f} "
                  f"{source_frames / t['ffmpeg']:>8.0f} {n_ours:>7}/{n_ff:<6}", flush=True)
    for workers in args.workers:
        ratios = [row["ratio"] for row in rows if row["workers"] == workers]
        print(f"W={workers}: ffmpeg/ours median {statistics.median(ratios):.2f} "
              f"(min {min(ratios):.2f}, max {max(ratios):.2f}, {len(ratios)} rounds); goal >= 1.5")
    if args.json:
        args.json.write_text(json.dumps({"videos": len(videos), "gops": GOPS, "rows": rows}, indent=1) + "\n")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
