"""Decode videos with PyAV: frame selection by timestamp and black-margin detection.

Frame selection rule (documented in ``prepare --help`` and the data README)
---------------------------------------------------------------------------
Source frames are numbered ``0, 1, 2, ...`` in presentation order, exactly as the annotation files
count them. A source frame's time ``t`` is its timestamp minus the first frame's timestamp (exact
rational arithmetic on ``pts * time_base``). Output frame ``k`` is the **first source frame with
t >= k / fps - tol**, where ``tol`` is a quarter of the native frame period (it absorbs timestamp
rounding, never more than one source frame). Outputs run while such a frame exists, so a
constant-rate video of ``N`` frames at native rate ``R`` (a multiple of ``fps``) gives
``ceil(N * fps / R)`` outputs with source indices ``k * R / fps`` -- at 25 fps and ``--fps 1``:
0, 25, 50, ...  In general the source index is ``ceil(k * R / fps - 1/4)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np

# A pixel is content when its brightest channel exceeds this (0-255): margins decode to ~0-16,
# even dark tissue at the edge of an endoscope's view stays well above it.
CONTENT_THRESHOLD = 28
CROP_SAMPLES = 12


class VideoError(Exception):
    """A video that cannot be prepared; the message is one line without the file name."""


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: Fraction | None  # native (average) frame rate
    declared_frames: int  # from the container header; 0 when unknown


def open_video(path: Path):
    """Open ``path`` and return ``(container, stream)``; raises :class:`VideoError`."""
    import av

    if path.stat().st_size == 0:
        raise VideoError("empty file (0 bytes)")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        raise VideoError(f"cannot open as a video ({_short(exc)}); corrupt or truncated file?") from None
    if not container.streams.video:
        container.close()
        raise VideoError("no video stream")
    stream = container.streams.video[0]
    return container, stream


def info(stream) -> VideoInfo:
    rate = stream.average_rate or stream.guessed_rate
    return VideoInfo(
        int(stream.codec_context.width), int(stream.codec_context.height),
        Fraction(rate) if rate else None, int(stream.frames or 0),
    )


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def content_box(frames: list[np.ndarray]) -> tuple[int, int, int, int]:
    """Box ``(left, top, right, bottom)`` (right/bottom exclusive) of the non-black content.

    ``frames``: RGB uint8 arrays ``(H, W, 3)`` sampled across the video. A pixel counts as
    content when it is bright in at least a quarter of the frames (so one dark frame or one
    noisy frame does not move the box); a row/column is content when it holds at least 2 such
    pixels (0.5% of its length if larger). The box is never shrunk into content; sides within
    2 px of the frame edge snap to it, and an implausibly small box (< 20% of the area: a black
    video) gives the full frame, so videos without margins are left alone.
    """
    h, w = frames[0].shape[:2]
    full = (0, 0, w, h)
    bright = np.stack([f.max(axis=2) > CONTENT_THRESHOLD for f in frames])
    votes = bright.sum(axis=0)
    mask = votes >= max(1, math.ceil(len(frames) / 4))
    rows = np.flatnonzero(mask.sum(axis=1) >= max(2, int(0.005 * w)))
    cols = np.flatnonzero(mask.sum(axis=0) >= max(2, int(0.005 * h)))
    if rows.size == 0 or cols.size == 0:
        return full
    left, top, right, bottom = int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1
    if (right - left) * (bottom - top) < 0.2 * w * h:
        return full
    left = 0 if left <= 2 else left
    top = 0 if top <= 2 else top
    right = w if right >= w - 2 else right
    bottom = h if bottom >= h - 2 else bottom
    return left, top, right, bottom


def sample_frames(path: Path, count: int = CROP_SAMPLES) -> list[np.ndarray]:
    """About ``count`` RGB frames spread over the video, by seeking (cheap: one GOP each)."""
    import av

    container, stream = open_video(path)
    frames: list[np.ndarray] = []
    try:
        duration = None
        if stream.duration and stream.time_base:
            duration = stream.duration
        elif container.duration:
            duration = int(container.duration / 1_000_000 / stream.time_base) if stream.time_base else None
        start = stream.start_time or 0
        if duration:
            for i in range(count):
                target = start + int(duration * (i + 0.5) / count)
                try:
                    container.seek(target, stream=stream)
                    frame = next(container.decode(stream), None)
                except (av.error.FFmpegError, StopIteration):
                    frame = None
                if frame is not None:
                    frames.append(frame.to_ndarray(format="rgb24"))
        if len(frames) < max(1, count // 2):
            # Seeking failed (no index, odd container): take frames from the start instead.
            container.seek(start, stream=stream) if frames else None
            frames = []
            for i, frame in enumerate(container.decode(stream)):
                if i % 5 == 0:
                    frames.append(frame.to_ndarray(format="rgb24"))
                if len(frames) >= count:
                    break
    except av.error.FFmpegError as exc:
        raise VideoError(f"decoding failed ({_short(exc)})") from None
    finally:
        container.close()
    if not frames:
        raise VideoError("no decodable video frames")
    return frames


@dataclass(frozen=True)
class Selected:
    """One output frame: output index ``k``, ``source`` frame index, ``time`` in seconds."""

    k: int
    source: int
    time: float
    frame: object  # av.VideoFrame


def select_frames(path: Path, fps: Fraction, stats: dict | None = None) -> Iterator[Selected]:
    """Decode ``path`` sequentially and yield the output frames of the selection rule.

    Only selected frames are ever converted out of the decoder's pixel format. Raises
    :class:`VideoError` for decode errors, no frames, a target rate above the native rate, or
    fewer frames than the container declares (truncated file). ``stats``, when given, receives
    ``info`` (:class:`VideoInfo`) at the start and ``decoded`` (source frame count) at the end.
    """
    import av

    container, stream = open_video(path)
    meta = info(stream)
    if stats is not None:
        stats["info"] = meta
    if meta.fps and fps > meta.fps:
        container.close()
        raise VideoError(f"target --fps {float(fps):g} exceeds the native rate {float(meta.fps):g}")
    tol = Fraction(1, 4) / meta.fps if meta.fps else Fraction(0)
    time_base = stream.time_base
    next_k = 0
    first_pts = None
    decoded = 0
    try:
        for index, frame in enumerate(container.decode(stream)):
            decoded = index + 1
            if frame.pts is None or time_base is None:
                if not meta.fps:
                    raise VideoError("frames have no timestamps and the stream no frame rate")
                t = Fraction(index) / meta.fps
            else:
                first_pts = frame.pts if first_pts is None else first_pts
                t = (frame.pts - first_pts) * time_base
            while Fraction(next_k) / fps - tol <= t:
                yield Selected(next_k, index, float(t), frame)
                next_k += 1
    except av.error.FFmpegError as exc:
        of = f" of {meta.declared_frames}" if meta.declared_frames else ""
        raise VideoError(f"truncated or corrupt: decoding failed after {decoded}{of} frames ({_short(exc)})") from None
    finally:
        container.close()
    if stats is not None:
        stats["decoded"] = decoded
    if decoded == 0:
        raise VideoError("no decodable video frames (empty or corrupt stream)")
    if meta.declared_frames and decoded < meta.declared_frames:
        raise VideoError(f"truncated: decoded {decoded} of the {meta.declared_frames} frames the header declares")
