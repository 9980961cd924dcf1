"""`solo-surgical evaluate` end to end: file pairing, checks, JSON and plots."""
from __future__ import annotations

import json

import numpy as np
import pytest

from solo_surgical.cli import main
from solo_surgical.data.registry import CHOLEC80_PHASES as C80, M2CAI16_PHASES
from solo_surgical.evaluation.labels import video_number, write_phase_file


def _write(path, frames, labels):
    write_phase_file(path, frames, labels)


def _seq(lengths, phases=C80):
    return [phases[i] for i, n in enumerate(lengths) for _ in range(n)]


@pytest.mark.parametrize("name,number", [
    ("video41-phase.txt", "41"), ("video41.txt", "41"), ("workflow_video_01.txt", "01"),
    ("test_workflow_video_01.txt", "01"), ("video41_pred.txt", "41"), ("41_pred.txt", "41"),
    ("01_pred.txt", "01"), ("README.txt", None)])
def test_video_number(name, number):
    assert video_number(name) == number


def test_pairs_names_and_writes_json(tmp_path, capsys):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    a = _seq([20, 20, 20])
    b = _seq([10, 30, 20])
    _write(gt / "test_workflow_video_01.txt", np.arange(60), ["TrocarPlacement"] * 5 + a[5:])
    _write(pred / "01_pred.txt", np.arange(60), ["TrocarPlacement"] * 5 + a[5:])
    _write(gt / "test_workflow_video_02.txt", np.arange(60), b)
    _write(pred / "video02_pred.txt", np.arange(60), a)
    out = tmp_path / "r.json"
    code = main(["evaluate", "--dataset", "m2cai16", "--gt", str(gt), "--pred", str(pred), "--fps", "1",
                 "--protocol", "strict", "--json", str(out), "--plots", str(tmp_path / "plots")])
    assert code == 0
    doc = json.loads(out.read_text())
    assert doc["phases"] == list(M2CAI16_PHASES)
    assert [v["video"] for v in doc["videos"]] == ["01", "02"]
    assert doc["videos"][0]["accuracy"] == 100
    # video 02: GT 10 P1 / 30 P2 / 20 P3, prediction 20 / 20 / 20 -> 50 of 60 correct
    assert doc["videos"][1]["accuracy"] == pytest.approx(50 / 60 * 100)
    assert doc["videos"][1]["recall"]["TrocarPlacement"] is None  # absent and never predicted
    assert set(doc["summary"]) >= {"accuracy", "jaccard", "precision", "recall", "f1", "per_phase"}
    assert (tmp_path / "plots" / "ribbon_01.png").stat().st_size > 1000
    assert (tmp_path / "plots" / "confusion.png").exists()
    assert "Mean accuracy" in capsys.readouterr().out


def _pair(tmp_path, gt_frames, gt_labels, pred_frames, pred_labels):
    _write(tmp_path / "gt" / "video41-phase.txt", gt_frames, gt_labels)
    _write(tmp_path / "pred" / "video41_pred.txt", pred_frames, pred_labels)
    return ["evaluate", "--dataset", "cholec80", "--gt", str(tmp_path / "gt"), "--pred",
            str(tmp_path / "pred"), "--fps", "1", "--protocol", "matlab"]


def test_missing_partner_is_an_error_naming_the_video(tmp_path, capsys):
    args = _pair(tmp_path, np.arange(30), _seq([30]), np.arange(30), _seq([30]))
    _write(tmp_path / "gt" / "video42-phase.txt", np.arange(30), _seq([30]))
    assert main(args) == 2
    assert "video 42: no prediction file" in capsys.readouterr().err
    # selecting only video 41 is fine
    assert main(args + ["--videos", "41"]) == 0


def test_different_lengths_and_frame_indices(tmp_path, capsys):
    assert main(_pair(tmp_path, np.arange(30), _seq([30]), np.arange(29), _seq([29]))) == 2
    assert "video 41" in capsys.readouterr().err
    assert main(_pair(tmp_path, np.arange(30), _seq([30]), np.arange(30) + 1, _seq([30]))) == 2
    assert "frame indices differ" in capsys.readouterr().err


def test_malformed_line_is_named(tmp_path, capsys):
    args = _pair(tmp_path, np.arange(30), _seq([30]), np.arange(30), _seq([30]))
    path = tmp_path / "pred" / "video41_pred.txt"
    lines = path.read_text().splitlines()
    lines[4] = "3 Preparation extra"
    path.write_text("\n".join(lines) + "\n")
    assert main(args) == 2
    assert "line 5" in capsys.readouterr().err


def test_fps_mismatch_warns_with_window_in_seconds(tmp_path, capsys):
    # labels every 5th frame of a 25 fps video = 5 fps; scored with fps 25 -> 250-frame window = 50 s
    args = _pair(tmp_path, np.arange(0, 300, 5), _seq([60]), np.arange(0, 300, 5), _seq([60]))
    args[args.index("--fps") + 1] = "25"
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "50 s instead of 10 s" in err
    args[args.index("--fps") + 1] = "5"
    assert main(args) == 0
    assert "warning" not in capsys.readouterr().err


def test_non_integer_window_is_an_error(tmp_path, capsys):
    args = _pair(tmp_path, np.arange(30), _seq([30]), np.arange(30), _seq([30]))
    args[args.index("--fps") + 1] = "0.15"
    assert main(args) == 2
    assert "whole number" in capsys.readouterr().err


def test_random_init_is_seeded_and_the_same_for_linear_and_extract():
    # `linear --backbone X` and `extract --backbone X` must see the same random network for the same
    # --init-seed, and another seed must give another network (so the check can fail)
    import torch

    from solo_surgical.evaluation.features import evaluation_backbone

    before = torch.random.get_rng_state()
    a = evaluation_backbone(None, "tiny", 3)[0].state_dict()
    b = evaluation_backbone(None, "tiny", 3)[0].state_dict()
    c = evaluation_backbone(None, "tiny", 4)[0].state_dict()
    assert torch.equal(before, torch.random.get_rng_state())  # the global generator is left alone
    weights = [k for k in a if k.endswith("weight") and a[k].dim() == 4]  # conv kernels (BatchNorm starts at 1)
    assert len(weights) == 4 and all(torch.equal(a[k], b[k]) for k in a)
    assert not any(torch.equal(a[k], c[k]) for k in weights)
