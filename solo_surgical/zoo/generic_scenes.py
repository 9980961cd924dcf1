"""A procedural *generic* image domain: the offline stand-in for ImageNet.

What makes ImageNet features useful on surgical frames is that a model trained to name many
things in cluttered natural images keeps what the things are made of: colour, texture, shape,
thin elongated objects and their ends, blobs, highlights. This domain asks for exactly that and
nothing surgical. Every image is a scene of a textured two-colour background and 1-4 objects;
its labels (:data:`GROUPS`) are:

* the kind of its large main object, one of 16 (rods with plain / forked / hooked / ball ends,
  ellipses, rings, soft blobs, chips, droplet chains, sparks, triangles, crosses, crescents,
  worms, stripe and checker patches), and its colour family (8 hue bins + white + grey + black);
* the background's dominant hue (8 bins + grey) and its texture kind (4);
* which kinds the smaller other objects are (multi-label).

Colour is part of what must be named, so the features keep it (a model trained to name shapes
of random colours learns to ignore colour, and then knows less about surgical frames than a
random network).

It never draws from the surgical video generator (``solo_surgical.data.synth``) and never sees
phase labels: the colours and shapes are drawn uniformly, not from surgical statistics.
"""
from __future__ import annotations

import colorsys
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

HUE_BINS = 8
TEXTURES = ("smooth", "stripes", "speckle", "fibres")
OBJECTS = ("rod", "rod-fork", "rod-hook", "rod-ball", "ellipse", "ring", "blob", "chips",
           "droplets", "spark", "triangle", "cross", "crescent", "worm", "stripe-patch", "checker-patch")
OBJECT_COLOURS = tuple(f"hue{i}" for i in range(HUE_BINS)) + ("white", "grey", "black")
# Label groups, in the order of the label vector: (name, names of its labels, kind). A "softmax"
# group has exactly one 1 (trained with cross-entropy), a "sigmoid" group any number (one BCE each).
GROUPS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("main-object", OBJECTS, "softmax"),
    ("main-colour", OBJECT_COLOURS, "softmax"),
    ("background-hue", tuple(f"hue{i}" for i in range(HUE_BINS)) + ("grey",), "softmax"),
    ("texture", TEXTURES, "softmax"),
    ("other-objects", OBJECTS, "sigmoid"),
)
LABELS = tuple(f"{group}:{name}" for group, names, _ in GROUPS for name in names)
_OFFSET = {group: sum(len(n) for _, n, _ in GROUPS[:i]) for i, (group, _, _) in enumerate(GROUPS)}


def _rgb(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), np.float32) * 255


def _colour(rng: np.random.Generator) -> tuple[tuple[int, int, int], int]:
    """A random colour and its family index in OBJECT_COLOURS."""
    kind = rng.random()
    if kind < 0.7:
        family = int(rng.integers(HUE_BINS))
        h = (family + rng.uniform(0.1, 0.9)) / HUE_BINS
        rgb = _rgb(h, rng.uniform(0.45, 1.0), rng.uniform(0.45, 1.0))
    elif kind < 0.8:
        family, rgb = HUE_BINS, np.full(3, rng.uniform(215, 255), np.float32)
    elif kind < 0.93:
        family, rgb = HUE_BINS + 1, np.full(3, rng.uniform(90, 180), np.float32) + rng.uniform(-8, 8, 3)
    else:
        family, rgb = HUE_BINS + 2, np.full(3, rng.uniform(0, 35), np.float32)
    return tuple(int(c) for c in np.clip(rgb, 0, 255)), family


def _background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, int, int]:
    """(size, size, 3) float32 background, its hue label and texture label."""
    if rng.random() < 0.12:
        hue_label = HUE_BINS
        c1 = np.full(3, rng.uniform(60, 200), np.float32)
        c2 = c1 + rng.uniform(-40, 40, 3).astype(np.float32)
    else:
        hue_label = int(rng.integers(HUE_BINS))
        h = (hue_label + rng.uniform(0.1, 0.9)) / HUE_BINS
        c1 = _rgb(h, rng.uniform(0.35, 0.95), rng.uniform(0.35, 0.95))
        c2 = _rgb(h + rng.uniform(-0.06, 0.06), rng.uniform(0.2, 1.0), rng.uniform(0.25, 1.0))
    cells = int(rng.integers(2, 7))
    mix = np.asarray(Image.fromarray(rng.random((cells, cells)).astype(np.float32), "F")
                     .resize((size, size), Image.BICUBIC))[..., None].clip(0, 1)
    img = c1 * mix + c2 * (1 - mix)
    texture = int(rng.integers(len(TEXTURES)))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if texture == 1:
        angle, period = rng.uniform(0, math.pi), rng.uniform(3, 9)
        wave = np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / period)
        img = img * (1 + 0.18 * wave[..., None])
    elif texture == 2:
        img = img * (1 + 0.25 * (rng.random((size, size, 1)).astype(np.float32) - 0.5))
    elif texture == 3:
        angle = rng.uniform(0, math.pi)
        along = rng.random((size // 2, 4)).astype(np.float32)
        fibres = np.asarray(Image.fromarray(along, "F").resize((size, size), Image.BILINEAR)
                            .rotate(math.degrees(angle), resample=Image.BILINEAR, fillcolor=0.5))
        img = img * (0.85 + 0.3 * fibres[..., None])
    return img, hue_label, texture


def _rod_end(draw: ImageDraw.ImageDraw, kind: str, tip: tuple[float, float], ang: float, length: float,
             colour: tuple[int, int, int], width: int) -> None:
    tx, ty = tip
    if kind == "rod-fork":
        for s in (-1, 1):
            a = ang + s * 0.45
            draw.line([tip, (tx + math.cos(a) * length, ty + math.sin(a) * length)], fill=colour, width=max(1, width // 2))
    elif kind == "rod-hook":
        bend = (tx + math.cos(ang) * length, ty + math.sin(ang) * length)
        draw.line([tip, bend], fill=colour, width=max(1, width // 2))
        draw.line([bend, (bend[0] - math.sin(ang) * length * 0.6, bend[1] + math.cos(ang) * length * 0.6)],
                  fill=colour, width=max(1, width // 2))
    elif kind == "rod-ball":
        r = width * 1.3
        draw.ellipse([tx - r, ty - r, tx + r, ty + r], fill=colour)


def _draw_object(draw: ImageDraw.ImageDraw, rng: np.random.Generator, kind: str, size: int,
                 colour: tuple[int, int, int], scale: float) -> None:
    cx, cy = rng.uniform(0.25, 0.75, 2) * size
    r = size * scale
    if kind.startswith("rod"):
        ang = rng.uniform(0, 2 * math.pi)  # enters from outside the image towards (cx, cy)
        entry = (cx - math.cos(ang) * size * 1.2, cy - math.sin(ang) * size * 1.2)
        width = int(rng.integers(2, max(3, size // 12)))
        draw.line([entry, (cx, cy)], fill=colour, width=width)
        _rod_end(draw, kind, (cx, cy), ang, size * rng.uniform(0.07, 0.13), colour, width)
    elif kind == "ellipse":
        draw.ellipse([cx - r, cy - r * rng.uniform(0.5, 1), cx + r, cy + r * rng.uniform(0.5, 1)], fill=colour)
    elif kind == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=colour, width=max(1, int(r / 4)))
    elif kind == "chips":
        for _ in range(int(rng.integers(2, 5))):
            x, y = rng.uniform(0.1, 0.9, 2) * size
            w, h = size * rng.uniform(0.03, 0.07), size * rng.uniform(0.015, 0.04)
            draw.rectangle([x - w, y - h, x + w, y + h], fill=colour)
    elif kind == "droplets":
        ang, step = rng.uniform(0, 2 * math.pi), size * rng.uniform(0.05, 0.09)
        for i in range(int(rng.integers(3, 6))):
            x, y, d = cx + math.cos(ang) * step * i, cy + math.sin(ang) * step * i, size * 0.025
            draw.ellipse([x - d, y - d, x + d, y + d], fill=colour)
    elif kind == "spark":
        pts = [(cx + (r if k % 2 == 0 else r / 4) * 0.6 * math.cos(math.pi * k / 4),
                cy + (r if k % 2 == 0 else r / 4) * 0.6 * math.sin(math.pi * k / 4)) for k in range(8)]
        draw.polygon(pts, fill=colour)
    elif kind == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    elif kind == "cross":
        w = r / 3
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=colour)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=colour)
    elif kind == "crescent":
        start = rng.uniform(0, 360)
        draw.arc([cx - r, cy - r, cx + r, cy + r], start, start + 180, fill=colour, width=max(2, int(r / 2.5)))
    elif kind == "worm":
        pts, ang = [(cx, cy)], rng.uniform(0, 2 * math.pi)
        for _ in range(6):
            ang += rng.uniform(-0.8, 0.8)
            pts.append((pts[-1][0] + math.cos(ang) * r / 2, pts[-1][1] + math.sin(ang) * r / 2))
        draw.line(pts, fill=colour, width=max(1, size // 32))
    elif kind == "stripe-patch":
        for i in range(4):
            x = cx - r + i * r / 2
            draw.rectangle([x, cy - r, x + r / 5, cy + r], fill=colour)
    elif kind == "checker-patch":
        s = r / 2
        for i in range(4):
            for j in range(4):
                if (i + j) % 2 == 0:
                    draw.rectangle([cx - r + i * s, cy - r + j * s, cx - r + (i + 1) * s, cy - r + (j + 1) * s], fill=colour)


def draw_scene(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One scene: (size, size, 3) uint8 image and its (len(LABELS),) 0/1 float32 label vector.

    A large main object (named, with its colour family) on a textured background (hue, texture),
    with 0-3 smaller other objects (multi-label), drawn before the main one.
    """
    labels = np.zeros(len(LABELS), np.float32)
    img, hue_label, texture = _background(rng, size)
    labels[_OFFSET["background-hue"] + hue_label] = 1
    labels[_OFFSET["texture"] + texture] = 1
    kinds = rng.choice(len(OBJECTS), size=int(rng.integers(1, 5)), replace=False)
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    out = None
    for order, kind_index in enumerate(kinds[::-1]):  # others first, the main object last (on top)
        main = order == len(kinds) - 1
        kind = OBJECTS[int(kind_index)]
        colour, family = _colour(rng)
        scale = rng.uniform(0.2, 0.32) if main else rng.uniform(0.08, 0.16)
        if main:
            labels[_OFFSET["main-object"] + int(kind_index)] = 1
            labels[_OFFSET["main-colour"] + family] = 1
        else:
            labels[_OFFSET["other-objects"] + int(kind_index)] = 1
        if kind == "blob":  # soft-edged: blended as an alpha mask, not drawn as a hard shape
            out = np.asarray(pil, np.float32)
            yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
            cx, cy = rng.uniform(0.25, 0.75, 2) * size
            r = size * scale
            alpha = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (r / 1.5) ** 2))[..., None]
            out = out * (1 - alpha) + np.array(colour, np.float32) * alpha
            pil = Image.fromarray(out.clip(0, 255).astype(np.uint8))
        else:
            _draw_object(ImageDraw.Draw(pil), rng, kind, size, colour, scale)
    out = np.asarray(pil, np.float32)
    # nuisances every camera has: blur, brightness falloff, noise
    if rng.random() < 0.3:
        out = np.asarray(Image.fromarray(out.clip(0, 255).astype(np.uint8))
                         .filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.5))), np.float32)
    if rng.random() < 0.5:
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
        out = out * (1 - rng.uniform(0.3, 0.9) * (xx ** 2 + yy ** 2))[..., None]
    out = out * rng.uniform(0.75, 1.2) + rng.normal(0, 4, out.shape)
    return out.clip(0, 255).astype(np.uint8), labels
