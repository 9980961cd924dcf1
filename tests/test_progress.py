"""Progress: a bar only on a terminal, one line per epoch otherwise."""
from __future__ import annotations

import io
import re

from solo_surgical.cli import main
from solo_surgical.train.progress import progress_mode

from conftest import TINY


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_needs_a_terminal_and_lines_replace_it():
    assert progress_mode(True, True, _Terminal()) == (True, False)
    assert progress_mode(True, True, io.StringIO()) == (False, True)   # a log file or a pipe
    assert progress_mode(False, True, _Terminal()) == (False, True)    # bar switched off: still progress
    assert progress_mode(False, False, io.StringIO()) == (False, False)


def test_each_epoch_prints_one_line_with_its_losses(capsys, tmp_path, image_dir):
    args = ["pretrain", *TINY, f"data.root={image_dir}", f"run.dir={tmp_path / 'run'}", "method=simclr",
            "trainer.max_epochs=3", "trainer.limit_train_batches=2", "trainer.enable_progress_bar=true"]
    assert main(args) == 0
    err = capsys.readouterr().err  # pytest's capture is not a terminal: no bar, lines instead
    lines = [line for line in err.splitlines() if line.startswith("epoch ")]
    assert [re.match(r"epoch (\d)/3  step (\d+)", line).groups() for line in lines] == \
        [("1", "2"), ("2", "4"), ("3", "6")], err
    assert all(re.search(r"  loss [0-9.]+  .*lr [0-9.e-]+  \([0-9.]+ s\)$", line) for line in lines), lines
    assert "\r" not in err
    assert main([*args, f"run.dir={tmp_path / 'quiet'}", "run.epoch_lines=false"]) == 0
    assert not [line for line in capsys.readouterr().err.splitlines() if line.startswith("epoch ")]


def test_a_value_logged_per_step_and_per_epoch_is_shown_once():
    import torch

    from solo_surgical.train.progress import EpochLines

    class _Trainer:
        global_rank, current_epoch, max_epochs, global_step, optimizers = 0, 1, 4, 10, []
        callback_metrics = {"train/loss": torch.tensor(2.0), "train/loss_step": torch.tensor(3.0),
                            "train/loss_epoch": torch.tensor(2.0), "train/kl_epoch": torch.tensor(0.5),
                            "val/acc": torch.tensor(1.0)}

    stream = io.StringIO()
    EpochLines(stream).on_train_epoch_end(_Trainer(), None)
    line = stream.getvalue()
    assert line.startswith("epoch 2/4  step 10  kl 0.5  loss 2  (") and "val" not in line and line.count("loss") == 1
