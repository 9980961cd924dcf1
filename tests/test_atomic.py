"""Outputs are written completely or not at all."""
from __future__ import annotations

import json

import pytest
import torch

from solo_surgical.atomic import torch_save, write_json, write_text


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "model.pt"
    torch_save({"x": torch.ones(2)}, path)
    with pytest.raises(Exception):
        # pickling fails after the temporary file was opened and partly written
        torch_save({"x": torch.zeros(1000), "bad": lambda: 0}, path)
    assert torch.equal(torch.load(path)["x"], torch.ones(2))
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt"]


def test_round_trips(tmp_path):
    assert write_text(tmp_path / "t.txt", "é\n").read_text(encoding="utf-8") == "é\n"
    assert json.loads(write_json(tmp_path / "d.json", {"a": [1, 2]}).read_text()) == {"a": [1, 2]}
    saved = torch_save({"x": torch.arange(3)}, tmp_path / "m.pt")
    assert torch.equal(torch.load(saved)["x"], torch.arange(3))


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_files_respect_the_umask(tmp_path, umask):
    import os

    old = os.umask(umask)
    try:
        path = write_text(tmp_path / f"r{umask:o}.txt", "x")
        expected = 0o666 & ~umask
        (tmp_path / "plain.txt").write_text("x")  # what open() would have made
        assert (path.stat().st_mode & 0o777) == expected == ((tmp_path / "plain.txt").stat().st_mode & 0o777)
    finally:
        os.umask(old)
