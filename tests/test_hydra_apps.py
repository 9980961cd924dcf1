"""Training commands as Hydra apps: users' own config folders, multirun sweeps."""
from __future__ import annotations

import yaml

from solo_surgical.cli import main

from conftest import TINY


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("solo-surgical: error:")]


def test_own_config_folder_extends_the_packaged_config(capsys, tmp_path, image_dir):
    mine = tmp_path / "configs"
    mine.mkdir()
    (mine / "surgical_small.yaml").write_text(
        "defaults:\n  - pretrain\n  - override method: simclr\n  - _self_\n"
        f"backbone: {{name: tiny}}\ndata: {{root: {image_dir}, image_size: 32, batch_size: 8}}\n"
        "method: {kwargs: {proj_hidden_dim: 32, proj_output_dim: 16}}\n"
        "trainer: {max_epochs: 1, limit_train_batches: 2}\n")
    args = ["pretrain", "--config-path", str(mine), "--config-name", "surgical_small", f"run.dir={tmp_path / 'run'}",
            "optimizer.lr=0.05"]
    assert main([*args, "--cfg", "job"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    # the user's values, the command line's override and the packaged defaults, merged in that order
    assert printed["method"]["name"] == "simclr" and printed["data"]["image_size"] == 32
    assert printed["optimizer"]["lr"] == 0.05 and printed["optimizer"]["name"] == "sgd"
    assert printed["distill"]["memory_size"] == 2048  # from solo_surgical/hosts/lightly/configs/pretrain.yaml
    assert main(args) == 0
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["method"]["name"] == "simclr" and saved["backbone"]["name"] == "tiny"


def test_config_path_errors_are_one_line(capsys, tmp_path):
    assert main(["pretrain", "--config-path", str(tmp_path / "nope"), "--config-name", "x", "--cfg", "job"]) == 2
    assert "--config-path" in _error_lines(capsys.readouterr().err)[0]
    assert main(["pretrain", "--config-path", str(tmp_path), "--config-name", "x", "--cfg", "job"]) == 2
    assert "x.yaml not found" in _error_lines(capsys.readouterr().err)[0]
    assert main(["pretrain", "--config-name", "x", "--cfg", "job"]) == 2
    assert "give --config-path" in _error_lines(capsys.readouterr().err)[0]


def test_multirun_runs_every_combination_in_numbered_folders(capsys, tmp_path, image_dir):
    sweep = tmp_path / "sweep"
    args = ["pretrain", "-m", *TINY, f"data.root={image_dir}", f"run.dir={sweep}", "trainer.max_epochs=1",
            "trainer.limit_train_batches=1", "method=simclr,barlow_twins", "optimizer.lr=0.1,0.2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.startswith("[job ")] == [
        "[job 1/4] method=simclr optimizer.lr=0.1", "[job 2/4] method=simclr optimizer.lr=0.2",
        "[job 3/4] method=barlow_twins optimizer.lr=0.1", "[job 4/4] method=barlow_twins optimizer.lr=0.2"]
    configs = [yaml.safe_load((sweep / str(n) / "config.yaml").read_text()) for n in range(4)]
    assert [(c["method"]["name"], c["optimizer"]["lr"]) for c in configs] == [
        ("simclr", 0.1), ("simclr", 0.2), ("barlow_twins", 0.1), ("barlow_twins", 0.2)]
    assert all((sweep / str(n) / "checkpoints" / "last.ckpt").is_file() for n in range(4))


def test_a_bad_job_in_a_sweep_is_refused_before_any_job_runs(capsys, tmp_path, image_dir):
    sweep = tmp_path / "sweep"
    args = ["pretrain", "-m", *TINY, f"data.root={image_dir}", f"run.dir={sweep}", "method=simclr,no_such_method"]
    assert main(args) == 2
    assert "no_such_method" in _error_lines(capsys.readouterr().err)[0]
    assert not sweep.exists()


def test_loggers_are_chosen_by_name(capsys, tmp_path, image_dir):
    base = ["pretrain", *TINY, "method=simclr", f"data.root={image_dir}", "trainer.max_epochs=1",
            "trainer.limit_train_batches=2"]
    assert main([*base, f"run.dir={tmp_path / 'csv'}", "run.loggers=[csv]"]) == 0
    assert (tmp_path / "csv" / "logs" / "version_0" / "metrics.csv").is_file()
    assert not (tmp_path / "csv" / "tensorboard").exists()
    assert main([*base, f"run.dir={tmp_path / 'bad'}", "run.loggers=[csv,mlflowx]"]) == 2
    line = _error_lines(capsys.readouterr().err)[0]
    assert "run.loggers: unknown mlflowx" in line and not (tmp_path / "bad").exists()
