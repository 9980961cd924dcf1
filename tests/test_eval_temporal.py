"""Temporal model, feature extraction and the linear probe on tiny synthetic data."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from solo_surgical.cli import main
from solo_surgical.evaluation.temporal import (IGNORE, MultiStageTCN, TCNConfig, VideoFeatures, tcn_loss,
                                               train_tcn)
from solo_surgical.evaluation.temporal_cli import hold_previous

PHASES7 = ["Preparation", "CalotTriangleDissection", "ClippingCutting", "GallbladderDissection",
           "GallbladderPackaging", "CleaningCoagulation", "GallbladderRetraction"]


def test_causal_model_ignores_the_future():
    torch.manual_seed(0)
    model = MultiStageTCN(TCNConfig(in_dim=5, num_classes=4, stages=2, layers=4, channels=8, causal=True)).eval()
    x = torch.randn(1, 5, 40)
    y = x.clone()
    y[:, :, 25:] = torch.randn(1, 5, 15)
    a, b = model(x), model(y)
    assert a.shape == (2, 1, 4, 40)
    assert torch.allclose(a[..., :25], b[..., :25], atol=1e-6)
    assert not torch.allclose(a[..., 25:], b[..., 25:])
    acausal = MultiStageTCN(TCNConfig(in_dim=5, num_classes=4, layers=4, channels=8, causal=False)).eval()
    assert not torch.allclose(acausal(x)[..., :25], acausal(y)[..., :25])


def test_loss_is_cross_entropy_plus_weighted_truncated_mse():
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 3, 6) * 4
    target = torch.tensor([[0, 1, 2, IGNORE, 1, 0]])
    expected = 0.0
    for s in range(2):
        ce = F.cross_entropy(logits[s], target, ignore_index=IGNORE)
        logp = F.log_softmax(logits[s, 0], dim=0)  # (C, T)
        terms = []
        for t in range(1, 6):
            if target[0, t] != IGNORE and target[0, t - 1] != IGNORE:
                terms += [min(float(logp[c, t] - logp[c, t - 1]) ** 2, 16.0) for c in range(3)]
        expected += float(ce) + 0.15 * sum(terms) / len(terms)
    assert float(tcn_loss(logits, target, 0.15)) == pytest.approx(expected, rel=1e-5)
    assert float(tcn_loss(logits, target, 0.0)) == pytest.approx(
        sum(float(F.cross_entropy(logits[s], target, ignore_index=IGNORE)) for s in range(2)), rel=1e-6)


def _synthetic_video(rng, name, n_feat=6, noise=0.6):
    lengths = rng.integers(15, 40, size=4)
    labels = np.repeat(np.arange(4), lengths)
    centers = rng.normal(size=(4, n_feat)) * 1.5
    feats = centers[labels] + rng.normal(size=(labels.size, n_feat)) * noise
    return VideoFeatures(name, torch.tensor(feats, dtype=torch.float32), torch.tensor(labels),
                         torch.arange(labels.size) * 25)


def test_temporal_model_overfits_a_small_sequence():
    rng = np.random.default_rng(0)
    video = _synthetic_video(rng, "video01", noise=2.0)  # frame-wise ambiguous
    cfg = TCNConfig(in_dim=6, num_classes=4, stages=2, layers=5, channels=16, causal=False, dropout=0.0)
    model, history = train_tcn(cfg, [video], [], epochs=150, lr=5e-3, log=lambda s: None)
    assert history[-1]["train_acc"] > 97
    assert history[-1]["train_acc"] > history[0]["train_acc"]


def test_hold_previous():
    src = np.array([0, 25, 50])
    vals = np.array([3, 4, 5])
    at = np.arange(0, 60, 5)
    assert hold_previous(src, vals, at).tolist() == [3] * 5 + [4] * 5 + [5] * 2
    assert hold_previous(np.array([10, 20]), np.array([1, 2]), np.array([0, 10, 19, 20])).tolist() == [1, 1, 1, 2]


# ---------------------------------------------------------------- tiny prepared folder
def make_prepared(root, videos=("video01", "video02", "video03", "video41", "video49", "video50"),
                  frames=28, size=32, seed=0):
    """A prepared folder in the data layout: colour encodes the phase (plus noise)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    colours = rng.uniform(0, 255, size=(7, 3))
    manifest = {"format": 1, "dataset": "cholec80", "root": "synthetic", "phases": PHASES7, "tools": [],
                "options": {}, "videos": {}, "failed": {}}
    for v in videos:
        (root / v).mkdir(parents=True)
        labels = np.sort(rng.integers(0, 7, size=frames))
        rows = ["frame\tsource_frame\ttime\tphase"]
        for k, phase in enumerate(labels):
            img = np.clip(colours[phase] + rng.normal(0, 25, size=(size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / v / f"{k:06d}.jpg")
            rows.append(f"{k}\t{k * 25}\t{k:.3f}\t{phase}")
        (root / v / "frames.tsv").write_text("\n".join(rows) + "\n")
        manifest["videos"][v] = {"name": v, "native_fps": 25.0, "output_frames": frames, "status": "ok"}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_linear_probe_beats_chance(tmp_path, capsys):
    data = make_prepared(tmp_path / "data")
    out = tmp_path / "lin"
    assert main(["linear", "--data", str(data), "--out", str(out), "--backbone", "tiny", "--epochs", "30",
                 "--lr", "0.01", "--image-size", "32", "--batch-size", "32"]) == 0
    result = json.loads((out / "linear.json").read_text())
    assert result["protocol"] == "standard" and "best validation" in result["selection"]
    assert result["test_acc"] > 2 * 100 / 7  # chance is 1/7
    assert (out / "predictions" / "video49_pred.txt").exists()
    # the probe logs like pretraining (Lightning's CSV and TensorBoard loggers) and says each epoch
    metrics = (out / "logs" / "version_0" / "metrics.csv").read_text().splitlines()
    assert metrics[0].split(",") == ["epoch", "step", "train/acc", "train/loss", "val/acc"] and len(metrics) == 61
    assert list((out / "tensorboard" / "version_0").glob("events.out.tfevents.*"))
    assert [line.split("  ")[0] for line in capsys.readouterr().err.splitlines() if line.startswith("epoch ")] == \
        [f"epoch {e}/30" for e in range(1, 31)]
    # --no-progress: the same probe, silent (the benchmark's cells run it so), the same numbers
    assert main(["linear", "--data", str(data), "--out", str(tmp_path / "quiet"), "--backbone", "tiny", "--epochs", "30",
                 "--lr", "0.01", "--image-size", "32", "--batch-size", "32", "--no-progress"]) == 0
    assert not [line for line in capsys.readouterr().err.splitlines() if line.startswith("epoch ")]
    assert json.loads((tmp_path / "quiet" / "linear.json").read_text())["test_acc"] == result["test_acc"]
    # the probe checkpoint is readable as a backbone by extract
    feats = tmp_path / "feats"
    assert main(["extract", "--data", str(data), "--out", str(feats), "--checkpoint", str(out / "linear.ckpt"),
                 "--backbone", "tiny", "--image-size", "32", "--fps", "0.5"]) == 0
    saved = torch.load(feats / "video49.pt", weights_only=False)
    assert saved["features"].shape == (14, 64)
    assert saved["frame_indices"].tolist() == list(range(0, 28 * 25, 50))
    assert saved["labels"].shape == (14,)


def test_extract_then_temporal_then_evaluate(tmp_path, capsys):
    data = make_prepared(tmp_path / "data")
    feats, out = tmp_path / "feats", tmp_path / "tcn"
    assert main(["extract", "--data", str(data), "--out", str(feats), "--backbone", "tiny", "--image-size", "32"]) == 0
    assert main(["temporal", "--features", str(feats), "--out", str(out), "--epochs", "3", "--layers", "3",
                 "--channels", "8", "--plots"]) == 0
    preds = sorted(p.name for p in (out / "predictions").iterdir())
    assert preds == ["video49_pred.txt", "video50_pred.txt"]  # test part of the standard split only
    assert (out / "ribbons" / "video49.png").exists()
    assert main(["evaluate", "--dataset", "cholec80", "--gt", str(out / "gt"), "--pred", str(out / "predictions"),
                 "--fps", "1", "--protocol", "strict"]) == 0


def test_finetune_runs_and_saves_a_backbone_checkpoint(tmp_path, capsys):
    from solo_surgical.checkpoints import extract_backbone_state, load_file

    data = make_prepared(tmp_path / "data", frames=8)
    out = tmp_path / "ft"
    assert main(["linear", "--finetune", "--data", str(data), "--out", str(out), "--backbone", "tiny",
                 "--epochs", "2", "--image-size", "32", "--batch-size", "16"]) == 0
    result = json.loads((out / "linear.json").read_text())
    assert result["mode"] == "finetune" and len(result["history"]) == 2 and "test_acc" in result
    state, layout = extract_backbone_state(load_file(out / "linear.ckpt"), out / "linear.ckpt")
    assert layout == "lightning" and "features.0.weight" in state and not any(k.startswith("head") for k in state)
