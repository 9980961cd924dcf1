"""The one checkpoint reader (solo_surgical.checkpoints.load_backbone): layouts, architecture, provenance."""
from __future__ import annotations

import hashlib

import pytest
import torch
import torchvision

from solo_surgical.backbones import TinyConvNet
from solo_surgical.checkpoints import CheckpointError, load_backbone, random_backbone, read_backbone_keys
from solo_surgical.errors import UserError


@pytest.fixture(scope="module")
def tiny_state():
    torch.manual_seed(0)
    return TinyConvNet().state_dict()


def _equal(module, state):
    return all(torch.equal(v, state[k]) for k, v in module.state_dict().items())


def test_a_run_checkpoint_names_its_architecture_and_provenance_is_the_files(tmp_path, tiny_state):
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {**{f"backbone.{k}": v for k, v in tiny_state.items()},
                               "projector.0.weight": torch.zeros(2, 64)},
                "hyper_parameters": {"backbone": "tiny"}}, path)
    loaded = load_backbone(path)  # tiny has no key signature: the run's record names it
    assert (loaded.arch, loaded.layout, loaded.feature_dim) == ("tiny", "lightning", 64)
    assert _equal(loaded.module, tiny_state)
    assert loaded.meta == {"source": str(path), "source_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                           "source_layout": "lightning"}
    assert loaded.keys.prefix == "backbone." and loaded.keys.dropped == ("projector.0.weight",)


def test_without_any_record_the_hint_serves_and_else_one_line_naming_the_file(tmp_path, tiny_state):
    path = tmp_path / "exported.pth"
    torch.save(dict(tiny_state), path)
    assert load_backbone(path, "tiny").arch == "tiny"
    with pytest.raises(CheckpointError) as err:
        load_backbone(path, ask="set backbone.name")
    message = str(err.value)
    assert message.startswith(f"{path}: cannot tell the architecture") and message.endswith("set backbone.name")
    assert "\n" not in message
    with pytest.raises(CheckpointError, match=f"{path}: unknown backbone 'nope'"):
        load_backbone(path, arch="nope")


def test_arch_order_insisted_then_keys_then_hint(tmp_path):
    torch.manual_seed(1)
    state = torchvision.models.resnet18().state_dict()
    path = tmp_path / "r18.pth"
    torch.save(state, path)
    assert load_backbone(path, "resnet34").arch == "resnet18"  # a default loses to what the keys show
    with pytest.raises(CheckpointError, match="does not fit the backbone"):  # an insisted one is believed
        load_backbone(path, arch="resnet34")


def test_into_loads_every_module_a_host_built_and_checks_strictly(tmp_path, tiny_state):
    path = tmp_path / "teacher_init.pth"
    torch.save(dict(tiny_state), path)
    online, momentum = TinyConvNet(), TinyConvNet()
    loaded = load_backbone(path, arch="tiny", into=[online, momentum])
    assert loaded.module is online and loaded.feature_dim is None and loaded.meta["source_layout"] == "torchvision"
    assert _equal(online, tiny_state) and _equal(momentum, tiny_state)
    with pytest.raises(CheckpointError, match=f"{path}: does not fit the backbone: .*keys of wrong shape"):
        load_backbone(path, arch="tiny", into=[TinyConvNet(width=8), TinyConvNet(width=16)])


def test_mocov2_keys_prefix_and_dropped_are_read_once(tiny_state):
    container = {f"module.encoder_q.{k}": v for k, v in tiny_state.items()}
    container.update({"module.encoder_q.fc.0.weight": torch.zeros(1), "module.encoder_k.features.0.weight":
                      torch.zeros(1), "module.queue": torch.zeros(1)})
    keys = read_backbone_keys({"state_dict": container, "epoch": 1}, "moco.pth.tar")
    assert keys.layout == "mocov2" and keys.prefix == "module.encoder_q." and set(keys.state) == set(tiny_state)
    assert keys.dropped == ("module.encoder_k.features.0.weight", "module.encoder_q.fc.0.weight", "module.queue")


def test_random_init_is_seeded_and_leaves_the_global_generator(tmp_path):
    before = torch.random.get_rng_state()
    a, b = random_backbone("tiny", 3), load_backbone(None, arch="tiny", init_seed=3)
    assert torch.equal(before, torch.random.get_rng_state())
    assert _equal(a.module, b.module.state_dict()) and a.layout == "random-init (seed 3)" and a.feature_dim == 64
    assert a.meta == {"source": None, "source_sha256": None, "source_layout": "random-init (seed 3)"}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        reference = TinyConvNet()
    assert _equal(a.module, reference.state_dict())
    with pytest.raises(UserError, match="no checkpoint and no architecture"):
        load_backbone(None)


def test_downloaded_files_are_read_as_tensors_only(tmp_path, tiny_state):
    path = tmp_path / "download.pth"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in tiny_state.items()}, "note": object()}, path)
    with pytest.raises(CheckpointError, match="refusing to unpickle a downloaded file"):
        load_backbone(path, "tiny", trusted=False)
    assert load_backbone(path, "tiny").arch == "tiny"  # our own files may hold Python objects
