"""The relational KL against an independent NumPy computation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from solo_surgical.distill import relational_kl, symmetric_relational_kl


def _np_normalise(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _np_softmax(logits):
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def numpy_relational_kl(q, k, ms, t, u, mt, tau_s, tau_t):
    """Written from the paper's definition, sample by sample, in float64."""
    q, k, t, u = (_np_normalise(a.astype(np.float64)) for a in (q, k, t, u))
    total = 0.0
    for i in range(q.shape[0]):
        ls = [q[i] @ k[i]] + ([] if ms is None else list(_np_normalise(ms.astype(np.float64)) @ q[i]))
        lt = [t[i] @ u[i]] + ([] if mt is None else list(_np_normalise(mt.astype(np.float64)) @ t[i]))
        ps = _np_softmax(np.array([ls]) / tau_s)[0]
        pt = _np_softmax(np.array([lt]) / tau_t)[0]
        total += float(np.sum(pt * (np.log(pt) - np.log(ps))))
    return total / q.shape[0]


@pytest.fixture
def tensors():
    rng = np.random.default_rng(0)
    B, Ds, Dt, K = 5, 7, 11, 9  # student and teacher embedding sizes differ on purpose
    return {name: rng.normal(size=shape).astype(np.float32) for name, shape in
            dict(q1=(B, Ds), q2=(B, Ds), k1=(B, Ds), k2=(B, Ds), ms=(K, Ds),
                 t1=(B, Dt), t2=(B, Dt), mt=(K, Dt)).items()}


@pytest.mark.parametrize("with_memory", [True, False])
@pytest.mark.parametrize("tau_s,tau_t", [(0.2, 0.2), (0.1, 0.5), (0.7, 0.05)])
def test_one_direction_matches_numpy(tensors, with_memory, tau_s, tau_t):
    a = tensors
    ms, mt = (a["ms"], a["mt"]) if with_memory else (None, None)
    got = relational_kl(*(torch.from_numpy(x) if x is not None else None for x in
                          (a["q1"], a["k2"], ms, a["t1"], a["t2"], mt)), tau_s, tau_t)
    want = numpy_relational_kl(a["q1"], a["k2"], ms, a["t1"], a["t2"], mt, tau_s, tau_t)
    assert got.item() == pytest.approx(want, rel=1e-5, abs=1e-6)
    if not with_memory:
        # one logit only: both distributions are the point mass, the KL is exactly zero
        assert want == pytest.approx(0.0, abs=1e-12)


def test_symmetric_is_mean_of_both_directions(tensors):
    a = tensors
    T = {k: torch.from_numpy(v) for k, v in a.items()}
    got = symmetric_relational_kl((T["q1"], T["q2"]), (T["k1"], T["k2"]), T["ms"], (T["t1"], T["t2"]), T["mt"], 0.2, 0.3)
    forward = numpy_relational_kl(a["q1"], a["k2"], a["ms"], a["t1"], a["t2"], a["mt"], 0.2, 0.3)
    backward = numpy_relational_kl(a["q2"], a["k1"], a["ms"], a["t2"], a["t1"], a["mt"], 0.2, 0.3)
    assert got.item() == pytest.approx(0.5 * (forward + backward), rel=1e-5)
    assert forward != pytest.approx(backward, rel=1e-3)  # the directions really differ
    one_way = symmetric_relational_kl((T["q1"], T["q2"]), (T["k1"], T["k2"]), T["ms"], (T["t1"], T["t2"]), T["mt"],
                                      0.2, 0.3, symmetric=False)
    assert one_way.item() == pytest.approx(forward, rel=1e-5)


def test_zero_when_similarities_equal():
    torch.manual_seed(0)
    q, k, m = torch.randn(6, 8), torch.randn(6, 8), torch.randn(10, 8)
    rotation, _ = torch.linalg.qr(torch.randn(8, 8))  # teacher = rotated student: same similarities
    loss = relational_kl(q, k, m, q @ rotation, k @ rotation, m @ rotation, 0.2, 0.2)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    # and clearly positive once the teacher's relations differ
    assert relational_kl(q, k, m, torch.randn(6, 8), torch.randn(6, 8), m, 0.2, 0.2).item() > 0.05


def test_gradient_reaches_student_query_only():
    torch.manual_seed(0)
    student = torch.nn.Linear(4, 8)
    teacher = torch.nn.Linear(4, 5)
    x1, x2, mem_x = torch.randn(6, 4), torch.randn(6, 4), torch.randn(12, 4)
    q = student(x1)
    k = student(x2)  # would carry gradient if the loss did not detach keys
    with torch.no_grad():
        t, u, mt = teacher(x1), teacher(x2), teacher(mem_x)
    ms = student(mem_x)
    teacher_param = torch.nn.Parameter(t.clone())  # a teacher tensor that *could* take a gradient
    loss = relational_kl(q, k, ms, teacher_param, u, mt)
    loss.backward()
    assert student.weight.grad is not None and student.weight.grad.abs().sum() > 0
    assert teacher_param.grad is None
    assert all(p.grad is None for p in teacher.parameters())
    # the gradient equals the one through the query alone (keys and memory detached)
    student.zero_grad()
    relational_kl(student(x1), k.detach(), ms.detach(), t, u, mt).backward()
    grad_query_only = student.weight.grad.clone()
    student.zero_grad()
    relational_kl(student(x1), student(x2), student(mem_x), t, u, mt).backward()
    assert torch.allclose(student.weight.grad, grad_query_only, atol=1e-7)


def test_mismatched_memories_are_refused():
    q = torch.randn(3, 4)
    with pytest.raises(ValueError, match="memory"):
        relational_kl(q, q, torch.randn(5, 4), q, q, torch.randn(4, 4))


def test_weighting_presets():
    from solo_surgical.distill import DistillConfig, WEIGHT_PRESETS

    authors = DistillConfig(preset="authors")
    # the released code computes `loss += loss + 5 * kd`: 2 x SSL + 5 x KL
    ssl, kd = 0.7, 0.3
    loss = ssl
    loss += loss + 5 * kd
    assert authors.ssl_weight * ssl + authors.weight * kd == pytest.approx(loss)
    assert (DistillConfig().ssl_weight, DistillConfig().weight) == WEIGHT_PRESETS["default"]
    with pytest.raises(ValueError, match="unknown distill.preset"):
        DistillConfig(preset="paper-ish")
