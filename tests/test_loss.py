"""The relational KL against an independent NumPy computation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from solo_surgical.distill import relation_logits, relational_kl, symmetric_relational_kl


def _np_normalise(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _np_softmax(logits):
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def numpy_relational_kl(q, k, ms, t, u, mt, tau_s, tau_t, offset=0):
    """Written from the definition, sample by sample, in float64.

    q, t: (B, .) queries of this rank's rows; k, u: (N, .) keys of the whole global batch, the
    positive of query i at row offset + i; ms, mt: (K, .) aligned memories or None. The relation
    set of query i is every batch key (positive included), then every memory slot.
    """
    q, k, t, u = (_np_normalise(a.astype(np.float64)) for a in (q, k, t, u))
    ms = None if ms is None else _np_normalise(ms.astype(np.float64))
    mt = None if mt is None else _np_normalise(mt.astype(np.float64))
    assert offset + q.shape[0] <= k.shape[0]
    total = 0.0
    for i in range(q.shape[0]):
        ls, lt = [], []
        for j in range(k.shape[0]):  # the global batch, the positive (j == offset + i) included
            ls.append(float(np.dot(q[i], k[j])))
            lt.append(float(np.dot(t[i], u[j])))
        for j in range(0 if ms is None else ms.shape[0]):  # then the memory, slot by slot
            ls.append(float(np.dot(q[i], ms[j])))
            lt.append(float(np.dot(t[i], mt[j])))
        ps = _np_softmax(np.array([ls]) / tau_s)[0]
        pt = _np_softmax(np.array([lt]) / tau_t)[0]
        kl = 0.0
        for a, b in zip(pt, ps):
            kl += a * (np.log(a) - np.log(b))
        total += kl
    return total / q.shape[0]


@pytest.fixture
def tensors():
    rng = np.random.default_rng(0)
    B, Ds, Dt, K = 5, 7, 11, 9  # student and teacher embedding sizes differ on purpose
    return {name: rng.normal(size=shape).astype(np.float32) for name, shape in
            dict(q1=(B, Ds), q2=(B, Ds), k1=(B, Ds), k2=(B, Ds), ms=(K, Ds),
                 t1=(B, Dt), t2=(B, Dt), mt=(K, Dt)).items()}


def _t(x):
    return None if x is None else torch.from_numpy(x).double()


@pytest.mark.parametrize("with_memory", [True, False])
@pytest.mark.parametrize("tau_s,tau_t", [(0.2, 0.2), (0.1, 0.5), (0.7, 0.05)])
def test_one_direction_matches_numpy(tensors, with_memory, tau_s, tau_t):
    a = tensors
    ms, mt = (a["ms"], a["mt"]) if with_memory else (None, None)
    got = relational_kl(*(_t(x) for x in (a["q1"], a["k2"], ms, a["t1"], a["t2"], mt)), tau_s, tau_t)
    want = numpy_relational_kl(a["q1"], a["k2"], ms, a["t1"], a["t2"], mt, tau_s, tau_t)
    assert got.item() == pytest.approx(want, rel=1e-6, abs=1e-6)
    # the other images of the batch make the relations informative even without a memory
    assert want > 1e-3


@pytest.mark.parametrize("with_memory", [True, False])
@pytest.mark.parametrize("offset,rows", [(0, 2), (2, 3), (4, 1)])
def test_rows_of_a_global_batch_match_numpy(tensors, with_memory, offset, rows):
    """A rank holding rows offset..offset+rows of the global batch (keys already gathered)."""
    a = tensors
    ms, mt = (a["ms"], a["mt"]) if with_memory else (None, None)
    own = slice(offset, offset + rows)
    got = relational_kl(_t(a["q1"][own]), _t(a["k2"]), _t(ms), _t(a["t1"][own]), _t(a["t2"]), _t(mt),
                        0.1, 0.5, key_offset=offset)
    want = numpy_relational_kl(a["q1"][own], a["k2"], ms, a["t1"][own], a["t2"], mt, 0.1, 0.5, offset)
    assert got.item() == pytest.approx(want, rel=1e-6, abs=1e-6)
    # and the symmetric form over the same rows
    T = {k: _t(v) for k, v in a.items()}
    got_sym = symmetric_relational_kl((T["q1"][own], T["q2"][own]), (T["k1"], T["k2"]), _t(ms),
                                      (T["t1"], T["t2"]), _t(mt), 0.1, 0.5, key_offset=offset)
    back = numpy_relational_kl(a["q2"][own], a["k1"], ms, a["t2"][own], a["t1"], mt, 0.1, 0.5, offset)
    assert got_sym.item() == pytest.approx(0.5 * (want + back), rel=1e-6, abs=1e-6)


def test_relation_logits_columns():
    torch.manual_seed(0)
    q, keys, memory = torch.randn(3, 4), torch.randn(6, 4), torch.randn(5, 4)
    logits = relation_logits(q, keys, memory, 0.5)
    assert logits.shape == (3, 6 + 5)
    assert torch.allclose(logits[:, :6], q @ keys.T / 0.5) and torch.allclose(logits[:, 6:], q @ memory.T / 0.5)
    assert relation_logits(q, keys, None, 0.5).shape == (3, 6)
    assert relation_logits(q, keys, memory[:0], 0.5).shape == (3, 6)


def test_global_batch_of_one_is_refused():
    one = torch.randn(1, 4)
    for memory in (None, torch.randn(5, 4)):
        with pytest.raises(ValueError, match="at least 2 images"):
            relational_kl(one, one, memory, one, one, memory)
    with pytest.raises(ValueError, match="at least 2 images"):
        symmetric_relational_kl((one, one), (one, one), None, (one, one), None)


def test_offsets_outside_the_global_batch_are_refused():
    q, keys = torch.randn(3, 4), torch.randn(5, 4)
    with pytest.raises(ValueError, match="offset 3"):
        relational_kl(q, keys, None, q, keys, None, key_offset=3)
    with pytest.raises(ValueError, match="pass key_offset"):
        relational_kl(q, keys, None, q, keys, None)


def test_symmetric_is_mean_of_both_directions(tensors):
    a = tensors
    T = {k: _t(v) for k, v in a.items()}
    got = symmetric_relational_kl((T["q1"], T["q2"]), (T["k1"], T["k2"]), T["ms"], (T["t1"], T["t2"]), T["mt"], 0.2, 0.3)
    forward = numpy_relational_kl(a["q1"], a["k2"], a["ms"], a["t1"], a["t2"], a["mt"], 0.2, 0.3)
    backward = numpy_relational_kl(a["q2"], a["k1"], a["ms"], a["t2"], a["t1"], a["mt"], 0.2, 0.3)
    assert got.item() == pytest.approx(0.5 * (forward + backward), rel=1e-6, abs=1e-6)
    assert forward != pytest.approx(backward, rel=1e-3)  # the directions really differ
    one_way = symmetric_relational_kl((T["q1"], T["q2"]), (T["k1"], T["k2"]), T["ms"], (T["t1"], T["t2"]), T["mt"],
                                      0.2, 0.3, symmetric=False)
    assert one_way.item() == pytest.approx(forward, rel=1e-6, abs=1e-6)


def test_zero_when_similarities_equal():
    torch.manual_seed(0)
    q, k, m = torch.randn(6, 8), torch.randn(6, 8), torch.randn(10, 8)
    rotation, _ = torch.linalg.qr(torch.randn(8, 8))  # teacher = rotated student: same similarities
    loss = relational_kl(q, k, m, q @ rotation, k @ rotation, m @ rotation, 0.2, 0.2)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    # also over the batch alone (no memory) and for rows of a gathered global batch
    assert relational_kl(q, k, None, q @ rotation, k @ rotation, None).item() == pytest.approx(0.0, abs=1e-6)
    assert relational_kl(q[2:4], k, m, q[2:4] @ rotation, k @ rotation, m @ rotation,
                         key_offset=2).item() == pytest.approx(0.0, abs=1e-6)
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
    # same without a memory: the batch keys still take no gradient, the query does
    student.zero_grad()
    relational_kl(student(x1), k.detach(), None, t, u, None).backward()
    grad_query_only = student.weight.grad.clone()
    assert grad_query_only.abs().sum() > 0
    student.zero_grad()
    relational_kl(student(x1), student(x2), None, t, u, None).backward()
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
