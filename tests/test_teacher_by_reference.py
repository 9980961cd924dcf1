"""Student checkpoints reference the frozen teacher (file + SHA-256) instead of carrying its weights."""
from __future__ import annotations

import hashlib

import torch

from solo_surgical.cli import main
from solo_surgical.evaluation.features import evaluation_backbone

from conftest import TINY, make_teacher_checkpoint


def _run(capsys, *args):
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _args(tmp_path, image_dir, teacher, *extra):
    return ["pretrain", *TINY, "method=distill_mocov2plus", f"data.root={image_dir}", f"run.dir={tmp_path / 'run'}",
            f"distill.teacher={teacher}", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
            "method.kwargs.queue_size=16", *extra]


def test_checkpoint_holds_a_reference_and_resumes_with_the_same_teacher(capsys, tmp_path, image_dir):
    teacher = make_teacher_checkpoint(tmp_path / "teacher.pth")
    assert _run(capsys, *_args(tmp_path, image_dir, teacher))[0] == 0
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert not [k for k in ckpt["state_dict"] if k.startswith("distill.teacher.")]
    assert ckpt["solo_surgical_teacher"] == {"file": str(teacher), "sha256": _sha(teacher)}
    # the learnt state of distillation (the aligned memory) stays in the checkpoint
    # (2 steps of 8 images into a memory of 16: full, pointer back at 0)
    assert int(ckpt["state_dict"]["distill.memory.filled"]) == 16
    assert ckpt["state_dict"]["distill.memory.teacher_keys"].abs().sum() > 0
    # evaluation reads the student's backbone as before
    module, _, name, _ = evaluation_backbone(str(last), None)
    assert name == "tiny"
    assert all(torch.equal(v, ckpt["state_dict"][f"backbone.{k}"]) for k, v in module.state_dict().items())
    # a resume restores the teacher from its file and trains on: teacher unchanged, steps continue
    assert _run(capsys, *_args(tmp_path, image_dir, teacher, "run.resume=last", "trainer.max_epochs=2"))[0] == 0
    second = torch.load(last, map_location="cpu", weights_only=False)
    assert second["global_step"] == 4 and second["solo_surgical_teacher"]["sha256"] == _sha(teacher)


def test_resume_with_another_teacher_content_is_refused_before_any_write(capsys, tmp_path, image_dir):
    teacher = make_teacher_checkpoint(tmp_path / "teacher.pth")
    assert _run(capsys, *_args(tmp_path, image_dir, teacher))[0] == 0
    run = tmp_path / "run"
    before = {p: _sha(p) for p in run.rglob("*") if p.is_file()}
    make_teacher_checkpoint(teacher, seed=7)  # same path, other weights
    code, _, err = _run(capsys, *_args(tmp_path, image_dir, teacher, "run.resume=last", "trainer.max_epochs=2"))
    lines = [line for line in err.splitlines() if line.startswith("solo-surgical: error:")]
    assert code == 2 and len(lines) == 1 and "resume with the same teacher file" in lines[0], err
    assert "last.ckpt" in lines[0]
    assert {p: _sha(p) for p in run.rglob("*") if p.is_file()} == before
