"""An offline stand-in for a public ImageNet model.

Public checkpoints cannot be downloaded on every machine, so the embedded default needs
its own "public generic model": a ResNet trained with labels on a procedurally generated
generic domain (coloured geometric shapes on textured backgrounds), clearly distinct from
surgical frames, saved in torchvision's ResNet state-dict format (``fc.*`` included, file
named ``<arch>-<first 8 hex of SHA-256>.pth`` like torchvision's) so that the teacher stage
treats it exactly like a downloaded ImageNet checkpoint.
"""
from __future__ import annotations

import hashlib
import io
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image, ImageDraw
from torch import nn

from ..atomic import write_bytes, write_json
from ..backbones import IMAGENET_MEAN, IMAGENET_STD

SHAPES = ("circle", "square", "triangle", "cross", "ring", "bar", "diamond", "star")


def draw_shape_image(rng: np.random.Generator, label: int, size: int) -> np.ndarray:
    """A (size, size, 3) uint8 image of shape ``SHAPES[label]`` on a random striped/noisy background."""
    bg = rng.uniform(0, 255, 3)
    img = np.tile(bg, (size, size, 1)) + rng.normal(0, 25, (size, size, 3))
    if rng.random() < 0.5:  # stripes, so texture alone does not give the class away
        period = int(rng.integers(4, 12))
        img[(np.arange(size) // period) % 2 == 0] += rng.uniform(-60, 60, 3)
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    colour = tuple(int(v) for v in rng.integers(0, 256, 3))
    r = size * rng.uniform(0.18, 0.38)
    cx, cy = rng.uniform(r, size - r, 2)
    name = SHAPES[label]
    if name == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif name == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif name == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    elif name == "cross":
        w = r / 3
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=colour)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=colour)
    elif name == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=colour, width=max(2, int(r / 3)))
    elif name == "bar":
        draw.rectangle([cx - r, cy - r / 4, cx + r, cy + r / 4], fill=colour)
    elif name == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=colour)
    else:
        pts = [(cx + (r if k % 2 == 0 else r / 2.5) * np.cos(np.pi * k / 5 - np.pi / 2),
                cy + (r if k % 2 == 0 else r / 2.5) * np.sin(np.pi * k / 5 - np.pi / 2)) for k in range(10)]
        draw.polygon(pts, fill=colour)
    return np.asarray(pil)


def shape_batch(rng: np.random.Generator, batch: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    labels = rng.integers(0, len(SHAPES), batch)
    images = np.stack([draw_shape_image(rng, int(y), size) for y in labels]).astype(np.float32) / 255.0
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std, torch.from_numpy(labels).long()


def train_generic_model(out_dir: str | Path, arch: str = "resnet18", steps: int = 200, batch: int = 64,
                        size: int = 64, seed: int = 0, lr: float = 2e-3, log_every: int = 25) -> Path:
    """Train ``arch`` to classify generated shapes; save a torchvision state dict; return its path.

    The final held-out accuracy (on freshly generated images) is stored in a JSON sidecar.
    An existing model in ``out_dir`` for the same arch is reused.
    """
    out_dir = Path(out_dir)
    existing = sorted(out_dir.glob(f"{arch}-*.pth"))
    if existing:
        return existing[0]
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = getattr(torchvision.models, arch)(weights=None, num_classes=len(SHAPES))
    # AdamW + one-cycle: 92% held-out accuracy in 200 steps here, where SGD (lr 0.1) stayed at chance
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss()
    start = time.time()
    model.train()
    for step in range(1, steps + 1):
        x, y = shape_batch(rng, batch, size)
        loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if log_every and step % log_every == 0:
            print(f"  generic model: step {step}/{steps} loss {loss.item():.3f} ({time.time() - start:.0f}s)", flush=True)
    model.eval()
    with torch.no_grad():
        x, y = shape_batch(np.random.default_rng(seed + 10_000), 256, size)
        accuracy = float((model(x).argmax(1) == y).float().mean())
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    digest = hashlib.sha256(buffer.getvalue()).hexdigest()
    path = out_dir / f"{arch}-{digest[:8]}.pth"
    # the sidecar first: the .pth appearing is what marks the model as finished (see the reuse check)
    write_json(path.with_suffix(".json"),
               {"arch": arch, "sha256": digest, "domain": "generated shapes", "classes": list(SHAPES),
                "steps": steps, "image_size": size, "heldout_accuracy": accuracy,
                "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}, indent=2)
    write_bytes(path, buffer.getvalue())
    return path


# Bump when the generic domain or the training recipe changes: cached models are then retrained.
GENERIC_RECIPE_VERSION = 1


def cache_root() -> Path:
    """Per-user cache: ``$SOLO_SURGICAL_CACHE``, else ``$XDG_CACHE_HOME/solo-surgical``, else ``~/.cache/solo-surgical``."""
    import os

    if os.environ.get("SOLO_SURGICAL_CACHE"):
        return Path(os.environ["SOLO_SURGICAL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "solo-surgical"


def cached_generic_model(arch: str = "resnet18", steps: int = 200, image_size: int = 64, seed: int = 0,
                         cache_dir: str | Path | None = None, log=print) -> Path:
    """The generic public model for these settings, trained once per user and reused.

    The cache folder is keyed by the settings and the recipe version, so a re-run reuses the
    model and a changed setting trains a new one.
    """
    import json

    settings = {"arch": arch, "steps": int(steps), "image_size": int(image_size), "seed": int(seed),
                "recipe": GENERIC_RECIPE_VERSION}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    folder = Path(cache_dir) if cache_dir is not None else cache_root() / "generic" / f"{arch}-{key}"
    existing = sorted(folder.glob(f"{arch}-*.pth"))
    if existing:
        log(f"generic public model: reusing {existing[0]}")
        return existing[0]
    log(f"generic public model: training {arch} ({steps} steps, {image_size}px) into {folder}")
    return train_generic_model(folder, arch=arch, steps=steps, size=image_size, seed=seed,
                               log_every=max(1, steps // 8))
