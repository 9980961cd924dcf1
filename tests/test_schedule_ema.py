"""The learning-rate schedule (torch's LinearLR + CosineAnnealingLR) and the EMA of momentum encoders,
checked step by step against closed forms computed here in NumPy.

- the learning rate of every optimiser step equals the warm-up + cosine formula (warm-up 0 and > 0,
  with and without gradient accumulation), in the scheduler alone and in a real Lightning fit;
- a resume restores the scheduler (same run length: same rates as an uninterrupted fit) and a resume
  with more epochs continues on the longer plan instead of restarting the cosine;
- with ``accumulate_grad_batches=2`` the momentum encoder moves once per optimiser step, with the
  momentum of that step (the old per-batch update moved it twice as often).
"""
from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

import solo_surgical.hosts.lightly.base as base_module
from solo_surgical.hosts.lightly.registry import resolve_method
from solo_surgical.train.schedule import warmup_cosine, warmup_steps

BATCH, BATCHES = 4, 4


def closed_form(total: int, warmup: int) -> np.ndarray:
    """Factor of the base rate at optimiser steps 0..total-1 (float64)."""
    s = np.arange(total, dtype=np.float64)
    ramp = (s + 1) / (warmup + 1)
    cosine = 0.5 * (1 + np.cos(np.pi * (s - warmup) / (total - warmup)))
    return np.where(s < warmup, ramp, cosine)


def momentum_at(step: int, total: int, start: float) -> float:
    """Cosine momentum from ``start`` to 1 over ``total`` optimiser steps, 1 from step total-1 on."""
    if total <= 1 or step >= total - 1:
        return 1.0
    return 1.0 - (1.0 - start) * (np.cos(np.pi * step / (total - 1)) + 1) / 2


@pytest.mark.parametrize("total,warmup", [(1, 0), (2, 1), (7, 0), (7, 3), (50, 10), (50, 49)])
def test_scheduler_alone_follows_the_closed_form(total, warmup):
    base = 0.3
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    sched = warmup_cosine(opt, total, warmup)
    seen = []
    for _ in range(total):  # as Lightning: the optimiser steps at the current rate, then the scheduler
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    np.testing.assert_allclose(seen, base * closed_form(total, warmup), rtol=1e-7, atol=0)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # zero only after the last step


def test_warmup_steps_is_the_epoch_share_capped_below_the_total():
    assert [warmup_steps(12, w, 3) for w in (0, 1, 2, 3)] == [0, 4, 8, 11]
    assert warmup_steps(1, 5, 5) == 0


class _Views(torch.utils.data.Dataset):
    """Fixed random view pairs: ``([view1, view2], index)`` like the frame datasets."""

    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(n, 2, 3, 32, 32, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return [self.x[i, 0], self.x[i, 1]], i


class _RecordLR(pl.Callback):
    """The rate each optimiser step uses (read just before the step)."""

    def __init__(self) -> None:
        self.rates: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.rates.append(optimizer.param_groups[0]["lr"])


class _StopAfterFirstEpoch(pl.Callback):
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        trainer.should_stop = True


def _model(method: str, epochs: int, lr: float = 0.4, warmup_epochs: int = 0, **hp):
    torch.manual_seed(0)
    hparams = {"proj_hidden_dim": 16, "proj_output_dim": 8, **hp}
    if method == "byol":
        hparams["pred_hidden_dim"] = 16
    cls = resolve_method(method).cls
    return cls(backbone="tiny", hparams=hparams, max_epochs=epochs, batch_size=BATCH,
               optim={"lr": lr, "warmup_epochs": warmup_epochs, "scale_lr_by_batch": False})


def _fit(model, epochs: int, accumulate: int = 1, callbacks=(), ckpt_path=None) -> pl.Trainer:
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         accumulate_grad_batches=accumulate, callbacks=list(callbacks), num_sanity_val_steps=0)
    loader = torch.utils.data.DataLoader(_Views(BATCH * BATCHES), batch_size=BATCH, shuffle=False)
    trainer.fit(model, loader, ckpt_path=ckpt_path)
    return trainer


@pytest.mark.parametrize("warmup_epochs,accumulate", [(0, 1), (1, 1), (2, 2)])
def test_real_fit_uses_the_closed_form_rate_at_every_step(warmup_epochs, accumulate):
    epochs = 3
    record = _RecordLR()
    _fit(_model("simclr", epochs, warmup_epochs=warmup_epochs), epochs, accumulate, [record])
    total = epochs * BATCHES // accumulate
    warmup = int(total * warmup_epochs / epochs)
    assert len(record.rates) == total
    np.testing.assert_allclose(record.rates, 0.4 * closed_form(total, warmup), rtol=1e-7, atol=0)


def test_resume_restores_the_scheduler_and_follows_a_longer_plan(tmp_path):
    epochs = 2
    whole = _RecordLR()
    _fit(_model("simclr", epochs, warmup_epochs=1), epochs, callbacks=[whole])
    # the same run in two launches: stopped after epoch 1, resumed from its checkpoint
    first, second = _RecordLR(), _RecordLR()
    trainer = _fit(_model("simclr", epochs, warmup_epochs=1), epochs, callbacks=[first, _StopAfterFirstEpoch()])
    trainer.save_checkpoint(tmp_path / "half.ckpt")
    saved = torch.load(tmp_path / "half.ckpt", weights_only=False)["lr_schedulers"][0]
    assert saved["last_epoch"] == BATCHES
    _fit(_model("simclr", epochs, warmup_epochs=1), epochs, callbacks=[second], ckpt_path=tmp_path / "half.ckpt")
    np.testing.assert_allclose(first.rates + second.rates, whole.rates, rtol=1e-7, atol=0)
    # one epoch of a 1-epoch plan, then resumed for 3 epochs: steps 4..11 of the 3-epoch plan (warm-up 0)
    short, longer = _RecordLR(), _RecordLR()
    trainer = _fit(_model("simclr", 1), 1, callbacks=[short])
    trainer.save_checkpoint(tmp_path / "short.ckpt")
    _fit(_model("simclr", 3), 3, callbacks=[longer], ckpt_path=tmp_path / "short.ckpt")
    np.testing.assert_allclose(short.rates, 0.4 * closed_form(BATCHES, 0), rtol=1e-7)
    np.testing.assert_allclose(longer.rates, 0.4 * closed_form(3 * BATCHES, 0)[BATCHES:], rtol=1e-7, atol=0)


def test_resume_from_a_checkpoint_with_the_old_lambda_schedule(tmp_path):
    """Checkpoints written before torch's schedulers hold a LambdaLR state: the resume continues on
    the schedule at the saved step (warm-up > 0, the shape SequentialLR could not load)."""
    epochs = 2
    first, second = _RecordLR(), _RecordLR()
    trainer = _fit(_model("simclr", epochs, warmup_epochs=1), epochs, callbacks=[first, _StopAfterFirstEpoch()])
    trainer.save_checkpoint(tmp_path / "new.ckpt")
    ckpt = torch.load(tmp_path / "new.ckpt", weights_only=False)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.4)
    legacy = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    for _ in range(BATCHES):
        opt.step()
        legacy.step()
    ckpt["lr_schedulers"] = [legacy.state_dict()]
    torch.save(ckpt, tmp_path / "old.ckpt")
    _fit(_model("simclr", epochs, warmup_epochs=1), epochs, callbacks=[second], ckpt_path=tmp_path / "old.ckpt")
    np.testing.assert_allclose(first.rates + second.rates, 0.4 * closed_form(epochs * BATCHES, BATCHES),
                               rtol=1e-7, atol=0)


def _targets_zeroed(model) -> list[tuple[torch.Tensor, torch.nn.Parameter]]:
    """Zero every momentum parameter; return (online weights, momentum parameter) pairs."""
    pairs = []
    for online, target in model.momentum_pairs():
        for p, t in zip(online.parameters(), target.parameters()):
            with torch.no_grad():
                t.zero_()
            pairs.append((p.detach().clone(), t))
    assert pairs
    return pairs


@pytest.mark.parametrize("method", ["byol", "mocov2plus"])
def test_ema_moves_once_per_optimizer_step_with_accumulation(method, monkeypatch):
    """lr 0 keeps the online weights θ fixed; from a zero target, n updates with momenta m_k give
    θ (1 - Π m_k). Four batches with accumulation 2 are two optimiser steps: two updates."""
    extra = {"queue_size": 8} if method == "mocov2plus" else {}
    model = _model(method, 1, lr=0.0, **extra)
    monkeypatch.setattr(type(model), "current_momentum", lambda self: 0.9)
    pairs = _targets_zeroed(model)
    calls = []
    real = base_module.update_momentum
    monkeypatch.setattr(base_module, "update_momentum", lambda *a: (calls.append(a[2]), real(*a)))
    _fit(model, 1, accumulate=2)
    assert len(calls) == 2 * len(model.momentum_pairs())
    for theta, target in pairs:
        torch.testing.assert_close(target.detach(), theta * (1 - 0.9 ** 2), rtol=1e-6, atol=1e-7)


def test_ema_momentum_follows_the_optimizer_step_count():
    """Three epochs of 4 batches with accumulation 2: 6 optimiser steps, one update after each with
    the cosine momentum of that step (global step 1..6 of 6)."""
    epochs, start = 3, 0.9
    model = _model("byol", epochs, lr=0.0, momentum=start)
    pairs = _targets_zeroed(model)
    trainer = _fit(model, epochs, accumulate=2)
    total = epochs * BATCHES // 2
    assert trainer.global_step == total
    keep = np.prod([momentum_at(k, total, start) for k in range(1, total + 1)])
    assert keep < 0.99  # the schedule is not trivially 1
    for theta, target in pairs:
        torch.testing.assert_close(target.detach(), theta * float(1 - keep), rtol=1e-5, atol=1e-7)
