"""Sub-commands: ``methods``, ``pretrain``, ``teacher`` and ``demo`` (the README's main job)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("methods", help="list registered SSL methods and their distilled forms")
    p.set_defaults(func=cmd_methods)

    for name, helper, func in (
        ("pretrain", "self-supervised pretraining (plain or distill_*), Hydra overrides key=value", cmd_pretrain),
        ("teacher", "semantic-preserving teacher stage: frozen public backbone, train the heads", cmd_teacher),
    ):
        p = subparsers.add_parser(name, help=helper, description=helper + ". Config: solo_surgical/configs/"
                                  f"{name if name == 'teacher' else 'pretrain'}.yaml")
        p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. method=distill_mocov2plus "
                       "distill.teacher=runs/teacher/teacher.pth data.root=DATA trainer.max_epochs=5")
        p.add_argument("--cfg", action="store_true", help="print the composed config and exit")
        p.set_defaults(func=func)

    p = subparsers.add_parser("demo", help="main job on an embedded default: generic model -> teacher -> "
                              "distilled pretraining (no downloads)")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--method", default="distill_mocov2plus")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="tiny sizes, for tests (about a minute)")
    p.set_defaults(func=cmd_demo)


def cmd_methods(args: argparse.Namespace) -> int:
    from ..methods import method_names, resolve_method

    for name in method_names(include_aliases=True):
        resolved = resolve_method(name)
        note = f"alias of {resolved.name}" if resolved.name != name else (
            f"{resolved.base_name} + relational distillation" if resolved.distilled else "")
        print(f"{name:<22} {resolved.cls.__module__}.{resolved.cls.__qualname__:<12} {note}")
    return 0


def _compose(name: str, overrides):
    from omegaconf import OmegaConf

    from .config import compose

    cfg = compose(name, overrides)
    return cfg, OmegaConf


def cmd_pretrain(args: argparse.Namespace) -> int:
    cfg, OmegaConf = _compose("pretrain", args.overrides)
    if args.cfg:
        print(OmegaConf.to_yaml(cfg))
        return 0
    from .runner import run_pretrain

    run_dir = run_pretrain(cfg)
    print(f"run folder: {run_dir}  (checkpoints/last.ckpt, config.yaml, logs/version_N/metrics.csv, tensorboard/)")
    return 0


def cmd_teacher(args: argparse.Namespace) -> int:
    cfg, OmegaConf = _compose("teacher", args.overrides)
    if args.cfg:
        print(OmegaConf.to_yaml(cfg))
        return 0
    from .runner import run_teacher_stage

    out = run_teacher_stage(cfg)
    print(f"teacher checkpoint: {out}")
    return 0


def _last_metric(run_dir: Path, key: str) -> str:
    import csv

    paths = sorted((run_dir / "logs").glob("version_*/metrics.csv"))
    if not paths:
        return "n/a"
    values = [row[key] for path in paths for row in csv.DictReader(path.open()) if row.get(key)]
    return f"{float(values[0]):.4f} -> {float(values[-1]):.4f}" if values else "n/a"


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job: embedded data, a generic 'public' model, its teacher, a distilled student."""
    from .config import compose
    from .generic_model import train_generic_model
    from .runner import run_pretrain, run_teacher_stage
    from ..data.images import generate_images

    out = Path(args.out)
    size, count, steps, arch = (32, 64, 20, "resnet18") if args.quick else (64, 512, 150, "resnet18")
    batch = 16 if args.quick else 64
    timings: dict[str, float] = {}
    t0 = time.time()
    images = generate_images(out / "data" / "images", count=count, size=size)
    timings["data"] = time.time() - t0

    t0 = time.time()
    print(f"[1/3] generic 'public' model ({arch}, supervised on generated shapes, {steps} steps)", flush=True)
    public = train_generic_model(out / "public_model", arch=arch, steps=steps, size=size, batch=batch)
    timings["public model"] = time.time() - t0

    common = [f"data.root={images}", f"data.image_size={size}", f"data.batch_size={batch}",
              "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=2"]
    if args.quick:
        common += ["method.kwargs.proj_hidden_dim=64", "method.kwargs.proj_output_dim=32",
                   "method.kwargs.queue_size=64"]
    base = args.method.removeprefix("distill_")
    t0 = time.time()
    print(f"[2/3] teacher stage ({base}, frozen backbone, {args.epochs} epochs)", flush=True)
    teacher_cfg = compose("teacher", common + [f"method={base}", f"teacher.source={public}",
                                               f"run.dir={out / 'teacher'}", f"trainer.max_epochs={args.epochs}"])
    teacher = run_teacher_stage(teacher_cfg)
    timings["teacher stage"] = time.time() - t0

    t0 = time.time()
    print(f"[3/3] {args.method} pretraining ({args.epochs} epochs)", flush=True)
    student_cfg = compose("pretrain", common + [f"method={args.method}", f"distill.teacher={teacher}",
                                                f"distill.memory_size={4 * batch}",
                                                f"run.dir={out / 'student'}", f"trainer.max_epochs={args.epochs}"])
    student = run_pretrain(student_cfg)
    timings["distilled pretraining"] = time.time() - t0

    print("\nsolo-surgical demo finished")
    print(f"  generic 'public' model : {public}")
    print(f"  teacher checkpoint     : {teacher}   (SSL loss {_last_metric(out / 'teacher', 'train/ssl_loss_step')})")
    print(f"  student run folder     : {student}   (SSL loss {_last_metric(student, 'train/ssl_loss_step')}, "
          f"KL {_last_metric(student, 'train/distill_kl_step')})")
    print("  stage wall times       : " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
    return 0
