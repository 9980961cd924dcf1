"""Aligned memory: same image in the same slot for student and teacher, across wrap-arounds and ranks."""
from __future__ import annotations

import os
import socket

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
