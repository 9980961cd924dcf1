"""Model zoo: manifest facts, key conversion of each published layout, hashes, offline fetch, export.

No network: state dicts are built here with the published key layouts. ResNet-50 layouts use
one constant per tensor, expanded (stride 0) so that files stay tiny while shapes are exact;
the constants make any key mix-up visible. ResNet-18 files hold real random weights.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import re
import socket
import sys
import time
import types
from pathlib import Path

import pytest
import torch
import torchvision
import yaml
from torch import nn

from solo_surgical.checkpoints import CheckpointError, extract_backbone_state
from solo_surgical.cli import main
from solo_surgical.errors import UserError
from solo_surgical.zoo import fetch as zoo_fetch
from solo_surgical.zoo.convert import convert_object
from solo_surgical.zoo.manifest import load_manifest

IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


@pytest.fixture(scope="module")
def manifest():
    return load_manifest()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """No test may touch ~/.cache/torch: point every cache variable into tmp_path."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv(zoo_fetch.ENV_CACHE, raising=False)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("solo-surgical: error: ") and err.count("\n") == 1, err
    return err


@pytest.fixture(scope="module")
def r18():
    """A torchvision ResNet-18 with random weights and its state dict (published layout, with fc)."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    return model, {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def r18_file(r18, tmp_path_factory):
    path = tmp_path_factory.mktemp("r18") / "resnet18-random.pth"
    torch.save(r18[1], path)
    return path


def r50_layout(counters: bool = True, fc: bool = True, offset: float = 0.0) -> dict[str, torch.Tensor]:
    """torchvision ResNet-50 keys and shapes; tensor i is the constant i + offset (stride 0)."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in torchvision.models.resnet50(weights=None).state_dict().items()}
    out = {}
    for i, (key, shape) in enumerate(shapes.items()):
        if key.endswith("num_batches_tracked"):
            if counters:
                out[key] = torch.tensor(i, dtype=torch.long)
        elif fc or not key.startswith("fc."):
            out[key] = torch.tensor(float(i) + offset).expand(shape)
    return out


def mocov2_checkpoint(extra: dict | None = None) -> dict:
    """``moco_v2_*ep_pretrain.pth.tar``: query/key encoders with 2-layer MLP fc, queue, optimiser."""
    def zeros(*shape: int) -> torch.Tensor:
        return torch.zeros(()).expand(*shape)

    state = {}
    for prefix, offset in (("module.encoder_q.", 0.0), ("module.encoder_k.", 1000.0)):
        body = r50_layout(fc=False, offset=offset)
        body.update({"fc.0.weight": zeros(2048, 2048), "fc.0.bias": zeros(2048),
                     "fc.2.weight": zeros(128, 2048), "fc.2.bias": zeros(128)})
        state.update({prefix + k: v for k, v in body.items()})
    state["module.queue"] = zeros(128, 65536)
    state["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    state.update(extra or {})
    return {"epoch": 200, "arch": "resnet50", "state_dict": state, "optimizer": {"state": {}, "param_groups": []}}


# ----------------------------------------------------------------------------- manifest

def test_manifest_records_the_published_facts(manifest):
    expected = {
        "tv-resnet18-v1": ("https://download.pytorch.org/models/resnet18-f37072fd.pth", "resnet18"),
        "tv-resnet50-v1": ("https://download.pytorch.org/models/resnet50-0676ba61.pth", "resnet50"),
        "tv-resnet50-v2": ("https://download.pytorch.org/models/resnet50-11ad3fa6.pth", "resnet50"),
        "mocov2-resnet50-200ep": ("https://dl.fbaipublicfiles.com/moco/moco_checkpoints/moco_v2_200ep/"
                                  "moco_v2_200ep_pretrain.pth.tar", "resnet50"),
        "mocov2-resnet50-800ep": ("https://dl.fbaipublicfiles.com/moco/moco_checkpoints/moco_v2_800ep/"
                                  "moco_v2_800ep_pretrain.pth.tar", "resnet50"),
        "dino-resnet50": ("https://dl.fbaipublicfiles.com/dino/dino_resnet50_pretrain/dino_resnet50_pretrain.pth",
                          "resnet50"),
    }
    for name, (url, arch) in expected.items():
        s = manifest.get(name)
        assert (s.url, s.arch) == (url, arch)
        assert [list(s.mean), list(s.std)] == [pytest.approx(m) for m in IMAGENET]
        assert s.licence and s.hash_source
        # torchvision's file name carries the SHA-256 prefix (torch.hub's rule, re-derived here)
        m = re.search(r"-([0-9a-f]{8,})\.pth$", url)
        assert (s.sha256 == m.group(1)) if m else s.sha256 is None
    # MoCo publishes MD5 prefixes in its README
    assert manifest.get("mocov2-resnet50-200ep").md5 == "59fd9945"
    assert manifest.get("mocov2-resnet50-800ep").md5 == "a04e12f8"
    assert manifest.get("mocov2-resnet50-800ep").key_mapping.strip_prefix == "module.encoder_q."
    # torchvision's own registry agrees with the manifest (independent source in the venv)
    from torchvision.models import ResNet18_Weights, ResNet50_Weights
    assert manifest.get("tv-resnet50-v2").url == ResNet50_Weights.IMAGENET1K_V2.url
    assert manifest.get("tv-resnet50-v1").url == ResNet50_Weights.IMAGENET1K_V1.url
    assert manifest.get("tv-resnet18-v1").url == ResNet18_Weights.IMAGENET1K_V1.url


def test_manifest_rejects_a_hash_that_disagrees_with_the_file_name(tmp_path, manifest):
    raw = yaml.safe_load(Path(manifest.path).read_text())
    raw["sources"]["tv-resnet50-v1"]["sha256"] = "deadbeef"
    bad = tmp_path / "m.yaml"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError, match="deadbeef disagrees with the file name resnet50-0676ba61.pth"):
        load_manifest(bad)


def test_cache_dir_follows_torch_conventions(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCH_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert zoo_fetch.cache_dir() == tmp_path / "xdg" / "torch" / "hub" / "checkpoints"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    assert zoo_fetch.cache_dir() == tmp_path / "th" / "hub" / "checkpoints"
    monkeypatch.setenv(zoo_fetch.ENV_CACHE, str(tmp_path / "zoo"))
    assert zoo_fetch.cache_dir() == tmp_path / "zoo"
    assert zoo_fetch.cache_dir(tmp_path / "opt") == tmp_path / "opt"


def test_unknown_name_is_one_line_with_a_suggestion(manifest, capsys):
    with pytest.raises(UserError, match="unknown zoo name 'tv-resnet5-v1' \\(did you mean tv-resnet50-v1\\?\\)"):
        manifest.get("tv-resnet5-v1")
    assert main(["zoo", "fetch", "mocov2-resnet50-100ep"]) == 2
    err = one_line_error(capsys)
    assert "unknown zoo name 'mocov2-resnet50-100ep'" in err and "dino-resnet50" in err


# ----------------------------------------------------------------------------- conversion

def test_torchvision_layout_converts_with_only_fc_dropped(r18, manifest):
    model, state = r18
    conv = convert_object(dict(state), source=manifest.get("tv-resnet18-v1"))
    assert conv.dropped == ["fc.bias", "fc.weight"] and conv.filled == [] and conv.arch == "resnet18"
    assert set(conv.state) == set(state) - {"fc.weight", "fc.bias"}
    # same features as the original network without its classifier
    backbone = torchvision.models.resnet18(weights=None)
    backbone.fc = nn.Identity()
    backbone.load_state_dict(conv.state, strict=True)
    reference = torchvision.models.resnet18(weights=None)
    reference.load_state_dict(state)
    reference.fc = nn.Identity()
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(backbone.eval()(x), reference.eval()(x))


def test_legacy_torchvision_file_without_batchnorm_counters(manifest):
    conv = convert_object(r50_layout(counters=False), source=manifest.get("tv-resnet50-v1"))
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in torchvision.models.resnet50(weights=None).modules())
    assert len(conv.filled) == n_bn == 53
    assert all(int(conv.state[k]) == 0 for k in conv.filled)


def test_mocov2_layout_keeps_the_query_encoder_only(manifest):
    ckpt = mocov2_checkpoint()
    conv = convert_object(ckpt, source=manifest.get("mocov2-resnet50-800ep"))
    reference = r50_layout(fc=False)
    assert set(conv.state) == set(reference) and conv.layout == "mocov2"
    for key, value in reference.items():  # encoder_k holds 1000 + i: a mix-up would show
        assert torch.equal(conv.state[key], value), key
    dropped = set(conv.dropped)
    assert {k for k in dropped if k.startswith("module.encoder_q.")} == {
        f"module.encoder_q.fc.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")}
    assert {"module.queue", "module.queue_ptr"} <= dropped
    n = len(reference)
    assert len(dropped) == 4 + (n + 4) + 2  # query MLP head, the whole key encoder, queue + pointer


def test_mocov2_undocumented_key_is_refused(manifest):
    ckpt = mocov2_checkpoint(extra={"module.predictor.weight": torch.zeros(3)})
    with pytest.raises(CheckpointError, match="would drop 1 keys the manifest does not list \\(module.predictor.weight\\)"):
        convert_object(ckpt, source=manifest.get("mocov2-resnet50-200ep"), where="moco.pth.tar")


def test_dino_backbone_file_converts_with_nothing_dropped(manifest):
    state = r50_layout(fc=False)
    conv = convert_object(state, source=manifest.get("dino-resnet50"))
    assert conv.dropped == [] and conv.filled == [] and set(conv.state) == set(state)


def test_wrong_layout_or_arch_for_a_name_is_refused(r18, manifest):
    with pytest.raises(CheckpointError, match="mocov2 layout, but tv-resnet50-v1 is published in torchvision"):
        convert_object(mocov2_checkpoint(), source=manifest.get("tv-resnet50-v1"), where="x.pth")
    with pytest.raises(CheckpointError, match="x.pth: holds a resnet18, expected resnet50"):
        convert_object(dict(r18[1]), source=manifest.get("tv-resnet50-v1"), where="x.pth")


def test_cli_convert_file_writes_plain_state_dict_and_sidecar(r18, tmp_path, capsys):
    src = tmp_path / "moco_custom.pth.tar"
    torch.save(mocov2_checkpoint(), src)
    out = tmp_path / "init" / "teacher_init.pth"
    assert main(["zoo", "convert", str(src), "--out", str(out)]) == 0
    obj = torch.load(out, map_location="cpu")
    state, layout = extract_backbone_state(obj, out)  # what the teacher stage reads
    assert layout == "torchvision" and set(state) == set(r50_layout(fc=False))
    meta = json.loads(Path(f"{out}.json").read_text())
    assert meta["sha256"] == sha256(out) and meta["source_sha256"] == sha256(src)
    assert meta["arch"] == "resnet50" and meta["source_layout"] == "mocov2" and meta["mean"] == IMAGENET[0]
    assert "module.queue" in meta["dropped_keys"] and meta["filled_keys"] == []
    # same weights, another name: same bytes (torch would embed the file name in the archive)
    other = tmp_path / "elsewhere.pth"
    assert main(["zoo", "convert", str(src), "--out", str(other)]) == 0
    assert sha256(other) == sha256(out)


def test_convert_missing_or_truncated_file_is_one_line(r18_file, tmp_path, capsys):
    assert main(["zoo", "convert", str(tmp_path / "nope.pth"), "--out", str(tmp_path / "o.pth")]) == 2
    assert "nope.pth: file not found" in one_line_error(capsys)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(r18_file.read_bytes()[: r18_file.stat().st_size // 2])
    assert main(["zoo", "convert", str(cut), "--out", str(tmp_path / "o.pth")]) == 2
    assert "cut.pth: not a readable torch checkpoint" in one_line_error(capsys)
    assert not (tmp_path / "o.pth").exists()


# ----------------------------------------------------------------------------- hashes and fetch

def pinned(manifest, path: Path, port: int = 9):
    """tv-resnet18-v1 re-pointed at a local URL, with ``path``'s real hash as the published one."""
    digest = sha256(path)
    return dataclasses.replace(manifest.get("tv-resnet18-v1"), sha256=digest[:8],
                               url=f"http://127.0.0.1:{port}/resnet18-{digest[:8]}.pth")


def test_fetch_file_with_wrong_hash_is_refused_and_not_cached(r18_file, manifest, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(CheckpointError) as info:
        zoo_fetch.fetch(manifest.get("tv-resnet18-v1"), cache=cache, file=r18_file)
    msg = str(info.value)
    assert "\n" not in msg and "does not match f37072fd published for tv-resnet18-v1" in msg
    assert f"SHA-256 {sha256(r18_file)[:8]}..." in msg and f"({r18_file.stat().st_size} bytes" in msg
    assert not cache.exists() or not any(cache.iterdir())


def test_fetch_file_registers_and_rechecks_the_cache(r18_file, manifest, tmp_path):
    source, cache = pinned(manifest, r18_file), tmp_path / "cache"
    result = zoo_fetch.fetch(source, cache=cache, file=r18_file)
    assert result.path == cache / source.file_name and result.path.read_bytes() == r18_file.read_bytes()
    assert result.checked == [f"SHA-256 prefix {sha256(r18_file)[:8]}"] and not result.downloaded
    again = zoo_fetch.fetch(source, cache=cache)  # cache hit, hash checked again
    assert again.path == result.path and again.digests.sha256 == sha256(r18_file)
    result.path.write_bytes(r18_file.read_bytes()[:1000])  # truncated in the cache
    with pytest.raises(CheckpointError, match="1000 bytes: truncated.*delete the cached file"):
        zoo_fetch.fetch(source, cache=cache)


def test_resolve_local_for_teacher_sources(r18_file, manifest, tmp_path, monkeypatch):
    assert zoo_fetch.resolve_local(str(r18_file)) == r18_file
    cache = zoo_fetch.cache_dir()  # TORCH_HOME points into tmp_path
    cache.mkdir(parents=True)
    legacy = cache / "dino_resnet50_pretrain.pth"  # no published hash: the layout is checked
    torch.save(r50_layout(fc=False), legacy)
    assert zoo_fetch.resolve_local("dino-resnet50") == legacy
    with pytest.raises(UserError, match="runs/x/teacher.pth: file not found"):
        zoo_fetch.resolve_local("runs/x/teacher.pth")
    with pytest.raises(UserError, match="convert it first"):
        zoo_fetch.resolve_local("timm:resnet50.a1_in1k")


def test_truncated_file_is_a_one_line_error_with_or_without_a_hash(r18_file, manifest, tmp_path):
    cut = tmp_path / "cut.pth"
    cut.write_bytes(r18_file.read_bytes()[:-4096])
    with pytest.raises(CheckpointError, match=f"{cut.stat().st_size} bytes: truncated"):
        zoo_fetch.fetch(pinned(manifest, r18_file), cache=tmp_path / "c1", file=cut)
    # no published hash (DINO): the layout check catches it
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint") as info:
        zoo_fetch.fetch(manifest.get("dino-resnet50"), cache=tmp_path / "c2", file=cut)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "c2").exists() or not any((tmp_path / "c2").iterdir())


class _Payload:
    def __reduce__(self):
        return (print, ("payload ran",))


def test_downloaded_file_with_pickled_code_is_refused_not_run(manifest, tmp_path, capsys):
    evil = tmp_path / "dino_resnet50_pretrain.pth"
    torch.save({"conv1.weight": torch.zeros(1), "x": _Payload()}, evil)
    with pytest.raises(CheckpointError, match="refusing to unpickle a downloaded file"):
        zoo_fetch.fetch(manifest.get("dino-resnet50"), cache=tmp_path / "c", file=evil)
    assert "payload ran" not in capsys.readouterr().out and not (tmp_path / "c").exists()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_offline_fetch_fails_fast_with_manual_download_message(r18_file, manifest, tmp_path):
    source, cache = pinned(manifest, r18_file, port=_closed_port()), tmp_path / "cache"
    start = time.monotonic()
    with pytest.raises(UserError) as info:
        zoo_fetch.fetch(source, cache=cache, timeout=2)
    assert time.monotonic() - start < 5
    msg = str(info.value)
    assert "\n" not in msg and source.url in msg and str(cache / source.file_name) in msg
    assert f"zoo fetch {source.name} --file PATH" in msg
    assert list(cache.iterdir()) == []  # not even a hidden .partial file


def test_cli_offline_fetch_names_the_real_url_and_destination(monkeypatch, tmp_path, capsys):
    import urllib.error
    import urllib.request

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(zoo_fetch, "_resolve_host", lambda url, timeout: None)
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    assert main(["zoo", "fetch", "tv-resnet50-v1", "--cache-dir", str(tmp_path)]) == 2
    err = one_line_error(capsys)
    assert "https://download.pytorch.org/models/resnet50-0676ba61.pth" in err
    assert str(tmp_path / "resnet50-0676ba61.pth") in err and "Temporary failure" in err
    assert list(tmp_path.iterdir()) == []


class _Response:
    """A fake HTTP response that serves ``data`` and may fail after ``fail_after`` bytes."""

    def __init__(self, data: bytes, length: int | None = None, fail_after: int | None = None):
        self.data, self.pos, self.fail_after = data, 0, fail_after
        self.headers = {"Content-Length": str(len(data) if length is None else length)}

    def read(self, n: int) -> bytes:
        if self.fail_after is not None and self.pos >= self.fail_after:
            raise ConnectionResetError("connection reset by peer")
        block = self.data[self.pos:self.pos + min(n, 1 << 16)]
        self.pos += len(block)
        return block

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("case", ["ok", "reset", "short", "wrong-bytes"])
def test_download_is_renamed_only_after_the_hash_check(case, r18_file, manifest, tmp_path):
    data = r18_file.read_bytes()
    source, cache = pinned(manifest, r18_file), tmp_path / "cache"
    response = {"ok": _Response(data), "reset": _Response(data, fail_after=len(data) // 3),
                "short": _Response(data[:-10], length=len(data)),
                "wrong-bytes": _Response(data[:-10] + b"0123456789")}[case]
    opener = lambda request, timeout: response  # noqa: E731
    if case == "ok":
        result = zoo_fetch.fetch(source, cache=cache, opener=opener)
        assert result.downloaded and result.path.read_bytes() == data
        assert sorted(p.name for p in cache.iterdir()) == [source.file_name]
        return
    error = CheckpointError if case == "wrong-bytes" else UserError
    with pytest.raises(error) as info:
        zoo_fetch.fetch(source, cache=cache, opener=opener)
    assert "\n" not in str(info.value)
    assert list(cache.iterdir()) == []


def test_cli_verify_and_convert_with_a_pinned_manifest(r18_file, manifest, tmp_path, capsys):
    digest = sha256(r18_file)
    raw = yaml.safe_load(Path(manifest.path).read_text())
    entry = dict(raw["sources"]["tv-resnet18-v1"], sha256=digest,
                 url=f"http://127.0.0.1:9/resnet18-{digest[:8]}.pth")
    raw["sources"] = {"local-r18": entry}
    mpath = tmp_path / "manifest.yaml"
    mpath.write_text(yaml.safe_dump(raw))
    named = tmp_path / f"resnet18-{digest[:8]}.pth"
    named.write_bytes(r18_file.read_bytes())
    assert main(["zoo", "verify", str(named), "--manifest", str(mpath)]) == 0  # found by file name
    out = capsys.readouterr().out
    assert f"sha256: {digest}" in out and f"verified: SHA-256 = {digest}" in out and "resnet18 backbone" in out
    init = tmp_path / "init.pth"
    args = ["zoo", "convert", "local-r18", "--manifest", str(mpath), "--cache-dir", str(tmp_path / "c"),
            "--file", str(named), "--out", str(init)]
    assert main(args) == 0
    meta = json.loads(Path(f"{init}.json").read_text())
    assert meta["source"] == "local-r18" and meta["source_sha256"] == digest
    assert meta["source_hash_checked"] == [f"SHA-256 = {digest}"] and meta["dropped_keys"] == ["fc.bias", "fc.weight"]
    assert (tmp_path / "c" / named.name).read_bytes() == named.read_bytes()


def test_cli_verify_hash_mismatch_against_the_real_manifest(r18_file, tmp_path, capsys):
    fake = tmp_path / "resnet18-f37072fd.pth"  # published name, different content
    fake.write_bytes(r18_file.read_bytes())
    assert main(["zoo", "verify", str(fake)]) == 2
    assert "does not match f37072fd published for tv-resnet18-v1" in one_line_error(capsys)


# ----------------------------------------------------------------------------- timm

def test_timm_name_without_timm_is_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "timm", None)  # import fails even where timm is installed
    assert main(["zoo", "convert", "timm:resnet50.a1_in1k", "--out", str(tmp_path / "o.pth")]) == 2
    assert "timm:resnet50.a1_in1k: timm is not installed; `pip install timm`" in one_line_error(capsys)


def test_timm_resnet_converts_with_its_own_normalisation(monkeypatch, r18, tmp_path, capsys):
    def create_model(name, pretrained, **kwargs):
        assert pretrained and name in ("resnet18.fake", "vit.fake")
        if name == "vit.fake":
            return nn.Sequential(nn.Linear(3, 3))
        model = torchvision.models.resnet18(weights=None)
        model.load_state_dict(r18[1])
        model.pretrained_cfg = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), "hf_hub_id": "timm/fake"}
        return model

    monkeypatch.setitem(sys.modules, "timm", types.SimpleNamespace(create_model=create_model, __version__="0"))
    out = tmp_path / "t.pth"
    assert main(["zoo", "convert", "timm:resnet18.fake", "--out", str(out)]) == 0
    meta = json.loads(Path(f"{out}.json").read_text())
    assert meta["mean"] == [0.5] * 3 and meta["std"] == [0.25] * 3 and meta["hf_hub_id"] == "timm/fake"
    state = torch.load(out)
    assert torch.equal(state["layer4.1.bn2.running_var"], r18[1]["layer4.1.bn2.running_var"])
    assert main(["zoo", "convert", "timm:vit.fake", "--out", str(out)]) == 2
    assert "not a torchvision ResNet layout" in one_line_error(capsys)


# ----------------------------------------------------------------------------- export

@pytest.fixture
def run_dir(r18, tmp_path):
    """A run folder as `solo-surgical pretrain` writes it (two launches: a resume made version_1)."""
    run = tmp_path / "runs" / "distill_simclr_r18"
    (run / "checkpoints").mkdir(parents=True)
    (run / "eval").mkdir()
    state = {f"backbone.{k}": v for k, v in r18[1].items() if not k.startswith("fc.")}
    state.update({"projector.0.weight": torch.randn(8, 512), "teacher.backbone.conv1.weight": torch.zeros(1)})
    torch.save({"epoch": 3, "global_step": 120, "state_dict": state, "pytorch-lightning_version": "2.6.6"},
               run / "checkpoints" / "last.ckpt")
    (run / "config.yaml").write_text(yaml.safe_dump({
        "method": {"name": "distill_simclr"}, "backbone": {"name": "resnet18", "init": None},
        "data": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        "distill": {"teacher": "runs/teacher/teacher.pth"}}))
    logs = [[[0, 39, 5.5, ""], [1, 79, 4.25, 0.1]], [[3, 119, 3.125, ""]]]
    for version, rows in enumerate(logs):
        (run / "logs" / f"version_{version}").mkdir(parents=True)
        with open(run / "logs" / f"version_{version}" / "metrics.csv", "w", newline="") as handle:
            csv.writer(handle).writerows([["epoch", "step", "train_loss", "lr"], *rows])
    (run / "eval" / "cholec80.json").write_text(json.dumps({  # `solo-surgical evaluate` document
        "protocol": "relaxed", "dataset": "cholec80", "fps": 1.0, "phases": ["a", "b"], "videos": [],
        "summary": {"accuracy": {"mean": 0.8125, "std": 0.0625}, "jaccard": {"mean": 0.625, "std": None},
                    "per_phase": {"jaccard": {"a": 0.5, "b": 0.75}}}}))
    return run


def test_export_writes_a_dino_style_card(run_dir, r18, tmp_path, capsys):
    out = tmp_path / "release"
    assert main(["export", str(run_dir), "--out", str(out)]) == 0
    weights = [p for p in out.glob("distill_simclr_resnet18-*.pth")]
    assert len(weights) == 1
    digest = sha256(weights[0])
    assert weights[0].name == f"distill_simclr_resnet18-{digest[:8]}.pth"
    assert torch.hub.HASH_REGEX.search(weights[0].name).group(1) == digest[:8]  # torch.hub can check it
    backbone = torchvision.models.resnet18(weights=None)
    backbone.fc = nn.Identity()
    backbone.load_state_dict(torch.load(weights[0]), strict=True)
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, r18[1][key]), key
    card = json.loads((out / "card.json").read_text())
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    full = out / card["checkpoint"]["file"]
    assert full.read_bytes() == ckpt.read_bytes() and card["checkpoint"]["sha256"] == sha256(ckpt)
    assert card["checkpoint"]["epoch"] == 3 and card["arch"] == "resnet18"
    assert card["num_params"] == sum(p.numel() for p in backbone.parameters())
    assert card["backbone"]["mean"] == [0.5] * 3 and card["backbone"]["std"] == [0.25] * 3
    assert (out / "config.yaml").read_bytes() == (run_dir / "config.yaml").read_bytes()
    assert card["config"]["teacher"] == {"distill.teacher": "runs/teacher/teacher.pth"}
    log = card["training_log"]
    assert log["files"] == ["logs/version_0/metrics.csv", "logs/version_1/metrics.csv"]
    assert log["last"] == {"epoch": 3, "step": 119, "train_loss": 3.125, "lr": 0.1} and log["rows"] == 3
    assert (out / "logs" / "version_1" / "metrics.csv").read_bytes() == \
        (run_dir / "logs" / "version_1" / "metrics.csv").read_bytes()
    assert card["evaluation"] == [{"file": "eval/cholec80.json", "protocol": "relaxed", "dataset": "cholec80",
                                   "metrics": {"accuracy.mean": 0.8125, "accuracy.std": 0.0625,
                                               "jaccard.mean": 0.625}}]
    assert (out / "eval" / "cholec80.json").read_bytes() == (run_dir / "eval" / "cholec80.json").read_bytes()
    md = (out / "MODEL_CARD.md").read_text()
    assert "| arch | params | accuracy (relaxed) | jaccard (relaxed) | download |" in md
    assert "| resnet18 | 11.2M | 0.8125 ± 0.062 | 0.625 |" in md and f"[backbone only]({weights[0].name})" in md
    capsys.readouterr()
    assert main(["export", str(run_dir), "--out", str(out)]) == 2  # no silent overwrite
    assert "already exists" in one_line_error(capsys)
    assert main(["export", str(run_dir), "--out", str(out), "--force"]) == 0


def test_export_of_a_folder_without_checkpoint_is_one_line(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    assert main(["export", str(tmp_path / "run")]) == 2
    assert "last.ckpt: not found" in one_line_error(capsys)


def test_teacher_source_takes_zoo_names(tmp_path, capsys):
    """`teacher.source=dino-resnet50` uses the zoo's cached file (hash or layout checked), as a path would."""
    from solo_surgical.data.images import generate_images

    torch.manual_seed(0)
    cached = zoo_fetch.cache_dir() / "dino_resnet50_pretrain.pth"
    cached.parent.mkdir(parents=True)
    state = {k: v for k, v in torchvision.models.resnet50(weights=None).state_dict().items() if not k.startswith("fc.")}
    torch.save(state, cached)
    images = generate_images(tmp_path / "images", count=16, size=32)
    common = ["data.image_size=32", "data.batch_size=8", "trainer.max_epochs=1", "trainer.limit_train_batches=1",
              f"data.root={images}", "method.kwargs.proj_hidden_dim=32", "method.kwargs.proj_output_dim=16",
              "method.kwargs.queue_size=16"]
    assert main(["teacher", *common, "teacher.source=dino-resnet50", f"run.dir={tmp_path / 'teacher'}"]) == 0
    saved = torch.load(tmp_path / "teacher" / "teacher.pth", map_location="cpu", weights_only=False)
    assert saved["meta"]["zoo_name"] == "dino-resnet50" and saved["meta"]["source_sha256"] == sha256(cached)
    assert saved["backbone"]["arch"] == "resnet50"
    assert all(torch.equal(saved["backbone"]["state_dict"][k], v) for k, v in state.items())
    capsys.readouterr()
    # a name that is neither a file nor in the zoo: one line, nothing written
    assert main(["teacher", *common, "teacher.source=no-such-model", f"run.dir={tmp_path / 'x'}"]) == 2
    assert "no-such-model" in one_line_error(capsys) and not (tmp_path / "x").exists()
