"""Datasets, data modules, splits, low-data budgets, other layouts, solo-learn export, synth."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from data_fixtures import cholec80_video, decode_index, phase_labels, write_phase_file, write_video  # noqa: E402

from solo_surgical.cli import main  # noqa: E402
from solo_surgical.data.datasets import (LabeledFrames, PreparedData, UnlabeledFrames, VideoSequences,  # noqa: E402
                                         parse_budget, select_videos)
from solo_surgical.data.prepare import Options, prepare  # noqa: E402
from solo_surgical.data.registry import CHOLEC80_PHASES, M2CAI16_PHASES, get_dataset  # noqa: E402
from solo_surgical.errors import UserError  # noqa: E402

NUMBERS = (1, 2, 3, 4, 41, 45, 50)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    base = tmp_path_factory.mktemp("cholec")
    labels = {f"video{n:02d}": cholec80_video(base / "raw", n, 50 + n, CHOLEC80_PHASES, seed=n) for n in NUMBERS}
    _, failed = prepare(get_dataset("cholec80"), base / "raw", base / "data", Options(size=(32, 32)))
    assert failed == {}
    return base / "data", labels


def test_splits():
    spec = get_dataset("cholec80")
    names = [f"video{n:02d}" for n in range(1, 81)]
    paper, standard = spec.split("paper", names), spec.split("standard", names)
    assert [len(paper[p]) for p in ("train", "val", "test")] == [40, 0, 40]
    assert [len(standard[p]) for p in ("train", "val", "test")] == [40, 8, 32]
    assert standard["val"][0] == "video41" and standard["test"][0] == "video49"
    with pytest.raises(UserError, match="no split 'nope'"):
        spec.split("nope", names)


def test_budget_picks_whole_videos_deterministically():
    names = [f"video{n:02d}" for n in range(1, 41)]
    a, b = select_videos(names, 0.25, seed=3), select_videos(names, 0.25, seed=3)
    assert a == b and len(a) == 10 and set(a) <= set(names)
    assert select_videos(names, 0.25, seed=4) != a
    assert set(select_videos(names, 5, seed=3)) <= set(a)  # budgets nest
    assert select_videos(names, None) == names and select_videos(names, 1.0) == names
    assert len(select_videos(names, 0.01)) == 1
    for bad in (0.0, -1, 41, 2.5):
        with pytest.raises(UserError):
            select_videos(names, bad)
    assert parse_budget("25%") == 0.25 and parse_budget("10") == 10 and parse_budget("0.5") == 0.5


def test_unlabeled_and_labeled_frames(prepared):
    data, labels = prepared
    full = UnlabeledFrames(data, "train", "paper")
    assert full.videos == ["video01", "video02", "video03", "video04"]
    assert len(full) == sum(len(range(0, 50 + n, 25)) for n in (1, 2, 3, 4))
    seen = []
    ds = UnlabeledFrames(data, "train", "paper", budget=2, seed=7, transform=lambda im: [im.size, im.mode])
    again = UnlabeledFrames(data, "train", "paper", budget=2, seed=7)
    assert ds.videos == again.videos and len(ds.videos) == 2
    for i in range(len(ds)):
        views, index = ds[i]
        assert views == [(32, 32), "RGB"] and index == i
        seen.append(ds.records[i].video)
    assert set(seen) == set(ds.videos)  # every frame of the chosen videos, nothing else
    test = LabeledFrames(data, "test", "paper")
    assert test.videos == ["video41", "video45", "video50"]
    for i in range(len(test)):
        image, phase = test[i]
        r = test.records[i]
        assert image.shape == (3, 32, 32) and image.dtype == torch.float32
        assert phase == CHOLEC80_PHASES.index(labels[r.video][r.source])
        assert decode_index(r.path) == r.source
    standard = LabeledFrames(data, "val", "standard")
    assert standard.videos == ["video41", "video45"]


def test_sequences(prepared):
    data, labels = prepared
    seqs = VideoSequences(data, "train", "paper")
    frames, phases, sources = seqs[0]
    assert frames.shape == (3, 3, 32, 32) and sources.tolist() == [0, 25, 50]
    assert phases.tolist() == [CHOLEC80_PHASES.index(labels["video01"][s]) for s in (0, 25, 50)]
    clips = VideoSequences(data, "train", "paper", clip_len=2, stride=1)
    assert [len(c) for c in clips.clips[:2]] == [2, 2] and len(clips) == 4 * 2


def test_datamodules(prepared):
    from solo_surgical.data.datamodules import PhaseDataModule, SequenceDataModule, SSLDataModule

    data, _ = prepared
    two_views = lambda im: [torch.zeros(3, 8, 8), torch.ones(3, 8, 8)]  # noqa: E731
    ssl = SSLDataModule(data, two_views, batch_size=4, budget=0.5, seed=1)
    views, idx = next(iter(ssl.train_dataloader()))
    assert len(views) == 2 and views[0].shape == (4, 3, 8, 8) and idx.shape == (4,)
    phase = PhaseDataModule(data, train_transform=None, eval_transform=None, protocol="paper", batch_size=5)
    x, y = next(iter(phase.test_dataloader()))
    assert x.shape == (5, 3, 32, 32) and y.dtype == torch.long and phase.num_classes == 7
    # paper protocol: no val videos, and model selection must never fall back to the test videos
    assert "val" not in phase.sets and phase.val_dataloader() == []
    seq = SequenceDataModule(data, clip_len=2, batch_size=2)
    frames, phases, sources = next(iter(seq.train_dataloader()))
    assert frames.shape == (2, 2, 3, 32, 32) and phases.shape == (2, 2)


def test_export_solo_learn(prepared, tmp_path):
    data, labels = prepared
    out = tmp_path / "export"
    assert main(["export-solo-learn", "--data", str(data), "--out", str(out), "--budget", "2", "--seed", "1"]) == 0
    flat = sorted((out / "pretrain" / "train").iterdir())
    chosen = select_videos(PreparedData(data).part("train", "paper"), 2, seed=1)
    assert len(flat) == sum(len(PreparedData(data).frames(v)) for v in chosen)
    assert all(p.is_symlink() and p.resolve().is_file() for p in flat)
    classes = sorted(p.name for p in (out / "linear" / "train").iterdir())
    assert classes == [f"{i}_{n}" for i, n in enumerate(CHOLEC80_PHASES)]
    for link in (out / "linear" / "val").rglob("*.jpg"):
        video = link.name.rsplit("_", 1)[0]
        source = decode_index(link.resolve())
        assert link.parent.name == f"{CHOLEC80_PHASES.index(labels[video][source])}_{labels[video][source]}"
    assert main(["export-solo-learn", "--data", str(data), "--out", str(out)]) == 0  # replaces an export
    (tmp_path / "mine").mkdir()
    assert main(["export-solo-learn", "--data", str(data), "--out", str(tmp_path / "mine")]) == 2


def test_m2cai16_layout(tmp_path):
    raw = tmp_path / "m2cai"
    for folder, stem, n in (("train_dataset", "workflow_video_01", 60), ("train_dataset", "workflow_video_02", 40),
                            ("test_dataset", "test_workflow_video_01", 50)):
        write_video(raw / folder / f"{stem}.mp4", n)
        labels = phase_labels(n, M2CAI16_PHASES[:4], seed=n)
        # The M2CAI16 files use spaces; the parser takes any whitespace.
        (raw / folder / f"{stem}.txt").write_text("Frame Phase\n" + "".join(f"{i} {p}\n" for i, p in enumerate(labels)))
    _, failed = prepare(get_dataset("m2cai16"), raw, tmp_path / "data", Options(size=(32, 32)))
    assert failed == {}
    data = PreparedData(tmp_path / "data")
    assert data.phases[0] == "TrocarPlacement" and len(data.phases) == 8
    assert data.part("train") == ["workflow_video_01", "workflow_video_02"]
    assert data.part("test") == ["test_workflow_video_01"]
    first = LabeledFrames(data, "test")[0][1]
    assert first == M2CAI16_PHASES.index(phase_labels(50, M2CAI16_PHASES[:4], seed=50)[0])


def test_folder_dataset_with_optional_annotations(tmp_path, capsys):
    raw = tmp_path / "clips"
    write_video(raw / "a" / "one.mp4", 30)
    write_video(raw / "b" / "two.mp4", 30)
    write_phase_file(raw / "a" / "one-phase.txt", ["Cut"] * 10 + ["Sew"] * 20)
    out = tmp_path / "data"
    assert main(["prepare", "--dataset", "folder", "--root", str(raw), "--out", str(out), "--phases", "Cut,Sew",
                 "--size", "32", "--workers", "1"]) == 0
    data = PreparedData(out)
    assert data.videos == ["a__one", "b__two"] and data.phases == ["Cut", "Sew"]
    assert [r.phase for r in data.frames("a__one")] == [0, 1]
    assert [r.phase for r in data.frames("b__two")] == [-1, -1]
    assert len(UnlabeledFrames(data, "train", "all")) == 4 and len(LabeledFrames(data, "train", "all")) == 2


def test_synth_set_prepares_as_cholec80(tmp_path):
    raw = tmp_path / "raw"
    assert main(["synth", "--out", str(raw), "--videos", "2", "--seconds", "6", "--size", "128x72",
                 "--workers", "1"]) == 0
    meta = json.loads((raw / "synth.json").read_text())
    assert sorted(meta["videos"]) == ["video01", "video41"]
    first = (raw / "phase_annotations" / "video01-phase.txt").read_text()
    assert first.startswith("Frame\tPhase\n0\tPreparation\n")
    tools = (raw / "tool_annotations" / "video01-tool.txt").read_text().splitlines()
    assert tools[0].split("\t")[1:] == ["Grasper", "Bipolar", "Hook", "Scissors", "Clipper", "Irrigator", "SpecimenBag"]
    assert [int(line.split("\t")[0]) for line in tools[1:4]] == [0, 25, 50]
    out = tmp_path / "data"
    assert main(["prepare", "--dataset", "cholec80", "--root", str(raw), "--out", str(out), "--size", "32",
                 "--fps", "5", "--workers", "1"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    for name, truth in meta["videos"].items():
        entry = manifest["videos"][name]
        assert entry["native_frames"] == truth["frames"]
        assert all(abs(a - b) <= 2 for a, b in zip(entry["crop"], truth["content_box"])), (entry["crop"], truth)
        phases = [line.split("\t")[1] for line in (raw / "phase_annotations" / f"{name}-phase.txt").read_text().splitlines()[1:]]
        for r in PreparedData(out).frames(name):
            assert CHOLEC80_PHASES[r.phase] == phases[r.source]
    # Same seed, same set: annotations identical.
    assert main(["synth", "--out", str(tmp_path / "again"), "--videos", "2", "--seconds", "6", "--size", "128x72",
                 "--workers", "1"]) == 0
    assert (tmp_path / "again" / "phase_annotations" / "video01-phase.txt").read_text() == first
