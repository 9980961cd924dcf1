"""Freezing a module: parameters that never learn, BatchNorm statistics kept or re-estimated.

One function for every frozen part of the project: the distillation teacher
(:class:`~solo_surgical.distill.FrozenTeacher`), the public backbone of the teacher stage in both
hosts (``teacher.bn``), and the EMA copies of the momentum methods.
"""
from __future__ import annotations

import functools
from typing import Any, TypeVar

from torch import nn

BN_MODES = ("frozen", "recompute")

M = TypeVar("M", bound=nn.Module)


def freeze(module: M, bn: str = "frozen") -> M:
    """Freeze ``module`` in place and return it.

    In both modes every parameter gets ``requires_grad=False``: autograd computes no gradient for
    it, and optimisers built from the trainable parameters never see it.

    ``bn="frozen"``: from now on the module computes as in eval mode whatever its parent does.
    BatchNorm normalises with its stored running statistics and never updates them
    (``running_mean``, ``running_var`` and ``num_batches_tracked`` stay bit-identical), dropout is
    off. This survives a parent's ``.train(True)`` (Lightning calls it at every epoch start) and a
    direct assignment of ``.training`` (Lightning restores saved per-module modes that way).

    ``bn="recompute"``: only the parameters are frozen. The module follows its parent's mode, so in
    training BatchNorm normalises with the batch's statistics and re-estimates its running
    statistics from the frames it sees (momentum update); in eval it uses them. This is the teacher
    stage's ``teacher.bn=recompute`` (statistics re-estimated on surgical frames, as the authors'
    code effectively did), and what an EMA copy needs: its weights move by EMA, not by gradient,
    while its BatchNorm statistics follow its own forwards.

    Freezing again with the other mode switches modes.
    """
    if bn not in BN_MODES:
        raise ValueError(f"bn must be one of {BN_MODES}, got {bn!r}")
    for p in module.parameters():
        p.requires_grad_(False)
    _unpin(module)
    if bn == "frozen":
        # A parent switches modes two ways, so the pin has two guards, both on the frozen module
        # itself (so any parent, a LightningModule, a solo-learn method or a plain loop, is covered
        # without overriding train() in each class):
        # 1. nn.Module.train(mode) recurses by calling each child's train(). An instance attribute
        #    `train` shadows the class's method, so the parent's call lands here and keeps eval,
        #    and `.training` stays truthful for whoever reads it (Lightning's mode bookkeeping).
        #    It is a partial of a module-level function, not a closure: deepcopy and pickle carry
        #    it over bound to the copy.
        # 2. Lightning restores saved modes by assigning `.training` directly, which no train() sees;
        #    a forward pre-hook re-pins the whole subtree at the one moment the mode matters.
        module.train = functools.partial(_stay_in_eval, module)  # type: ignore[method-assign]
        module.register_forward_pre_hook(_pin_eval)
        module.train(False)
    return module


def is_pinned(module: nn.Module) -> bool:
    """Whether ``module`` was frozen with ``bn="frozen"`` (and not switched back)."""
    return _pin_eval in module._forward_pre_hooks.values()


def _stay_in_eval(module: nn.Module, mode: bool = True) -> nn.Module:
    return type(module).train(module, False)  # the class's own train() (e.g. one that skips a graph)


def _pin_eval(module: nn.Module, _args: Any) -> None:
    for sub in module.modules():
        sub.training = False


def _unpin(module: nn.Module) -> None:
    module.__dict__.pop("train", None)
    for key in [k for k, hook in module._forward_pre_hooks.items() if hook is _pin_eval]:
        del module._forward_pre_hooks[key]
