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

How frames are decoded does not change which are selected: :func:`select_frames` first applies
the rule to the packets' timestamps (a demux pass, no decoding), then decodes only what the
selected frames need -- no GOP without a selected frame, no frames after a GOP's last selected
one, no unselected non-reference frames -- and checks that the decoder returns exactly the
planned frames, falling back to decoding every frame when it does not.

Completeness does not rest on the container's declared frame count (MKV, WebM and many
recorders declare none): the decoded frames must also span the stream's duration (the video
stream's own duration, else its ``DURATION`` tag, else the container's) up to
:func:`duration_tolerance`, so a cut file is reported as truncated instead of prepared short.
A file whose demuxer reads still images (a JPEG or PNG renamed ``.mp4``) or whose only video
stream is a cover picture is refused: it has no real video stream.
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
# The frame rate assumed for a video that declares none and belongs to no dataset that states one:
# 25 fps, the rate of Cholec80 and M2CAI16. One value for every stage that needs a rate.
FALLBACK_FPS = 25


class VideoError(Exception):
    """A video that cannot be prepared; the message is one line without the file name."""


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: Fraction | None  # native (average) frame rate
    declared_frames: int  # from the container header; 0 when unknown
    duration: Fraction | None = None  # seconds the video stream lasts per the file; None when unknown


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
    # Image demuxers ("jpeg_pipe", "png_pipe", "image2") open a still picture as a 1-frame "video";
    # a cover picture (attached_pic) is a video stream in an audio file. Neither is a recording.
    fmt = container.format.name
    still = fmt.endswith("_pipe") or fmt.startswith("image2")
    if still or stream.disposition & av.stream.Disposition.attached_pic:
        what = f"a {stream.codec_context.name} image" if still else "an audio file with a cover picture"
        container.close()
        raise VideoError(f"not a video: {what} (demuxer {fmt}), no real video stream")
    return container, stream


def _stream_duration(container, stream) -> Fraction | None:
    """Seconds the video stream lasts per the file: its own duration, else its DURATION tag
    (Matroska), else the container's duration (which may include other streams)."""
    if stream.duration and stream.time_base:
        return stream.duration * Fraction(stream.time_base)
    tag = (stream.metadata or {}).get("DURATION")
    if tag:
        try:
            h, m, sec = tag.split(":")
            return int(h) * 3600 + int(m) * 60 + Fraction(sec)
        except ValueError:
            pass
    if container.duration:
        return Fraction(container.duration, 1_000_000)
    return None


def info(stream, container=None) -> VideoInfo:
    rate = stream.average_rate or stream.guessed_rate
    return VideoInfo(
        int(stream.codec_context.width), int(stream.codec_context.height),
        Fraction(rate) if rate else None, int(stream.frames or 0),
        _stream_duration(container, stream) if container is not None else None,
    )


def duration_tolerance(meta: VideoInfo) -> Fraction:
    """How far the decoded frames may fall short of the declared duration: 3 native frames (the
    last frame's own length and timestamp rounding) or 0.5 % of the duration, the larger."""
    period = 1 / meta.fps if meta.fps else Fraction(1, FALLBACK_FPS)
    return max(3 * period, (meta.duration or 0) / 200)


def short_of_duration(meta: VideoInfo, frames: int, span: Fraction) -> str | None:
    """A one-line 'truncated' message when ``frames`` decoded frames covering ``span`` seconds
    (first to last timestamp plus one frame) fall short of the stream's duration, else None."""
    if meta.duration is None or meta.duration - span <= duration_tolerance(meta):
        return None
    expected = f" (~{round(meta.duration * meta.fps)} frames at {float(meta.fps):g} fps)" if meta.fps else ""
    return (f"truncated: decoded {frames} frames spanning {float(span):.2f} s, but the stream lasts "
            f"{float(meta.duration):.2f} s{expected}")


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
    # Brightest channel by two elementwise maxima: the same values as f.max(axis=2), ~15x faster
    # (numpy reduces a length-3 last axis slowly), and this runs on full-size frames.
    bright = np.stack([np.maximum(np.maximum(f[..., 0], f[..., 1]), f[..., 2]) > CONTENT_THRESHOLD for f in frames])
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


def select_frames(path: Path, fps: Fraction, stats: dict | None = None, mode: str = "auto") -> Iterator[Selected]:
    """Decode ``path`` and yield the output frames of the selection rule (module docstring).

    Only selected frames are ever converted out of the decoder's pixel format. Raises
    :class:`VideoError` for decode errors, no frames, a target rate above the native rate, or
    fewer frames than the container declares (truncated file). ``stats``, when given, receives
    ``info`` (:class:`VideoInfo`) at the start and ``decoded`` (source frame count) at the end.

    ``mode="auto"`` plans the selection from the packet timestamps first and then decodes only
    what the selected frames need (:func:`_select_planned`); streams it cannot plan exactly
    (missing timestamps, discarded packets, a short or unreadable packet list) take the
    ``"sequential"`` path, which decodes every frame and is the reference implementation.
    """
    if mode not in ("auto", "sequential"):
        raise ValueError(f"mode must be 'auto' or 'sequential', not {mode!r}")
    plan = _plan(path, fps) if mode == "auto" else None
    if plan is None:
        yield from _select_sequential(path, fps, stats)
    else:
        yield from _select_planned(path, fps, plan, stats)


def _select_sequential(path: Path, fps: Fraction, stats: dict | None = None, start_k: int = 0) -> Iterator[Selected]:
    """Every frame decoded in order; outputs ``k < start_k`` (already given out) are not yielded."""
    import av

    container, stream = open_video(path)
    meta = info(stream, container)
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
    end = Fraction(0)  # the latest frame time seen: the span the decoded frames cover
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
            end = max(end, t)
            while Fraction(next_k) / fps - tol <= t:
                if next_k >= start_k:
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
    short = short_of_duration(meta, decoded, end + (1 / meta.fps if meta.fps else 0))
    if short:
        raise VideoError(short)


@dataclass(frozen=True)
class _Plan:
    """The selection worked out from packet timestamps alone (no decoding)."""

    meta: VideoInfo
    frames: int  # source frames (= packets) in the stream
    wanted: dict[int, list[tuple[int, int, float]]]  # pts -> [(k, source index, seconds), ...]
    feed: list[bool]  # per packet in decode order: send it to the decoder at all?


def _plan(path: Path, fps: Fraction) -> _Plan | None:
    """Apply the selection rule to the packets' timestamps and decide which packets to decode.

    Returns None when the plan could differ from what sequential decoding sees (the caller then
    decodes sequentially, which also produces the proper error messages): a packet without a
    timestamp, one the demuxer marks as discarded (edit lists), duplicate timestamps, a stream not
    starting on a keyframe or with frames shown before it, a demux error, or fewer packets than
    the header declares.

    A source frame's index is the rank of its packet's pts: one packet per frame, and the decoder
    returns frames in pts order. Which packets must be decoded, in decode order, split at
    keyframes into segments: a segment is decoded from its keyframe up to its last wanted packet
    (later packets only serve frames we do not keep); a segment with nothing wanted is not decoded
    at all -- unless the next segment's keyframe opens an open GOP whose leading frames (pts below
    the keyframe's) are wanted, since those may reference this segment, which is then decoded whole.
    """
    import av

    container, stream = open_video(path)
    try:
        meta = info(stream, container)
        if stream.time_base is None or (meta.fps and fps > meta.fps):
            return None  # the sequential path raises the rate error with its message
        # Read before close(): the stream's fields live in memory that close() frees.
        time_base = Fraction(stream.time_base)
        pts: list[int] = []
        key: list[bool] = []
        for packet in container.demux(stream):
            if packet.size == 0:  # the demuxer's end-of-stream marker, not a frame
                continue
            if packet.pts is None or packet.is_discard:
                return None
            pts.append(int(packet.pts))
            key.append(bool(packet.is_keyframe))
    except av.error.FFmpegError:
        return None
    finally:
        container.close()
    if not pts or not key[0] or (meta.declared_frames and len(pts) < meta.declared_frames):
        return None
    order = sorted(pts)
    # Frames shown before the first keyframe (leading frames of an open GOP at the start of a cut)
    # lack their references; the decoder may drop them, which would shift every index.
    if len(set(order)) != len(order) or order[0] != pts[0]:
        return None
    if short_of_duration(meta, len(order), (order[-1] - order[0]) * time_base + (1 / meta.fps if meta.fps else 0)):
        return None  # a cut file: the sequential path reports it
    tol = Fraction(1, 4) / meta.fps if meta.fps else Fraction(0)
    wanted: dict[int, list[tuple[int, int, float]]] = {}
    k = 0
    threshold = -tol  # time from which output k may take a frame: k / fps - tol
    for index, p in enumerate(order):
        t = (p - order[0]) * time_base
        while threshold <= t:
            wanted.setdefault(p, []).append((k, index, float(t)))
            k += 1
            threshold = Fraction(k) / fps - tol
    starts = [i for i, is_key in enumerate(key) if is_key] + [len(pts)]
    feed = [False] * len(pts)
    for s in range(len(starts) - 1):
        lo, hi = starts[s], starts[s + 1]
        last = max((i for i in range(lo, hi) if pts[i] in wanted), default=lo - 1)
        if hi < len(pts) and any(pts[i] in wanted and pts[i] < pts[hi] for i in range(hi, starts[s + 2])):
            last = hi - 1  # wanted leading frames of the next (open) GOP may reference all of this one
        for i in range(lo, last + 1):
            feed[i] = True
    return _Plan(meta, len(pts), wanted, feed)


def _select_planned(path: Path, fps: Fraction, plan: _Plan, stats: dict | None) -> Iterator[Selected]:
    """Decode only the packets ``plan.feed`` marks, and of those skip the non-reference frames
    that are not wanted (``skip_frame`` set per packet): nothing else depends on them, and in
    x264-style streams with B-frames they are about half of all frames. The decoder hands
    frames back by pts; each wanted one must come in order, else the plan did not match this
    stream and the rest is taken from sequential decoding (from the next output on)."""
    import av

    if stats is not None:
        stats["info"] = plan.meta
    container, stream = open_video(path)
    ctx = stream.codec_context
    # Slice threads only: skip_frame is read when a packet is decoded, which frame threading
    # would delay to another thread's copy of the settings.
    ctx.thread_type = "SLICE"
    fed = 0

    def decoded() -> Iterator["av.VideoFrame"]:
        nonlocal fed
        position = 0
        gap = False
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            position += 1
            if position > len(plan.feed) or not plan.feed[position - 1]:
                gap = True
                continue
            if gap:
                # Restart at this keyframe as a seek would: drain the frames held for reordering,
                # then reset. Without the reset the H.264 decoder sees missing frames before a
                # non-IDR keyframe (open GOP) and withholds everything up to the next IDR.
                ctx.skip_frame = "DEFAULT"
                yield from ctx.decode(None)
                ctx.flush_buffers()
                gap = False
            fed += 1
            ctx.skip_frame = "DEFAULT" if packet.pts in plan.wanted else "NONREF"
            yield from ctx.decode(packet)
        ctx.skip_frame = "DEFAULT"
        yield from ctx.decode(None)  # drain the frames held back for reordering

    next_k = 0
    in_order = True
    try:
        for frame in decoded():
            for k, source, t in plan.wanted.get(frame.pts, ()):
                in_order = k == next_k
                if not in_order:
                    break
                yield Selected(k, source, t, frame)
                next_k += 1
            if not in_order:
                break
    except av.error.FFmpegError as exc:
        raise VideoError(f"truncated or corrupt: decoding failed near frame {fed} of {plan.frames} "
                         f"({_short(exc)})") from None
    finally:
        container.close()
    if not in_order or next_k < sum(len(v) for v in plan.wanted.values()):
        yield from _select_sequential(path, fps, stats, start_k=next_k)
        return
    if stats is not None:
        stats["decoded"] = plan.frames
        stats["fed"] = fed  # packets sent to the decoder (the rest were never decoded)
