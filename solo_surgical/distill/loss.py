"""Relational distillation loss (Ding, Liu, Li, MICCAI 2022, arXiv 2205.09292).

The student does not copy the teacher's embeddings (their sizes may differ); it copies
the teacher's *relations*: for every sample, the distribution of similarities between
its query and (its positive key, every key held in memory). Student and teacher
memories are aligned slot by slot (see :mod:`solo_surgical.distill.memory`), so the
j-th negative of both distributions is the same image.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def relation_logits(query: Tensor, key: Tensor, memory: Optional[Tensor], temperature: float) -> Tensor:
    """Similarity logits of each query to its positive key followed by every memory slot.

    Args:
        query: (B, D) L2-normalised queries.
        key: (B, D) L2-normalised positive keys (row i is the positive of query i).
        memory: (K, D) L2-normalised keys of other images, or ``None`` / empty for none.
        temperature: softmax temperature (> 0).

    Returns:
        (B, 1 + K) logits; column 0 is the positive.
    """
    positive = (query * key).sum(dim=1, keepdim=True)
    if memory is None or memory.shape[0] == 0:
        return positive / temperature
    return torch.cat([positive, query @ memory.T], dim=1) / temperature


def relational_kl(
    student_query: Tensor,
    student_key: Tensor,
    student_memory: Optional[Tensor],
    teacher_query: Tensor,
    teacher_key: Tensor,
    teacher_memory: Optional[Tensor],
    student_temperature: float = 0.2,
    teacher_temperature: float = 0.2,
) -> Tensor:
    """mean_i KL(p_teacher_i || p_student_i) for one view direction.

    Inputs are normalised here, so raw projector outputs may be passed.

    Args:
        student_query: (B, Ds) student embedding of view a (carries the gradient).
        student_key: (B, Ds) student key of view b (detached by the caller or here).
        student_memory: (K, Ds) student keys of other images, or None.
        teacher_query: (B, Dt) teacher embedding of view a.
        teacher_key: (B, Dt) teacher embedding of view b.
        teacher_memory: (K, Dt) teacher keys, slot j the same image as student slot j.

    Returns:
        Scalar loss (batch mean of the per-sample KL divergence, in nats).
    """
    if student_query.shape[0] != teacher_query.shape[0]:
        raise ValueError(
            f"student batch {student_query.shape[0]} != teacher batch {teacher_query.shape[0]}"
        )
    s_mem_len = 0 if student_memory is None else student_memory.shape[0]
    t_mem_len = 0 if teacher_memory is None else teacher_memory.shape[0]
    if s_mem_len != t_mem_len:
        raise ValueError(f"student memory holds {s_mem_len} keys but teacher memory {t_mem_len}")
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
) -> Tensor:
    """Relational KL averaged over both view directions (view1->view2 and view2->view1).

    Args:
        student_queries: (q1, q2), each (B, Ds): student queries of views 1 and 2.
        student_keys: (k1, k2), each (B, Ds): student keys of views 1 and 2.
        teacher_embeddings: (t1, t2), each (B, Dt): teacher embeddings of views 1 and 2.
        symmetric: if False only the direction query(view 1) -> key(view 2) is used.
    """
    (q1, q2), (k1, k2), (t1, t2) = student_queries, student_keys, teacher_embeddings
    loss = relational_kl(q1, k2, student_memory, t1, t2, teacher_memory,
                         student_temperature, teacher_temperature)
    if not symmetric:
        return loss
    loss_back = relational_kl(q2, k1, student_memory, t2, t1, teacher_memory,
                              student_temperature, teacher_temperature)
    return 0.5 * (loss + loss_back)
