"""Aligned memory: same image in the same slot for student and teacher, across wrap-arounds and ranks."""
from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from solo_surgical.distill import AlignedMemory


def _keys_of(image_ids, dim, salt):
    """Deterministic key of an image id, different for student and teacher (salt)."""
    ids = torch.as_tensor(image_ids, dtype=torch.float64).view(-1, 1)
    cols = torch.arange(dim, dtype=torch.float64).view(1, -1)
    return torch.sin(ids * (cols + 1) * 0.37 + salt).float()


def _image_of(key, dim, salt, candidates):
    table = _keys_of(candidates, dim, salt)
    return candidates[int(torch.cdist(key.view(1, -1), table).argmin())]


def test_slots_stay_aligned_through_wraparound():
    memory = AlignedMemory(size=10, student_dim=4, teacher_dim=6)  # 10 is not a multiple of 3
    image_ids = list(range(100, 100 + 3 * 9))
    for step in range(9):  # 27 images through 10 slots: wraps around twice
        batch = image_ids[3 * step: 3 * step + 3]
        memory.enqueue(_keys_of(batch, 4, 0.0), _keys_of(batch, 6, 1.0))
    student, teacher = memory.student(), memory.teacher()
    assert student.shape == (10, 4) and teacher.shape == (10, 6)
    for slot in range(10):
        s_img = _image_of(student[slot], 4, 0.0, image_ids)
        t_img = _image_of(teacher[slot], 6, 1.0, image_ids)
        assert s_img == t_img
    # FIFO: the 10 most recent images are held, at slot (position in stream) % 10
    for position, image in enumerate(image_ids[-10:], start=len(image_ids) - 10):
        assert _image_of(student[position % 10], 4, 0.0, image_ids) == image
    assert int(memory.pointer) == 27 % 10


def test_only_filled_slots_are_returned_and_state_is_in_state_dict():
    memory = AlignedMemory(size=8, student_dim=2, teacher_dim=3)
    assert memory.student().shape == (0, 2)
    memory.enqueue(torch.ones(3, 2), torch.ones(3, 3))
    assert memory.student().shape == (3, 2) and memory.teacher().shape == (3, 3)
    state = memory.state_dict()
    assert set(state) == {"student_keys", "teacher_keys", "pointer", "filled"}
    restored = AlignedMemory(size=8, student_dim=2, teacher_dim=3)
    restored.load_state_dict(state)
    assert torch.equal(restored.student(), memory.student()) and int(restored.pointer) == 3


def test_batch_larger_than_memory_is_refused():
    memory = AlignedMemory(size=4, student_dim=2, teacher_dim=2)
    with pytest.raises(ValueError, match="memory_size >= 5"):
        memory.enqueue(torch.zeros(5, 2), torch.zeros(5, 2))


def test_mismatched_batches_are_refused():
    memory = AlignedMemory(size=4, student_dim=2, teacher_dim=2)
    with pytest.raises(ValueError, match="same images"):
        memory.enqueue(torch.zeros(2, 2), torch.zeros(3, 2))


def _ddp_worker(rank, world, port, out_dir):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    memory = AlignedMemory(size=10, student_dim=4, teacher_dim=6)
    for step in range(5):
        # each rank holds different images; rank 1's last batch is smaller (uneven epoch end)
        n = 2 if (rank == 1 and step == 4) else 3
        ids = [1000 * rank + 10 * step + j for j in range(n)]
        memory.enqueue(_keys_of(ids, 4, 0.0), _keys_of(ids, 6, 1.0))
    torch.save(memory.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_ddp_memories_identical_and_aligned(tmp_path):
    mp.start_processes(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    s0, s1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for key in s0:
        assert torch.equal(s0[key], s1[key]), key
    # 5 steps x (3 + 3) images, minus one on the last step = 29 writes through 10 slots
    assert int(s0["pointer"]) == 29 % 10 and int(s0["filled"]) == 10
    candidates = [1000 * r + 10 * s + j for r in (0, 1) for s in range(5) for j in range(3)]
    held = set()
    for slot in range(10):
        s_img = _image_of(s0["student_keys"][slot], 4, 0.0, candidates)
        assert s_img == _image_of(s0["teacher_keys"][slot], 6, 1.0, candidates)
        held.add(s_img)
    # both ranks' images are present (gathered before enqueueing)
    assert any(i >= 1000 for i in held) and any(i < 1000 for i in held)


# ---- the relational KL across two ranks with uneven batches -------------------------------------

SIZES = (3, 5)  # rank 0 holds 3 images, rank 1 holds 5: uneven on purpose
DS_, DT_, K_ = 6, 9, 7  # student and teacher embedding sizes differ


def _global_data(seed):
    """The same global batch on every rank (and in the parent): embeddings, memories and views."""
    g = torch.Generator().manual_seed(seed)
    n = sum(SIZES)
    r = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    return dict(q1=r(n, DS_), q2=r(n, DS_), k1=r(n, DS_), k2=r(n, DS_), t1=r(n, DT_), t2=r(n, DT_),
                ms=r(K_, DS_), mt=r(K_, DT_), x1=r(n, 3, 8, 8).float(), x2=r(n, 3, 8, 8).float())


def _tiny_models():
    from torch import nn

    from solo_surgical.distill import FrozenTeacher

    torch.manual_seed(5)
    teacher = FrozenTeacher(nn.Sequential(nn.AvgPool2d(2), nn.Flatten()), nn.Linear(48, DT_), out_dim=DT_)
    student = nn.Sequential(nn.AvgPool2d(2), nn.Flatten(), nn.Linear(48, DS_))
    return teacher, student


def _loss_worker(rank, world, port, out_dir):
    import torch.distributed as dist

    from solo_surgical.distill import DistillationHead, DistillConfig, relational_kl, symmetric_relational_kl

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    offset = sum(SIZES[:rank])
    own = slice(offset, offset + SIZES[rank])
    d = _global_data(0)
    local = {k: (v[own] if k not in ("ms", "mt") else v) for k, v in d.items()}
    out = {"offset": offset}
    # the loss functions given this rank's rows only: they gather the keys themselves
    out["kl_memory"] = relational_kl(local["q1"], local["k2"], local["ms"], local["t1"], local["t2"], local["mt"],
                                     0.1, 0.5).item()
    out["kl_no_memory"] = relational_kl(local["q1"], local["k2"], None, local["t1"], local["t2"], None,
                                        0.1, 0.5).item()
    out["symmetric"] = symmetric_relational_kl((local["q1"], local["q2"]), (local["k1"], local["k2"]), local["ms"],
                                               (local["t1"], local["t2"]), local["mt"], 0.1, 0.5).item()
    # the head over two steps (empty memory, then the first step's global batch in memory)
    teacher, student = _tiny_models()
    head = DistillationHead(teacher, DS_, DistillConfig(memory_size=16, student_temperature=0.1,
                                                         teacher_temperature=0.5)).train()
    for step in range(2):
        views = _global_data(100 + step)
        x1, x2 = views["x1"][own], views["x2"][own]
        q1, q2 = student(x1), student(x2)
        loss = head((x1, x2), (q1, q2), (q1.detach(), q2.detach()))
        out[f"head{step}"] = loss.item()
    out["memory_filled"] = int(head.memory.filled)
    out["memory_student"] = head.memory.student().clone()
    out["memory_teacher"] = head.memory.teacher().clone()
    torch.save(out, os.path.join(out_dir, f"loss_rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_ddp_loss_equals_single_process_reference_on_the_global_batch(tmp_path):
    from solo_surgical.distill import relational_kl
    from test_loss import numpy_relational_kl

    mp.start_processes(_loss_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True,
                       start_method="spawn")
    results = [torch.load(tmp_path / f"loss_rank{r}.pt") for r in (0, 1)]
    d = {k: v.numpy() for k, v in _global_data(0).items()}
    teacher, student = _tiny_models()
    with torch.no_grad():
        steps = []
        for step in range(2):
            v = _global_data(100 + step)
            steps.append({"q1": student(v["x1"]).double().numpy(), "q2": student(v["x2"]).double().numpy(),
                          "t1": teacher(v["x1"]).double().numpy(), "t2": teacher(v["x2"]).double().numpy()})
    for rank, out in enumerate(results):
        offset = sum(SIZES[:rank])
        assert out["offset"] == offset
        own = slice(offset, offset + SIZES[rank])
        want = numpy_relational_kl(d["q1"][own], d["k2"], d["ms"], d["t1"][own], d["t2"], d["mt"], 0.1, 0.5, offset)
        assert out["kl_memory"] == pytest.approx(want, rel=1e-6, abs=1e-6), rank
        want = numpy_relational_kl(d["q1"][own], d["k2"], None, d["t1"][own], d["t2"], None, 0.1, 0.5, offset)
        assert out["kl_no_memory"] == pytest.approx(want, rel=1e-6, abs=1e-6), rank
        back = numpy_relational_kl(d["q2"][own], d["k1"], d["ms"], d["t2"][own], d["t1"], d["mt"], 0.1, 0.5, offset)
        forward = numpy_relational_kl(d["q1"][own], d["k2"], d["ms"], d["t1"][own], d["t2"], d["mt"], 0.1, 0.5, offset)
        assert out["symmetric"] == pytest.approx(0.5 * (forward + back), rel=1e-6, abs=1e-6), rank
        # a rank's rows are not the whole batch: its loss differs from a loss over its rows alone
        alone = relational_kl(*(torch.from_numpy(d[k][own]) for k in ("q1", "k2")), torch.from_numpy(d["ms"]),
                              *(torch.from_numpy(d[k][own]) for k in ("t1", "t2")), torch.from_numpy(d["mt"]), 0.1, 0.5)
        assert out["kl_memory"] != pytest.approx(alone.item(), rel=1e-3)
        # the head: step 0 relates to the global batch alone, step 1 also to step 0's view-2 keys
        memory = (None, None)
        for step, s in enumerate(steps):
            ref = 0.5 * (numpy_relational_kl(s["q1"][own], s["q2"], memory[0], s["t1"][own], s["t2"], memory[1],
                                             0.1, 0.5, offset)
                         + numpy_relational_kl(s["q2"][own], s["q1"], memory[0], s["t2"][own], s["t1"], memory[1],
                                               0.1, 0.5, offset))
            assert out[f"head{step}"] == pytest.approx(ref, rel=1e-5, abs=1e-6), (rank, step)
            memory = (s["q2"], s["t2"])
        assert out["memory_filled"] == 2 * sum(SIZES)
    # both ranks hold the same, slot-aligned memory: step 0 then step 1, global batch in rank order
    assert torch.equal(results[0]["memory_student"], results[1]["memory_student"])
    assert torch.equal(results[0]["memory_teacher"], results[1]["memory_teacher"])
    expected_teacher = torch.nn.functional.normalize(torch.from_numpy(
        np.concatenate([steps[0]["t2"], steps[1]["t2"]])), dim=1).float()
    assert torch.allclose(results[0]["memory_teacher"], expected_teacher, atol=1e-5)
