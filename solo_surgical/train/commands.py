"""Sub-commands: ``methods``, ``pretrain`` and ``teacher``."""
from __future__ import annotations

import argparse


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
        # Hydra's own spelling is `--cfg job`; a bare --cfg followed by an override works too
        p.add_argument("--cfg", nargs="?", const="job", default=None, metavar="job",
                       help="print the composed config and exit")
        p.set_defaults(func=func)


def cmd_methods(args: argparse.Namespace) -> int:
    from ..methods import method_names, resolve_method

    for name in method_names(include_aliases=True):
        resolved = resolve_method(name)
        note = f"alias of {resolved.name}" if resolved.name != name else (
            f"{resolved.base_name} + relational distillation" if resolved.distilled else "")
        print(f"{name:<22} {resolved.cls.__module__}.{resolved.cls.__qualname__:<12} {note}")
    return 0


def _compose_or_print(name: str, args: argparse.Namespace):
    """The composed config, or None after printing it for ``--cfg``."""
    from omegaconf import OmegaConf

    from .config import compose

    overrides = list(args.overrides)
    if args.cfg is not None and args.cfg not in ("job", "all"):
        overrides.insert(0, args.cfg)  # `--cfg method=simclr`: argparse took the override as --cfg's value
    cfg = compose(name, overrides)
    if args.cfg is not None:
        print(OmegaConf.to_yaml(cfg))
        return None
    return cfg


def cmd_pretrain(args: argparse.Namespace) -> int:
    cfg = _compose_or_print("pretrain", args)
    if cfg is not None:
        from .runner import run_pretrain

        run_dir = run_pretrain(cfg)
        print(f"run folder: {run_dir}  (checkpoints/last.ckpt, config.yaml, logs/version_N/metrics.csv, tensorboard/)")
    return 0


def cmd_teacher(args: argparse.Namespace) -> int:
    cfg = _compose_or_print("teacher", args)
    if cfg is not None:
        from .runner import run_teacher_stage

        print(f"teacher checkpoint: {run_teacher_stage(cfg)}")
    return 0
