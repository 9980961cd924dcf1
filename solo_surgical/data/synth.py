"""A synthetic laparoscopic cholecystectomy video set, laid out exactly like Cholec80.

``synthesize(out, SynthConfig())`` writes::

    OUT/videos/videoNN.mp4                   H.264, 25 fps, yuv420p, black endoscope margins
    OUT/phase_annotations/videoNN-phase.txt  'Frame<TAB>Phase', one row per frame (Cholec80 format)
    OUT/tool_annotations/videoNN-tool.txt    'Frame<TAB>Grasper ...', one row every 25 frames
    OUT/synth.json                           generator settings; per video: content box, phase spans

Video numbers are spread over 1..80 (8 videos: 1, 11, 21, ..., 71) so that both Cholec80 splits
(``paper``: 1-40 / 41-80, ``standard``: 1-40 / 41-48 / 49-80) have videos in every part.

The scene is crude but built so that the phase is learnable from one frame, not trivially: seven
phases in surgical order with Cholec80-like durations; the tools present follow per-phase
probabilities (Calot triangle and gallbladder dissection both use grasper + hook); the anatomy
evolves continuously with surgical progress (fat removed, duct exposed and clipped, gallbladder
detached and bagged, bleeding and irrigation), so frames near a phase boundary look alike;
per-video colour, anatomy and margin shape vary; camera drift, zoom, smoke and blur add nuisance.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..atomic import write_json, write_text
from ..errors import UserError
from .registry import CHOLEC80_PHASES, CHOLEC80_TOOLS

# Fraction of the operation per phase (roughly Cholec80's mean durations).
PHASE_SHARE = (0.06, 0.33, 0.09, 0.28, 0.06, 0.11, 0.07)
# P(tool present) per phase, tools in CHOLEC80_TOOLS order:
#  Grasper Bipolar Hook Scissors Clipper Irrigator SpecimenBag
TOOL_PROB = np.array([
    [0.80, 0.00, 0.40, 0.00, 0.00, 0.00, 0.00],  # Preparation
    [0.95, 0.04, 0.90, 0.00, 0.02, 0.05, 0.00],  # CalotTriangleDissection
    [0.90, 0.05, 0.10, 0.45, 0.75, 0.05, 0.00],  # ClippingCutting
    [0.95, 0.06, 0.85, 0.02, 0.00, 0.08, 0.00],  # GallbladderDissection
    [0.85, 0.05, 0.05, 0.00, 0.00, 0.05, 0.90],  # GallbladderPackaging
    [0.60, 0.55, 0.05, 0.00, 0.00, 0.70, 0.10],  # CleaningCoagulation
    [0.80, 0.05, 0.00, 0.00, 0.00, 0.10, 0.80],  # GallbladderRetraction
])
ZOOM = (1.3, 0.85, 0.8, 0.9, 1.05, 1.0, 1.35)  # >1 shows more of the scene
SHAKE = (14.0, 4.0, 3.0, 5.0, 8.0, 7.0, 16.0)  # camera drift amplitude, pixels


@dataclass(frozen=True)
class SynthConfig:
    videos: int = 8
    seconds: float = 120.0
    fps: int = 25
    width: int = 384
    height: int = 216
    seed: int = 0
    duration_jitter: float = 0.2  # each video lasts seconds * U(1 - j, 1 + j)


def video_numbers(count: int) -> list[int]:
    if not 1 <= count <= 80:
        raise ValueError("the Cholec80 layout holds 1 to 80 videos")
    return [1 + (i * 80) // count for i in range(count)]


def _noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Smooth value noise in [0, 1], shape (h, w), feature size about ``cell`` px."""
    small = rng.random((h // cell + 3, w // cell + 3)).astype(np.float32)
    big = np.asarray(Image.fromarray(small, "F").resize((w + 3 * cell, h + 3 * cell), Image.BICUBIC))
    return np.clip(big[cell:cell + h, cell:cell + w], 0, 1)


def _blob(h: int, w: int, cx: float, cy: float, rx: float, ry: float, soft: float = 0.15) -> np.ndarray:
    y, x = np.ogrid[:h, :w]
    d = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
    return np.clip((1 - d) / soft, 0, 1).astype(np.float32)


def _margin_mask(rng: np.random.Generator, w: int, h: int) -> tuple[np.ndarray, list[int], str]:
    """Endoscope field of view: (H, W) 0/1 mask, its bounding box, and its kind."""
    kind = rng.choice(["circle-cut", "circle", "bars", "none"], p=[0.45, 0.2, 0.25, 0.1])
    y, x = np.ogrid[:h, :w]
    cx, cy = w / 2 + rng.uniform(-0.03, 0.03) * w, h / 2
    if kind == "circle-cut":
        r = h * rng.uniform(0.55, 0.7)
        mask = (x - cx) ** 2 + (y - cy) ** 2 <= r * r
    elif kind == "circle":
        r = h * rng.uniform(0.40, 0.47)
        mask = (x - cx) ** 2 + (y - cy) ** 2 <= r * r
    elif kind == "bars":
        left = int(w * rng.uniform(0.08, 0.16))
        mask = (x >= left) & (x < w - left) & (y >= 0)
    else:
        mask = np.ones((h, w), bool)
    mask = np.broadcast_to(mask, (h, w))
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    box = [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]
    return mask.astype(np.uint8), box, str(kind)


class _Scene:
    """World-space anatomy layers; ``compose(progress)`` gives the world image (float32 RGB)."""

    def __init__(self, rng: np.random.Generator, h: int, w: int) -> None:
        self.h, self.w = h, w
        tint = rng.uniform(-0.08, 0.08, 3).astype(np.float32)
        n1, n2 = _noise(rng, h, w, 48), _noise(rng, h, w, 10)
        tex = (0.65 * n1 + 0.35 * n2)[..., None]
        self.liver = np.clip(np.array([0.55, 0.16, 0.14]) + tint + 0.25 * (tex - 0.5), 0, 1).astype(np.float32)
        self.fat_col = np.clip(np.array([0.88, 0.74, 0.38]) + tint / 2 + 0.2 * (n2[..., None] - 0.5), 0, 1).astype(np.float32)
        self.fat_mask = np.clip((_noise(rng, h, w, 36) - 0.35) * 3, 0, 1).astype(np.float32)
        gx, gy = w * rng.uniform(0.4, 0.6), h * rng.uniform(0.35, 0.5)
        self.gb_xy = (gx, gy)
        self.gb = _blob(h, w, gx, gy, w * rng.uniform(0.16, 0.22), h * rng.uniform(0.16, 0.22))
        self.gb_col = np.clip(np.array([0.42, 0.55, 0.40]) + tint + 0.15 * (n1[..., None] - 0.5), 0, 1).astype(np.float32)
        self.bed = _blob(h, w, gx, gy + h * 0.02, w * 0.2, h * 0.2, soft=0.4)
        self.duct = np.zeros((h, w), np.float32)
        img = Image.fromarray(np.zeros((h, w), np.uint8))
        dx, dy = gx + w * rng.uniform(-0.05, 0.05), gy + h * 0.28
        ImageDraw.Draw(img).line([(gx, gy + h * 0.12), (dx, dy), (dx + w * 0.15, dy + h * 0.1)],
                                 fill=255, width=max(3, h // 30))
        self.duct = np.asarray(img.filter(ImageFilter.GaussianBlur(2)), np.float32) / 255
        self.clip_xy = [(gx + (dx - gx) * f, gy + h * 0.12 + (dy - gy - h * 0.12) * f) for f in (0.45, 0.6, 0.75)]
        self.blood = np.float32(np.clip((_noise(rng, h, w, 20) - 0.55) * 4, 0, 1) * _blob(h, w, gx, gy + h * 0.1, w * 0.3, h * 0.3, 0.5))
        self.burn = (np.clip((n2 - 0.5) * 3, 0, 1) * self.bed).astype(np.float32)

    def compose(self, phase: int, within: float) -> np.ndarray:
        """World image for ``phase`` at fraction ``within`` of it; anatomy changes continuously."""
        p = phase + within  # surgical progress 0..7
        img = self.liver.copy()
        c = lambda *rgb: np.array(rgb, np.float32)  # noqa: E731 -- float32 keeps this fast
        fat = np.float32(np.interp(p, [0, 1, 2, 4, 7], [0.95, 0.8, 0.25, 0.15, 0.1]))
        a = (self.fat_mask * fat)[..., None]
        img = img * (1 - a) + self.fat_col * a
        duct = np.float32(np.interp(p, [0, 1.3, 2, 7], [0.0, 0.2, 0.9, 0.9])) * self.duct * (1 - self.gb)
        img = img * (1 - duct[..., None]) + c(0.85, 0.68, 0.62) * duct[..., None]
        burn = np.float32(np.interp(p, [3, 4, 5, 5.8, 7], [0.0, 0.8, 0.8, 1.0, 0.9])) * self.burn
        img = img * (1 - 0.45 * burn[..., None])
        gb = np.float32(np.interp(p, [0, 3.2, 3.9, 4.5, 7], [1.0, 1.0, 0.85, 0.0, 0.0])) * self.gb
        img = img * (1 - gb[..., None]) + self.gb_col * gb[..., None]
        if 3 <= p < 4:  # the dissection plane: a pale rim appearing around the gallbladder
            rim = np.clip(self.gb * (1 - self.gb) * 4, 0, 1) * np.float32(p - 3)
            img = img * (1 - rim[..., None]) + c(0.95, 0.9, 0.85) * rim[..., None]
        blood = np.float32(np.interp(p, [4.5, 5.2, 5.8, 7], [0.1, 0.9, 0.3, 0.2])) * self.blood
        img = img * (1 - blood[..., None]) + c(0.35, 0.02, 0.03) * blood[..., None]
        return img.astype(np.float32)

    def clips(self, phase: int, within: float) -> int:
        p = phase + within
        return 0 if p < 2.1 else min(3, int((p - 2.1) / 0.2) + 1)


_SHAFT = {"Grasper": (150, 150, 155), "Bipolar": (90, 110, 160), "Hook": (60, 60, 65),
          "Scissors": (140, 140, 140), "Clipper": (175, 175, 180), "Irrigator": (205, 205, 200),
          "SpecimenBag": (120, 120, 125)}


def _draw_tool(draw: ImageDraw.ImageDraw, tool: str, entry: tuple[float, float], tip: tuple[float, float],
               width: float, t: float) -> None:
    """A shaft from ``entry`` (outside the view) to ``tip`` with a tool-specific end."""
    ex, ey = entry
    tx, ty = tip
    ang = math.atan2(ty - ey, tx - ex)
    nx, ny = -math.sin(ang), math.cos(ang)
    w = width * (1.4 if tool == "Clipper" else 0.7 if tool == "Irrigator" else 1.0)
    col = _SHAFT[tool]
    draw.polygon([(ex + nx * w, ey + ny * w), (tx + nx * w * 0.8, ty + ny * w * 0.8),
                  (tx - nx * w * 0.8, ty - ny * w * 0.8), (ex - nx * w, ey - ny * w)], fill=col)
    hi = tuple(min(255, c + 60) for c in col)  # specular stripe: reads as a metal cylinder
    draw.line([(ex + nx * w * 0.3, ey + ny * w * 0.3), (tx + nx * w * 0.3, ty + ny * w * 0.3)], fill=hi, width=2)
    fx, fy = math.cos(ang), math.sin(ang)
    L = width * 2.2
    if tool in ("Grasper", "Clipper", "Bipolar", "Scissors"):
        open_ = (0.25 + 0.2 * math.sin(t * 3.1)) if tool != "Scissors" else 0.12 + 0.1 * math.sin(t * 5)
        jaw = (40, 40, 45) if tool == "Grasper" else (200, 200, 210) if tool == "Clipper" else col
        for s in (-1, 1):
            a = ang + s * open_
            end = (tx + math.cos(a) * L, ty + math.sin(a) * L)
            draw.line([(tx, ty), end], fill=jaw, width=max(2, int(width * (0.9 if tool == "Clipper" else 0.6))))
        if tool == "Bipolar":
            draw.ellipse([tx - 2, ty - 2, tx + 2, ty + 2], fill=(60, 90, 220))
    elif tool == "Hook":
        bend = (tx + fx * L, ty + fy * L)
        draw.line([(tx, ty), bend], fill=(170, 170, 175), width=2)
        draw.line([bend, (bend[0] + nx * L * 0.5, bend[1] + ny * L * 0.5)], fill=(170, 170, 175), width=2)
        if math.sin(t * 7.3) > 0.6:  # cautery spark
            draw.ellipse([bend[0] - 3, bend[1] - 3, bend[0] + 3, bend[1] + 3], fill=(255, 250, 230))
    elif tool == "Irrigator":
        if math.sin(t * 4.1) > 0.2:
            for i in range(4):
                d = L * (0.6 + 0.5 * i)
                draw.ellipse([tx + fx * d - 2, ty + fy * d - 2, tx + fx * d + 2, ty + fy * d + 2], fill=(235, 240, 255))
    elif tool == "SpecimenBag":
        r = width * 3
        cx, cy = tx + fx * r, ty + fy * r
        draw.ellipse([cx - r * 1.2, cy - r, cx + r * 1.2, cy + r], fill=(225, 225, 215), outline=(160, 160, 150))


def _schedule(rng: np.random.Generator, frames: int) -> np.ndarray:
    """Phase index per frame, in surgical order, durations jittered around PHASE_SHARE."""
    share = np.array(PHASE_SHARE) * rng.lognormal(0, 0.3, len(PHASE_SHARE))
    ends = np.round(np.cumsum(share / share.sum()) * frames).astype(int)
    ends[-1] = frames
    return np.searchsorted(ends, np.arange(frames), side="right").astype(np.int64)


def _tool_presence(rng: np.random.Generator, phases: np.ndarray, fps: int) -> np.ndarray:
    """(frames, 7) 0/1: tools come and go in episodes of 2-8 s, drawn per phase."""
    n = len(phases)
    out = np.zeros((n, len(CHOLEC80_TOOLS)), np.uint8)
    for j in range(len(CHOLEC80_TOOLS)):
        i = 0
        while i < n:
            length = int(rng.uniform(2, 8) * fps)
            out[i:i + length, j] = rng.random() < TOOL_PROB[phases[i], j]
            i += length
    return out


def render_video(path: Path, cfg: SynthConfig, rng: np.random.Generator) -> dict:
    """Render one video to ``path`` (atomically); returns its labels and ground truth."""
    import av

    w, h, fps = cfg.width, cfg.height, cfg.fps
    seconds = cfg.seconds * rng.uniform(1 - cfg.duration_jitter, 1 + cfg.duration_jitter)
    n = max(1, int(round(seconds * fps)))
    phases = _schedule(rng, n)
    tools = _tool_presence(rng, phases, fps)
    mask, box, kind = _margin_mask(rng, w, h)
    wh, ww = int(h * 1.8), int(w * 1.8)  # world larger than the view: room to pan and zoom out
    scene = _Scene(rng, wh, ww)
    y, x = np.ogrid[:h, :w]
    vignette = (1.05 - 0.55 * (((x - w / 2) / (w / 2)) ** 2 + ((y - h / 2) / (h / 2)) ** 2) / 2)
    light = (np.clip(vignette, 0.3, 1.05)[..., None] * mask[..., None] * 255).astype(np.float32)
    starts = np.flatnonzero(np.diff(phases, prepend=-1))
    lengths = np.diff(np.append(starts, n))
    drift = rng.uniform(0, 2 * np.pi, 6)
    entries = {t: rng.uniform(0, 2 * np.pi) for t in CHOLEC80_TOOLS}
    smoke_events = rng.random(n // fps + 1) < 0.08
    blur_events = rng.random(n // fps + 1) < 0.04
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    container = av.open(str(tmp), "w", format="mp4")
    stream = container.add_stream("libx264", rate=fps)
    stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
    stream.codec_context.gop_size = 100
    stream.codec_context.thread_count = 1  # identical bytes from the same seed
    stream.options = {"crf": "23", "preset": "veryfast"}
    world = None
    zoom = ZOOM[0]
    for i in range(n):
        ph = int(phases[i])
        within = (i - starts[ph]) / max(1, lengths[ph]) if ph < len(starts) else 0.0
        t = i / fps
        if world is None or i % fps == 0:  # anatomy changes slowly: recompose once a second
            world = scene.compose(ph, within)
        zoom += (ZOOM[ph] - zoom) * 0.02
        a = SHAKE[ph]
        cx = ww / 2 + a * (math.sin(0.31 * t + drift[0]) + 0.5 * math.sin(1.7 * t + drift[1]))
        cy = wh / 2 + a * (math.sin(0.23 * t + drift[2]) + 0.5 * math.sin(1.3 * t + drift[3])) * 0.7
        vw, vh = w * zoom, h * zoom
        x0, y0 = int(np.clip(cx - vw / 2, 0, ww - vw)), int(np.clip(cy - vh / 2, 0, wh - vh))
        view = world[y0:y0 + int(vh), x0:x0 + int(vw)]
        img = Image.fromarray((np.clip(view, 0, 1) * 255).astype(np.uint8)).resize((w, h), Image.BILINEAR)
        draw = ImageDraw.Draw(img)
        for k in range(scene.clips(ph, within)):
            px, py = (scene.clip_xy[k][0] - x0) / zoom, (scene.clip_xy[k][1] - y0) / zoom
            draw.rectangle([px - 4, py - 2, px + 4, py + 2], fill=(215, 215, 225))
        focus = ((scene.gb_xy[0] - x0) / zoom, (scene.gb_xy[1] - y0) / zoom + h * 0.15)
        for j, tool in enumerate(CHOLEC80_TOOLS):
            if tools[i, j]:
                ang = entries[tool]
                entry = (w / 2 + math.cos(ang) * w, h / 2 + math.sin(ang) * h)
                tip = (focus[0] + 0.15 * w * math.sin(0.7 * t + ang) + 0.1 * w * math.cos(ang),
                       focus[1] + 0.12 * h * math.cos(0.5 * t + 2 * ang) + 0.1 * h * math.sin(ang))
                _draw_tool(draw, tool, entry, tip, max(3.0, h / 28), t)
        sec = i // fps
        if blur_events[sec]:
            img = img.filter(ImageFilter.BoxBlur(2))
        frame = np.asarray(img, np.float32) / 255
        if smoke_events[sec] or (ph in (1, 3) and tools[i, 2] and math.sin(t * 0.9) > 0.7):
            haze = 0.45 * math.sin(math.pi * ((t % 1.0)) if smoke_events[sec] else 0.5)
            frame = frame * (1 - haze) + 0.8 * haze
        out = (frame * light).clip(0, 255).astype(np.uint8)
        for packet in stream.encode(av.VideoFrame.from_ndarray(out, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    os.replace(tmp, path)
    return {"frames": n, "phases": phases, "tools": tools, "content_box": box, "margin": kind}


def _synth_one(out: Path, cfg: SynthConfig, number: int) -> tuple[str, dict]:
    """Render video ``number`` and write its annotations; returns (name, synth.json entry)."""
    name = f"video{number:02d}"
    rng = np.random.default_rng([cfg.seed, number])
    # The video first: a crash then leaves a video without labels, which prepare reports.
    result = render_video(out / "videos" / f"{name}.mp4", cfg, rng)
    phases, tools = result["phases"], result["tools"]
    write_text(out / "phase_annotations" / f"{name}-phase.txt", "Frame\tPhase\n" + "".join(
        f"{f}\t{CHOLEC80_PHASES[p]}\n" for f, p in enumerate(phases)))
    write_text(out / "tool_annotations" / f"{name}-tool.txt", "Frame\t" + "\t".join(CHOLEC80_TOOLS) + "\n" + "".join(
        f"{f}\t" + "\t".join(str(v) for v in tools[f]) + "\n" for f in range(0, len(phases), cfg.fps)))
    starts = np.flatnonzero(np.diff(phases, prepend=-1))
    return name, {
        "frames": result["frames"], "content_box": result["content_box"], "margin": result["margin"],
        "phase_starts": {CHOLEC80_PHASES[phases[s]]: int(s) for s in starts},
    }


def _check_out(out: Path, cfg: SynthConfig) -> None:
    """Refuse an ``out`` that is a file, or a synthetic set made with other settings (rewriting it
    would mix videos of two settings, and leave the extra videos of a larger set)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: not a folder (the --out of synth is a folder)")
    record = out / "synth.json"
    if not record.exists():
        return
    try:
        old = json.loads(record.read_text()).get("config")
    except (OSError, ValueError, AttributeError):
        raise UserError(f"{record}: unreadable synth record; choose another --out or delete {out}") from None
    if old != asdict(cfg):
        diff = ", ".join(f"{k}={old.get(k)!r}" for k in asdict(cfg) if old.get(k) != asdict(cfg)[k]) if \
            isinstance(old, dict) else "unknown"
        raise UserError(f"{record}: this folder holds a synthetic set made with other settings ({diff}); "
                        f"choose another --out")


def synthesize(out: Path, cfg: SynthConfig = SynthConfig(), progress=None, workers: int = 1) -> dict:
    """Write the synthetic set under ``out`` (see the module docstring); returns synth.json's data.

    ``progress(done, total, name, frames)`` is called after each video. Each video depends only
    on ``(seed, number)``, so the result does not depend on ``workers``. An OS error (read-only
    or full disk, a path that is a file) raises :class:`UserError` naming the path.
    """
    _check_out(out, cfg)
    try:
        return _synthesize(out, cfg, progress, workers)
    except OSError as exc:
        path = exc.filename or out
        raise UserError(f"{path}: cannot write the synthetic set ({exc.strerror or type(exc).__name__})") from None


def _synthesize(out: Path, cfg: SynthConfig, progress, workers: int) -> dict:
    for sub in ("videos", "phase_annotations", "tool_annotations"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for leftover in (out / "videos").glob(".*.tmp-*"):  # from a killed run
        leftover.unlink(missing_ok=True)
    meta: dict = {"config": asdict(cfg), "phases": list(CHOLEC80_PHASES), "tools": list(CHOLEC80_TOOLS), "videos": {}}
    numbers = video_numbers(cfg.videos)

    def collect(results) -> None:
        for i, (name, entry) in enumerate(results):
            meta["videos"][name] = entry
            if progress:
                progress(i + 1, len(numbers), name, entry["frames"])

    if workers <= 1 or len(numbers) == 1:
        collect(_synth_one(out, cfg, n) for n in numbers)
    else:
        from .workers import WorkerPool

        with WorkerPool(workers, "solo_surgical.data.synth") as pool:
            collect(pool.map(_synth_one, [out] * len(numbers), [cfg] * len(numbers), numbers))
    write_json(out / "synth.json", meta)  # last: its presence means the set is complete
    return meta
