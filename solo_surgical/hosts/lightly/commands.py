"""Sub-commands: ``methods``, ``pretrain`` and ``teacher``."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("methods", help="list registered SSL methods and their distilled forms")
    p.set_defaults(func=cmd_methods)

    for name, helper, func in (
        ("pretrain", "self-supervised pretraining (plain or distill_*), Hydra overrides key=value", cmd_pretrain),
        ("teacher", "semantic-preserving teacher stage: frozen public backbone, train the heads", cmd_teacher),
    ):
        p = subparsers.add_parser(name, help=helper, description=helper + ". Config: solo_surgical/hosts/lightly/configs/"
                                  f"{name if name == 'teacher' else 'pretrain'}.yaml")
        p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. method=distill_mocov2plus "
                       "distill.teacher=runs/teacher/teacher.pth data.root=DATA trainer.max_epochs=5")
        # Hydra's own spelling is `--cfg job`; a bare --cfg followed by an override works too
        p.add_argument("--cfg", nargs="?", const="job", default=None, metavar="job",
                       help="print the composed config and exit")
        p.add_argument("--config-path", "-cp", help="a folder of your own YAML configs (ours stay on the search "
                       "path: start yours with `defaults: [pretrain, _self_]`)")
        p.add_argument("--config-name", "-cn", help=f"the primary config in --config-path (default {name})")
        p.add_argument("--multirun", "-m", action="store_true", help="sweep: method=simclr,byol optimizer.lr=0.1,0.3 "
                       "runs every combination, one after the other, in RUN_DIR/0, RUN_DIR/1, ...")
        p.set_defaults(func=func)


def cmd_methods(args: argparse.Namespace) -> int:
    from .registry import method_names, resolve_method

    for name in method_names(include_aliases=True):
        resolved = resolve_method(name)
        note = f"alias of {resolved.name}" if resolved.name != name else (
            f"{resolved.base_name} + relational distillation" if resolved.distilled else "")
        print(f"{name:<22} {resolved.cls.__module__}.{resolved.cls.__qualname__:<12} {note}")
    return 0


def _jobs(name: str, args: argparse.Namespace):
    """``(label, config)`` per job: one without ``--multirun``, else one per combination of the sweeps.
    Every job's config is composed (and so checked) before the first one runs; ``--cfg`` prints them."""
    from omegaconf import OmegaConf

    from .config import compose, expand_sweeps

    overrides = list(args.overrides)
    if args.cfg is not None and args.cfg not in ("job", "all"):
        overrides.insert(0, args.cfg)  # `--cfg method=simclr`: argparse took the override as --cfg's value
    if args.config_name is not None and args.config_path is None:
        from ...errors import UserError

        raise UserError(f"--config-name {args.config_name}: give --config-path, the folder that holds it")
    config_name = args.config_name or name
    if not args.multirun:
        jobs = [("", compose(config_name, overrides, args.config_path))]
    else:
        sweeps, jobs = expand_sweeps(overrides), []
        for number, job in enumerate(sweeps):
            cfg = compose(config_name, job, args.config_path)
            # one run folder per job under the sweep's run.dir, numbered like Hydra's multirun
            OmegaConf.update(cfg, "run.dir", str(Path(str(cfg.run.dir)) / str(number)))
            changed = [o for o in job if o not in overrides]
            jobs.append((f"[job {number + 1}/{len(sweeps)}] {' '.join(changed) or '(no sweep)'}", cfg))
    if args.cfg is not None:
        for label, cfg in jobs:
            print(f"# {label}\n{OmegaConf.to_yaml(cfg)}" if label else OmegaConf.to_yaml(cfg))
        return []
    return jobs


def cmd_pretrain(args: argparse.Namespace) -> int:
    for label, cfg in _jobs("pretrain", args):
        from .runner import run_pretrain

        if label:
            print(label, flush=True)
        run_dir = run_pretrain(cfg)
        print(f"run folder: {run_dir}  (checkpoints/last.ckpt, backbone.pth, config.yaml, logs/version_N/metrics.csv, "
              f"tensorboard/)")
    return 0


def cmd_teacher(args: argparse.Namespace) -> int:
    for label, cfg in _jobs("teacher", args):
        from .runner import run_teacher_stage

        if label:
            print(label, flush=True)
        print(f"teacher checkpoint: {run_teacher_stage(cfg)}")
    return 0
