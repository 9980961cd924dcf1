"""The offline stand-in public model: its generic domain, its training, the per-user cache."""
from __future__ import annotations

import json

import numpy as np
import torch

from solo_surgical.zoo.generic_model import cached_generic_model, scene_loss, scene_pool
from solo_surgical.zoo.generic_scenes import GROUPS, LABELS, draw_scene


def test_scene_labels_follow_the_groups():
    rng = np.random.default_rng(0)
    start = 0
    images, labels = scene_pool(rng, 50, 32)
    assert images.shape == (50, 3, 32, 32) and images.dtype == torch.uint8 and labels.shape == (50, len(LABELS))
    for _, names, kind in GROUPS:
        block = labels[:, start:start + len(names)]
        if kind == "softmax":
            assert torch.equal(block.sum(1), torch.ones(50))
        start += len(names)
    # the main object is never also listed among the other objects
    main, others = labels[:, :16], labels[:, -16:]
    assert float((main * others).sum()) == 0
    # the same seed draws the same scene
    a, b = draw_scene(np.random.default_rng(5), 32), draw_scene(np.random.default_rng(5), 32)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_scene_loss_matches_an_independent_computation():
    torch.manual_seed(0)
    _, labels = scene_pool(np.random.default_rng(1), 6, 32)
    logits = torch.randn(6, len(LABELS))
    expected, start = 0.0, 0
    for _, names, kind in GROUPS:
        z, y = logits[:, start:start + len(names)].double(), labels[:, start:start + len(names)].double()
        if kind == "softmax":
            expected += float(-(torch.log_softmax(z, 1) * y).sum(1).mean())
        else:
            p = torch.sigmoid(z)
            expected += float(-(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean())
        start += len(names)
    assert abs(float(scene_loss(logits, labels)) - expected) < 1e-5


def test_cache_reuses_a_model_and_retrains_on_a_changed_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("SOLO_SURGICAL_CACHE", str(tmp_path))
    settings = dict(arch="tiny", scenes=64, epochs=1, image_size=32, log=lambda m: None)
    first = cached_generic_model(**settings)
    stamp = first.stat().st_mtime_ns
    again = cached_generic_model(**settings)
    other = cached_generic_model(**{**settings, "epochs": 2})
    assert again == first and first.stat().st_mtime_ns == stamp
    assert other.parent != first.parent and other.is_file()
    assert first.is_relative_to(tmp_path / "generic")
    sidecar = json.loads(first.with_suffix(".json").read_text())
    assert sidecar["scenes"] == 64 and sidecar["epochs"] == 1 and sidecar["surgical_probe"] is None
    state = torch.load(first, weights_only=True)
    assert state["fc.weight"].shape[0] == len(LABELS)  # torchvision layout: the head is fc.*
