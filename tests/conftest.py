"""Shared fixtures. Tests run single-threaded: with 2 cores and another busy process,
torch's default threading made steps ~15x slower."""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
# The suite is a CPU suite: trainer.accelerator / precision / num_workers default to "auto", which on a
# GPU machine would move every test run to CUDA in bf16 (other numbers, no bit-for-bit determinism).
# tests/test_devices.py pretends a GPU where it needs one. SOLO_SURGICAL_TEST_CUDA=1 lifts this.
if os.environ.get("SOLO_SURGICAL_TEST_CUDA") != "1":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


def make_teacher_checkpoint(path, arch: str = "tiny", out_dim: int = 24, seed: int = 1, bn: bool = True):
    """A teacher checkpoint from a randomly initialised backbone and a 2-layer projector."""
    from torch import nn

    from solo_surgical.backbones import build_backbone
    from solo_surgical.distill import save_teacher_checkpoint

    torch.manual_seed(seed)
    backbone, dim = build_backbone(arch)
    # give BatchNorm non-trivial statistics so "unchanged" is a meaningful check
    for m in backbone.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    layers = [nn.Linear(dim, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, out_dim)] if bn else \
        [nn.Linear(dim, 32), nn.ReLU(), nn.Linear(32, out_dim)]
    projector = nn.Sequential(*layers)
    projector[1].running_mean.uniform_(-0.5, 0.5) if bn else None
    return save_teacher_checkpoint(path, arch=arch, backbone=backbone, projector=projector,
                                   meta={"method": "test", "source": "random", "mean": [0.485, 0.456, 0.406],
                                         "std": [0.229, 0.224, 0.225]})


@pytest.fixture
def teacher_ckpt(tmp_path):
    return make_teacher_checkpoint(tmp_path / "teacher.pth")


TINY = ["backbone.name=tiny", "data.image_size=32", "data.batch_size=8", "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=1", "method.kwargs.proj_hidden_dim=32", "method.kwargs.proj_output_dim=16",
        "distill.memory_size=16", "optimizer.lr=0.5"]


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory):
    from solo_surgical.data.images import generate_images

    return generate_images(tmp_path_factory.mktemp("images") / "images", count=32, size=32)


def tiny_cfg(config: str, method: str, run_dir, image_dir, *extra: str):
    from solo_surgical.hosts.lightly.config import compose

    overrides = TINY + [f"method={method}", f"run.dir={run_dir}", f"data.root={image_dir}", *extra]
    if "moco" in method:
        overrides.append("method.kwargs.queue_size=16")
    if "byol" in method:
        overrides.append("method.kwargs.pred_hidden_dim=32")
    return compose(config, overrides)
