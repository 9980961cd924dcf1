#!/usr/bin/env python
"""Step time of each distilled method against its plain form, measured side by side.

For every method it times, interleaved round by round (so machine load drifts hit all
variants alike):

* plain:    one training step (forward, backward, optimiser, momentum update) of ``<method>``
* distill:  the same step of ``distill_<method>``
* teacher:  the frozen teacher's forward over the same two views (what distillation must pay)

and reports distill / plain and distill / (plain + teacher). The distillation head itself
(similarities against the memory, KL, enqueue) should add almost nothing on top of the
teacher's forward, so the second ratio should be close to 1.

    python scripts/bench_step_time.py --arch resnet18 --teacher-arch resnet18 --image-size 112 --batch 32
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch


def make_teacher(path: Path, arch: str, out_dim: int) -> Path:
    from torch import nn

    from solo_surgical.backbones import build_backbone
    from solo_surgical.distill import save_teacher_checkpoint

    backbone, dim = build_backbone(arch)
    projector = nn.Sequential(nn.Linear(dim, 2048), nn.BatchNorm1d(2048), nn.ReLU(), nn.Linear(2048, out_dim))
    return save_teacher_checkpoint(path, arch=arch, backbone=backbone, projector=projector,
                                   meta={"method": "bench", "source": "random init"})


def build(method: str, arch: str, size: int, batch: int, teacher: Path, memory: int):
    from solo_surgical.hosts.lightly.config import compose
    from solo_surgical.hosts.lightly.runner import build_model

    cfg = compose("pretrain", [f"method={method}", f"backbone.name={arch}", f"data.image_size={size}",
                               f"data.batch_size={batch}", f"distill.teacher={teacher}",
                               f"distill.memory_size={memory}"])
    model = build_model(cfg)
    model.train()
    optimizer = torch.optim.SGD([p for g in model.learnable_params() for p in g["params"]], lr=1e-3, momentum=0.9)
    return model, optimizer


def train_step(model, optimizer, batch) -> None:
    loss = model.training_step(batch, 0)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    model.on_train_batch_end(None, batch, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--teacher-arch", default="resnet18")
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--memory", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", default="simclr,mocov2plus,byol")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    import warnings

    warnings.filterwarnings("ignore")
    views = [torch.randn(args.batch, 3, args.image_size, args.image_size) for _ in range(2)]
    batch = (views, torch.arange(args.batch))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods.split(","):
            from solo_surgical.hosts.lightly.registry import resolve_method

            out_dim = resolve_method(method).cls.Hparams().proj_output_dim
            teacher_path = make_teacher(Path(tmp) / f"{method}-teacher.pth", args.teacher_arch, out_dim)
            plain = build(method, args.arch, args.image_size, args.batch, teacher_path, args.memory)
            distill = build(f"distill_{method}", args.arch, args.image_size, args.batch, teacher_path, args.memory)
            teacher = distill[0].distill.teacher
            # fill the memory first, as in steady-state training
            while int(distill[0].distill.memory.filled) < args.memory:
                distill[0].distill.memory.enqueue(torch.randn(args.batch, out_dim), torch.randn(args.batch, out_dim))
            timings = {"plain": [], "distill": [], "teacher": []}
            runs = {
                "plain": lambda: train_step(*plain, batch),
                "distill": lambda: train_step(*distill, batch),
                "teacher": lambda: teacher(torch.cat(views)),
            }
            for round_ in range(args.warmup + args.rounds):
                for name, fn in runs.items():
                    start = time.perf_counter()
                    fn()
                    if round_ >= args.warmup:
                        timings[name].append(time.perf_counter() - start)
            med = {k: statistics.median(v) for k, v in timings.items()}
            results[method] = {
                **{f"{k}_s": round(v, 4) for k, v in med.items()},
                "distill_over_plain": round(med["distill"] / med["plain"], 3),
                "distill_over_plain_plus_teacher": round(med["distill"] / (med["plain"] + med["teacher"]), 3),
            }
            r = results[method]
            print(f"{method:<11} plain {r['plain_s']:.3f}s  distill {r['distill_s']:.3f}s  teacher fwd {r['teacher_s']:.3f}s"
                  f"  distill/plain {r['distill_over_plain']:.3f}  distill/(plain+teacher) "
                  f"{r['distill_over_plain_plus_teacher']:.3f}", flush=True)
    setup = {k: getattr(args, k) for k in ("arch", "teacher_arch", "image_size", "batch", "memory", "rounds", "threads")}
    if args.json:
        args.json.write_text(json.dumps({"setup": setup, "results": results}, indent=2))


if __name__ == "__main__":
    main()
