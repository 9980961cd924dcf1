"""Fine-tuning trained by Lightning (evaluation/finetune.py) against a plain PyTorch loop written here."""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from solo_surgical.evaluation.finetune import train_finetune


def _data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(40, 3, 8, 8, generator=g)
    y = (x.mean((1, 2, 3)) > 0).long() + 2 * (x[:, 0].mean((1, 2)) > 0).long()
    return TensorDataset(x[:30], y[:30]), (x[30:], y[30:])


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 4))


def _loader(train):
    """As linear's: a permutation fixed by the epoch's seed (a shuffling DataLoader would draw a new order
    on each iteration, and Lightning iterates a reloaded loader twice)."""
    return lambda epoch: DataLoader(train, batch_size=8, sampler=torch.randperm(
        len(train), generator=torch.Generator().manual_seed(7 + epoch)).tolist())


def _score(val):
    def score(net):
        net.eval()
        with torch.inference_mode():
            return 100.0 * float((net(val[0]).argmax(1) == val[1]).float().mean())
    return score


def _plain_epoch(model, opt, train, epoch) -> float:
    """One epoch of the hand-written loop the Lightning version replaced; the last batch's loss."""
    model.train()
    for images, labels in _loader(train)(epoch):
        loss = nn.functional.cross_entropy(model(images), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(loss.detach())


def _reference(model, train, val, epochs, lr):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    best, best_state, history = -1.0, None, []
    for epoch in range(1, epochs + 1):
        loss = _plain_epoch(model, opt, train, epoch)
        acc = _score(val)(model)
        history.append({"epoch": epoch, "loss": loss, "val_acc": acc})
        if acc > best:
            best, best_state = acc, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return history


def test_finetune_equals_the_plain_loop_bit_for_bit_and_logs(tmp_path, capsys):
    train, val = _data()
    ours, ref = _model(), _model()
    history, best_epoch = train_finetune(ours, _loader(train), _score(val), epochs=4, lr=0.05, weight_decay=1e-4,
                                         out=tmp_path / "ft")
    expected = _reference(ref, train, val, 4, 0.05)
    assert history == expected
    assert best_epoch == max(expected, key=lambda r: (r["val_acc"], -r["epoch"]))["epoch"]
    for (name, a), b in zip(ours.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), name  # BatchNorm running statistics included
    metrics = (tmp_path / "ft" / "logs" / "version_0" / "metrics.csv").read_text().splitlines()
    assert metrics[0].split(",")[:2] == ["epoch", "step"] and "val/acc" in metrics[0]
    assert [line.split("  ")[0] for line in capsys.readouterr().err.splitlines() if line.startswith("epoch ")] == \
        [f"epoch {e}/4" for e in range(1, 5)]


def test_finetune_without_validation_keeps_the_last_epoch():
    train, _ = _data(1)
    ours, ref = _model(1), _model(1)
    history, best_epoch = train_finetune(ours, _loader(train), None, epochs=2, lr=0.05, progress=False)
    assert best_epoch == 2 and [r["epoch"] for r in history] == [1, 2] and "val_acc" not in history[0]
    opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
    for epoch in (1, 2):
        _plain_epoch(ref, opt, train, epoch)
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), ref.state_dict().values()))
