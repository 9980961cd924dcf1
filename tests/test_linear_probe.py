"""The linear probe trained by Lightning: the same numbers as a plain loop, bit for bit; logs like pretraining."""
from __future__ import annotations

import csv
import re

import pytest
import torch

from solo_surgical.evaluation.probe import train_probe


def _features(n: int = 120, m: int = 40, f: int = 16, c: int = 5, seed: int = 7):
    """Gaussian clusters: train (n, f), (n,) and validation (m, f), (m,) features and labels."""
    gen = torch.Generator().manual_seed(seed)
    centers = 3 * torch.randn(c, f, generator=gen) + 1.0
    ty, vy = torch.randint(0, c, (n,), generator=gen), torch.randint(0, c, (m,), generator=gen)
    tx = centers[ty] + 2 * torch.randn(n, f, generator=gen)
    vx = centers[vy] + 2 * torch.randn(m, f, generator=gen)
    return tx, ty, vx, vy, c


def _reference(tx, ty, vx, vy, c, epochs, lr, batch_size, weight_decay, seed):
    """The probe written out as a plain PyTorch loop: standardise, Adam on seeded permutation batches,
    score all training frames after each epoch, keep the first epoch with the best validation accuracy."""
    torch.manual_seed(seed)
    mean, std = tx.mean(0), tx.std(0).clamp(min=1e-6)
    head = torch.nn.Linear(tx.shape[1], c)
    opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    xs, gen, history = (tx - mean) / std, torch.Generator().manual_seed(seed), []
    best, best_state, best_epoch = -1.0, None, epochs
    for epoch in range(1, epochs + 1):
        total = 0.0
        for idx in torch.randperm(len(xs), generator=gen).split(batch_size):
            loss = torch.nn.functional.cross_entropy(head(xs[idx]), ty[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        with torch.no_grad():
            row = {"epoch": epoch, "loss": total / len(xs),
                   "train_acc": 100.0 * float((head(xs).argmax(1) == ty).float().mean())}
            if vx is not None:
                row["val_acc"] = 100.0 * float((head((vx - mean) / std).argmax(1) == vy).float().mean())
                if row["val_acc"] > best:
                    best, best_epoch = row["val_acc"], epoch
                    best_state = {k: v.clone() for k, v in head.state_dict().items()}
        history.append(row)
    if best_state is not None:
        head.load_state_dict(best_state)
    return head, mean, std, history, best_epoch


def _same(a, b) -> bool:
    return (torch.equal(a[0].weight, b[0].weight) and torch.equal(a[0].bias, b[0].bias)
            and torch.equal(a[1], b[1]) and torch.equal(a[2], b[2]) and a[3] == b[3] and a[4] == b[4])


@pytest.mark.parametrize("with_val", [True, False])
def test_probe_equals_a_plain_loop_bit_for_bit(with_val, capsys):
    tx, ty, vx, vy, c = _features()
    if not with_val:
        vx = vy = None
    args = (tx, ty, vx, vy, c, 12, 0.01, 32, 1e-4, 3)
    got, want = train_probe(*args), _reference(*args)
    assert _same(got, want)
    # a split without validation videos keeps the last epoch; otherwise an early epoch can win
    assert got[4] == 12 if not with_val else 1 <= got[4] <= 12
    assert len(got[3]) == 12 and ("val_acc" in got[3][0]) == with_val


def test_same_seed_twice_is_identical_and_another_seed_is_not(capsys):
    tx, ty, vx, vy, c = _features()
    first = train_probe(tx, ty, vx, vy, c, 8, 0.01, 32, seed=5)
    assert _same(first, train_probe(tx, ty, vx, vy, c, 8, 0.01, 32, seed=5))
    other = train_probe(tx, ty, vx, vy, c, 8, 0.01, 32, seed=6)
    assert not torch.equal(first[0].weight, other[0].weight)


def test_probe_logs_each_epoch_like_pretraining(tmp_path, capsys):
    tx, ty, vx, vy, c = _features()
    epochs = 6
    head, _, _, history, best_epoch = train_probe(tx, ty, vx, vy, c, epochs, 0.01, 32, out=tmp_path)
    # CSV: per epoch the mean loss, training and validation accuracy (Lightning writes the validation
    # loop's values and the training epoch's in two rows of the same epoch, each leaving the others empty)
    by_epoch: dict[int, dict[str, str]] = {}
    for r in csv.DictReader(open(tmp_path / "logs" / "version_0" / "metrics.csv")):
        by_epoch.setdefault(int(r["epoch"]), {}).update({k: v for k, v in r.items() if v})
    assert sorted(by_epoch) == list(range(epochs))
    rows = [by_epoch[e] for e in range(epochs)]
    for row, want in zip(rows, history):
        assert float(row["train/loss"]) == pytest.approx(want["loss"], rel=1e-6)
        assert float(row["train/acc"]) == pytest.approx(want["train_acc"], rel=1e-6)
        assert float(row["val/acc"]) == pytest.approx(want["val_acc"], rel=1e-6)
    assert best_epoch == 1 + max(range(epochs), key=lambda i: (float(rows[i]["val/acc"]), -i))
    assert list((tmp_path / "tensorboard" / "version_0").glob("events.out.tfevents.*"))
    # not a terminal: one progress line per epoch on stderr, no bar
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("epoch ")]
    assert [re.match(r"epoch (\d+)/6  step (\d+)  acc [0-9.]+  loss [0-9.]+  val_acc [0-9.]+  lr 0.01  \(",
                     line).groups() for line in lines] == [(str(e), str(4 * e)) for e in range(1, epochs + 1)]
    assert "\r" not in err
    # a second run into the same folder gets its own log version
    train_probe(tx, ty, vx, vy, c, 2, 0.01, 32, out=tmp_path, progress=False)
    assert (tmp_path / "logs" / "version_1" / "metrics.csv").is_file()
    assert not [line for line in capsys.readouterr().err.splitlines() if line.startswith("epoch ")]
