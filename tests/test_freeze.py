"""freeze(module, bn=...): parameters never learn; BatchNorm statistics pinned ("frozen") or re-estimated ("recompute")."""
from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from solo_surgical.distill import freeze
from solo_surgical.distill.freeze import is_pinned


MEAN, VAR = -2.0, 9.0


def _frozen_part() -> nn.Sequential:
    torch.manual_seed(0)
    part = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with torch.no_grad():  # statistics a batch would certainly move (and that leave ReLU some signal)
        part[1].running_mean.fill_(MEAN)
        part[1].running_var.fill_(VAR)
        part[1].num_batches_tracked.fill_(7)
    return part


class Parent(nn.Module):
    """A trainable head on a frozen part, as a LightningModule holds them."""

    def __init__(self, bn: str) -> None:
        super().__init__()
        self.backbone = freeze(_frozen_part(), bn=bn)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def _stats(bn: nn.BatchNorm2d) -> list[torch.Tensor]:
    return [bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()]


def _step(model: Parent, seed: int = 1) -> None:
    x = torch.randn(8, 3, 6, 6, generator=torch.Generator().manual_seed(seed))
    model(x).square().mean().backward()


def test_frozen_keeps_statistics_bit_identical_and_learns_nothing_after_parent_train():
    model = Parent("frozen")
    before = _stats(model.backbone[1])
    weights = [p.detach().clone() for p in model.backbone.parameters()]
    model.train()
    assert model.training and model.head.training
    assert not any(m.training for m in model.backbone.modules())  # the flags tell the truth too
    _step(model)
    for old, new in zip(before, _stats(model.backbone[1])):
        assert torch.equal(old, new)
    assert all(p.grad is None and not p.requires_grad for p in model.backbone.parameters())
    assert model.head.weight.grad.abs().sum() > 0  # the parent itself does train
    # eval-mode computation (stored statistics, dropout off): the same output twice, and the
    # BatchNorm output is what its stored statistics give
    x = torch.randn(4, 3, 6, 6)
    assert torch.equal(model.backbone(x), model.backbone(x))
    conv, bn = model.backbone[0], model.backbone[1]
    expected = (conv(x) - MEAN) / torch.sqrt(torch.tensor(VAR) + bn.eps) * bn.weight.view(1, -1, 1, 1) \
        + bn.bias.view(1, -1, 1, 1)
    assert torch.allclose(bn(conv(x)), expected, atol=1e-6)
    assert all(torch.equal(w, p) for w, p in zip(weights, model.backbone.parameters()))


def test_frozen_survives_direct_training_assignments():
    # Lightning restores saved per-module modes by assigning `.training`, bypassing train()
    model = Parent("frozen")
    before = _stats(model.backbone[1])
    for module in model.modules():
        module.training = True
    _step(model)
    assert all(torch.equal(a, b) for a, b in zip(before, _stats(model.backbone[1])))
    assert not any(m.training for m in model.backbone.modules())


def test_recompute_moves_the_statistics_but_not_the_weights():
    model = Parent("recompute")
    before = _stats(model.backbone[1])
    weights = [p.detach().clone() for p in model.backbone.parameters()]
    model.train()
    assert model.backbone[1].training  # follows the parent
    _step(model)
    mean, var, count = _stats(model.backbone[1])
    assert not torch.equal(mean, before[0]) and not torch.equal(var, before[1]) and int(count) == 8
    assert all(p.grad is None and not p.requires_grad for p in model.backbone.parameters())
    assert all(torch.equal(w, p) for w, p in zip(weights, model.backbone.parameters()))
    model.eval()
    assert not model.backbone[1].training


def test_the_pin_survives_deepcopy_and_pickling_and_modes_switch():
    model = Parent("frozen")
    clone = copy.deepcopy(model)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    for other in (clone, loaded):
        other.train()
        assert is_pinned(other.backbone) and not other.backbone.training
        before = _stats(other.backbone[1])
        _step(other)
        assert all(torch.equal(a, b) for a, b in zip(before, _stats(other.backbone[1])))
    assert not model.backbone.training  # the copies' train() did not reach the original
    freeze(model.backbone, bn="recompute")
    model.train()
    assert not is_pinned(model.backbone) and model.backbone[1].training
    with pytest.raises(ValueError, match="bn must be one of"):
        freeze(model.backbone, bn="eval")


def test_frozen_part_stays_pinned_through_lightning_epochs(tmp_path):
    """A real Trainer: train() at every epoch start, validation's mode capture / restore in between."""
    import lightning.pytorch as pl

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = Parent("frozen")

        def training_step(self, batch, batch_idx):
            return self.net(batch[0]).square().mean()

        def validation_step(self, batch, batch_idx):
            self.net(batch[0])

        def configure_optimizers(self):
            return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.1)

    data = torch.utils.data.TensorDataset(torch.randn(16, 3, 6, 6))
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    module = Module()
    before = _stats(module.net.backbone[1])
    weights = [p.detach().clone() for p in module.net.backbone.parameters()]
    head = module.net.head.weight.detach().clone()
    trainer = pl.Trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=1, accelerator="cpu",
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.fit(module, loader, loader)
    assert all(torch.equal(a, b) for a, b in zip(before, _stats(module.net.backbone[1])))
    assert all(torch.equal(w, p) for w, p in zip(weights, module.net.backbone.parameters()))
    assert not torch.equal(head, module.net.head.weight)  # the rest did train


def test_the_config_checker_accepts_exactly_the_bn_modes_freeze_knows():
    """validate.py stays torch-free, so it names the teacher BN modes itself; they must be freeze's."""
    from solo_surgical.distill.freeze import BN_MODES
    from solo_surgical.hosts.lightly.validate import TEACHER_BN

    assert tuple(TEACHER_BN) == tuple(BN_MODES)
