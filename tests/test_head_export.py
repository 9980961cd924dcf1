"""Teacher heads with layers outside the plain Linear / BatchNorm / activation vocabulary.

solo-learn's VICReg-like VIbCReg ends its projector with IterNorm (a group whitening layer);
other methods may use any torch module. ``distill.mlp`` stores such a layer as its eval-mode
graph (torch.export). Checked here without solo-learn: a whitening layer written for the test
(different train / eval behaviour, running buffers), a whole non-sequential head, rebuilding in
a fresh interpreter that has never seen the layer's class, the teacher checkpoint round trip,
and a one-line refusal for a layer that cannot be traced.
"""
from __future__ import annotations

import copy
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import Tensor, nn

from solo_surgical.distill import load_teacher
from solo_surgical.distill.mlp import build_mlp, describe_mlp, mlp_output_dim
from solo_surgical.distill.teacher import save_teacher_checkpoint
from solo_surgical.backbones import build_backbone


class GroupWhitening(nn.Module):
    """Per-group ZCA-like whitening with running statistics (train: batch statistics, eval: running)."""

    def __init__(self, features: int, groups: int) -> None:
        super().__init__()
        self.groups, self.size = groups, features // groups
        self.weight = nn.Parameter(torch.ones(features))
        self.bias = nn.Parameter(torch.zeros(features))
        self.register_buffer("running_mean", torch.zeros(groups, self.size))
        self.register_buffer("running_wm", torch.eye(self.size).repeat(groups, 1, 1))

    def forward(self, x: Tensor) -> Tensor:  # (B, F) -> (B, F)
        g = x.view(x.shape[0], self.groups, self.size).transpose(0, 1)  # (G, B, C)
        if self.training:
            mean = g.mean(1)
            c = g - mean[:, None]
            cov = c.transpose(1, 2) @ c / x.shape[0] + 1e-3 * torch.eye(self.size)
            evals, evecs = torch.linalg.eigh(cov)
            wm = evecs @ torch.diag_embed(evals.rsqrt()) @ evecs.transpose(1, 2)
            with torch.no_grad():
                self.running_mean.lerp_(mean, 0.5)
                self.running_wm.lerp_(wm, 0.5)
        else:
            mean, wm = self.running_mean, self.running_wm
        out = (g - mean[:, None]) @ wm.transpose(1, 2)
        return out.transpose(0, 1).reshape(x.shape[0], -1) * self.weight + self.bias


class NotSequential(nn.Module):
    """A head that is not a stack: two branches, summed, then unit-normalised (functional ops)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(512, 16), nn.Sequential(nn.Linear(512, 16), nn.Tanh())

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.normalize(self.a(x) + self.b(x), dim=-1)


def whitened_head() -> nn.Sequential:
    torch.manual_seed(0)
    head = nn.Sequential(nn.Linear(512, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 16), GroupWhitening(16, 4))
    head.train()
    for _ in range(3):  # non-trivial running statistics and affine parameters
        head(torch.randn(32, 512) * 2 + 1)
    with torch.no_grad():
        head[4].weight.uniform_(0.5, 1.5)
        head[4].bias.uniform_(-1, 1)
    return head.eval()


def rebuilt(head: nn.Module) -> nn.Sequential:
    spec = describe_mlp(head)
    out = build_mlp(spec)
    state = head.state_dict() if isinstance(head, nn.Sequential) else nn.Sequential(head).state_dict()
    out.load_state_dict(state, strict=True)  # same keys as the original
    return out.eval()


def test_plain_heads_keep_their_plain_spec():
    head = nn.Sequential(nn.Linear(8, 4), nn.BatchNorm1d(4), nn.GELU(), nn.Linear(4, 2, bias=False))
    assert describe_mlp(head) == [
        {"type": "linear", "in": 8, "out": 4, "bias": True},
        {"type": "batchnorm1d", "features": 4, "affine": True, "eps": 1e-5, "momentum": 0.1},
        {"type": "gelu"}, {"type": "linear", "in": 4, "out": 2, "bias": False}]


@pytest.mark.parametrize("batch", [1, 5])
def test_a_whitening_layer_is_exported_in_eval_mode(batch):
    head = whitened_head()
    spec = describe_mlp(head)
    assert [s["type"] for s in spec][-1] == "exported" and spec[-1]["out"] == 16 and mlp_output_dim(spec) == 16
    rebuilt_head = rebuilt(head)
    rebuilt_head.train()  # ignored by the exported layer (a teacher only runs in eval mode); must not raise
    rebuilt_head.eval()
    x = torch.randn(batch, 512)
    with torch.no_grad():
        expected = head(x)
        assert torch.allclose(rebuilt_head(x), expected, atol=1e-5)
        if batch > 1:  # the eval-mode computation was captured, not the training one (batch whitening)
            in_training = copy.deepcopy(head).train()
            assert not torch.allclose(in_training(x), expected, atol=1e-3)


def test_a_non_sequential_head_is_one_exported_layer():
    torch.manual_seed(1)
    head = NotSequential().eval()
    spec = describe_mlp(head)
    assert len(spec) == 1 and spec[0]["type"] == "exported" and spec[0]["in"] == 512 and spec[0]["out"] == 16
    x = torch.randn(3, 512)
    with torch.no_grad():
        assert torch.allclose(rebuilt(head)(x), head(x), atol=1e-6)


def test_rebuilt_without_the_layers_class_and_through_a_teacher_checkpoint(tmp_path):
    head = whitened_head()
    backbone, _ = build_backbone("resnet18")
    backbone.eval()
    path = save_teacher_checkpoint(tmp_path / "teacher.pth", arch="resnet18", backbone=backbone, projector=head,
                                   meta={"method": "test"})
    assert torch.load(path, weights_only=True)["meta"]["embedding_dim"] == 16  # no pickled classes inside
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = head(backbone(x))
    teacher = load_teacher(path)
    teacher.train()
    assert torch.allclose(teacher(x), expected, atol=1e-5)
    whole = tmp_path / "whole-module.pt"  # pickled as a module (torch.save(model), spawned processes)
    torch.save(teacher, whole)
    assert torch.allclose(torch.load(whole, weights_only=False)(x), expected, atol=1e-5)
    # a fresh interpreter that has never imported this test module (so has no GroupWhitening)
    torch.save({"x": x, "expected": expected}, tmp_path / "io.pt")
    code = textwrap.dedent(f"""
        import torch
        from solo_surgical.distill import load_teacher
        io = torch.load({str(tmp_path / 'io.pt')!r})
        t = load_teacher({str(path)!r})
        print(torch.allclose(t(io["x"]), io["expected"], atol=1e-5))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0 and out.stdout.strip() == "True", out.stderr[-2000:]


class DataDependent(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x if bool(x.sum() > 0) else -x  # a branch on values: no single graph


def test_an_untraceable_layer_is_refused_in_one_line():
    with pytest.raises(TypeError, match=r"DataDependent is not serialisable \(torch.export failed"):
        describe_mlp(nn.Sequential(nn.Linear(4, 4), DataDependent()))
