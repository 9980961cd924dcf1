"""The README's "Python API" section runs as written, and does what it says."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(section: str) -> list[str]:
    """The ```python blocks of one '## ' section of the README, in order."""
    text = README.read_text()
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end if end > 0 else None], flags=re.S)


def test_readme_has_both_examples():
    assert len(python_blocks("Python API")) == 2


def test_own_loop_example_distils_and_keeps_teacher_frozen(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace: dict = {}
    exec(compile(python_blocks("Python API")[0], "README.md (own loop)", "exec"), namespace)
    head, teacher = namespace["head"], namespace["teacher"]
    # The KL term is active (global-batch relations from step 1) and reached the student.
    assert float(namespace["kd"].detach()) > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in namespace["projector"].parameters())
    # The teacher never learns and its output size was read from its projector.
    assert teacher.out_dim == 32 and not any(p.requires_grad for p in teacher.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    # Three steps of 16 images enqueued 48 slot-aligned keys: memory rows equal fresh teacher embeddings
    # of the last step's view 2, recomputed here independently.
    student_mem, teacher_mem = head.memory.student(), head.memory.teacher()
    assert student_mem.shape == (48, 64) and teacher_mem.shape == (48, 32)
    with torch.no_grad():
        expected = teacher(namespace["x2"])
    expected = torch.nn.functional.normalize(expected, dim=1)
    assert torch.allclose(torch.nn.functional.normalize(teacher_mem[-16:], dim=1), expected, atol=1e-5)


def test_stage_example_writes_teacher_and_distilled_student(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "example.py").write_text(python_blocks("Python API")[1])
    proc = subprocess.run([sys.executable, "example.py"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    teacher_ckpt, last = proc.stdout.split()[-2:]
    from solo_surgical.distill import load_teacher

    teacher = load_teacher(tmp_path / teacher_ckpt)
    public = torch.load(tmp_path / "public.pth", map_location="cpu")
    # The teacher's backbone is exactly the public file (frozen through the teacher stage).
    for key, value in public.items():
        assert torch.equal(teacher.backbone.state_dict()[key], value), key
    student = torch.load(tmp_path / last, map_location="cpu", weights_only=False)
    assert student["solo_surgical"] == {"method": "distill_mocov2plus", "backbone": "tiny"}
    assert student["global_step"] == 2  # limit_train_batches=2, one epoch


def test_mapping_overrides_compose_like_the_command_line():
    from solo_surgical import api

    from_mapping = api.compose_config("pretrain", {"data.root": None, "data.image_size": 48, "method": "simclr",
                                                   "trainer.limit_train_batches": 0.5, "backbone.init": Path("x.pth")})
    from_strings = api.compose_config("pretrain", ["data.root=null", "data.image_size=48", "method=simclr",
                                                   "trainer.limit_train_batches=0.5", "backbone.init=x.pth"])
    assert from_mapping == from_strings
    assert from_mapping.data.root is None and from_mapping.data.image_size == 48


def test_python_m_and_version_agree_with_the_installed_metadata():
    from importlib.metadata import version

    import solo_surgical

    proc = subprocess.run([sys.executable, "-m", "solo_surgical", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"solo-surgical {version('solo-surgical')}" == f"solo-surgical {solo_surgical.__version__}"


def test_evaluation_stages_as_functions_equal_the_commands(tmp_path, capsys):
    """api.linear / extract / temporal give what the commands write, on a prepared synthetic set."""
    import json

    from solo_surgical import api
    from solo_surgical.cli import main

    from solo_surgical.data.commands import PrepareArgs, SynthArgs, run_prepare, run_synth

    assert run_synth(SynthArgs(out=tmp_path / "raw", videos=8, seconds=8, size="96x64", seed=3)) == 0
    data = tmp_path / "data"
    assert run_prepare(PrepareArgs(dataset="cholec80", root=tmp_path / "raw", out=data, size=32)) == 0
    common = ["--data", str(data), "--backbone", "tiny", "--image-size", "32", "--epochs", "3"]
    assert main(["linear", *common, "--out", str(tmp_path / "cli")]) == 0
    result = api.linear(api.LinearConfig(data=data, out=tmp_path / "py", backbone="tiny", image_size=32, epochs=3))
    assert result == json.loads((tmp_path / "cli" / "linear.json").read_text())  # same numbers, same seed
    assert 0 <= result["test_acc"] <= 100 and result["selection"].startswith("best validation accuracy")
    index = api.extract(api.ExtractArgs(data_dir=str(data), out=str(tmp_path / "feats"), backbone="tiny",
                                        image_size=32))
    assert sorted(index["videos"]) == sorted(p.stem for p in (tmp_path / "feats").glob("video*.pt"))
    out = api.temporal(api.TemporalConfig(features=tmp_path / "feats", out=tmp_path / "tcn", epochs=2, layers=2))
    assert sorted(p.name for p in (out / "predictions").iterdir())
    capsys.readouterr()


def test_stage_configs_apply_the_command_lines_rules(tmp_path, capsys):
    """One rule table per stage: what `linear`/`temporal`/`extract` refuse on the command line, their configs refuse."""
    import pytest

    from solo_surgical import api
    from solo_surgical.errors import UserError

    for kwargs, named in (({"epochs": 0}, "epochs=0"), ({"epochs": 100_001}, "epochs=100001"),
                          ({"image_size": 8}, "image_size=8"), ({"lr": float("nan")}, "lr=nan"),
                          ({"batch_size": True}, "batch_size=True"), ({"workers": 2.5}, "workers=2.5")):
        with pytest.raises(UserError, match=f"linear: {named}"):
            api.LinearConfig(data="d", out=tmp_path / "o", **kwargs)
    for kwargs, named in (({"layers": 17}, "layers=17"), ({"dropout": 1.0}, "dropout=1.0"),
                          ({"smooth_weight": -0.1}, "smooth_weight=-0.1")):
        with pytest.raises(UserError, match=f"temporal: {named}"):
            api.TemporalConfig(features="f", out=tmp_path / "o", **kwargs)
    assert api.LinearConfig(data="d", out=tmp_path / "o", epochs=100_000).lr == 1e-3
    # extract: the Python value is refused with the command line's own words (field name for option name)
    from solo_surgical.cli import main

    for option, field, value in (("--image-size", "image_size", 8), ("--workers", "num_workers", 2.5),
                                 ("--fps", "fps", 0), ("--batch-size", "batch_size", 0), ("--init-seed", "init_seed", -1)):
        with pytest.raises(SystemExit) as exit_:
            main(["extract", "--data", "d", "--out", str(tmp_path / "o"), option, str(value)])
        assert exit_.value.code == 2
        cli = capsys.readouterr().err.strip()
        assert len(cli.splitlines()) == 1
        reason = cli.split(f"argument {option}: ", 1)[1].removesuffix(" (see solo-surgical extract --help)")
        with pytest.raises(UserError) as refused:
            api.ExtractArgs(data_dir="d", out=str(tmp_path / "o"), **{field: value})
        assert str(refused.value) == f"extract: {field}={value!r}: {reason}"
    with pytest.raises(UserError, match="extract: batch_size=True: True is not a number"):
        api.ExtractArgs(data_dir="d", out="o", batch_size=True)
    assert api.ExtractArgs(data_dir="d", out="o", fps=0.5, num_workers=256).fps == 0.5
    assert not (tmp_path / "o").exists()
