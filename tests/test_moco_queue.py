"""MoCo v2+'s queue: per-view queues, read once, written after both loss terms.

The bug these tests pin down: one lightly memory bank called twice per step, so the second
loss term had this batch's own keys among its negatives, and every step enqueued 2B keys.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

import solo_surgical.hosts.lightly.methods as methods
from solo_surgical.errors import UserError
from solo_surgical.hosts.lightly.queue import KeyQueue
from solo_surgical.hosts.lightly.runner import build_model

from conftest import tiny_cfg

B, K = 8, 16


def _model(tmp_path, queue_size: int = K):
    torch.manual_seed(0)
    cfg = tiny_cfg("pretrain", "mocov2plus", tmp_path / "run", tmp_path)  # batch 8, proj dims 16
    OmegaConf.update(cfg, "method.kwargs.queue_size", queue_size)
    model = build_model(cfg)
    model.train()
    return model


def _views(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 3, 32, 32, generator=g), torch.randn(B, 3, 32, 32, generator=g)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.detach().double(), dim=-1)


def _np_moco_loss(q1, q2, k1, k2, queue, tau: float) -> float:
    """Symmetric MoCo loss in float64 NumPy: q1 vs (k2, view-2 queue), q2 vs (k1, view-1 queue)."""
    def unit(x):
        x = np.asarray(x, dtype=np.float64)
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    def term(q, k, negatives):
        q, k, n = unit(q), unit(k), unit(negatives)
        logits = np.concatenate([(q * k).sum(-1, keepdims=True), q @ n.T], axis=1) / tau
        top = logits.max(axis=1, keepdims=True)
        log_z = np.log(np.exp(logits - top).sum(axis=1)) + top[:, 0]
        return float(np.mean(log_z - logits[:, 0]))

    return 0.5 * (term(q1, k2, queue[1]) + term(q2, k1, queue[0]))


def _as_np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def test_no_key_of_the_step_among_its_negatives_and_queue_written_after(tmp_path, monkeypatch):
    model = _model(tmp_path)
    calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    real = methods.moco_infonce

    def spy(query, key, negatives, temperature):
        calls.append((query.detach().clone(), key.detach().clone(), negatives.detach().clone()))
        return real(query, key, negatives, temperature)

    monkeypatch.setattr(methods, "moco_infonce", spy)
    for step in range(2):
        before = model.queue.keys.detach().clone()
        pointer = int(model.queue.pointer)
        calls.clear()
        out = model.ssl_step(*_views(step))
        k1, k2 = (_unit(k) for k in out.keys)
        assert len(calls) == 2
        (qa, ka, neg_a), (qb, kb, neg_b) = calls
        # no negative of either term is a key of this step (max cosine well below 1)
        this_step = torch.cat([k1, k2])
        for term, negatives in (("q1", neg_a), ("q2", neg_b)):
            assert (_unit(negatives) @ this_step.T).max() < 0.999, f"{term} sees a key of its own step"
        # q1 is paired with k2 and the view-2 queue; q2 with k1 and the view-1 queue, both pre-step
        assert torch.equal(qa, out.queries[0].detach()) and torch.allclose(_unit(ka), k2)
        assert torch.equal(qb, out.queries[1].detach()) and torch.allclose(_unit(kb), k1)
        assert torch.equal(neg_a, before[1]) and torch.equal(neg_b, before[0])
        # after the step: k1 in the view-1 queue, k2 in the view-2 queue, same slots, pointer + B
        slots = (pointer + torch.arange(B)) % K
        assert torch.allclose(model.queue.keys[0, slots].double(), k1, atol=1e-6)
        assert torch.allclose(model.queue.keys[1, slots].double(), k2, atol=1e-6)
        untouched = torch.ones(K, dtype=torch.bool)
        untouched[slots] = False
        assert torch.equal(model.queue.keys[:, untouched], before[:, untouched])
        assert int(model.queue.pointer) == (pointer + B) % K


def test_loss_matches_numpy_float64(tmp_path):
    model = _model(tmp_path)
    tau = model.hp.temperature
    for step in range(3):  # the 3rd step reads a queue written entirely by steps 1 and 2
        queue = _as_np(model.queue.keys)
        out = model.ssl_step(*_views(10 + step))
        q1, q2 = (_as_np(q) for q in out.queries)
        k1, k2 = (_as_np(k) for k in out.keys)
        expected = _np_moco_loss(q1, q2, k1, k2, queue, tau)
        assert out.loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_queue_survives_state_dict_round_trip(tmp_path):
    model = _model(tmp_path)
    for step in range(3):
        model.ssl_step(*_views(20 + step))
    state = model.state_dict()
    assert {"queue.keys", "queue.pointer"} <= set(state)  # persistent: Lightning saves them
    assert int(state["queue.pointer"]) == (3 * B) % K
    path = tmp_path / "state.pt"
    torch.save(state, path)
    fresh = _model(tmp_path)
    assert not torch.equal(fresh.queue.keys, model.queue.keys)
    fresh.load_state_dict(torch.load(path))
    assert torch.equal(fresh.queue.keys, model.queue.keys) and int(fresh.queue.pointer) == int(model.queue.pointer)
    a, b = model.ssl_step(*_views(30)), fresh.ssl_step(*_views(30))
    assert torch.equal(a.loss, b.loss)


def test_eval_mode_loss_leaves_queue_alone(tmp_path):
    model = _model(tmp_path)
    model.eval()
    before = model.queue.keys.clone()
    with torch.no_grad():
        model.ssl_step(*_views(40))
    assert torch.equal(model.queue.keys, before) and int(model.queue.pointer) == 0


def test_queue_wraps_around_and_refuses_a_batch_larger_than_itself():
    queue = KeyQueue(views=2, size=5, dim=3)
    written = []
    for step in range(3):  # 3 batches of 3 into 5 slots: 0-2, 3-4 + 0, 1-3
        keys = [torch.randn(3, 3), torch.randn(3, 3)]
        queue.enqueue(keys)
        written.append([F.normalize(k, dim=-1) for k in keys])
    assert int(queue.pointer) == 9 % 5
    for view in range(2):
        assert torch.allclose(queue.keys[view, [1, 2, 3]], written[2][view])
        assert torch.allclose(queue.keys[view, [4, 0]], written[1][view][1:])
    with pytest.raises(UserError, match="queue of 5 keys cannot hold a global batch of 6"):
        queue.enqueue([torch.randn(6, 3), torch.randn(6, 3)])


def test_queue_smaller_than_global_batch_is_refused_at_build(tmp_path):
    with pytest.raises(UserError, match="queue_size=4 is smaller than the global batch 8"):
        _model(tmp_path, queue_size=4)


def test_checkpoint_from_before_the_per_view_queue_resumes_with_a_fresh_queue(tmp_path):
    model = _model(tmp_path)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("queue.")}
    checkpoint = {"state_dict": state, "moco_queue": {"bank": torch.randn(K, 16), "ptr": torch.tensor([3])}}
    with pytest.warns(UserWarning, match="fresh queue"):
        model.on_load_checkpoint(checkpoint)
    assert "moco_queue" not in checkpoint
    model.load_state_dict(checkpoint["state_dict"])  # strict: the queue buffers are there again
    assert int(model.queue.pointer) == 0
