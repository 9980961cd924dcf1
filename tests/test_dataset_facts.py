"""Dataset facts live in the dataset spec (data/registry.py) and every stage reads them from there.

- the spec's facts equal the published ones (written out here) and the files the synthetic
  generator writes (a second, independent source for the frame rate and the file layout);
- the split a stage uses when none is named is the spec's ``default_protocol``, for every stage: with
  the default switched to another split in the spec alone, all of them follow (a stage that decides
  its own default, as pretraining's "first split" and linear/temporal's "standard" did, fails here).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_eval_temporal import make_prepared  # noqa: E402

from solo_surgical.cli import main  # noqa: E402
from solo_surgical.data.datasets import PreparedData  # noqa: E402
from solo_surgical.data.registry import get_dataset, labelled_dataset_names  # noqa: E402
from solo_surgical.evaluation.metrics import transition_rules  # noqa: E402

CHOLEC80 = ["Preparation", "CalotTriangleDissection", "ClippingCutting", "GallbladderDissection",
            "GallbladderPackaging", "CleaningCoagulation", "GallbladderRetraction"]
TOOLS = ["Grasper", "Bipolar", "Hook", "Scissors", "Clipper", "Irrigator", "SpecimenBag"]
VIDEOS = ("video01", "video02", "video03", "video41", "video49", "video50")


def test_spec_holds_the_published_facts():
    c80, m2 = get_dataset("cholec80"), get_dataset("m2cai16")
    assert list(c80.phases) == CHOLEC80 and list(c80.tools) == TOOLS and c80.native_fps == 25.0
    assert c80.split_names == ("paper", "standard") and c80.default_protocol == "standard"
    assert list(m2.phases) == ["TrocarPlacement", *CHOLEC80] and m2.native_fps == 25.0
    assert m2.default_protocol in m2.split_names
    folder = get_dataset("folder")
    assert folder.native_fps is None and folder.default_protocol in folder.split_names
    assert labelled_dataset_names() == ["cholec80", "m2cai16"]  # what `evaluate --dataset` accepts
    # the MATLAB script's relaxed phases, by name: ids 4-7 in Cholec80, one later in M2CAI16
    for spec, shift in ((c80, 0), (m2, 1)):
        jumpy = {p for p, rule in transition_rules(spec.name, len(spec.phases)).items() if rule[1] != {1}}
        assert jumpy == {4 + shift, 5 + shift, 6 + shift, 7 + shift}


def test_spec_matches_what_the_synthetic_generator_writes(tmp_path):
    import av

    spec = get_dataset("cholec80")
    raw = tmp_path / "raw"
    assert main(["synth", "--out", str(raw), "--videos", "1", "--seconds", "8", "--size", "64x36",
                 "--workers", "1"]) == 0
    with av.open(str(raw / "videos" / "video01.mp4")) as container:
        rate = float(container.streams.video[0].average_rate)
    assert rate == spec.native_fps
    rows = (raw / "phase_annotations" / "video01-phase.txt").read_text().splitlines()[1:]
    names = [row.split("\t")[1] for row in rows]
    order = list(dict.fromkeys(names))
    assert set(names) <= set(spec.phases) and order == [p for p in spec.phases if p in order]
    tools = (raw / "tool_annotations" / "video01-tool.txt").read_text().splitlines()
    assert tools[0].split("\t")[1:] == list(spec.tools)
    # Cholec80's tool annotations are at 1 fps: one row every native_fps frames
    steps = {int(b.split("\t")[0]) - int(a.split("\t")[0]) for a, b in zip(tools[1:], tools[2:])}
    assert steps == {int(spec.native_fps)}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return make_prepared(tmp_path_factory.mktemp("facts") / "data", videos=VIDEOS, frames=6)


@pytest.mark.parametrize("default", ["standard", "paper"])
def test_every_stage_uses_the_spec_default_protocol(prepared, tmp_path, monkeypatch, capsys, default):
    spec_cls = type(get_dataset("cholec80"))
    monkeypatch.setattr(spec_cls, "default_protocol", default)
    expected = get_dataset("cholec80").split(default, list(VIDEOS))
    # the data layer, read by pretraining (data.protocol: null), extract and export-solo-learn
    data = PreparedData(prepared)
    assert {part: data.part(part) for part in expected} == expected
    from solo_surgical.hosts.lightly.config import compose

    assert compose("pretrain", [])["data"]["protocol"] is None
    export = tmp_path / "export"
    assert main(["export-solo-learn", "--data", str(prepared), "--out", str(export)]) == 0
    val_videos = {p.name.rsplit("_", 1)[0] for p in (export / "linear" / "val").rglob("*.jpg")}
    assert val_videos == set(expected["val"] or expected["test"])
    # linear probe
    lin = tmp_path / "lin"
    assert main(["linear", "--data", str(prepared), "--out", str(lin), "--backbone", "tiny", "--epochs", "1",
                 "--image-size", "32", "--batch-size", "16"]) == 0
    assert json.loads((lin / "linear.json").read_text())["protocol"] == default
    # temporal model
    feats, tcn = tmp_path / "feats", tmp_path / "tcn"
    assert main(["extract", "--data", str(prepared), "--out", str(feats), "--backbone", "tiny",
                 "--image-size", "32"]) == 0
    assert main(["temporal", "--features", str(feats), "--out", str(tcn), "--epochs", "1", "--layers", "2",
                 "--channels", "4"]) == 0
    assert torch.load(tcn / "temporal.pt", weights_only=False)["protocol"] == default
    assert sorted(p.name for p in (tcn / "predictions").iterdir()) == [f"{v}_pred.txt" for v in expected["test"]]


def test_one_fallback_frame_rate_for_videos_that_declare_none():
    """prepare's label overrun slack, the decode tolerance and extract's subsampling share one rate:
    the datasets' own (25 fps), named once."""
    from fractions import Fraction

    from solo_surgical.data.registry import get_dataset
    from solo_surgical.data.video import FALLBACK_FPS, VideoInfo, duration_tolerance

    assert FALLBACK_FPS == get_dataset("cholec80").native_fps == get_dataset("m2cai16").native_fps
    # a stream without a rate: 3 periods of the fallback rate (duration short enough not to dominate)
    assert duration_tolerance(VideoInfo(64, 48, None, 0, Fraction(1))) == Fraction(3, FALLBACK_FPS)
