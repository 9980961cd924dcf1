"""Device, precision and data-loader selection (solo_surgical/train/devices.py), checked on CPU
by pretending what the machine has (CUDA, bf16 support, cores)."""
from __future__ import annotations

import os

import pytest
import torch
from omegaconf import OmegaConf

from solo_surgical.errors import UserError
from solo_surgical.train import devices

from conftest import tiny_cfg


@pytest.fixture
def fake_machine(monkeypatch):
    """Pretend a machine: ``fake_machine(cuda=True, bf16=True, cpus=16, gpus=1)``."""

    def set_up(cuda: bool, bf16: bool = True, cpus: int = 16, gpus: int = 1) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus if cuda else 0)
        monkeypatch.setattr(os, "cpu_count", lambda: cpus)
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)

    return set_up


def test_accelerator_auto_follows_cuda(fake_machine):
    fake_machine(cuda=False)
    assert devices.resolve_accelerator("auto") == "cpu"
    assert devices.resolve_accelerator("cpu") == "cpu"
    fake_machine(cuda=True)
    assert devices.resolve_accelerator("auto") == "cuda"
    assert devices.resolve_accelerator("gpu") == "cuda"


def test_cuda_asked_without_cuda_is_one_line_error(fake_machine):
    fake_machine(cuda=False)
    with pytest.raises(UserError, match=r"^trainer.accelerator=cuda: no CUDA device is visible") as info:
        devices.resolve_accelerator("cuda")
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match=r"^--device cuda:1: no CUDA device"):
        devices.resolve_device("cuda:1")


@pytest.mark.parametrize("cuda, bf16, expected", [(False, False, "32-true"), (True, True, "bf16-mixed"),
                                                  (True, False, "16-mixed")])
def test_precision_auto(fake_machine, cuda, bf16, expected):
    fake_machine(cuda=cuda, bf16=bf16)
    accelerator = devices.resolve_accelerator("auto")
    assert devices.resolve_precision("auto", accelerator) == expected


def test_explicit_precision_is_kept(fake_machine):
    fake_machine(cuda=True)
    assert devices.resolve_precision("32-true", "cuda") == "32-true"
    assert devices.resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"  # the user asked; not second-guessed


@pytest.mark.parametrize("cpus, processes, workers", [(16, 1, 15), (16, 4, 3), (32, 8, 3), (2, 1, 1), (1, 1, 1),
                                                      (3, 2, 1)])
def test_workers_auto_on_cuda_from_cores(fake_machine, cpus, processes, workers):
    fake_machine(cuda=True, cpus=cpus)
    assert devices.available_cpus() == cpus
    opts = devices.loader_options("auto", "cuda", processes)
    assert opts == devices.LoaderOptions(num_workers=workers, pin_memory=True, persistent_workers=True,
                                         prefetch_factor=devices.PREFETCH_ON_CUDA)


def test_available_cpus_uses_affinity_over_cpu_count(monkeypatch):
    # a container limited to 4 of the host's 64 cores must not start 63 workers
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert devices.available_cpus() == 4
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    assert devices.available_cpus() == 64


def test_workers_auto_on_cpu_is_zero_whatever_the_cores(fake_machine):
    fake_machine(cuda=False, cpus=64)
    opts = devices.loader_options("auto", "cpu")
    assert opts.kwargs() == {"num_workers": 0, "pin_memory": False, "persistent_workers": False}


def test_explicit_workers_kept_and_bad_values_refused(fake_machine):
    fake_machine(cuda=False, cpus=64)
    assert devices.loader_options(3, "cpu").kwargs() == {"num_workers": 3, "pin_memory": False,
                                                         "persistent_workers": True}
    assert devices.loader_options("2", "cuda").prefetch_factor == devices.PREFETCH_ON_CUDA
    assert devices.loader_options(0, "cuda").kwargs() == {"num_workers": 0, "pin_memory": True,
                                                          "persistent_workers": False}
    for bad in ("many", -1, "1.5"):
        with pytest.raises(UserError, match=r"data.num_workers must be an integer >= 0 or auto"):
            devices.loader_options(bad, "cpu")


def test_ddp_devices_share_the_cores(fake_machine):
    fake_machine(cuda=True, cpus=16, gpus=4)
    assert devices.local_processes("cuda", 2) == 2
    assert devices.local_processes("cuda", "auto") == 4
    assert devices.local_processes("cuda", OmegaConf.create([0, 1, 2])) == 3
    assert devices.local_processes("cpu", "auto") == 1


def test_resolve_run_devices_rewrites_the_config(fake_machine, tmp_path, image_dir):
    cfg = tiny_cfg("pretrain", "mocov2plus", tmp_path / "run", image_dir)
    assert (cfg.trainer.accelerator, cfg.trainer.precision, cfg.data.num_workers) == ("auto", "auto", "auto")
    fake_machine(cuda=False, cpus=8)
    devices.resolve_run_devices(cfg)
    assert (cfg.trainer.accelerator, cfg.trainer.precision, cfg.data.num_workers) == ("cpu", "32-true", 0)

    cfg = tiny_cfg("teacher", "mocov2plus", tmp_path / "run", image_dir, "trainer.devices=2")
    fake_machine(cuda=True, bf16=True, cpus=16, gpus=2)
    opts = devices.resolve_run_devices(cfg)
    assert (cfg.trainer.accelerator, cfg.trainer.precision, cfg.data.num_workers) == ("cuda", "bf16-mixed", 7)
    assert opts.pin_memory and opts.prefetch_factor == devices.PREFETCH_ON_CUDA


def test_cpu_auto_loader_gives_the_same_batches_as_zero_workers(tmp_path, image_dir):
    # "the same numbers as before auto existed": the augmented views of a seeded run must not change
    from solo_surgical.hosts.lightly.runner import seed_run, train_loader

    batches = []
    for workers in ("auto", "0"):
        cfg = tiny_cfg("pretrain", "mocov2plus", tmp_path / "run", image_dir, f"data.num_workers={workers}",
                       "trainer.accelerator=cpu")
        seed_run(cfg)
        views, index = next(iter(train_loader(cfg, tmp_path)))[:2]
        batches.append((views[0], views[1], index))
    assert all(torch.equal(a, b) for a, b in zip(*batches))


def test_channels_last_only_on_cuda():
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten(), torch.nn.Linear(8, 2))
    devices.prepare_model(conv, "cpu")
    assert not conv[0].weight.is_contiguous(memory_format=torch.channels_last)
    devices.prepare_model(conv, "cuda")  # only the memory format changes; runs on CPU too
    assert conv[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv[0].weight.is_contiguous()


def test_device_auto_without_cuda_is_cpu(fake_machine):
    fake_machine(cuda=False)
    assert devices.resolve_device("auto") == "cpu"
    fake_machine(cuda=True)
    assert devices.resolve_device("auto") == "cuda"
    assert devices.resolve_device("cuda:1") == "cuda:1"


def test_linear_and_extract_default_to_auto():
    import argparse

    from solo_surgical.evaluation import features, linear

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    features.add_parser(sub)
    linear.add_parser(sub)
    assert parser.parse_args(["extract", "--data", "D", "--out", "O"]).device == "auto"
    assert parser.parse_args(["linear", "--data", "D", "--out", "O"]).device == "auto"


def test_distilled_step_under_bf16_autocast(teacher_ckpt, tmp_path, image_dir):
    # The CUDA path (bf16-mixed) emulated with CPU autocast: the teacher runs in the autocast dtype
    # under inference mode but hands back an ordinary tensor; the relational KL is computed in fp32
    # and equals the fp32 formula on the same (bf16) teacher and student embeddings.
    from solo_surgical.distill.loss import symmetric_relational_kl
    from solo_surgical.hosts.lightly.runner import build_model

    cfg = tiny_cfg("pretrain", "distill_mocov2plus", tmp_path / "run", image_dir, f"distill.teacher={teacher_ckpt}")
    model = build_model(cfg)
    model.train()
    torch.manual_seed(0)
    views = (torch.randn(8, 3, 32, 32), torch.randn(8, 3, 32, 32))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        t1, t2 = model.distill.teacher_embeddings(*views)
        assert t1.dtype == torch.bfloat16 and not t1.is_inference() and not t1.requires_grad
        out = model.ssl_step(*views)
        assert out.queries[0].dtype == torch.bfloat16
        kd = model.distill(views, out.queries, out.keys, update_memory=False)
    assert kd.dtype == torch.float32
    expected = symmetric_relational_kl(tuple(q.float() for q in out.queries), tuple(k.float() for k in out.keys),
                                       None, (t1.float(), t2.float()), None, 0.2, 0.2, True)
    torch.testing.assert_close(kd, expected)
    kd.backward()
    grads = [p.grad for p in model.backbone.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert all(p.grad is None for p in model.distill.teacher.parameters())
