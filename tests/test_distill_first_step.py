"""The distillation term is informative from the very first step and without any memory.

The relation set of a query is the other view of the whole global batch followed by the
memory, so an empty memory (first step) or no memory at all (``memory_size=0``) still gives
a positive KL with a gradient on the student.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from solo_surgical.distill import DistillationHead, DistillConfig, load_teacher, symmetric_relational_kl

from conftest import make_teacher_checkpoint

B, SIZE, DS = 6, 32, 8


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    path = make_teacher_checkpoint(tmp_path_factory.mktemp("teacher") / "teacher.pth")
    return load_teacher(path)


def _student(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.AvgPool2d(4), nn.Flatten(), nn.Linear(3 * (SIZE // 4) ** 2, DS))


def _step(head, student, seed):
    """One host step: two views, student queries (with gradient) and detached keys."""
    g = torch.Generator().manual_seed(seed)
    x1, x2 = torch.randn(B, 3, SIZE, SIZE, generator=g), torch.randn(B, 3, SIZE, SIZE, generator=g)
    q1, q2 = student(x1), student(x2)
    q1.retain_grad()
    q2.retain_grad()
    keys = (q1.detach(), q2.detach())
    loss = head((x1, x2), (q1, q2), keys)
    return loss, (q1, q2), keys, (x1, x2)


@pytest.mark.parametrize("memory_size", [16, 0])
def test_first_step_with_empty_memory_gives_a_positive_kl_and_a_gradient(teacher, memory_size):
    head = DistillationHead(teacher, DS, DistillConfig(memory_size=memory_size)).train()
    student = _student()
    assert head.memory.student().shape == (0, DS)  # empty: this is the first step
    loss, (q1, q2), _, _ = _step(head, student, seed=1)
    assert loss.item() > 1e-3
    loss.backward()
    for q in (q1, q2):  # both directions reach the student queries
        assert q.grad is not None and q.grad.abs().sum() > 0
    layer = student[-1]
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in head.teacher.parameters())


def test_memory_size_zero_keeps_distilling_with_an_empty_memory(teacher):
    head = DistillationHead(teacher, DS, DistillConfig(memory_size=0)).train()
    student = _student()
    optimiser = torch.optim.SGD(student.parameters(), lr=0.1)
    for step in range(3):
        optimiser.zero_grad()
        loss, _, _, _ = _step(head, student, seed=10 + step)
        assert loss.item() > 1e-3, step
        loss.backward()
        assert student[-1].weight.grad.abs().sum() > 0, step
        optimiser.step()
        assert head.memory.student().shape == (0, DS) and head.memory.teacher().shape[0] == 0
        assert int(head.memory.filled) == 0


def test_memory_joins_the_relation_set_only_after_the_step(teacher):
    """Step 1 relates to the batch alone; step 2 to the batch, then step 1's view-2 keys."""
    head = DistillationHead(teacher, DS, DistillConfig(memory_size=16, student_temperature=0.1,
                                                       teacher_temperature=0.3)).train()
    student = _student()
    loss1, _, keys1, views1 = _step(head, student, seed=1)
    t1, t2 = head.teacher_embeddings(*views1)
    with torch.no_grad():
        q1, q2 = student(views1[0]), student(views1[1])
    batch_only = symmetric_relational_kl((q1, q2), keys1, None, (t1, t2), None, 0.1, 0.3)
    assert loss1.item() == pytest.approx(batch_only.item(), rel=1e-5)
    # after the step, the memory holds the (normalised) view-2 keys, slot-aligned with the teacher's
    assert torch.allclose(head.memory.student(), nn.functional.normalize(keys1[1], dim=1), atol=1e-6)
    assert torch.allclose(head.memory.teacher(), nn.functional.normalize(t2, dim=1), atol=1e-6)
    memory_s, memory_t = head.memory.student().clone(), head.memory.teacher().clone()
    loss2, _, keys2, views2 = _step(head, student, seed=2)
    u1, u2 = head.teacher_embeddings(*views2)
    with torch.no_grad():
        p1, p2 = student(views2[0]), student(views2[1])
    want = symmetric_relational_kl((p1, p2), keys2, memory_s, (u1, u2), memory_t, 0.1, 0.3)
    assert loss2.item() == pytest.approx(want.item(), rel=1e-5)
    assert int(head.memory.filled) == 2 * B


def test_a_global_batch_of_one_is_refused(teacher):
    head = DistillationHead(teacher, DS, DistillConfig(memory_size=16)).train()
    student = _student()
    x = torch.randn(1, 3, SIZE, SIZE)
    q = student(x)
    with pytest.raises(ValueError, match="at least 2 images"):
        head((x, x), (q, q), (q.detach(), q.detach()))


def test_a_distilled_run_with_a_global_batch_of_one_is_refused_before_any_work(tmp_path, image_dir, teacher_ckpt):
    from conftest import tiny_cfg

    from solo_surgical.errors import UserError
    from solo_surgical.hosts.lightly.runner import build_model

    cfg = tiny_cfg("pretrain", "distill_simclr", tmp_path / "run", image_dir, "data.batch_size=1",
                   f"distill.teacher={teacher_ckpt}")
    with pytest.raises(UserError, match=r"at least 2 images \(data.batch_size x devices x nodes\), got 1"):
        build_model(cfg)
    assert not (tmp_path / "run").exists()
    build_model(tiny_cfg("pretrain", "distill_simclr", tmp_path / "run", image_dir, "data.batch_size=2",
                         f"distill.teacher={teacher_ckpt}"))  # two images are enough
