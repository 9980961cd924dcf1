"""Teachers beyond ResNet: a torchvision ViT as the public backbone, a CNN student distilling from it.

The relational KL compares similarities only, so teacher and student sizes differ on purpose
here (ViT class token 32-d, teacher projector 24-d; student projector 16-d).
"""
from __future__ import annotations

import pytest
import torch
import torchvision
from torchvision.models.vision_transformer import VisionTransformer

from solo_surgical.backbones import backbone_names, build_backbone, public_head_keys
from solo_surgical.checkpoints import CheckpointError, load_backbone, load_backbone_state
from solo_surgical.distill import DistillationHead, DistillConfig, load_teacher
from solo_surgical.tv_backbones import infer_vit_arch, parse_vit_spec, vit_spec
from solo_surgical.hosts.lightly.runner import run_pretrain, run_teacher_stage

from conftest import tiny_cfg

# vit_tiny's shape: what a published torchvision ViT file of this size holds, classifier included
VIT_TINY = dict(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64)


@pytest.fixture(scope="module")
def public_vit(tmp_path_factory):
    """A 'published' torchvision ViT: the whole classification model's state dict, heads.head included."""
    torch.manual_seed(3)
    model = VisionTransformer(**VIT_TINY, num_classes=10).eval()
    path = tmp_path_factory.mktemp("vit") / "vit_tiny_public.pth"
    torch.save(model.state_dict(), path)
    return path, model


def test_vit_backbone_is_the_published_model_minus_its_classifier(public_vit):
    path, full = public_vit
    loaded = load_backbone(str(path), "vit_tiny")
    module, arch, info = loaded.module, loaded.arch, loaded.meta
    assert arch == "vit_tiny" and info["source_layout"] == "torchvision"
    assert public_head_keys(module) == ("heads.head.weight", "heads.head.bias")
    module.eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        # the backbone's output is exactly what the published classifier reads
        assert torch.allclose(full.heads.head(module(x)), full(x), atol=1e-5)
        # other sizes are resized to the native 32 px (antialiased when shrinking), where a plain
        # torchvision ViT refuses them
        big = torch.randn(4, 3, 64, 48)
        shrunk = torch.nn.functional.interpolate(big, size=(32, 32), mode="bilinear", antialias=True)
        assert torch.allclose(module(big), module(shrunk), atol=1e-6)
        with pytest.raises(AssertionError):
            full(big)


def test_strict_keys_kept_for_vits(tmp_path, public_vit):
    _, full = public_vit
    state = dict(full.state_dict())
    del state["encoder.layers.encoder_layer_1.mlp.3.weight"]
    state["heads.pre_logits.weight"] = torch.zeros(4, 32)   # only the classifier itself may go
    path = tmp_path / "broken_vit.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        load_backbone(str(path), "vit_tiny")
    message = str(err.value)
    assert str(path) in message and "encoder_layer_1.mlp.3.weight" in message and "heads.pre_logits.weight" in message
    # a ResNet file offered as a ViT is refused, naming keys
    with pytest.raises(CheckpointError, match="missing keys"):
        load_backbone_state(build_backbone("vit_tiny")[0], torchvision.models.resnet18().state_dict(), "r18.pth")


def test_any_torchvision_classifier_and_vit_arch_from_the_keys():
    names = backbone_names()
    assert {"vit_b_16", "convnext_tiny", "efficientnet_b0", "swin_t", "vit_tiny", "tiny", "resnet50"} <= set(names)
    assert "googlenet" not in names  # auxiliary heads: refused with a reason
    with pytest.raises(KeyError, match="auxiliary"):
        build_backbone("googlenet")
    # a published torchvision ViT-B/16 is recognised from its shapes; an unnamed shape is not guessed
    assert infer_vit_arch(torchvision.models.vit_b_16().state_dict()) == "vit_b_16"
    assert infer_vit_arch(VisionTransformer(**VIT_TINY).state_dict()) is None
    assert infer_vit_arch(torchvision.models.resnet18().state_dict()) is None
    # the same ViT at another image size keeps the named model's heads
    spec = infer_vit_arch(VisionTransformer(image_size=64, patch_size=32, num_layers=12, num_heads=12,
                                            hidden_dim=768, mlp_dim=3072).state_dict())
    assert spec == vit_spec(64, 32, 12, 12, 768, 3072)
    module, dim = build_backbone(spec)
    assert dim == 768 and module.image_size == 64
    assert parse_vit_spec(vit_spec(32, 8, 2, 2, 32, 64)) == dict(image=32, patch=8, layers=2, heads=2, hidden=32, mlp=64)
    with pytest.raises(KeyError, match="missing heads"):
        build_backbone("vit:image=32,patch=8,layers=2,hidden=32,mlp=64")


def test_resnet18_student_distils_from_a_vit_teacher_on_random_tensors(tmp_path, public_vit, image_dir):
    path, _ = public_vit
    cfg = tiny_cfg("teacher", "simclr", tmp_path / "teacher", image_dir, "backbone.name=vit_tiny",
                   f"teacher.source={path}", "trainer.max_epochs=1", "method.kwargs.proj_output_dim=24",
                   "data.mean=[0.5,0.5,0.5]", "data.std=[0.25,0.25,0.25]")
    teacher_path = run_teacher_stage(cfg)
    teacher = load_teacher(teacher_path)  # the student's pipeline normalises with ImageNet's statistics
    assert teacher.meta["mean"] == [0.5, 0.5, 0.5] and teacher.meta["std"] == [0.25, 0.25, 0.25]  # travel with it
    assert teacher.out_dim == 24 and isinstance(teacher.backbone, VisionTransformer)
    saved = torch.load(teacher_path, weights_only=False)
    assert saved["backbone"]["arch"] == "vit_tiny" and "heads.head.weight" not in saved["backbone"]["state_dict"]

    torch.manual_seed(0)
    student, feature_dim = build_backbone("resnet18")
    projector = torch.nn.Linear(feature_dim, 16)
    head = DistillationHead(teacher, student_dim=16, config=DistillConfig(memory_size=8))
    head.train()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    x1, x2 = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    q1, q2 = projector(student(x1)), projector(student(x2))
    kl = head((x1, x2), (q1, q2), (q1.detach(), q2.detach()))
    assert torch.isfinite(kl) and kl.item() > 0
    kl.backward()
    assert projector.weight.grad is not None and projector.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    assert head.memory.student().shape == (4, 16) and head.memory.teacher().shape == (4, 24)


def test_cnn_student_fits_with_a_vit_teacher(tmp_path, public_vit, image_dir):
    """The pretraining command's own path: a tiny CNN student, distill_simclr, teacher = ViT."""
    path, _ = public_vit
    cfg = tiny_cfg("teacher", "simclr", tmp_path / "teacher", image_dir, "backbone.name=vit_tiny",
                   f"teacher.source={path}", "trainer.max_epochs=1", "method.kwargs.proj_output_dim=24")
    teacher_path = run_teacher_stage(cfg)
    cfg = tiny_cfg("pretrain", "distill_simclr", tmp_path / "student", image_dir, f"distill.teacher={teacher_path}",
                   "trainer.max_epochs=1", "data.image_size=48")  # the ViT teacher resizes 48 px to its 32
    run_dir = run_pretrain(cfg)
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 4
    import csv

    rows = [r for p in sorted((run_dir / "logs").glob("version_*/metrics.csv")) for r in csv.DictReader(open(p))]
    kl = [float(r["train/distill_kl_step"]) for r in rows if r.get("train/distill_kl_step")]
    assert len(kl) == 4 and all(v > 0 for v in kl)


# --- torch.hub DINOv2 layout --------------------------------------------------------------------
def _dinov2_state(hidden=128, heads=2, layers=2, patch=8, image=32, mlp=256, seed=5) -> dict[str, torch.Tensor]:
    """Random weights in the torch.hub DINOv2 key layout (LayerScale gammas far from 1 on purpose)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.1):
        return torch.randn(*shape, generator=g) * scale

    tokens = (image // patch) ** 2 + 1
    state = {"cls_token": r(1, 1, hidden), "pos_embed": r(1, tokens, hidden), "mask_token": r(1, hidden),
             "patch_embed.proj.weight": r(hidden, 3, patch, patch), "patch_embed.proj.bias": r(hidden),
             "norm.weight": 1 + r(hidden), "norm.bias": r(hidden)}
    for i in range(layers):
        b = f"blocks.{i}."
        state.update({b + "norm1.weight": 1 + r(hidden), b + "norm1.bias": r(hidden),
                      b + "attn.qkv.weight": r(3 * hidden, hidden), b + "attn.qkv.bias": r(3 * hidden),
                      b + "attn.proj.weight": r(hidden, hidden), b + "attn.proj.bias": r(hidden),
                      b + "ls1.gamma": r(hidden, scale=1.0), b + "norm2.weight": 1 + r(hidden), b + "norm2.bias": r(hidden),
                      b + "mlp.fc1.weight": r(mlp, hidden), b + "mlp.fc1.bias": r(mlp),
                      b + "mlp.fc2.weight": r(hidden, mlp), b + "mlp.fc2.bias": r(hidden), b + "ls2.gamma": r(hidden, scale=1.0)})
    return state


def _dinov2_reference(state, x, heads) -> torch.Tensor:
    """DINOv2's forward at its native size written out from the layout: pre-norm blocks with
    LayerScale, multi-head attention over (B, N, 3, heads, d) qkv, final norm, class token."""
    F = torch.nn.functional
    hidden = state["cls_token"].shape[-1]
    t = F.conv2d(x, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"],
                 stride=state["patch_embed.proj.weight"].shape[-1]).flatten(2).transpose(1, 2)
    t = torch.cat([state["cls_token"].expand(x.shape[0], -1, -1), t], dim=1) + state["pos_embed"]
    i = 0
    while f"blocks.{i}.norm1.weight" in state:
        b = f"blocks.{i}."
        h = F.layer_norm(t, (hidden,), state[b + "norm1.weight"], state[b + "norm1.bias"], eps=1e-6)
        qkv = F.linear(h, state[b + "attn.qkv.weight"], state[b + "attn.qkv.bias"])
        q, k, v = qkv.reshape(t.shape[0], t.shape[1], 3, heads, hidden // heads).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * (hidden // heads) ** -0.5).softmax(-1)
        a = (attn @ v).transpose(1, 2).reshape(t.shape)
        t = t + state[b + "ls1.gamma"] * F.linear(a, state[b + "attn.proj.weight"], state[b + "attn.proj.bias"])
        h = F.layer_norm(t, (hidden,), state[b + "norm2.weight"], state[b + "norm2.bias"], eps=1e-6)
        m = F.linear(F.gelu(F.linear(h, state[b + "mlp.fc1.weight"], state[b + "mlp.fc1.bias"])),
                     state[b + "mlp.fc2.weight"], state[b + "mlp.fc2.bias"])
        t = t + state[b + "ls2.gamma"] * m
        i += 1
    return F.layer_norm(t, (hidden,), state["norm.weight"], state["norm.bias"], eps=1e-6)[:, 0]


def test_dinov2_hub_file_converts_exactly(tmp_path):
    state = _dinov2_state()
    path = tmp_path / "dinov2_mini_pretrain.pth"
    torch.save(state, path)
    name = vit_spec(32, 8, 2, 2, 128, 256)  # 64-d heads, as in every DINOv2 model
    loaded = load_backbone(str(path), name)
    module, arch, info = loaded.module, loaded.arch, loaded.meta
    assert arch == name and info["source_layout"] == "dinov2-hub"
    module.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(module(x), _dinov2_reference(state, x, heads=2), atol=1e-5)
    # the published sizes are named backbones, read back from the converted shapes
    from solo_surgical.backbones import infer_arch
    from solo_surgical.tv_backbones import dinov2_hub_to_torchvision

    small = _dinov2_state(hidden=384, heads=6, layers=12, patch=14, image=518, mlp=1536)
    converted, small_name = dinov2_hub_to_torchvision(small)
    assert small_name == "dinov2_vits14" and infer_arch(converted) == "dinov2_vits14"
    assert build_backbone("dinov2_vits14")[1] == 384


def test_dinov2_keys_without_counterpart_are_refused(tmp_path):
    state = _dinov2_state()
    state["register_tokens"] = torch.zeros(1, 4, 128)  # DINOv2 with registers: no torchvision counterpart
    path = tmp_path / "dinov2_reg.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="register_tokens") as err:
        load_backbone(str(path), vit_spec(32, 8, 2, 2, 128, 256))
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_zoo_dinov2_entries_convert_the_hub_layout(tmp_path):
    from solo_surgical.zoo.convert import convert_object
    from solo_surgical.zoo.manifest import load_manifest

    manifest = load_manifest()
    source = manifest.get("dinov2-vits14")
    assert source.layout == "dinov2-hub" and source.sha256 is None and source.md5 is None  # none published
    assert source.url.endswith("/dinov2_vits14/dinov2_vits14_pretrain.pth")
    assert manifest.get("dinov2-vitb14").arch == "dinov2_vitb14"
    state = _dinov2_state(hidden=384, heads=6, layers=12, patch=14, image=518, mlp=1536)
    conv = convert_object(state, source=source, where="dinov2_vits14_pretrain.pth")
    assert conv.arch == "dinov2_vits14" and conv.layout == "dinov2-hub" and conv.dropped == ["mask_token"]
    assert "encoder.layers.encoder_layer_11.mlp.3.weight" in conv.state
    state["blocks.3.attn.extra"] = torch.zeros(2)
    with pytest.raises(CheckpointError, match="blocks.3.attn.extra"):
        convert_object(state, source=source, where="dinov2_vits14_pretrain.pth")


def test_teacher_stage_reads_a_vit_architecture_from_the_file_alone(tmp_path):
    """No backbone.name: the ViT's shape (here DINOv2 ViT-S/14's, at 28 px) is read from its keys."""
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(image_size=28, patch_size=14, num_layers=12, num_heads=6, hidden_dim=384, mlp_dim=1536)
    path = tmp_path / "vits14_public.pth"
    torch.save(vit.state_dict(), path)
    loaded = load_backbone(str(path), None)
    module, arch, info = loaded.module, loaded.arch, loaded.meta
    assert arch == "vit:image=28,patch=14,layers=12,heads=6,hidden=384,mlp=1536"
    assert info["source_layout"] == "torchvision"
    x = torch.rand(2, 3, 28, 28)
    vit.eval(), module.eval()
    with torch.no_grad():  # the backbone is the published model minus its classifier
        assert torch.allclose(vit.heads(module(x)), vit(x), atol=1e-5)
