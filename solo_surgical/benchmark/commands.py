"""Sub-command ``benchmark``: run (or resume) a benchmark described by a Hydra config."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "benchmark", help="methods x {random, public, plain, distill, public_init} x budgets x seeds: pretrain, "
                          "linear, features, temporal model, evaluation, paired deltas; resumable",
        description="Config: solo_surgical/benchmark/configs/benchmark.yaml. Rerunning the same command resumes: "
                    "finished cells are kept, interrupted ones restart. An out folder belongs to one set of "
                    "settings: a rerun with other settings (anything but methods, variants, budgets, seeds, "
                    "public_init_methods) is refused, naming the keys that differ.")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. out=runs/bench 'methods=[byol]' "
                                                "'budgets=[1.0,0.5]' 'seeds=[0,1,2]'")
    p.add_argument("--cfg", action="store_true", help="print the composed config and exit")
    p.set_defaults(func=cmd_benchmark)

    p = subparsers.add_parser(
        "demo", help="the main job on the embedded default (no downloads): synthetic surgical videos -> "
                     "prepare -> generic public model -> teacher -> plain, distilled and public-initialised "
                     "pretraining -> linear -> features -> temporal model -> evaluation, beside the frozen "
                     "random and public backbones -> probe ladder, paired delta, verdict, phase ribbons",
        description="A small benchmark preset (one method, one seed, budget 1.0, all five variants). "
                    "Resumable like `benchmark`. With one seed every delta has n = 1 and no confidence "
                    "interval: add e.g. 'seeds=[0,1,2]' for one.")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--method", default="mocov2plus", help="base SSL method (default mocov2plus)")
    p.add_argument("--quick", action="store_true", help="tiny sizes for tests (well under a minute of training)")
    p.add_argument("overrides", nargs="*", help="further benchmark-config overrides")
    p.set_defaults(func=cmd_demo)


# The main job (see the README): one method, budget 0.5 (half the training videos), three seeds, the
# five variants (the frozen random and public backbones cost only probes); the other settings are the
# benchmark's defaults, except two cells side by side (jobs=2: on the README's 2-core machine, one torch
# thread each). --quick: tiny, for tests.
DEMO = ["seeds=[0,1,2]", "budgets=[0.5]", "variants=[random,public,plain,distill,public_init]", "jobs=2"]
QUICK = ["data.synth.videos=8", "data.synth.seconds=8", "data.synth.size=96x64", "data.size=32",
         "generic.scenes=64", "generic.epochs=1", "generic.image_size=32", "pretrain.backbone.name=tiny",
         "pretrain.data.image_size=32", "pretrain.data.batch_size=8", "pretrain.trainer.max_epochs=1",
         "pretrain.distill.memory_size=32", "method_overrides.mocov2plus.method.kwargs.queue_size=32", "seeds=[0]",
         "budgets=[1.0]", "linear.epochs=1", "linear.image_size=32", "extract.image_size=32", "temporal.epochs=2",
         "temporal.layers=3", "temporal.channels=8", "variants=[random,public,plain,distill,public_init]"]


def cmd_demo(args: argparse.Namespace) -> int:
    preset = QUICK if args.quick else DEMO
    args.overrides = [*preset, f"out={args.out}", f"methods=[{args.method}]", f"public_init_methods=[{args.method}]",
                      *args.overrides]
    args.cfg = False
    code = cmd_benchmark(args)
    print(f"phase ribbons (ground truth vs prediction per test video): {args.out}/cells/*/temporal/ribbons/")
    print_answer(args.out)
    return code


def print_answer(out: str) -> None:
    """The story in a few lines, from OUT/results.json: the probe ladder and the verdicts in words."""
    import json
    from pathlib import Path

    path = Path(out) / "results.json"
    if not path.is_file():
        return
    doc = json.loads(path.read_text())
    print("\nDoes distilling the public model make the SSL student better? (linear probe, test frames)")
    for line in doc.get("ladder", []):
        print(f"  ladder  {line}")
    for line in doc.get("sentences", []):
        print(f"  answer  {line}")


def cmd_benchmark(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from .plan import compose_benchmark
    from .run import Benchmark

    cfg = compose_benchmark(args.overrides)
    if args.cfg:
        print(OmegaConf.to_yaml(cfg))
        return 0
    import time

    start = time.time()
    bench = Benchmark(cfg, log=lambda m: print(m, flush=True))
    results, failures = bench.run()
    out = cfg.out
    print(f"\n{out}/table.md:\n")
    print(open(f"{out}/table.md").read())
    print("wall time per stage (this launch): " + ", ".join(f"{k} {v:.0f}s" for k, v in bench.stage_seconds.items()))
    print(f"results: {out}/results.csv, {out}/results.json, plots: {out}/plots/ "
          f"({time.time() - start:.0f}s in all)")
    if failures:
        print(f"{len(failures)} cell(s) failed; rerun the same command to retry them")
        return 1
    return 0
