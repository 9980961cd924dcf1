"""Each of the six methods runs real Lightning steps and its loss falls on a learnable toy set."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from solo_surgical import method_names
from solo_surgical.train.runner import build_model, fit

from conftest import tiny_cfg

SIX = ["simclr", "mocov2plus", "byol", "distill_simclr", "distill_mocov2plus", "distill_byol"]


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    """16 distinct images (one hue and one binary pattern each): instance discrimination is learnable."""
    import colorsys

    root = tmp_path_factory.mktemp("toy")
    rng = np.random.default_rng(0)
    for i in range(16):
        rgb = np.array(colorsys.hsv_to_rgb(i / 16, 0.8, 0.9)) * 255
        half = rng.integers(0, 2, (4, 2))  # a unique mirror-symmetric 4x4 binary pattern per image
        grid = np.concatenate([half, half[:, ::-1]], axis=1)
        img = np.kron(grid, np.ones((8, 8)))[..., None] * rgb + 20
        Image.fromarray(img.astype(np.uint8)).save(root / f"{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def toy_teacher(tmp_path_factory, toy_dir):
    """The real recipe at toy size: a frozen random 'public' backbone whose projector is trained by SimCLR."""
    from solo_surgical.backbones import build_backbone
    from solo_surgical.train.runner import run_teacher_stage

    root = tmp_path_factory.mktemp("toy_teacher")
    torch.manual_seed(7)
    torch.save(build_backbone("tiny")[0].state_dict(), root / "public.pth")
    cfg = tiny_cfg("teacher", "simclr", root / "run", toy_dir, f"teacher.source={root / 'public.pth'}",
                   "trainer.max_epochs=12", "method.kwargs.proj_output_dim=8", *MILD)
    return run_teacher_stage(cfg)


# mild augmentation (no colour jitter, grey or blur) keeps the toy instances tellable apart
MILD = ["data.min_scale=0.6", "+data.augment.cj_prob=0", "+data.augment.random_gray_scale=0",
        "+data.augment.gaussian_blur=0"]


def _losses(run_dir, key):
    rows = [row for path in sorted((run_dir / "logs").glob("version_*/metrics.csv")) for row in csv.DictReader(open(path))]
    return [float(r[key]) for r in rows if r.get(key)]


def test_registry_lists_the_six_methods_and_aliases():
    names = method_names(include_aliases=True)
    assert set(SIX) | {"moco", "distill_moco"} <= set(names)


@pytest.mark.parametrize("method", SIX)
def test_real_fit_loss_falls(tmp_path, toy_dir, toy_teacher, method):
    extra = ["trainer.max_epochs=12", *MILD]
    if "simclr" not in method:
        extra.append("method.kwargs.momentum=0.9")
    if method.startswith("distill_"):
        extra.append(f"distill.teacher={toy_teacher}")
        extra.append("distill.memory_size=8")
    if "moco" in method:
        extra.append("method.kwargs.queue_size=8")  # full after one step, so the loss scale is stable
    cfg = tiny_cfg("pretrain", method, tmp_path / "run", toy_dir, *extra)
    model = build_model(cfg)
    trainer = fit(cfg, model, tmp_path / "run")
    assert trainer.global_step == 24
    losses = _losses(tmp_path / "run", "train/loss_step")
    assert len(losses) == 24 and all(np.isfinite(losses))
    # from step 2 on, the queue and the distillation memory (8 slots = 1 batch) are full
    first, last = np.mean(losses[2:7]), np.mean(losses[-5:])
    assert last < first, (method, losses)
    if method.startswith("distill_"):
        assert len(_losses(tmp_path / "run", "train/distill_kl_step")) == 24
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


def test_distillation_gradient_pulls_student_towards_teacher(tmp_path, toy_dir, toy_teacher):
    """Same seed and data; only the KL weight differs. The KL term must lower the KL it measures."""
    final_kl = {}
    for weight in (0.0, 5.0):
        run = tmp_path / f"w{weight}"
        cfg = tiny_cfg("pretrain", "distill_simclr", run, toy_dir, "trainer.max_epochs=12", *MILD,
                       f"distill.teacher={toy_teacher}", "distill.memory_size=8", f"distill.weight={weight}",
                       "optimizer.lr=3")
        fit(cfg, build_model(cfg), run)
        final_kl[weight] = np.mean(_losses(run, "train/distill_kl_step")[-8:])
    assert final_kl[5.0] < 0.7 * final_kl[0.0], final_kl
