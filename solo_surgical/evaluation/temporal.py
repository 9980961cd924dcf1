"""MS-TCN / TeCNO-style temporal model over per-video features, and its training loop.

Shapes: features (B, F, T) -> logits per stage (S, B, C, T). Videos have different lengths, so
training uses one video per step (as MS-TCN and TeCNO do).
"""
from __future__ import annotations

import copy
import math
import random
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IGNORE = -100  # target value of frames without a phase label


@dataclass
class TCNConfig:
    in_dim: int
    num_classes: int
    stages: int = 2
    layers: int = 9
    channels: int = 64
    causal: bool = True
    dropout: float = 0.5


class DilatedResidual(nn.Module):
    """x + dropout(conv1x1(relu(dilated conv k=3 (x)))); causal = padded on the left only."""

    def __init__(self, channels: int, dilation: int, causal: bool, dropout: float) -> None:
        super().__init__()
        self.pad = (2 * dilation, 0) if causal else (dilation, dilation)
        self.conv = nn.Conv1d(channels, channels, 3, dilation=dilation)
        self.mix = nn.Conv1d(channels, channels, 1)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.drop(self.mix(F.relu(self.conv(F.pad(x, self.pad)))))


class Stage(nn.Module):
    """1x1 in, ``layers`` dilated residual layers (dilation 1, 2, 4, ...), 1x1 out to classes."""

    def __init__(self, in_dim: int, cfg: TCNConfig) -> None:
        super().__init__()
        self.inp = nn.Conv1d(in_dim, cfg.channels, 1)
        self.layers = nn.ModuleList(
            DilatedResidual(cfg.channels, 2 ** i, cfg.causal, cfg.dropout) for i in range(cfg.layers))
        self.out = nn.Conv1d(cfg.channels, cfg.num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.inp(x)
        for layer in self.layers:
            x = layer(x)
        return self.out(x)


class MultiStageTCN(nn.Module):
    """Stage 1 reads the features; each later stage refines the softmax of the previous one."""

    def __init__(self, cfg: TCNConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.stages = nn.ModuleList(
            [Stage(cfg.in_dim, cfg)] + [Stage(cfg.num_classes, cfg) for _ in range(cfg.stages - 1)])

    def forward(self, x: Tensor) -> Tensor:
        """x (B, F, T) -> logits (S, B, C, T)."""
        outputs = []
        for i, stage in enumerate(self.stages):
            x = stage(x if i == 0 else F.softmax(x, dim=1))
            outputs.append(x)
        return torch.stack(outputs)


def tcn_loss(logits: Tensor, target: Tensor, smooth_weight: float = 0.15, tau: float = 4.0) -> Tensor:
    """Sum over stages of cross-entropy + ``smooth_weight`` x truncated MSE of frame-to-frame
    log-probability changes (MS-TCN, clamped at ``tau**2``; the previous frame is detached).

    logits (S, B, C, T), target (B, T) with :data:`IGNORE` for unlabelled frames.
    """
    total = logits.new_zeros(())
    valid = (target != IGNORE)
    pair_valid = (valid[:, 1:] & valid[:, :-1]).unsqueeze(1)  # (B, 1, T-1)
    for out in logits:
        total = total + F.cross_entropy(out, target, ignore_index=IGNORE)
        if smooth_weight and out.shape[-1] > 1:
            logp = F.log_softmax(out, dim=1)
            mse = torch.clamp((logp[:, :, 1:] - logp.detach()[:, :, :-1]) ** 2, max=tau ** 2)
            mse = (mse * pair_valid).sum() / (pair_valid.sum() * out.shape[1]).clamp(min=1)
            total = total + smooth_weight * mse
    return total


@dataclass
class VideoFeatures:
    """One video: features (T, F), targets (T,) class index or IGNORE, its id and frame indices."""

    video: str
    features: Tensor
    targets: Tensor
    frames: Tensor


def frame_accuracy(model: MultiStageTCN, videos: Sequence[VideoFeatures]) -> float:
    """Frame accuracy (percent) of the last stage over all labelled frames of ``videos``."""
    correct = total = 0
    for video in videos:
        pred = predict(model, video.features)
        valid = video.targets != IGNORE
        correct += int((pred[valid] == video.targets[valid]).sum())
        total += int(valid.sum())
    return 100.0 * correct / max(total, 1)


@torch.no_grad()
def predict(model: MultiStageTCN, features: Tensor) -> Tensor:
    """features (T, F) -> class index per frame (T,) from the last stage."""
    was_training = model.training
    model.eval()
    logits = model(features.t().unsqueeze(0).float())[-1, 0]  # (C, T)
    model.train(was_training)
    return logits.argmax(0)


def train_tcn(cfg: TCNConfig, train: Sequence[VideoFeatures], val: Sequence[VideoFeatures], epochs: int = 50,
              lr: float = 5e-4, weight_decay: float = 0.0, smooth_weight: float = 0.15, seed: int = 0,
              log: Callable[[str], None] = print) -> tuple[MultiStageTCN, list[dict]]:
    """Adam, one video per step, shuffled each epoch. Keeps the weights of the epoch with the best
    validation frame accuracy (the last epoch when ``val`` is empty); never looks at test videos."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = MultiStageTCN(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    best, best_state, history = -math.inf, None, []
    order = list(range(len(train)))
    for epoch in range(1, epochs + 1):
        model.train()
        rng.shuffle(order)
        running = 0.0
        for i in order:
            video = train[i]
            logits = model(video.features.t().unsqueeze(0).float())
            loss = tcn_loss(logits, video.targets.unsqueeze(0), smooth_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running += float(loss.detach())
        row = {"epoch": epoch, "loss": running / max(len(train), 1),
               "train_acc": frame_accuracy(model, train)}
        if val:
            row["val_acc"] = frame_accuracy(model, val)
        score = row.get("val_acc", epoch)
        if score > best:
            best, best_state = score, copy.deepcopy(model.state_dict())
        history.append(row)
        log(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    if best_state is not None:
        model.load_state_dict(best_state)
    return model, history


def config_dict(cfg: TCNConfig) -> dict:
    return asdict(cfg)
