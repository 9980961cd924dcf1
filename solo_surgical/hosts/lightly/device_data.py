"""``data.device_augment=true``: the loader hands JPEG bytes over, the training device decodes and
augments them (:mod:`solo_surgical.data.device_views`). Off by default: the CPU path is the reference
(PIL + the method's lightly transform) and is what every figure in the README was measured with."""
from __future__ import annotations

import inspect
from typing import Any, Callable, Optional

from omegaconf import DictConfig

from ...data.device_views import DeviceViews, JpegFiles, ViewParams, collate_jpeg
from ...errors import UserError

# lightly transforms whose two views are the same random pipeline (SimCLRViewTransform twice)
SUPPORTED = ("MoCoV2Transform", "SimCLRTransform")


def enabled(cfg: DictConfig) -> bool:
    return bool(cfg.data.get("device_augment", False))


def device_views_for(cfg: DictConfig, transform: Any) -> Optional[DeviceViews]:
    """The device-side views for the configured method, or ``None`` when ``data.device_augment`` is off.

    Args:
        transform: the method's CPU transform as the run builds it (its class gives the defaults).

    Raises:
        UserError: a method whose views this path does not implement (BYOL's asymmetric views,
            multi-crop, solarisation, rotations).
    """
    if not enabled(cfg):
        return None
    name = type(transform).__name__
    if name not in SUPPORTED:
        raise UserError(f"data.device_augment: {cfg.method.name} uses {name}; the device path implements "
                        f"{' and '.join(SUPPORTED)} views only (set data.device_augment=false)")
    defaults = {key: p.default for key, p in inspect.signature(type(transform).__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}
    given = {"input_size": int(cfg.data.image_size), "min_scale": float(cfg.data.min_scale),
             "normalize": {"mean": list(cfg.data.mean), "std": list(cfg.data.std)},
             **{str(k): v for k, v in dict(cfg.data.augment).items()}}
    return DeviceViews(ViewParams.from_kwargs({**defaults, **given}, f"method {cfg.method.name}"))


def jpeg_dataset(dataset: Any) -> tuple[JpegFiles, Callable]:
    """The loader's dataset on this path: the same files in the same order, as bytes, and its collate."""
    paths = [r.path for r in dataset.records] if hasattr(dataset, "records") else list(dataset.files)
    return JpegFiles(paths), collate_jpeg
