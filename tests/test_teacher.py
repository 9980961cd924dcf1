"""Public backbone loading, the frozen teacher, and the teacher stage."""
from __future__ import annotations

import pytest
import torch
import torchvision

from solo_surgical.checkpoints import CheckpointError, load_backbone
from solo_surgical.distill import load_teacher
from solo_surgical.hosts.lightly.runner import build_model, fit, run_teacher_stage

from conftest import make_teacher_checkpoint, tiny_cfg


@pytest.fixture(scope="module")
def resnet18_state():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).state_dict()


def _assert_same_weights(module, reference):
    state = module.state_dict()
    for key, value in state.items():
        assert torch.equal(value, reference[key]), key


def test_torchvision_layout(tmp_path, resnet18_state):
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(resnet18_state, path)
    loaded = load_backbone(str(path))
    module, arch, info = loaded.module, loaded.arch, loaded.meta
    assert arch == "resnet18" and info["source_layout"] == "torchvision" and len(info["source_sha256"]) == 64
    _assert_same_weights(module, resnet18_state)


def test_mocov2_layout(tmp_path, resnet18_state):
    # moco_v2_200ep_pretrain.pth.tar: {"epoch", "arch", "state_dict": {"module.encoder_q.*", "module.encoder_k.*",
    # "module.queue", ...}, "optimizer"}, with the MLP head as encoder_q.fc.0 / fc.2
    state = {f"module.encoder_q.{k}": v for k, v in resnet18_state.items() if not k.startswith("fc.")}
    state.update({"module.encoder_q.fc.0.weight": torch.randn(512, 512), "module.encoder_q.fc.0.bias": torch.randn(512),
                  "module.encoder_q.fc.2.weight": torch.randn(128, 512), "module.encoder_q.fc.2.bias": torch.randn(128),
                  "module.encoder_k.conv1.weight": torch.randn(64, 3, 7, 7), "module.queue": torch.randn(128, 16),
                  "module.queue_ptr": torch.zeros(1, dtype=torch.long)})
    path = tmp_path / "moco_v2_200ep_pretrain.pth.tar"
    torch.save({"epoch": 200, "arch": "resnet18", "state_dict": state, "optimizer": {}}, path)
    loaded = load_backbone(str(path))
    module, arch, info = loaded.module, loaded.arch, loaded.meta
    assert arch == "resnet18" and info["source_layout"] == "mocov2"
    _assert_same_weights(module, resnet18_state)


def test_wrong_layout_names_the_offending_keys(tmp_path, resnet18_state):
    state = dict(resnet18_state)
    state["layer4.1.bn2.extra_stat"] = torch.zeros(3)
    del state["layer3.0.conv1.weight"]
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        load_backbone(str(path))
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    assert "layer3.0.conv1.weight" in message and "layer4.1.bn2.extra_stat" in message


def test_wrong_shape_and_missing_file(tmp_path, resnet18_state):
    state = dict(resnet18_state)
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(CheckpointError, match=r"conv1.weight \(64, 3, 3, 3\) != \(64, 3, 7, 7\)"):
        load_backbone(str(tmp_path / "shape.pth"))
    with pytest.raises(CheckpointError, match="not found"):
        load_backbone(str(tmp_path / "nope.pth"))
    (tmp_path / "torn.pth").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        load_backbone(str(tmp_path / "torn.pth"))


def test_frozen_teacher_stays_in_eval_and_has_no_grad(teacher_ckpt):
    teacher = load_teacher(teacher_ckpt)
    teacher.train()
    assert not teacher.training and not any(m.training for m in teacher.modules())
    assert not any(p.requires_grad for p in teacher.parameters())
    out = teacher(torch.randn(4, 3, 32, 32))
    assert out.shape == (4, 24) and not out.requires_grad


def test_teacher_renormalises_inputs(teacher_ckpt):
    # the same pixels normalised two ways must give the same teacher embedding
    pixels = torch.rand(2, 3, 32, 32)
    mean_a, std_a = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    mean_b, std_b = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    ta = load_teacher(teacher_ckpt, mean_a, std_a)
    tb = load_teacher(teacher_ckpt, mean_b, std_b)
    norm = lambda x, m, s: (x - torch.tensor(m).view(1, 3, 1, 1)) / torch.tensor(s).view(1, 3, 1, 1)  # noqa: E731
    assert torch.allclose(ta(norm(pixels, mean_a, std_a)), tb(norm(pixels, mean_b, std_b)), atol=1e-5)


def test_teacher_checkpoint_rejects_other_files(tmp_path, resnet18_state):
    torch.save(resnet18_state, tmp_path / "plain.pth")
    with pytest.raises(CheckpointError, match="not a teacher checkpoint"):
        load_teacher(tmp_path / "plain.pth")


@pytest.mark.parametrize("method", ["distill_mocov2plus", "distill_byol"])
def test_teacher_unchanged_by_distilled_fit(tmp_path, image_dir, method):
    ckpt = make_teacher_checkpoint(tmp_path / "teacher.pth")
    cfg = tiny_cfg("pretrain", method, tmp_path / "run", image_dir, f"distill.teacher={ckpt}", "trainer.max_epochs=2")
    model = build_model(cfg)
    trainer = fit(cfg, model, tmp_path / "run")
    assert trainer.global_step == 8  # 32 images / batch 8 x 2 epochs: it really trained
    saved = torch.load(ckpt, weights_only=False)
    teacher = model.distill.teacher
    for key, value in teacher.backbone.state_dict().items():
        assert torch.equal(value, saved["backbone"]["state_dict"][key]), key
    for key, value in teacher.projector.state_dict().items():
        assert torch.equal(value, saved["projector"]["state_dict"][key]), key
    teacher_ids = {id(p) for p in teacher.parameters()}
    for group in trainer.optimizers[0].param_groups:
        assert not any(id(p) in teacher_ids for p in group["params"])
    # the student did learn: its backbone moved away from initialisation
    assert model.distill.memory.student().shape[0] == 16


def test_teacher_stage_frozen_and_recompute(tmp_path, image_dir):
    from solo_surgical.backbones import build_backbone

    torch.manual_seed(3)
    source_model, _ = build_backbone("resnet18")
    source = tmp_path / "resnet18-public.pth"
    torch.save({**source_model.state_dict(), "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}, source)
    exported = {}
    for bn in ("frozen", "recompute"):
        cfg = tiny_cfg("teacher", "mocov2plus", tmp_path / bn, image_dir, f"teacher.source={source}",
                       f"teacher.bn={bn}", "trainer.max_epochs=1", "backbone.name=tiny")
        exported[bn] = torch.load(run_teacher_stage(cfg), weights_only=False)
    ref = source_model.state_dict()
    frozen, recompute = exported["frozen"], exported["recompute"]
    assert frozen["backbone"]["arch"] == "resnet18"  # taken from the source's keys, not the config
    for key, value in ref.items():
        assert torch.equal(frozen["backbone"]["state_dict"][key], value), key
        if "running" not in key and "num_batches" not in key:
            assert torch.equal(recompute["backbone"]["state_dict"][key], value), key
    assert not torch.equal(recompute["backbone"]["state_dict"]["bn1.running_mean"], ref["bn1.running_mean"])
    assert frozen["meta"]["source_sha256"] and frozen["meta"]["method"] == "mocov2plus"
    # the projector trained, and the exported teacher reproduces it
    teacher = load_teacher(tmp_path / "frozen" / "teacher.pth")
    assert teacher.out_dim == 16 and teacher.meta["bn"] == "frozen"


def test_pre_041_checkpoint_without_batchnorm_counters(tmp_path, resnet18_state):
    # torchvision's original ResNet files predate BatchNorm's num_batches_tracked buffer
    old = {k: v for k, v in resnet18_state.items() if not k.endswith("num_batches_tracked")}
    assert len(old) < len(resnet18_state)
    torch.save(old, tmp_path / "resnet18-old.pth")
    loaded = load_backbone(str(tmp_path / "resnet18-old.pth"))
    module, arch, _ = loaded.module, loaded.arch, loaded.meta
    assert arch == "resnet18"
    assert torch.equal(module.state_dict()["layer1.0.bn1.running_var"], resnet18_state["layer1.0.bn1.running_var"])
