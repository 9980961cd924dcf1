"""Per-call state of the lightly-host methods added beside SimCLR / MoCo / BYOL.

Each loss is recomputed in float64 NumPy from the step's own embeddings and from the state as
it was *before* the step (NNCLR's support set, DINO's centre, SwAV's prototypes and queue):
a composition that writes its state before reading it (a batch meeting itself), or that moves
it in eval mode, fails here. Stateless methods must give the same loss for a batch whatever
came before it.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from solo_surgical.distill.mlp import build_mlp, describe_mlp
from solo_surgical.hosts.lightly.runner import build_model

from conftest import tiny_cfg

B = 8
SMALL = {"dino": ["method.kwargs.num_prototypes=64"], "swav": ["method.kwargs.num_prototypes=32"],
         "nnclr": ["method.kwargs.queue_size=16", "method.kwargs.pred_hidden_dim=32"],
         "simsiam": ["method.kwargs.pred_hidden_dim=32"]}
NEW = ["simsiam", "barlow_twins", "vicreg", "nnclr", "dino", "swav"]


def _model(tmp_path, method: str, *extra: str):
    torch.manual_seed(0)
    cfg = tiny_cfg("pretrain", method, tmp_path / "run", tmp_path, *SMALL.get(method, []), *extra)
    model = build_model(cfg)
    model.train()
    return model


def _views(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 3, 32, 32, generator=g), torch.randn(B, 3, 32, 32, generator=g)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().cpu().numpy()


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    top = x.max(axis=-1, keepdims=True)
    return x - top - np.log(np.exp(x - top).sum(axis=-1, keepdims=True))


def _ntxent(a: np.ndarray, b: np.ndarray, tau: float) -> float:
    """NT-Xent over 2B anchors: a_i's positive is b_i, its negatives a_j, b_j (j != i); likewise for b_i."""
    a, b = _unit(a), _unit(b)
    n = a.shape[0]
    off = ~np.eye(n, dtype=bool)
    losses = []
    for x, y in ((a, b), (b, a)):
        for i in range(n):
            logits = np.concatenate([x[i] @ y.T, (x[i] @ x.T)[off[i]]]) / tau
            losses.append(-_log_softmax(logits)[i])
    return float(np.mean(losses))


# --- stateless methods: a batch's loss does not depend on what came before ------------------
@pytest.mark.parametrize("method", ["simsiam", "barlow_twins", "vicreg", "swav"])
def test_stateless_methods_forget_earlier_batches(tmp_path, method):
    a, b = _model(tmp_path, method), _model(tmp_path, method)
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        for seed in range(3):
            a.ssl_step(*_views(seed))  # weights unchanged (no optimiser step), any state would move
        la, lb = a.ssl_step(*_views(9)).loss, b.ssl_step(*_views(9)).loss
    assert torch.equal(la, lb), (method, la, lb)


def test_simsiam_loss_matches_numpy(tmp_path):
    model = _model(tmp_path, "simsiam")
    out = model.ssl_step(*_views(1))
    (p1, p2), (z1, z2) = (_np(q) for q in out.queries), (_np(k) for k in out.keys)
    expected = 0.5 * (-np.mean(np.sum(_unit(p1) * _unit(z2), 1)) - np.mean(np.sum(_unit(p2) * _unit(z1), 1)))
    assert out.loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert out.loss.requires_grad and not out.keys[0].requires_grad


def test_barlow_twins_loss_matches_numpy(tmp_path):
    model = _model(tmp_path, "barlow_twins")
    out = model.ssl_step(*_views(2))
    z1, z2 = (_np(q) for q in out.queries)

    def standardise(z):  # batch statistics, biased variance, BatchNorm's eps
        return (z - z.mean(0)) / np.sqrt(z.var(0) + 1e-5)

    c = standardise(z1).T @ standardise(z2) / B
    off = ~np.eye(c.shape[0], dtype=bool)
    expected = np.sum((np.diag(c) - 1) ** 2) + model.hp.lambda_param * np.sum(c[off] ** 2)
    assert out.loss.item() == pytest.approx(expected, rel=1e-4)


def test_vicreg_loss_matches_numpy(tmp_path):
    model = _model(tmp_path, "vicreg")
    hp = model.hp
    out = model.ssl_step(*_views(3))
    z1, z2 = (_np(q) for q in out.queries)

    def variance(z):
        return np.mean(np.maximum(0, 1 - np.sqrt(z.var(0, ddof=1) + hp.eps)))

    def covariance(z):
        zc = z - z.mean(0)
        cov = zc.T @ zc / (B - 1)
        return np.sum(cov[~np.eye(cov.shape[0], dtype=bool)] ** 2) / cov.shape[0]

    expected = (hp.sim_loss_weight * np.mean((z1 - z2) ** 2) + hp.var_loss_weight * 0.5 * (variance(z1) + variance(z2))
                + hp.cov_loss_weight * (covariance(z1) + covariance(z2)))
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)


# --- NNCLR: support set read before, written after, saved, untouched in eval ----------------
def test_nnclr_neighbours_come_from_the_support_set_before_the_step(tmp_path):
    model = _model(tmp_path, "nnclr")  # support set of 16 = two batches
    tau = model.hp.temperature
    for step in range(4):
        support = _np(model.support.keys[0])
        pointer = int(model.support.pointer)
        out = model.ssl_step(*_views(20 + step))
        (p1, p2), (z1, z2) = (_np(q) for q in out.queries), (_np(k) for k in out.keys)
        nn1 = support[np.argmax(_unit(z1) @ support.T, axis=1)]
        nn2 = support[np.argmax(_unit(z2) @ support.T, axis=1)]
        expected = 0.5 * (_ntxent(nn1, p2, tau) + _ntxent(nn2, p1, tau))
        assert out.loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-6), step
        # no neighbour is an embedding of this step (a support set written first would return z itself)
        this_step = _unit(np.concatenate([z1, z2]))
        assert (np.concatenate([nn1, nn2]) @ this_step.T).max() < 0.9999
        # then z1 of the step is written into the oldest slots, each image once
        slots = (pointer + np.arange(B)) % 16
        assert np.allclose(_np(model.support.keys[0])[slots], _unit(z1), atol=1e-6)
        assert int(model.support.pointer) == (pointer + B) % 16


def test_nnclr_support_set_is_saved_and_eval_leaves_it_alone(tmp_path):
    model = _model(tmp_path, "nnclr")
    model.ssl_step(*_views(30))
    state = model.state_dict()
    assert {"support.keys", "support.pointer"} <= set(state)  # lightly's NNMemoryBankModule is not persistent
    fresh = _model(tmp_path, "nnclr")
    fresh.load_state_dict(state)
    assert torch.equal(fresh.support.keys, model.support.keys)
    model.eval()
    before = model.support.keys.clone()
    with torch.no_grad():
        model.ssl_step(*_views(31))
    assert torch.equal(model.support.keys, before) and int(model.support.pointer) == B


# --- DINO: centre read then moved once per step, EMA teacher, frozen last layer -------------
def _dino_logits(head, bottleneck: np.ndarray) -> np.ndarray:
    """Weight-normalised last layer in NumPy: W_k = g_k v_k / |v_k|."""
    g, v = _np(head.last_layer.weight_g), _np(head.last_layer.weight_v)
    w = g * v / np.linalg.norm(v, axis=1, keepdims=True)
    return _unit(bottleneck) @ w.T


def test_dino_loss_uses_the_centre_before_the_step_and_moves_it_once(tmp_path):
    model = _model(tmp_path, "dino")
    hp = model.hp
    with torch.no_grad():  # a non-zero centre makes "which centre was used" observable
        model.criterion.center.copy_(torch.randn_like(model.criterion.center))
    for step in range(3):
        center = _np(model.criterion.center).reshape(-1)
        out = model.ssl_step(*_views(40 + step))
        s = [_dino_logits(model.projector, _np(b)) for b in out.queries]
        t = [_dino_logits(model.projector_momentum, _np(b)) for b in out.keys]
        tau_t = hp.warmup_teacher_temp  # epoch 0 of the warm-up
        targets = [np.exp(_log_softmax((x - center) / tau_t)) for x in t]
        logp = [_log_softmax(x / hp.student_temperature) for x in s]
        expected = 0.5 * (-np.mean(np.sum(targets[0] * logp[1], 1)) - np.mean(np.sum(targets[1] * logp[0], 1)))
        assert out.loss.item() == pytest.approx(expected, rel=1e-5), step
        moved = hp.center_momentum * center + (1 - hp.center_momentum) * np.concatenate(t).mean(0)
        assert np.allclose(_np(model.criterion.center).reshape(-1), moved, atol=1e-6)
    assert "criterion.center" in model.state_dict()
    model.eval()
    before = model.criterion.center.clone()
    with torch.no_grad():
        model.ssl_step(*_views(49))
    assert torch.equal(model.criterion.center, before)


def test_dino_teacher_starts_as_the_student_and_never_gets_gradients(tmp_path):
    model = _model(tmp_path, "dino")
    assert model.projector_momentum is not model.projector
    for (name, s), (_, t) in zip(model.projector.state_dict().items(), model.projector_momentum.state_dict().items()):
        assert torch.equal(s, t), name
    assert not any(p.requires_grad for p in model.projector_momentum.parameters())
    trainable = {id(p) for group in model.learnable_params() for p in group["params"]}
    assert not trainable & {id(p) for p in model.projector_momentum.parameters()}
    assert not trainable & {id(p) for p in model.backbone_momentum.parameters()}
    out = model.ssl_step(*_views(50))
    out.loss.backward()
    assert model.projector.last_layer.weight_v.grad is not None
    model.on_after_backward()  # epoch 0 < freeze_last_layer = 1: the paper drops these gradients
    assert model.projector.last_layer.weight_v.grad is None
    assert model.projector.layers[0].weight.grad is not None


# --- SwAV: prototypes normalised before the step, queue read before written -----------------
def _sinkhorn(scores: np.ndarray, eps: float, iterations: int) -> np.ndarray:
    q = np.exp(scores / eps).T            # (K, N)
    q /= q.sum()
    k, n = q.shape
    for _ in range(iterations):
        q /= q.sum(axis=1, keepdims=True) * k
        q /= q.sum(axis=0, keepdims=True) * n
    return (q * n).T


def _swav_expected(model, z1, z2, queue) -> float:
    hp = model.hp
    c = _np(model.prototypes.weight)
    s1, s2 = z1 @ c.T, z2 @ c.T
    losses = []
    for own, other, v in ((s1, s2, 0), (s2, s1, 1)):
        scores = own if queue is None else np.concatenate([own, queue[v] @ c.T])
        q = _sinkhorn(scores, hp.sinkhorn_epsilon, hp.sinkhorn_iterations)[: own.shape[0]]
        losses.append(-np.mean(np.sum(q * _log_softmax(other / hp.temperature), 1)))
    return float(np.mean(losses))


def test_swav_prototypes_are_normalised_at_batch_start_and_frozen_in_epoch_0(tmp_path):
    model = _model(tmp_path, "swav")
    with torch.no_grad():
        model.prototypes.weight.mul_(3.0)
    model.on_train_batch_start(None, 0)
    assert torch.allclose(model.prototypes.weight.norm(dim=1), torch.ones(model.hp.num_prototypes), atol=1e-6)
    out = model.ssl_step(*_views(60))
    z1, z2 = (_np(q) for q in out.queries)
    assert out.loss.item() == pytest.approx(_swav_expected(model, z1, z2, None), rel=1e-5)
    out.loss.backward()
    assert model.prototypes.weight.grad is not None
    model.on_after_backward()
    assert model.prototypes.weight.grad is None and model.projector.layers[0].weight.grad is not None


def test_swav_queue_joins_the_codes_once_full_and_never_holds_the_step(tmp_path):
    model = _model(tmp_path, "swav", "method.kwargs.queue_size=16", "method.kwargs.queue_start_epoch=0")
    for step in range(4):
        in_use = step >= 2  # 16 slots = two batches of 8
        assert model.queue_in_use() == in_use
        queue = _np(model.queue.keys) if in_use else None
        pointer = int(model.queue.pointer)
        out = model.ssl_step(*_views(70 + step))
        z1, z2 = (_np(q) for q in out.queries)
        assert out.loss.item() == pytest.approx(_swav_expected(model, z1, z2, queue), rel=1e-5), step
        slots = (pointer + np.arange(B)) % 16
        assert np.allclose(_np(model.queue.keys)[0, slots], z1, atol=1e-6)
        assert np.allclose(_np(model.queue.keys)[1, slots], z2, atol=1e-6)
    assert {"queue.keys", "queue.pointer", "queue_filled"} <= set(model.state_dict())
    model.eval()
    before, filled = model.queue.keys.clone(), int(model.queue_filled)
    with torch.no_grad():
        model.ssl_step(*_views(79))
    assert torch.equal(model.queue.keys, before) and int(model.queue_filled) == filled


def test_swav_queue_waits_for_its_start_epoch(tmp_path):
    model = _model(tmp_path, "swav", "method.kwargs.queue_size=16")  # paper default: from epoch 15
    model.ssl_step(*_views(80))
    assert int(model.queue_filled) == 0 and int(model.queue.pointer) == 0


# --- every new method: teacher heads serialise, the distillation sizes agree ----------------
@pytest.mark.parametrize("method", NEW)
def test_teacher_heads_serialise_and_embed_like_the_queries(tmp_path, method):
    model = _model(tmp_path, method)
    model.eval()
    heads = model.embedding_heads()
    rebuilt = build_mlp(describe_mlp(heads["projector"]))
    rebuilt.load_state_dict(heads["projector"].state_dict() if isinstance(heads["projector"], torch.nn.Sequential)
                            else heads["projector"].layers.state_dict())
    rebuilt.eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        feats = model.backbone(x)
        emb = rebuilt(feats)
        out = model.ssl_step(x, x)
    # the exported head embeds an image as the method's distillation key does (DINO: the EMA
    # teacher's bottleneck, equal to the student's at step 0; SwAV: the unit projection)
    assert emb.shape[1] == out.keys[0].shape[1] == out.queries[0].shape[1] == model.hp.proj_output_dim
    assert torch.allclose(F.normalize(emb, dim=1), F.normalize(out.keys[0], dim=1), atol=1e-5)


@pytest.mark.parametrize("method", NEW)
def test_teacher_stage_exports_a_teacher_for_every_new_method(tmp_path, method, image_dir):
    """`solo-surgical teacher method=<m>`: frozen public backbone, heads trained, a loadable teacher
    whose embedding is the exported head on the public backbone (its size: proj_output_dim)."""
    from solo_surgical.backbones import build_backbone
    from solo_surgical.distill import load_teacher
    from solo_surgical.hosts.lightly.runner import run_teacher_stage

    torch.manual_seed(11)
    public, _ = build_backbone("tiny")
    torch.save(public.state_dict(), tmp_path / "public.pth")
    cfg = tiny_cfg("teacher", method, tmp_path / "run", image_dir, *SMALL.get(method, []),
                   f"teacher.source={tmp_path / 'public.pth'}", "trainer.max_epochs=1")
    teacher = load_teacher(run_teacher_stage(cfg))
    assert teacher.out_dim == int(cfg.method.kwargs.proj_output_dim)
    for key, value in public.state_dict().items():  # teacher.bn=frozen: the public backbone is untouched
        assert torch.equal(teacher.backbone.state_dict()[key], value), key
    x = torch.randn(4, 3, 32, 32)
    public.eval()
    with torch.no_grad():
        assert torch.allclose(teacher(x), teacher.projector(public(x)), atol=1e-6)
        assert teacher(x).shape == (4, teacher.out_dim)


DDP_CASES = {  # method -> (extra overrides, state_dict key, value expected after 2 steps of a global batch of 16)
    "distill_nnclr": (["method.kwargs.queue_size=48"], "support.pointer", 32),     # gathered: 2 x 16 images
    "distill_swav": (["method.kwargs.queue_size=16", "method.kwargs.queue_start_epoch=0"], "queue_filled", 16),  # per rank: 2 x 8
    "distill_dino": ([], None, None),
    "distill_barlow_twins": ([], None, None),
    "distill_vicreg": ([], None, None),
    "distill_simsiam": ([], None, None),
}


@pytest.mark.slow
@pytest.mark.parametrize("method", list(DDP_CASES))
def test_two_process_ddp_fit(tmp_path, method, image_dir, teacher_ckpt):
    """`trainer.strategy=ddp trainer.devices=2` on CPU (gloo): every added method trains with its
    collectives (NNCLR's gathered support set, SwAV's per-rank queue, DINO's all-reduced centre,
    Barlow Twins' all-reduced correlation, VICReg's gathered statistics)."""
    import os
    import subprocess
    import sys

    from conftest import TINY

    base = method.removeprefix("distill_")
    extra, key, expected = DDP_CASES[method]
    cmd = [sys.executable, "-m", "solo_surgical.cli", "pretrain", *TINY, f"method={method}", f"data.root={image_dir}",
           f"run.dir={tmp_path / 'run'}", "trainer.max_epochs=1", f"distill.teacher={teacher_ckpt}",
           "distill.memory_size=48", "trainer.strategy=ddp", "trainer.devices=2", *SMALL.get(base, []), *extra]
    result = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 2  # 32 images / (2 ranks x 8)
    assert int(ckpt["state_dict"]["distill.memory.filled"]) == 32
    if key is not None:
        assert int(ckpt["state_dict"][key]) == expected
