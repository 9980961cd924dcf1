"""A plain folder of images for self-supervised pretraining, and a generated stand-in.

``ImageFolderDataset`` reads every image below a folder (recursively, sorted, so the
index of an image is stable). ``generate_images`` draws a small procedural set used by the
smoke tests and as a fallback default when no surgical frames are given.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from torch.utils.data import Dataset

from ..errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def list_images(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: image folder not found")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise UserError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    return files


class ImageFolderDataset(Dataset):
    """All images below ``root``; item ``i`` is ``(transform(PIL RGB image), i)``."""

    def __init__(self, root: str | Path, transform: Optional[Callable] = None,
                 files: Optional[list[Path]] = None) -> None:
        self.root = Path(root)
        self.files = files if files is not None else list_images(root)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        from .datasets import load_rgb

        image = load_rgb(self.files[index])  # a corrupt file: UserError naming it
        return (self.transform(image) if self.transform else image), index


def generate_images(out: str | Path, count: int = 256, size: int = 64, seed: int = 0) -> Path:
    """Write ``count`` endoscopy-like PNGs (tissue colours, dark margin, tool-like bars).

    Written to a temporary folder and renamed, so ``out`` is complete or absent.
    Returns ``out``. An existing complete folder is reused.
    """
    out = Path(out)
    if out.is_dir() and len(list(out.glob("*.png"))) == count:
        return out
    rng = np.random.default_rng(seed)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size]
    radius = np.hypot(yy - size / 2, xx - size / 2)
    for i in range(count):
        base = rng.uniform([120, 20, 30], [230, 110, 120])
        noise = rng.normal(0, 18, (size // 8, size // 8, 3))
        texture = np.kron(noise, np.ones((8, 8, 1)))
        img = np.clip(base + texture, 0, 255)
        img[radius > size * rng.uniform(0.42, 0.5)] = 0  # endoscope's circular margin
        pil = Image.fromarray(img.astype(np.uint8)).filter(ImageFilter.GaussianBlur(1.2))
        draw = ImageDraw.Draw(pil)
        for _ in range(int(rng.integers(0, 3))):
            x0, y0 = rng.integers(0, size, 2)
            draw.line([(int(x0), int(y0)), (size, size)], fill=tuple(int(v) for v in rng.integers(150, 200, 3)),
                      width=int(rng.integers(2, 6)))
        pil.save(tmp / f"{i:05d}.png")
    if out.exists():
        import shutil

        shutil.rmtree(out)
    os.replace(tmp, out)
    return out
