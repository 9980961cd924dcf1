"""Each of the six methods runs real Lightning steps and its loss falls on a learnable toy set."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from solo_surgical import method_names
from solo_surgical.hosts.lightly.runner import build_model, run_pretrain

from conftest import tiny_cfg

SIX = ["simclr", "mocov2plus", "byol", "distill_simclr", "distill_mocov2plus", "distill_byol"]
# the methods added beside them, at toy sizes (the papers' 65,536 / 3,000 prototypes, 98,304 support slots
# and 4096-wide predictors would only slow a 32 px test down)
NEW = ["simsiam", "barlow_twins", "vicreg", "nnclr", "dino", "swav"]
TOY_KWARGS = {"dino": ["method.kwargs.num_prototypes=64", "method.kwargs.warmup_teacher_temp_epochs=0"],
              "swav": ["method.kwargs.num_prototypes=32"],
              # VICReg's covariance term needs more images than dimensions: 8 images, 4 dimensions
              "vicreg": ["method.kwargs.proj_output_dim=4"],
              "nnclr": ["method.kwargs.queue_size=8", "method.kwargs.pred_hidden_dim=32"],
              "simsiam": ["method.kwargs.pred_hidden_dim=32"]}


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
    from solo_surgical.hosts.lightly.runner import run_teacher_stage

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
    assert set(NEW) | {f"distill_{m}" for m in NEW} <= set(names)
    assert len([n for n in method_names() if not n.startswith("distill_")]) >= 9


@pytest.mark.parametrize("method", [m for base in NEW for m in (base, f"distill_{base}")])
def test_new_methods_real_fit(tmp_path, toy_dir, toy_teacher, method):
    """A real Lightning fit of every added method, plain and distilled: 24 steps, finite losses, a
    checkpoint, and the loss falls on the learnable toy set."""
    base = method.removeprefix("distill_")
    extra = ["trainer.max_epochs=12", *MILD, *TOY_KWARGS.get(base, [])]
    if method.startswith("distill_"):
        extra += [f"distill.teacher={toy_teacher}", "distill.memory_size=8"]
    cfg = tiny_cfg("pretrain", method, tmp_path / "run", toy_dir, *extra)
    run_dir = run_pretrain(cfg)  # the command's own path: seed, build, fit
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 24
    losses = _losses(tmp_path / "run", "train/loss_step")
    assert len(losses) == 24 and all(np.isfinite(losses))
    if base == "dino":
        # DINO's loss is no progress measure early on: the centre converges to the teacher's mean
        # output within ~10 steps, which makes the targets more image-specific and the loss rise.
        # Instead: against the final teacher and centre, the trained student beats its initial self.
        _dino_student_improved(cfg, run_dir, toy_dir)
    elif not method.startswith("distill_"):
        first, last = np.mean(losses[2:7]), np.mean(losses[-5:])
        assert last < first, (method, losses)
    if method.startswith("distill_"):
        kl = _losses(tmp_path / "run", "train/distill_kl_step")
        assert len(kl) == 24 and all(np.isfinite(kl)) and kl[0] > 0
        # The distilled run must learn its own term. Its total loss is no progress measure on this toy:
        # VICReg's loss jumps between 4 and 54 from step to step here, and with the KL pulling on the
        # same 4-dimensional embeddings it ended higher than it started at seed 0 (and lower at seeds 1
        # and 2); the plain variant above checks that the SSL loss falls. (With distill.weight=1e-6
        # this KL check fails for 4 of the 5 methods: it measures distillation, not drift. DINO's
        # embeddings move with its centre, as its loss does, so it keeps the check above instead.)
        if base != "dino":
            assert np.mean(kl[-5:]) < np.mean(kl[2:7]), (method, kl)
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


def _dino_student_improved(cfg, run_dir, toy_dir) -> None:
    from solo_surgical.hosts.lightly.runner import method_transform, seed_run

    seed_run(cfg)
    initial = build_model(cfg)  # the run's own initial weights (run_pretrain seeds, then builds)
    trained = build_model(cfg)
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    # the frozen teacher may be left out of checkpoints (it is rebuilt from distill.teacher); nothing else
    missing, unexpected = trained.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("distill.teacher.") for k in missing), (missing, unexpected)
    assert float(trained.criterion.center.abs().sum()) > 0
    assert any(not torch.equal(a, b) for a, b in zip(trained.projector_momentum.state_dict().values(),
                                                    initial.projector_momentum.state_dict().values()))
    # the student's modules of the initial model, the teacher and centre of the trained one
    initial.projector_momentum.load_state_dict(trained.projector_momentum.state_dict())
    initial.backbone_momentum.load_state_dict(trained.backbone_momentum.state_dict())
    initial.criterion.center.copy_(trained.criterion.center)
    transform = method_transform(str(cfg.method.name), cfg)
    torch.manual_seed(0)
    pairs = [transform(Image.open(p).convert("RGB")) for p in sorted(toy_dir.glob("*.png"))]
    views = [torch.stack([pair[v] for pair in pairs]) for v in (0, 1)]
    losses = {}
    for name, model in (("initial", initial), ("trained", trained)):
        model.train()
        center = model.criterion.center.clone()
        with torch.no_grad():
            losses[name] = model.ssl_step(*views).loss.item()
        model.criterion.center.copy_(center)
    assert losses["trained"] < losses["initial"], losses


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
    run_dir = run_pretrain(cfg)
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 24
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
        run_pretrain(cfg)
        final_kl[weight] = np.mean(_losses(run, "train/distill_kl_step")[-8:])
    assert final_kl[5.0] < 0.7 * final_kl[0.0], final_kl
