"""The solo-learn host, tested in solo-learn's own style (methods built from a config, forward
keys and shapes, ``learnable_params``, ``Trainer(fast_dev_run=True)`` on fake data) plus
registration through Hydra's plugin discovery.

solo-learn installs only from its source repository, so CI (which lacks it) skips this file;
see the README section "solo-learn host" to run it.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from solo_surgical.hosts.solo import available

if not available():
    pytest.skip("solo-learn is not importable (it installs only from its repository; see the README "
                "section 'solo-learn host'), so the solo-learn host is not tested here", allow_module_level=True)

from lightning.pytorch import Trainer  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from solo_surgical.checkpoints import extract_backbone_state, infer_resnet_arch  # noqa: E402
from solo_surgical.distill import load_teacher  # noqa: E402
from solo_surgical.errors import UserError  # noqa: E402
from solo_surgical.hosts.solo import CONFIG_MODULE, register  # noqa: E402

BATCH, SIZE, CLASSES = 4, 32, 5


@pytest.fixture(scope="module")
def methods():
    """solo-learn's registry, extended by us (the same dict main_pretrain.py looks names up in)."""
    from solo.methods import METHODS

    register()
    return METHODS


@pytest.fixture(scope="module")
def train_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("solo_train")
    for c in range(CLASSES):  # parse_cfg counts class folders to size the online classifier
        (root / f"{c}_phase").mkdir()
    return root


@pytest.fixture(scope="module")
def public_backbone(tmp_path_factory):
    """A backbone in torchvision's published layout, with non-trivial BatchNorm statistics."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("public") / "resnet18-torchvision.pth"
    torch.save(model.state_dict(), path)
    return path


def gen_cfg(method: str, train_dir, *overrides: str):
    """Our smoke config, composed by Hydra and parsed by solo-learn's own parse_cfg."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from solo.args.pretrain import parse_cfg

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.2"):
        cfg = compose("surgical_smoke_cpu", overrides=[f"method={method}", f"data.train_path={train_dir}",
                                                       f"optimizer.batch_size={BATCH}", "distill.memory_size=8",
                                                       "method_kwargs.queue_size=8", *overrides])
    OmegaConf.set_struct(cfg, False)
    return parse_cfg(cfg)


class FakeCrops(Dataset):
    """solo-learn's pretraining batch layout: (index, [crop1, crop2], target)."""

    def __init__(self, n: int = 2 * BATCH, labels: bool = True) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.randn(n, 2, 3, SIZE, SIZE, generator=g)
        self.targets = torch.randint(0, CLASSES, (n,), generator=g) if labels else torch.full((n,), -1)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return i, [self.images[i, 0], self.images[i, 1]], self.targets[i]


def fast_dev_run(model, labels: bool = True) -> Trainer:
    trainer = Trainer(fast_dev_run=2, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(model, DataLoader(FakeCrops(labels=labels), batch_size=BATCH, drop_last=True))
    return trainer


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def teacher_ckpt(methods, train_dir, public_backbone, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "teacher.pth"
    cfg = gen_cfg("teacher_mocov2plus", train_dir, f"teacher.source={public_backbone}", f"teacher.out={out}")
    fast_dev_run(methods["teacher_mocov2plus"](cfg))
    return out


def test_registration_is_complete_idempotent_and_refuses_a_taken_name(methods):
    for name in ("simclr", "mocov2plus", "moco", "byol", "barlow_twins"):
        assert f"distill_{name}" in methods and f"teacher_{name}" in methods
    assert methods["distill_moco"] is methods["distill_mocov2plus"]
    assert not any(f"{k}_{n}" in methods for k in ("distill", "teacher") for n in ("base", "linear", "mae"))
    assert register() == []
    clash = dict(methods)
    clash["distill_simclr"] = methods["simclr"]
    with pytest.raises(UserError, match="distill_simclr"):
        register(clash)


@pytest.mark.parametrize("base", ["simclr", "mocov2plus", "byol"])
def test_distilled_method(methods, train_dir, teacher_ckpt, base):
    cfg = gen_cfg(f"distill_{base}", train_dir, f"distill.teacher={teacher_ckpt}")
    model = methods[f"distill_{base}"](cfg)

    # the teacher is never optimised
    teacher_ids = {id(p) for p in model.distill.parameters()}
    learnable = [p for group in model.learnable_params for p in group["params"]]
    assert learnable and not teacher_ids & {id(p) for p in learnable}

    # forward keys and shapes are the host method's
    x = torch.randn(BATCH, 3, SIZE, SIZE)
    out = model(x)
    assert out["logits"].shape == (BATCH, CLASSES) and out["feats"].shape == (BATCH, model.features_dim)
    assert out["z"].shape == (BATCH, cfg.method_kwargs.proj_output_dim)
    if hasattr(model, "momentum_forward"):
        assert model.momentum_forward(x)["z"].shape == (BATCH, cfg.method_kwargs.proj_output_dim)

    before = snapshot(model.distill.teacher)
    fast_dev_run(model)
    after = model.distill.teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "teacher weights or BN statistics changed"
    assert int(model.distill.memory.filled) == 2 * BATCH  # two steps enqueued


def test_generic_wrapper_and_no_labels(methods, train_dir, teacher_ckpt):
    """A method registered upstream but not one of ours (Barlow Twins), and data.no_labels targets."""
    model = methods["distill_barlow_twins"](gen_cfg("distill_barlow_twins", train_dir,
                                                    f"distill.teacher={teacher_ckpt}"))
    losses = []
    original = model.training_step

    def recorded_step(batch, batch_idx):
        losses.append(original(batch, batch_idx))
        return losses[-1]

    model.training_step = recorded_step
    fast_dev_run(model, labels=False)
    assert losses and all(torch.isfinite(loss) for loss in losses)


def test_teacher_stage_freezes_the_backbone_and_exports(methods, train_dir, public_backbone, tmp_path):
    out = tmp_path / "byol-teacher.pth"
    cfg = gen_cfg("teacher_byol", train_dir, f"teacher.source={public_backbone}", f"teacher.out={out}")
    model = methods["teacher_byol"](cfg)
    frozen = {id(p) for p in model.backbone.parameters()} | {id(p) for p in model.momentum_backbone.parameters()}
    learnable = {id(p) for group in model.learnable_params for p in group["params"]}
    assert learnable and not frozen & learnable
    fast_dev_run(model)
    source = {k: v for k, v in torch.load(public_backbone).items() if not k.startswith("fc.")}
    exported = torch.load(out, weights_only=False)
    assert all(torch.equal(exported["backbone"]["state_dict"][k], v) for k, v in source.items())
    assert exported["predictor"] is not None and exported["meta"]["method"] == "byol"
    teacher = load_teacher(out)
    assert teacher(torch.randn(2, 3, SIZE, SIZE)).shape == (2, cfg.method_kwargs.proj_output_dim)


def test_checkpoint_interchange(methods, train_dir, teacher_ckpt, tmp_path):
    """Our extract/evaluate read the backbone; main_linear's key mapping (strict=False) misses nothing."""
    model = methods["distill_mocov2plus"](gen_cfg("distill_mocov2plus", train_dir, f"distill.teacher={teacher_ckpt}"))
    trainer = fast_dev_run(model)
    path = tmp_path / "run.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=False)
    state, layout = extract_backbone_state(ckpt, path)
    assert layout == "lightning" and infer_resnet_arch(state) == "resnet18"
    assert all(torch.equal(v, model.backbone.state_dict()[k]) for k, v in state.items())
    mapped = {k.replace("backbone.", ""): v for k, v in ckpt["state_dict"].items() if "backbone" in k}
    import torchvision

    linear_backbone = torchvision.models.resnet18()
    linear_backbone.fc = torch.nn.Identity()
    assert linear_backbone.load_state_dict(mapped, strict=False).missing_keys == []


@pytest.mark.parametrize("override, message", [
    ("distill.teacher=null", "set distill.teacher"),
    ("distill.teacher=/nonexistent/teacher.pth", "not found"),
    ("distill.memory_size=2", "smaller than the global batch"),
    ("+distill.wieght=2", "unknown keys"),
    ("augmentations.0.num_crops=3", "exactly 2 large crops"),
])
def test_bad_distill_config(methods, train_dir, teacher_ckpt, override, message):
    cfg = gen_cfg("distill_mocov2plus", train_dir, f"distill.teacher={teacher_ckpt}", override)
    with pytest.raises(UserError, match=message):
        methods["distill_mocov2plus"](cfg)


def test_registration_through_hydra_plugin_discovery(train_dir):
    """In a fresh interpreter: Hydra discovers our plugin, finds our configs and registers the methods."""
    code = textwrap.dedent("""
        import solo.methods
        from hydra import compose, initialize
        from hydra.core.plugins import Plugins
        from hydra.plugins.search_path_plugin import SearchPathPlugin
        names = [p.__name__ for p in Plugins.instance().discover(SearchPathPlugin)]
        assert "SoloSurgicalSearchPathPlugin" in names, names
        assert "distill_mocov2plus" not in solo.methods.METHODS
        with initialize(version_base="1.2", config_path=None):
            cfg = compose("surgical_cholec80", overrides=["method=distill_moco"])
        assert cfg.backbone.name == "resnet50" and cfg.method_kwargs.queue_size == 2048
        assert "distill_moco" in solo.methods.METHODS and "teacher_byol" in solo.methods.METHODS
        print("ok")
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


# --- every eligible upstream method, plain / distill_ / teacher_ ----------------------------------
# Tiny per-method settings (solo-learn's own required keys; sizes that fit a batch of 4).
METHOD_OVERRIDES = {
    "dino": ["++method_kwargs.num_prototypes=64"],
    "ressl": ["++method_kwargs.temperature_q=0.1", "++method_kwargs.temperature_k=0.04"],
    "swav": ["++method_kwargs.num_prototypes=16"],
    "deepclusterv2": ["++method_kwargs.num_prototypes=[8,8]"],
    "wmse": ["method_kwargs.proj_output_dim=2", f"++method_kwargs.whitening_size={BATCH}"],
    "vibcreg": ["++method_kwargs.iternorm=True"],  # upstream's vibcreg.yaml trains with IterNorm
}
# The contract, stated here independently of the implementation: how to recompute the query of a
# crop from its online backbone features, and its key from the online / momentum features.
PREDICTOR_QUERY = {"byol", "nnbyol", "nnclr", "nnsiam", "simsiam", "all4one", "mocov3"}
MOMENTUM_KEY = {"byol", "nnbyol", "mocov2plus", "mocov3", "ressl", "all4one"}


def expected_query(model, name: str, feats: torch.Tensor) -> torch.Tensor:
    if name == "dino":
        return model.head.mlp(feats)  # the bottleneck, not the prototype scores
    z = model.projector(feats)
    return model.predictor(z) if name in PREDICTOR_QUERY else z


def expected_key(model, name: str, feats: torch.Tensor, momentum_feats) -> torch.Tensor:
    if name == "dino":
        return model.momentum_head.mlp(momentum_feats)
    if name in MOMENTUM_KEY:
        return model.momentum_projector(momentum_feats)
    return model.projector(feats)


def eligible_methods() -> list[str]:
    from solo.methods import METHODS

    return sorted(n for n in METHODS if n not in ("base", "linear", "mae")
                  and not n.startswith(("distill_", "teacher_")))


def unit(t: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(t.detach().float(), dim=-1)


def test_every_two_large_crop_method_is_registered(methods):
    names = eligible_methods()
    assert len(names) == 18 and "wmse" in names, names  # solo-learn 1.0.6: 18 two-large-crop methods
    for name in names:
        assert {f"distill_{name}", f"teacher_{name}"} <= set(methods), name


@pytest.mark.parametrize("name", eligible_methods() if available() else [])
def test_plain_method_trains(methods, train_dir, name):
    model = methods[name](gen_cfg(name, train_dir, *METHOD_OVERRIDES.get(name, [])))
    before = snapshot(model.backbone)
    fast_dev_run(model)
    after = model.backbone.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if k.endswith("weight")), "backbone did not learn"


@pytest.mark.parametrize("name", eligible_methods() if available() else [])
def test_distill_method_follows_its_contract(methods, train_dir, teacher_ckpt, name):
    cfg = gen_cfg(f"distill_{name}", train_dir, f"distill.teacher={teacher_ckpt}", *METHOD_OVERRIDES.get(name, []))
    model = methods[f"distill_{name}"](cfg)
    online, momentum, checked = [], [], []
    base_step, mom_forward = model.base_training_step, getattr(model, "momentum_forward", None)

    def base_training_step(X, targets):
        out = base_step(X, targets)
        online.append(out["feats"].detach())
        return out

    def momentum_forward(X):
        out = mom_forward(X)
        momentum.append(out["feats"].detach())
        return out

    head_forward = model.distill.forward

    def distill_forward(views, queries, keys):
        with torch.no_grad():
            for i in range(2):
                q = expected_query(model, name, online[-2 + i])
                k = expected_key(model, name, online[-2 + i], momentum[-2 + i] if momentum else None)
                checked.append((torch.allclose(unit(queries[i]), unit(q), atol=1e-5),
                                torch.allclose(unit(keys[i]), unit(k), atol=1e-5), tuple(queries[i].shape)))
        return head_forward(views, queries, keys)

    model.base_training_step = base_training_step
    if mom_forward is not None:
        model.momentum_forward = momentum_forward
    model.distill.forward = distill_forward
    fast_dev_run(model)
    assert len(checked) == 4, "the distillation head was not called twice per step"
    assert all(q for q, _, _ in checked), f"{name}: queries are not the contract's outputs"
    assert all(k for _, k, _ in checked), f"{name}: keys are not the contract's outputs"
    assert int(model.distill.memory.filled) == 2 * BATCH


@pytest.mark.parametrize("name", eligible_methods() if available() else [])
def test_teacher_stage_exports_the_methods_embedding(methods, train_dir, public_backbone, tmp_path, name):
    out = tmp_path / f"{name}-teacher.pth"
    cfg = gen_cfg(f"teacher_{name}", train_dir, f"teacher.source={public_backbone}", f"teacher.out={out}",
                  *METHOD_OVERRIDES.get(name, []))
    model = methods[f"teacher_{name}"](cfg)
    fast_dev_run(model)
    exported = torch.load(out, weights_only=False)
    source = {k: v for k, v in torch.load(public_backbone).items() if not k.startswith("fc.")}
    assert all(torch.equal(exported["backbone"]["state_dict"][k], v) for k, v in source.items())
    meta = exported["meta"]
    teacher = load_teacher(out, input_mean=meta["mean"], input_std=meta["std"])
    x = torch.randn(3, 3, SIZE, SIZE)
    model.eval()
    with torch.no_grad():
        feats = model.backbone(x)
        expected = model.head.mlp(feats) if name == "dino" else model.projector(feats)
    assert torch.allclose(unit(teacher(x)), unit(expected), atol=1e-5), f"{name}: the teacher embeds otherwise"


def test_a_method_outside_the_table_gets_the_generic_contract(methods, train_dir, teacher_ckpt):
    """A user's method (here a BYOL subclass registered under a new name): p / momentum z."""
    from solo_surgical.hosts.solo.common import Captured
    from solo_surgical.hosts.solo.contracts import GENERIC

    registry = {"my_byol": type("MyBYOL", (methods["byol"],), {})}
    assert sorted(register(registry)) == ["distill_my_byol", "teacher_my_byol"]
    model = registry["distill_my_byol"](gen_cfg("distill_byol", train_dir, f"distill.teacher={teacher_ckpt}"))
    assert model.solo_surgical_contract is GENERIC
    x = torch.randn(BATCH, 3, SIZE, SIZE)
    model.eval()
    with torch.no_grad():
        out, mom = model(x), model.momentum_forward(x)
        _, queries, keys = model.distill_inputs(Captured(views=[x, x], online=[out, out], momentum=[mom, mom]))
    assert torch.equal(queries[0], out["p"]) and torch.equal(keys[1], mom["z"])
