"""The deterministic probe (evaluation/logistic.py, ``linear --solver lbfgs``), checked against NumPy."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from solo_surgical.evaluation.logistic import DEFAULT_GRID, fit_logistic, train_logistic_probe


def _blobs(n: int, classes: int, dim: int, seed: int, spread: float = 1.5):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * spread
    y = rng.integers(0, classes, size=n)
    x = centres[y] + rng.normal(size=(n, dim))
    return torch.from_numpy(x), torch.from_numpy(y)


def _numpy_gradient(x: np.ndarray, y: np.ndarray, w: np.ndarray, b: np.ndarray, l2: float):
    """Gradient of mean CE + l2/2 ||W||^2, written out: softmax minus one-hot, averaged."""
    z = x @ w.T + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    return p.T @ x / len(y) + l2 * w, p.mean(0)


@pytest.mark.parametrize("l2", [1e-3, 0.1, 3.0])
def test_the_solution_is_the_optimum_numpy_says(l2):
    """At the returned W, b the gradient NumPy computes independently vanishes, and the objective is
    below that of small perturbations: the probe is the regularised optimum, not wherever it stopped."""
    x, y = _blobs(120, 4, 6, seed=1)
    w, b, loss, evals = fit_logistic(x, y, 4, l2)
    gw, gb = _numpy_gradient(x.numpy(), y.numpy(), w.numpy(), b.numpy(), l2)
    assert np.abs(gw).max() < 1e-6 and np.abs(gb).max() < 1e-6 and evals > 1

    def objective(w_, b_):
        z = x.numpy() @ w_.T + b_
        z = z - z.max(1, keepdims=True)
        ce = -(z[np.arange(len(y)), y.numpy()] - np.log(np.exp(z).sum(1))).mean()
        return ce + 0.5 * l2 * (w_ ** 2).sum()

    assert objective(w.numpy(), b.numpy()) == pytest.approx(loss, abs=1e-10)
    rng = np.random.default_rng(0)
    for _ in range(5):
        assert objective(w.numpy() + 1e-3 * rng.normal(size=w.shape), b.numpy()) > loss


def test_lambda_is_chosen_on_validation_and_the_answer_does_not_depend_on_anything_else():
    x, y = _blobs(300, 5, 20, seed=2, spread=0.4)
    tx, ty, vx, vy = x[:150], y[:150], x[150:], y[150:]
    probe = train_logistic_probe(tx, ty, vx, vy, 5)
    val = [row["val_acc"] for row in probe.history]
    assert [row["l2"] for row in probe.history] == sorted(DEFAULT_GRID)
    # the kept lambda has the best validation accuracy, and ties go to the larger lambda
    assert probe.l2 == max(row["l2"] for row in probe.history if row["val_acc"] == max(val))
    # the chosen head reproduces its validation accuracy and is the same when fitted again
    acc = 100.0 * float((probe.logits(vx).argmax(1) == vy).double().mean())
    assert acc == pytest.approx(max(val))
    torch.manual_seed(123)  # no randomness anywhere: another global seed, the same probe
    again = train_logistic_probe(tx, ty, vx, vy, 5)
    assert torch.equal(again.head.weight, probe.head.weight) and again.l2 == probe.l2
    # without validation frames nothing chooses lambda
    with pytest.raises(ValueError):
        train_logistic_probe(tx, ty, None, None, 5)
    assert train_logistic_probe(tx, ty, None, None, 5, grid=(0.01,)).l2 == 0.01


def test_linear_lbfgs_from_the_command_line(tmp_path, capsys):
    """``linear --solver lbfgs``: same numbers whatever --seed, the saved head equals the standardised one,
    and a --finetune with a probe solver is refused before anything is written."""
    from test_eval_temporal import make_prepared

    from solo_surgical.checkpoints import load_file
    from solo_surgical.cli import main

    data = make_prepared(tmp_path / "data")
    common = ["linear", "--data", str(data), "--backbone", "tiny", "--image-size", "32", "--solver", "lbfgs"]
    assert main([*common, "--out", str(tmp_path / "a")]) == 0
    assert main([*common, "--out", str(tmp_path / "b"), "--seed", "7"]) == 0
    a, b = (json.loads((tmp_path / d / "linear.json").read_text()) for d in "ab")
    assert a["solver"] == "lbfgs" and a["selection"].startswith("best validation accuracy (lambda")
    assert (a["val_acc"], a["test_acc"]) == (b["val_acc"], b["test_acc"]) and a["test_acc"] > 2 * 100 / 7
    # the checkpoint's head acts on raw features: applied to extracted features it gives the same predictions
    from solo_surgical.data.datasets import LabeledFrames, PreparedData
    from solo_surgical.evaluation.features import eval_transform, evaluation_backbone
    from solo_surgical.evaluation.linear import _features

    state = load_file(tmp_path / "a" / "linear.ckpt")["state_dict"]
    assert state["head.weight"].dtype == torch.float32 and state["head.weight"].shape[0] == 7
    prepared = PreparedData(str(data))
    module = evaluation_backbone(None, "tiny", 0)[0]
    test = LabeledFrames(prepared, "test", "standard", transform=eval_transform(32))
    x, y = _features(module, test, 64, 0, "cpu")
    pred = (x @ state["head.weight"].T + state["head.bias"]).argmax(1)
    assert 100.0 * float((pred == y).float().mean()) == pytest.approx(a["test_acc"], abs=1e-9)
    code = main(["linear", "--data", str(data), "--backbone", "tiny", "--finetune", "--solver", "lbfgs",
                 "--out", str(tmp_path / "ft")])
    assert code == 2 and "--finetune trains by SGD" in capsys.readouterr().err
    assert not (tmp_path / "ft").exists()
