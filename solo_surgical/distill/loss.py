"""Relational distillation loss (Ding, Liu, Li, MICCAI 2022, arXiv 2205.09292).

The student does not copy the teacher's embeddings (their sizes may differ); it copies
the teacher's *relations*. With the global batch of N images (every DDP rank's batch,
concatenated in rank order) and a memory of K keys of earlier images, the relation set of
a query is the N keys of the other view of the global batch followed by the K memory keys.
For the query of local row i on a rank whose lower ranks hold ``offset`` images in all
(its positive is global column ``offset + i``), with ``·`` the dot product of
L2-normalised vectors::

    p_s(i) = softmax([q_i·k_0, ..., q_i·k_{N-1}, q_i·m^s_0, ..., q_i·m^s_{K-1}] / τ_s)
    p_t(i) = softmax([t_i·u_0, ..., t_i·u_{N-1}, t_i·m^t_0, ..., t_i·m^t_{K-1}] / τ_t)
    loss   = mean_i KL(p_t(i) || p_s(i))

where q / k are the student's query of view a / keys of view b, t / u the teacher's
embeddings of the same views, and m^s / m^t the student / teacher memories. Column j is the
same image for student and teacher (and on every rank): the batch keys are gathered in
rank order, and the memories are aligned slot by slot (see
:mod:`solo_surgical.distill.memory`). Because the other images of the batch are in the
relation set, the distributions are informative from the very first step, when the memory
is still empty, and also with no memory at all (``distill.memory_size=0``). A global
batch of a single image with no memory would leave only the positive, a one-point
distribution with KL 0 and no gradient, so a global batch of 1 is refused.

Only the student query carries gradient: keys, memories and everything of the teacher
are detached (keys are gathered from other ranks without gradient anyway).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .memory import gather_across_ranks


def gather_keys(tensors: Sequence[Tensor]) -> tuple[list[Tensor], int]:
    """Gather several per-image tensors of this rank's batch from every DDP rank, in one collective.

    Args:
        tensors: each (B, D_n): rows describe the same B local images in the same order
            (e.g. student keys and teacher embeddings of one or both views); sizes D_n may differ.

    Returns:
        ``(gathered, offset)``: ``gathered[n]`` is (N, D_n), the global batch in rank order
        (detached), and ``offset`` is the number of images held by lower ranks, so local row i
        is global row ``offset + i``. Without DDP, N = B and offset = 0.
    """
    if not tensors:
        raise ValueError("gather_keys needs at least one tensor")
    rows = tensors[0].shape[0]
    if any(t.shape[0] != rows for t in tensors):
        raise ValueError(f"tensors to gather describe different batches: {[t.shape[0] for t in tensors]} rows")
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    widths = [t.shape[1] for t in tensors]
    packed = torch.cat([t.detach().to(dtype) for t in tensors], dim=1)
    gathered, offset = gather_across_ranks(packed, return_offset=True)
    parts = list(torch.split(gathered, widths, dim=1))
    return [p.to(t.dtype) for p, t in zip(parts, tensors)], offset


def relation_logits(query: Tensor, keys: Tensor, memory: Optional[Tensor], temperature: float) -> Tensor:
    """Similarity logits of each query to every key of the global batch, then every memory slot.

    Args:
        query: (B, D) L2-normalised queries of this rank.
        keys: (N, D) L2-normalised keys of the global batch (row j: image j of the global batch,
            rank order); the positive of query i is row ``offset + i`` (see :func:`relational_kl`).
        memory: (K, D) L2-normalised keys of earlier images, or ``None`` / empty for none.
        temperature: softmax temperature (> 0).

    Returns:
        (B, N + K) logits: columns 0..N-1 the batch keys, columns N.. the memory slots.
    """
    relations = keys if memory is None or memory.shape[0] == 0 else torch.cat([keys, memory.to(keys.dtype)], dim=0)
    return (query @ relations.T) / temperature


def _check_offset(local_rows: int, global_rows: int, offset: int, what: str) -> None:
    if not 0 <= offset <= global_rows - local_rows:
        raise ValueError(f"{what}: {local_rows} queries at offset {offset} do not fit in a global batch "
                         f"of {global_rows} keys")


def _refuse_single_image(global_rows: int) -> None:
    if global_rows < 2:
        raise ValueError(
            f"the relational KL needs a global batch of at least 2 images, got {global_rows}: a single "
            f"image has no other image to relate to, so its relation distribution is its own positive "
            f"alone (KL 0, no gradient); raise data.batch_size (or the number of devices)")


def relational_kl(
    student_query: Tensor,
    student_key: Tensor,
    student_memory: Optional[Tensor],
    teacher_query: Tensor,
    teacher_key: Tensor,
    teacher_memory: Optional[Tensor],
    student_temperature: float = 0.2,
    teacher_temperature: float = 0.2,
    key_offset: Optional[int] = None,
) -> Tensor:
    """mean_i KL(p_teacher_i || p_student_i) for one view direction (a -> b).

    Inputs are normalised here, so raw projector outputs may be passed.

    Args:
        student_query: (B, Ds) student embedding of view a of this rank's images (carries the gradient).
        student_key: student keys of view b (detached here). With ``key_offset=None``: (B, Ds),
            this rank's keys, row i the positive of query i; they are gathered from every DDP
            rank here (without DDP the global batch is this batch). Otherwise: (N, Ds), the
            already gathered global batch, row ``key_offset + i`` the positive of query i.
        student_memory: (K, Ds) student keys of earlier images, or None.
        teacher_query: (B, Dt) teacher embedding of view a, same rows as ``student_query``.
        teacher_key: teacher embedding of view b, same shape convention as ``student_key``
            ((B, Dt) local or (N, Dt) global), row j the same image as student key row j.
        teacher_memory: (K, Dt) teacher keys, slot j the same image as student slot j.
        key_offset: see ``student_key``; the number of images held by lower DDP ranks.

    Returns:
        Scalar loss (mean over this rank's B queries of the per-sample KL over the N + K
        relations, in nats).

    Raises:
        ValueError: mismatched batches or memories, or a global batch N < 2.
    """
    rows = student_query.shape[0]
    if teacher_query.shape[0] != rows:
        raise ValueError(f"student batch {rows} != teacher batch {teacher_query.shape[0]}")
    if student_key.shape[0] != teacher_key.shape[0]:
        raise ValueError(f"student keys ({student_key.shape[0]}) and teacher keys ({teacher_key.shape[0]}) "
                         f"must describe the same images")
    s_mem_len = 0 if student_memory is None else student_memory.shape[0]
    t_mem_len = 0 if teacher_memory is None else teacher_memory.shape[0]
    if s_mem_len != t_mem_len:
        raise ValueError(f"student memory holds {s_mem_len} keys but teacher memory {t_mem_len}")
    if key_offset is None:
        if student_key.shape[0] != rows:
            raise ValueError(f"{student_key.shape[0]} local keys for {rows} queries: pass key_offset "
                             f"when the keys are the gathered global batch")
        (student_key, teacher_key), key_offset = gather_keys([student_key, teacher_key])
    _check_offset(rows, student_key.shape[0], key_offset, "relational_kl")
    _refuse_single_image(student_key.shape[0])
    q = F.normalize(student_query, dim=1)
    k = F.normalize(student_key.detach(), dim=1)
    t = F.normalize(teacher_query.detach(), dim=1)
    u = F.normalize(teacher_key.detach(), dim=1)
    m_s = None if student_memory is None else F.normalize(student_memory.detach(), dim=1)
    m_t = None if teacher_memory is None else F.normalize(teacher_memory.detach(), dim=1)
    log_p_student = F.log_softmax(relation_logits(q, k, m_s, student_temperature), dim=1)
    log_p_teacher = F.log_softmax(relation_logits(t, u, m_t, teacher_temperature), dim=1)
    # KL(p_t || p_s) = sum p_t (log p_t - log p_s); log_target keeps it exact when p_t -> 0.
    per_sample = F.kl_div(log_p_student, log_p_teacher, reduction="none", log_target=True).sum(dim=1)
    return per_sample.mean()


def symmetric_relational_kl(
    student_queries: tuple[Tensor, Tensor],
    student_keys: tuple[Tensor, Tensor],
    student_memory: Optional[Tensor],
    teacher_embeddings: tuple[Tensor, Tensor],
    teacher_memory: Optional[Tensor],
    student_temperature: float = 0.2,
    teacher_temperature: float = 0.2,
    symmetric: bool = True,
    key_offset: Optional[int] = None,
) -> Tensor:
    """Relational KL averaged over both view directions (view1->view2 and view2->view1).

    Args:
        student_queries: (q1, q2), each (B, Ds): student queries of views 1 and 2 (this rank).
        student_keys: (k1, k2): student keys of views 1 and 2; each (B, Ds) this rank's keys
            (gathered here, once for both views) or, with ``key_offset``, (N, Ds) the gathered
            global batch.
        student_memory: (K, Ds) or None.
        teacher_embeddings: (t1, t2): teacher embeddings of views 1 and 2, same convention as
            ``student_keys`` ((B, Dt) or, with ``key_offset``, (N, Dt)); this rank's rows
            serve as the teacher queries, all rows as the teacher keys.
        teacher_memory: (K, Dt) or None, slot-aligned with ``student_memory``.
        symmetric: if False only the direction query(view 1) -> key(view 2) is used.
        key_offset: number of images held by lower DDP ranks, when the keys are already gathered.

    Returns:
        Scalar: 0.5 * (KL(1->2) + KL(2->1)), or KL(1->2) alone if not ``symmetric``.
    """
    (q1, q2), (k1, k2), (t1, t2) = student_queries, student_keys, teacher_embeddings
    rows = q1.shape[0]
    if key_offset is None:
        for name, tensor in (("k1", k1), ("k2", k2), ("t1", t1), ("t2", t2), ("q2", q2)):
            if tensor.shape[0] != rows:
                raise ValueError(f"{name} has {tensor.shape[0]} rows but q1 {rows}: pass key_offset "
                                 f"when keys and teacher embeddings are the gathered global batch")
        (k1, k2, t1, t2), key_offset = gather_keys([k1, k2, t1, t2])
    _check_offset(rows, t1.shape[0], key_offset, "symmetric_relational_kl")
    own = slice(key_offset, key_offset + rows)
    loss = relational_kl(q1, k2, student_memory, t1[own], t2, teacher_memory,
                         student_temperature, teacher_temperature, key_offset)
    if not symmetric:
        return loss
    loss_back = relational_kl(q2, k1, student_memory, t2[own], t1, teacher_memory,
                              student_temperature, teacher_temperature, key_offset)
    return 0.5 * (loss + loss_back)
