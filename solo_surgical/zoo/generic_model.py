"""An offline stand-in for a public ImageNet model.

Public checkpoints cannot be downloaded on every machine, so the embedded default needs its
own "public generic model": a ResNet trained with labels on a procedurally generated generic
domain (:mod:`solo_surgical.zoo.generic_scenes`: textured scenes with many object kinds and
colours, nothing surgical), saved in torchvision's ResNet state-dict format (``fc.*`` included,
file named ``<arch>-<first 8 hex of SHA-256>.pth`` like torchvision's) so that the teacher stage
treats it exactly like a downloaded ImageNet checkpoint.

It is trained once per user and cached (:func:`cached_generic_model`); its JSON sidecar records
the settings, the held-out score on its own task and, once measured, its linear probe on
surgical frames (:func:`record_probe`).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..atomic import write_bytes, write_json
from ..backbones import IMAGENET_MEAN, IMAGENET_STD, build_backbone
from .generic_scenes import GROUPS, LABELS, draw_scene

# Bump when the generic domain or the training recipe changes: cached models are then retrained.
GENERIC_RECIPE_VERSION = 2


def scene_pool(rng: np.random.Generator, count: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(count, 3, size, size) uint8 images and (count, len(LABELS)) 0/1 targets: a fixed generic dataset."""
    images, labels = zip(*(draw_scene(rng, size) for _ in range(count)))
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(np.stack(labels))


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float, ImageNet-normalised (what the teacher stage will feed it)."""
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def scene_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum over label groups: cross-entropy for a softmax group, mean BCE for a sigmoid group."""
    total, start = logits.new_zeros(()), 0
    for _, names, kind in GROUPS:
        z, y = logits[:, start:start + len(names)], targets[:, start:start + len(names)]
        if kind == "softmax":
            total = total + nn.functional.cross_entropy(z, y.argmax(1))
        else:
            total = total + nn.functional.binary_cross_entropy_with_logits(z, y)
        start += len(names)
    return total


def heldout_scores(model: nn.Module, size: int, seed: int, count: int = 512) -> dict[str, float]:
    """On freshly generated scenes: accuracy of each softmax group, per-label accuracy of each sigmoid group."""
    model.eval()
    with torch.no_grad():
        x, y = scene_pool(np.random.default_rng([seed, 10_000]), count, size)
        logits = model(normalise(x))
    scores, start = {}, 0
    for group, names, kind in GROUPS:
        z, t = logits[:, start:start + len(names)], y[:, start:start + len(names)]
        if kind == "softmax":
            scores[group] = float((z.argmax(1) == t.argmax(1)).float().mean())
        else:
            scores[group] = float(((z > 0).float() == t).float().mean())
        start += len(names)
    return scores


def train_generic_model(out_dir: str | Path, arch: str = "tiny", scenes: int = 20000, epochs: int = 30,
                        batch: int = 64, size: int = 64, seed: int = 0, lr: float = 3e-3,
                        log: Callable[[str], None] = print) -> Path:
    """Train ``arch`` to name what generic scenes hold; save a torchvision-layout state dict; return its path.

    A fixed set of ``scenes`` generated scenes (the "large generic dataset"), ``epochs`` passes with
    horizontal flips, one output per label of :data:`~solo_surgical.zoo.generic_scenes.LABELS`
    trained with :func:`scene_loss`, AdamW with a one-cycle schedule. An existing model in
    ``out_dir`` is reused.
    """
    out_dir = Path(out_dir)
    existing = sorted(out_dir.glob(f"{arch}-*.pth"))
    if existing:
        return existing[0]
    start = time.time()
    images, targets = scene_pool(np.random.default_rng(seed), scenes, size)
    log(f"  generic public model: {scenes} scenes generated ({time.time() - start:.0f}s)")
    torch.manual_seed(seed)
    # any registered backbone + a linear "fc" head: for a torchvision ResNet this is exactly
    # torchvision's state-dict layout (conv1 ... layer4, fc), which the teacher stage reads
    backbone, dim = build_backbone(arch)
    model = nn.Sequential(OrderedDict(backbone=backbone, fc=nn.Linear(dim, len(LABELS))))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    per_epoch = scenes // batch
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(1, per_epoch * epochs))
    order = torch.Generator().manual_seed(seed)
    model.train()
    for epoch in range(1, epochs + 1):
        for idx in torch.randperm(scenes, generator=order)[: per_epoch * batch].view(per_epoch, batch):
            x = normalise(images[idx])
            flip = torch.rand(batch, generator=order) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
            loss = scene_loss(model(x), targets[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        log(f"  generic public model: epoch {epoch}/{epochs} loss {loss.item():.3f} ({time.time() - start:.0f}s)")
    scores = heldout_scores(model, size, seed)
    buffer = io.BytesIO()
    state = {**backbone.state_dict(), **{f"fc.{k}": v for k, v in model.fc.state_dict().items()}}
    torch.save(state, buffer)
    digest = hashlib.sha256(buffer.getvalue()).hexdigest()
    path = out_dir / f"{arch}-{digest[:8]}.pth"
    # the sidecar first: the .pth appearing is what marks the model as finished (see the reuse check)
    write_json(path.with_suffix(".json"),
               {"arch": arch, "sha256": digest, "domain": "generic scenes (solo_surgical.zoo.generic_scenes)",
                "labels": list(LABELS), "scenes": scenes, "epochs": epochs, "batch": batch, "lr": lr,
                "image_size": size, "seed": seed,
                "recipe": GENERIC_RECIPE_VERSION, "heldout": scores, "train_seconds": round(time.time() - start, 1),
                "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "surgical_probe": None}, indent=2)
    write_bytes(path, buffer.getvalue())
    return path


def cache_root() -> Path:
    """Per-user cache: ``$SOLO_SURGICAL_CACHE``, else ``$XDG_CACHE_HOME/solo-surgical``, else ``~/.cache/solo-surgical``."""
    if os.environ.get("SOLO_SURGICAL_CACHE"):
        return Path(os.environ["SOLO_SURGICAL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "solo-surgical"


def cached_generic_model(arch: str = "tiny", scenes: int = 20000, epochs: int = 30, image_size: int = 64,
                         seed: int = 0, batch: int = 64, lr: float = 3e-3, cache_dir: str | Path | None = None,
                         log: Callable[[str], None] = print) -> Path:
    """The generic public model for these settings, trained once per user and reused.

    The cache folder is keyed by the settings and the recipe version, so a re-run reuses the
    model and a changed setting trains a new one.
    """
    settings = {"arch": arch, "scenes": int(scenes), "epochs": int(epochs), "image_size": int(image_size),
                "seed": int(seed), "batch": int(batch), "lr": float(lr), "recipe": GENERIC_RECIPE_VERSION}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    folder = Path(cache_dir) if cache_dir is not None else cache_root() / "generic" / f"{arch}-{key}"
    existing = sorted(folder.glob(f"{arch}-*.pth"))
    if existing:
        log(f"generic public model: reusing {existing[0]}")
        return existing[0]
    log(f"generic public model: training {arch} on {scenes} generic scenes x {epochs} epochs at {image_size}px "
        f"into {folder} (once per user)")
    return train_generic_model(folder, arch=arch, scenes=scenes, epochs=epochs, batch=batch, size=image_size,
                               seed=seed, lr=lr, log=log)


def record_probe(model_path: str | Path, probe: dict[str, Any]) -> None:
    """Add a linear-probe result on surgical frames (``{"data": ..., "test_acc": ...}``) to the sidecar."""
    sidecar = Path(model_path).with_suffix(".json")
    doc = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    doc["surgical_probe"] = probe
    write_json(sidecar, doc, indent=2)
