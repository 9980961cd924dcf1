"""Two-view MoCo v2 / SimCLR augmentation made on the training device from JPEG bytes.

Selected by ``data.device_augment=true``. Loader workers then only read the JPEG files (bytes, no
decode); each batch is decoded by ``torchvision.io.decode_jpeg`` on the training device (nvJPEG on
CUDA) and augmented there as one tensor batch. The CPU path (PIL + the method's lightly transform)
measured ~70 images per core-second at 224 px, mostly colour jitter (see the README section on
Cholec80 on a GPU); here the work moves to the GPU.

Same distributions as lightly's ``MoCoV2Transform`` / ``SimCLRTransform`` per view (tested on CPU
against them in ``tests/test_device_views.py``):

* crop: torchvision's RandomResizedCrop rule (area fraction U(min_scale, 1), log aspect ratio
  U(log 3/4, log 4/3), 10 tries, then the central crop of clamped ratio), bilinear resampling;
* horizontal / vertical flip with ``hf_prob`` / ``vf_prob``;
* colour jitter with ``cj_prob``: brightness, contrast, saturation factors U(1 - s, 1 + s), hue shift
  U(-h, h), in a random order per image, torchvision's tensor formulas (the CPU path's PIL versions
  round to 8 bits after each change; these do not);
* grayscale with ``random_gray_scale`` (ITU-R 601 weights, as torchvision);
* Gaussian blur with ``gaussian_blur``, sigma U(sigmas), a 6-sigma kernel (PIL's radius = sigma);
* normalisation.

Random draws come from torch's global generator on the CPU (seeded by ``run.seed``), then move to
the device: the same seed gives the same parameters on any device.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import UserError

GRAY = (0.299, 0.587, 0.114)


@dataclass
class ViewParams:
    """The arguments of lightly's MoCoV2Transform / SimCLRTransform this path implements."""

    input_size: int = 224
    cj_prob: float = 0.8
    cj_strength: float = 1.0
    cj_bright: float = 0.4
    cj_contrast: float = 0.4
    cj_sat: float = 0.4
    cj_hue: float = 0.1
    min_scale: float = 0.2
    random_gray_scale: float = 0.2
    gaussian_blur: float = 0.5
    sigmas: tuple[float, float] = (0.1, 2.0)
    vf_prob: float = 0.0
    hf_prob: float = 0.5
    rr_prob: float = 0.0
    normalize: dict = field(default_factory=lambda: {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]})

    @classmethod
    def from_kwargs(cls, values: dict[str, Any], where: str) -> "ViewParams":
        known = {f.name for f in fields(cls)}
        unknown = sorted(k for k in values if k not in known and values[k] not in (None, 0, 0.0))
        if unknown:
            raise UserError(f"{where}: data.device_augment does not implement {unknown}")
        params = cls(**{k: v for k, v in values.items() if k in known})
        if params.rr_prob:
            raise UserError(f"{where}: data.device_augment does not implement random rotation (rr_prob)")
        params.sigmas = (float(params.sigmas[0]), float(params.sigmas[1]))
        return params


class JpegFiles(torch.utils.data.Dataset):
    """``(raw JPEG bytes, index)`` per file: all a loader worker does on this path.

    Plain ``bytes``, not tensors: a worker hands tensors over through shared memory, one file
    descriptor each, and a batch of 128 small ones ran out of them ("Bad file descriptor"); bytes
    are pickled through the queue instead."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = [Path(p) for p in paths]
        bad = [p for p in self.paths[:1] if p.suffix.lower() not in (".jpg", ".jpeg")]
        if bad:
            raise UserError(f"{bad[0]}: data.device_augment decodes JPEG frames only (a prepared folder)")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[bytes, int]:
        try:
            return self.paths[index].read_bytes(), index
        except OSError as exc:
            raise UserError(f"{self.paths[index]}: cannot read the frame ({exc.strerror})") from None


def collate_jpeg(batch: list[tuple[bytes, int]]) -> tuple[list[bytes], Tensor]:
    """JPEG files of different lengths cannot be stacked: a list of bytes, and the indices as a tensor."""
    return [item[0] for item in batch], torch.tensor([item[1] for item in batch])


def decode(jpegs: Sequence[bytes | Tensor], device: torch.device | str) -> Tensor:
    """(B, 3, H, W) float in [0, 1] on ``device`` from B JPEG files (bytes or 1-D uint8 CPU tensors)
    of one size; on CUDA the decoder is nvJPEG."""
    from torchvision.io import ImageReadMode, decode_jpeg

    device = torch.device(device)
    data = [j if isinstance(j, Tensor) else torch.frombuffer(bytearray(j), dtype=torch.uint8) for j in jpegs]
    images = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    sizes = {tuple(im.shape) for im in images}
    if len(sizes) != 1:
        raise UserError(f"data.device_augment needs frames of one size in a batch, got {sorted(sizes)[:3]}; "
                        f"prepare gives one size to every frame")
    return torch.stack(images).to(device).float().div_(255)


def crop_boxes(count: int, height: int, width: int, scale: tuple[float, float],
               ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Tensor:
    """(count, 4) boxes ``x0, y0, x1, y1`` (pixels, float) by torchvision's RandomResizedCrop rule."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    boxes = torch.empty(count, 4)
    for n in range(count):
        for _ in range(10):
            target = area * float(torch.empty(1).uniform_(scale[0], scale[1]))
            aspect = math.exp(float(torch.empty(1).uniform_(*log_ratio)))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                i = int(torch.randint(0, height - h + 1, size=(1,)))
                j = int(torch.randint(0, width - w + 1, size=(1,)))
                break
        else:  # central crop with the ratio clamped into range
            in_ratio = width / height
            if in_ratio < ratio[0]:
                w, h = width, int(round(width / ratio[0]))
            elif in_ratio > ratio[1]:
                h, w = height, int(round(height * ratio[1]))
            else:
                w, h = width, height
            i, j = (height - h) // 2, (width - w) // 2
        boxes[n] = torch.tensor([j, i, j + w, i + h], dtype=torch.float32)
    return boxes


def resized_crops(images: Tensor, boxes: Tensor, size: int) -> Tensor:
    """(B, 3, size, size): box b of image b resampled bilinearly (pixel-centre aligned, as PIL)."""
    from torchvision.ops import roi_align

    rois = torch.cat([torch.arange(len(boxes), dtype=boxes.dtype)[:, None], boxes], dim=1).to(images)
    # sampling_ratio 2: each output pixel averages 2 x 2 bilinear samples, a light anti-aliasing
    # for crops larger than the output (PIL's bilinear resize filters those too)
    return roi_align(images, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=2, aligned=True)


def _gray(x: Tensor) -> Tensor:
    r, g, b = x.unbind(dim=1)
    return (GRAY[0] * r + GRAY[1] * g + GRAY[2] * b).unsqueeze(1)


def _rgb_to_hsv(x: Tensor) -> Tensor:
    r, g, b = x.unbind(dim=1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    delta = maxc - minc
    s = delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc))
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    return torch.stack([h, s, maxc], dim=1)


def _hsv_to_rgb(x: Tensor) -> Tensor:
    h, s, v = x.unbind(dim=1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int64) % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = torch.stack([torch.stack(c, dim=1) for c in
                         ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))], dim=0)  # (6, B, 3, H, W)
    index = i[None, :, None].expand(1, -1, 3, -1, -1)
    return table.gather(0, index)[0]


def color_jitter(x: Tensor, params: ViewParams) -> Tensor:
    """Per image, with probability cj_prob: brightness, contrast, saturation and hue changes in a
    random order of its own, torchvision's formulas with per-image factors. Images that drew the
    same order are changed together (at most 24 groups)."""
    count = x.shape[0]
    s = params.cj_strength
    apply = (torch.rand(count) < params.cj_prob).float()
    amounts = (s * params.cj_bright, s * params.cj_contrast, s * params.cj_sat, s * params.cj_hue)
    factors = []
    for k, amount in enumerate(amounts):
        centre = 0.0 if k == 3 else 1.0
        drawn = torch.empty(count).uniform_(max(0.0, centre - amount) if k < 3 else -amount, centre + amount)
        factors.append((apply * drawn + (1 - apply) * centre).view(-1, 1, 1, 1))
    orders = [tuple(torch.randperm(4).tolist()) for _ in range(count)]
    out = torch.empty_like(x)
    for order in sorted(set(orders)):
        rows = torch.tensor([n for n, o in enumerate(orders) if o == order])
        y = x[rows.to(x.device)]
        for k in order:
            if amounts[k] == 0:
                continue
            f = factors[k][rows].to(x)
            if k == 0:
                y = (y * f).clamp(0, 1)
            elif k == 1:
                y = (f * y + (1 - f) * _gray(y).mean(dim=(1, 2, 3), keepdim=True)).clamp(0, 1)
            elif k == 2:
                y = (f * y + (1 - f) * _gray(y)).clamp(0, 1)
            else:
                hsv = _rgb_to_hsv(y)
                y = _hsv_to_rgb(torch.stack([(hsv[:, 0] + f[:, 0]) % 1.0, hsv[:, 1], hsv[:, 2]], dim=1))
        out[rows.to(x.device)] = y
    return out


def gaussian_blur(x: Tensor, apply: Tensor, sigmas: Tensor) -> Tensor:
    """Separable Gaussian blur of the images where ``apply`` (B,) is true, std ``sigmas`` (B,) pixels."""
    count, channels = x.shape[:2]
    radius = int(math.ceil(3 * float(sigmas.max()))) if bool(apply.any()) else 0
    if radius == 0:
        return x
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernels = torch.exp(-offsets[None] ** 2 / (2 * sigmas[:, None] ** 2))
    kernels = kernels / kernels.sum(dim=1, keepdim=True)
    identity = (offsets == 0).float().expand(count, -1)
    kernels = torch.where(apply[:, None], kernels, identity).to(x)  # (B, K)
    weight = kernels.repeat_interleave(channels, dim=0)  # (B*C, K)
    y = x.reshape(1, count * channels, *x.shape[2:])
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), weight[:, None, None, :], groups=count * channels)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), weight[:, None, :, None], groups=count * channels)
    return y.reshape_as(x)


class DeviceViews:
    """JPEG bytes -> two augmented views, on the device of the call (see the module docstring)."""

    def __init__(self, params: ViewParams, views: int = 2) -> None:
        self.params = params
        self.views = views

    def view(self, images: Tensor) -> Tensor:
        """One augmented view (B, 3, S, S), normalised, of decoded images (B, 3, H, W) in [0, 1]."""
        p = self.params
        count, _, height, width = images.shape
        x = resized_crops(images, crop_boxes(count, height, width, (p.min_scale, 1.0)), p.input_size)
        for prob, dim in ((p.hf_prob, 3), (p.vf_prob, 2)):
            flip = (torch.rand(count) < prob).to(x.device)
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(dim), x)
        x = color_jitter(x, p)
        gray = (torch.rand(count) < p.random_gray_scale).to(x.device)
        x = torch.where(gray.view(-1, 1, 1, 1), _gray(x).expand_as(x), x)
        blur = torch.rand(count) < p.gaussian_blur
        x = gaussian_blur(x, blur, torch.empty(count).uniform_(*p.sigmas))
        if p.normalize:
            mean = torch.tensor(p.normalize["mean"]).to(x).view(1, 3, 1, 1)
            std = torch.tensor(p.normalize["std"]).to(x).view(1, 3, 1, 1)
            x = (x - mean) / std
        return x.contiguous(memory_format=torch.channels_last) if x.is_cuda else x

    def __call__(self, jpegs: Sequence[bytes | Tensor], device: torch.device | str) -> list[Tensor]:
        images = decode(jpegs, device)
        return [self.view(images) for _ in range(self.views)]
