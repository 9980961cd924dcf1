"""What a finished pretraining leaves next to its checkpoints."""
from __future__ import annotations

import torch
import torchvision

from solo_surgical.cli import main

from conftest import TINY


def test_finished_run_exports_a_torchvision_loadable_backbone(capsys, tmp_path, image_dir):
    args = ["pretrain", *[a for a in TINY if not a.startswith("backbone.name")], "backbone.name=resnet18",
            "method=simclr", f"data.root={image_dir}", f"run.dir={tmp_path / 'run'}", "trainer.max_epochs=1",
            "trainer.limit_train_batches=1"]
    assert main(args) == 0, capsys.readouterr().err
    exported = torch.load(tmp_path / "run" / "backbone.pth", map_location="cpu", weights_only=True)
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    trained = {k[len("backbone."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("backbone.")}
    assert exported.keys() == trained.keys() and all(torch.equal(exported[k], trained[k]) for k in trained)
    model = torchvision.models.resnet18()
    result = model.load_state_dict(exported, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and not result.unexpected_keys
    assert torch.equal(model.conv1.weight, trained["conv1.weight"])


def test_only_the_newest_epoch_checkpoints_are_kept(capsys, tmp_path, image_dir):
    base = ["pretrain", *TINY, "method=simclr", f"data.root={image_dir}", "trainer.limit_train_batches=1"]
    assert main([*base, f"run.dir={tmp_path / 'a'}", "trainer.max_epochs=5", "run.keep_checkpoints=2"]) == 0
    assert sorted(p.name for p in (tmp_path / "a" / "checkpoints").iterdir()) == \
        ["epoch-003.ckpt", "epoch-004.ckpt", "last.ckpt"]
    # the default keeps three; a resume goes on pruning the same folder
    assert main([*base, f"run.dir={tmp_path / 'b'}", "trainer.max_epochs=4"]) == 0
    assert main([*base, f"run.dir={tmp_path / 'b'}", "trainer.max_epochs=6", "run.resume=last"]) == 0
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir()) == \
        ["epoch-003.ckpt", "epoch-004.ckpt", "epoch-005.ckpt", "last.ckpt"]
    last = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["epoch"] == 5 and last["global_step"] == 6


def test_a_second_launch_into_a_busy_run_folder_is_refused(capsys, tmp_path, image_dir):
    """Two launches into one run.dir at the same time: the second is refused before any write."""
    from solo_surgical.data.workers import FolderLock

    run = tmp_path / "run"
    holder = FolderLock(run, command="training launch", path=tmp_path / ".run.lock").acquire()  # the first launch
    try:
        args = ["pretrain", *TINY, "method=simclr", f"data.root={image_dir}", f"run.dir={run}",
                "trainer.max_epochs=1", "trainer.limit_train_batches=1"]
        assert main(args) == 2
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("solo-surgical: error:")]
        assert len(lines) == 1 and ".run.lock" in lines[0] and "another training launch" in lines[0], err
        assert not run.exists()
    finally:
        holder.release()
    assert main(args) == 0 and (run / "checkpoints" / "last.ckpt").is_file()
    assert not (tmp_path / ".run.lock").exists()  # released and removed by the launch that held it
