"""Helpers for the data tests: tiny real H.264 files whose frames encode their own index.

Each frame is black outside ``box``; inside, the top half shows the frame index as ``BITS``
vertical stripes (bright = 1, dim = 0, most significant first) and the bottom half is flat
tissue-red, so the content box is exactly ``box`` and the source frame of any output JPEG can be
decoded back (``decode_index``) independently of the code under test.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

BITS = 10
SIZE = (96, 64)  # width, height
BOX = (8, 4, 88, 60)  # left, top, right, bottom (exclusive)
ON, OFF = 235, 70


def frame_image(index: int, size=SIZE, box=BOX) -> np.ndarray:
    w, h = size
    left, top, right, bottom = box
    img = np.zeros((h, w, 3), np.uint8)
    img[top:bottom, left:right] = (170, 70, 60)
    mid = top + (bottom - top) // 2
    edges = np.linspace(left, right, BITS + 1).round().astype(int)
    for b in range(BITS):
        bit = (index >> (BITS - 1 - b)) & 1
        img[top:mid, edges[b]:edges[b + 1]] = ON if bit else OFF
    return img


def write_video(path: Path, frames: int, fps: int = 25, size=SIZE, box=BOX, faststart: bool = False,
                gop: int = 25) -> Path:
    """A real MP4 (libx264, yuv420p) of ``frames`` index-coded frames at ``fps``."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", format="mp4", options=options) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.codec_context.gop_size = gop
        stream.options = {"crf": "8", "preset": "ultrafast"}
        for i in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame_image(i, size, box), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def decode_index(jpg: Path) -> int:
    """The frame index drawn into a prepared (cropped, resized) frame."""
    img = np.asarray(Image.open(jpg).convert("L"), np.float32)
    h, w = img.shape
    row = img[h // 4]
    centers = ((np.arange(BITS) + 0.5) * w / BITS).astype(int)
    bits = [int(row[c] > (ON + OFF) / 2 + 20) for c in centers]  # OFF stripes are grey-red mixes
    return int("".join(map(str, bits)), 2)


def write_phase_file(path: Path, labels: Sequence[str], header: str = "Frame\tPhase") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "\n" + "".join(f"{i}\t{p}\n" for i, p in enumerate(labels)))
    return path


def write_tool_file(path: Path, tools: np.ndarray, every: int = 25) -> Path:
    names = ["Grasper", "Bipolar", "Hook", "Scissors", "Clipper", "Irrigator", "SpecimenBag"]
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = "".join(f"{f}\t" + "\t".join(str(int(v)) for v in tools[f]) + "\n" for f in range(0, len(tools), every))
    path.write_text("Frame\t" + "\t".join(names) + "\n" + rows)
    return path


def phase_labels(frames: int, phases: Sequence[str], seed: int = 0) -> list[str]:
    """Phases in order with irregular boundaries (not multiples of 25)."""
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.choice(np.arange(1, frames), size=len(phases) - 1, replace=False))
    return [phases[int(np.searchsorted(cuts, i, side="right"))] for i in range(frames)]


def cholec80_video(root: Path, number: int, frames: int, phases: Sequence[str], fps: int = 25,
                   box=BOX, seed: int = 0, tools: bool = False) -> list[str]:
    """Write videoNN.mp4 + its phase (and tool) file in the Cholec80 layout; returns the labels."""
    name = f"video{number:02d}"
    write_video(root / "videos" / f"{name}.mp4", frames, fps=fps, box=box)
    labels = phase_labels(frames, phases, seed)
    write_phase_file(root / "phase_annotations" / f"{name}-phase.txt", labels)
    if tools:
        rng = np.random.default_rng(seed + 1)
        write_tool_file(root / "tool_annotations" / f"{name}-tool.txt", rng.integers(0, 2, (frames, 7)))
    return labels


def truncate(path: Path, fraction: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def corrupt(path: Path, seed: int = 0) -> None:
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, 4096, dtype=np.uint8).tobytes())


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}
