#!/usr/bin/env python
"""Training throughput from a prepared folder of JPEG frames: can the data path feed the step?

Through the package's own pieces (the pretrain config, ``build_model``, ``train_loader`` with the
method's two-view augmentation, the device/precision/worker rules of ``train/devices.py``) it
measures, for ``<method>`` and ``distill_<method>`` side by side in one run:

(a) loader alone: images/s of the DataLoader (JPEG decode + two augmented views + collate) with
    ``--loader-workers`` worker processes, reported per worker; also at 224 px (the paper's size)
    when the run's size differs, and at the end-to-end worker count. The loader is the same for
    both variants (``distill_<m>`` uses the augmentation of ``<m>``), so it is measured once.
(b) step alone: images/s of a training step (forward, backward, optimiser, EMA/queue/memory
    updates) on batches already on the device, plain and distilled interleaved round by round
    (with ``--device-augment`` the cached batches are JPEG bytes and the step decodes and augments);
(c) end to end: batches drawn from one running DataLoader (workers as ``data.num_workers=auto``
    resolves them, or ``--workers``), alternating plain and distilled steps so both see the same
    loader state and machine load;

and the ratios distill / plain (time per step) for (b) and (c), and end-to-end / step-alone rate.
Steps run in the precision ``trainer.precision=auto`` picks (bf16 autocast on CUDA, fp32 on CPU),
with ``channels_last`` on CUDA, and with the run's default determinism (``trainer.deterministic:
warn``: cuDNN's deterministic kernels, no autotuning) unless ``--fast``.

Without ``--data`` a small synthetic set is made with ``solo-surgical synth`` + ``prepare`` in
``--work``. The teacher is a random-init backbone of ``--teacher-arch`` (speed does not depend on
its weights).

    OMP_NUM_THREADS=1 python scripts/bench_throughput.py                  # CPU defaults (< 5 min on 2 cores)
    python scripts/bench_throughput.py --gpu --json bench_gpu.json       # ResNet-50, 224 px, batch 128, CUDA
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_step_time import make_teacher  # noqa: E402  (the random-init teacher of the step benchmark)


def make_frames(work: Path, videos: int, seconds: float, fps: str) -> Path:
    """A prepared folder from the package's own commands (synthetic Cholec80 layout, 250 x 250 JPEGs
    as the paper's preprocessing gives; ``fps`` above 1 gives more frames from little video)."""
    data = work / "data"
    if (data / "manifest.json").is_file():
        return data
    cli = [sys.executable, "-m", "solo_surgical.cli"]
    workers = str(min(8, os.cpu_count() or 1))
    subprocess.run([*cli, "synth", "--out", str(work / "raw"), "--videos", str(videos), "--seconds", str(seconds),
                    "--size", "384x216", "--workers", workers], check=True)
    subprocess.run([*cli, "prepare", "--dataset", "cholec80", "--root", str(work / "raw"), "--out", str(data),
                    "--fps", fps, "--size", "250", "--workers", workers], check=True)
    return data


def compose_run(args: argparse.Namespace, method: str, teacher: Path, image_size: Optional[int] = None,
                workers: Any = None):
    from solo_surgical.hosts.lightly.config import compose

    return compose("pretrain", [
        f"method={method}", f"backbone.name={args.arch}", f"data.root={args.data}",
        f"data.image_size={image_size or args.image_size}", f"data.batch_size={args.batch}",
        f"data.num_workers={args.workers if workers is None else workers}", f"distill.teacher={teacher}",
        f"distill.memory_size={args.memory}", f"method.kwargs.queue_size={max(args.memory, args.batch)}",
        f"trainer.accelerator={'cuda' if args.gpu else 'cpu'}", "trainer.precision=auto", f"run.seed={args.seed}",
        f"data.device_augment={str(args.device_augment).lower()}"])


def long_loader(cfg, work: Path, batches: int):
    """The run's DataLoader (dataset, transform, machine-dependent options), but drawing ``batches``
    batches with replacement: a small benchmark set then never pays epoch restarts a real
    86k-frame epoch would not pay."""
    from torch.utils.data import DataLoader, RandomSampler

    from solo_surgical.train.devices import run_loader_options
    from solo_surgical.hosts.lightly.runner import train_loader

    base = train_loader(cfg, work)
    sampler = RandomSampler(base.dataset, replacement=True, num_samples=batches * int(cfg.data.batch_size),
                            generator=torch.Generator().manual_seed(int(cfg.run.seed)))
    return DataLoader(base.dataset, batch_size=int(cfg.data.batch_size), sampler=sampler, drop_last=True,
                      collate_fn=base.collate_fn, **run_loader_options(cfg).kwargs())


def loader_rate(cfg, work: Path, batches: int) -> dict:
    """Images/s of the loader alone, and images per CPU-second of the processes that decode and
    augment: on a machine shared with other jobs the wall-clock rate depends on their load, the CPU
    time much less, so the latter says what one dedicated core delivers.

    The first ``max(1, workers)`` batches are not timed: every worker starts on its first batch at
    once, so they arrive in a burst that says nothing about the steady rate. Then at least
    ``batches`` and at least 2 per worker are timed."""
    import gc
    import resource

    def children_cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    probe = long_loader(cfg, work, 1)
    workers = int(probe.num_workers)
    del probe
    skip = max(1, workers)
    loader = long_loader(cfg, work, skip + max(batches, 2 * workers))
    cpu0 = children_cpu() if workers else time.process_time()
    it = iter(loader)
    count = sum(len(next(it)[1]) for _ in range(skip))
    start = time.perf_counter()
    timed = sum(len(batch[1]) for batch in it)
    seconds = time.perf_counter() - start
    count += timed
    del it, loader  # shuts the workers down and reaps them, so their CPU time is counted
    gc.collect()
    cpu = (children_cpu() if workers else time.process_time()) - cpu0
    return {"workers": workers, "images_per_s": round(timed / seconds, 1),
            "images_per_s_per_worker": round(timed / seconds / max(1, workers), 1),
            "images_per_cpu_s": round(count / cpu, 1) if cpu > 0 else None}


def build(cfg, device: str):
    from solo_surgical.hosts.lightly.device_data import device_views_for
    from solo_surgical.train.devices import prepare_model
    from solo_surgical.hosts.lightly.runner import build_model, method_transform

    model = prepare_model(build_model(cfg), "cuda" if device.startswith("cuda") else "cpu").to(device)
    model.train()
    model.device_views = device_views_for(cfg, method_transform(str(cfg.method.name), cfg))
    if model.distill is not None:  # steady state: a full memory, as after the first epoch
        memory = model.distill.memory
        while int(memory.filled) < memory.size:
            memory.enqueue(torch.randn(cfg.data.batch_size, memory.student_keys.shape[1], device=device),
                           torch.randn(cfg.data.batch_size, memory.teacher_keys.shape[1], device=device))
    params = [p for group in model.learnable_params() for p in group["params"]]
    return model, torch.optim.SGD(params, lr=1e-4, momentum=0.9, weight_decay=1e-4)


def make_step(model, optimizer, device: str, precision: str) -> Callable[[Any], None]:
    """One training step as Lightning runs it: the forward under autocast, backward and optimiser
    outside it, then the method's after-step updates (EMA). fp16 gets a gradient scaler."""
    from solo_surgical.train.devices import autocast

    scaler = torch.amp.GradScaler("cuda") if str(precision).startswith("16") else None

    def step(batch) -> None:
        if model.device_views is not None:  # data.device_augment: decode and augment count as the step's work
            batch = (model.device_views(batch[0], device), batch[1])
        with autocast(device, precision):
            loss = model.training_step(batch, 0)
        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        model.on_train_batch_end(None, batch, 0)
    return step


def to_device(batch, device: str):
    views, index = batch[0], batch[1]
    if isinstance(views[0], bytes):  # data.device_augment: JPEG bytes stay on the CPU for the decoder
        return batch
    return [v.to(device, non_blocking=True) for v in views], index.to(device, non_blocking=True)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def summarise(times: list[float], batch: int) -> dict:
    mean = statistics.fmean(times)
    return {"steps": len(times), "mean_s": round(mean, 4), "median_s": round(statistics.median(times), 4),
            "images_per_s": round(batch / mean, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="CUDA, ResNet-50 student and teacher, 224 px, batch 128")
    parser.add_argument("--data", type=Path, help="prepared folder (manifest.json); default: make a synthetic one")
    parser.add_argument("--work", type=Path, help="where to make the synthetic set (default: a temporary folder)")
    parser.add_argument("--method", default="mocov2plus")
    parser.add_argument("--arch", help="student backbone (default resnet18; --gpu resnet50)")
    parser.add_argument("--teacher-arch", help="teacher backbone (default: the student's)")
    parser.add_argument("--image-size", type=int, help="default 64; --gpu 224")
    parser.add_argument("--batch", type=int, help="default 32; --gpu 128")
    parser.add_argument("--memory", type=int, default=2048)
    parser.add_argument("--workers", default="auto", help="end-to-end loader workers (default: data.num_workers=auto)")
    parser.add_argument("--loader-workers", type=int, default=1, help="workers of the per-worker loader figure")
    parser.add_argument("--loader-batches", type=int, help="batches timed per loader figure (default 6; --gpu 8)")
    parser.add_argument("--rounds", type=int, help="timed steps per variant, step alone and end to end "
                                                   "(default 5; --gpu 20)")
    parser.add_argument("--warmup", type=int, help="untimed steps per variant first (default 1; --gpu 3)")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "0") or 0),
                        help="torch CPU threads (default: OMP_NUM_THREADS, else torch's choice)")
    parser.add_argument("--fast", action="store_true", help="cuDNN autotuning, no deterministic kernels")
    parser.add_argument("--device-augment", action="store_true",
                        help="data.device_augment=true: the loader reads JPEG bytes; decode and views on the device "
                             "(counted in the step)")
    parser.add_argument("--synth-videos", type=int, help="synthetic set: videos (default 4; --gpu 8)")
    parser.add_argument("--synth-seconds", type=float, default=30.0)
    parser.add_argument("--synth-fps", default=None, help="synthetic set: frames per second kept (default 2; --gpu 5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    gpu_defaults = dict(arch="resnet50", image_size=224, batch=128, loader_batches=8, rounds=20, warmup=3, synth_videos=8,
                        synth_fps="5")
    cpu_defaults = dict(arch="resnet18", image_size=64, batch=32, loader_batches=6, rounds=5, warmup=1, synth_videos=4,
                        synth_fps="2")
    for key, value in (gpu_defaults if args.gpu else cpu_defaults).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.teacher_arch = args.teacher_arch or args.arch
    if args.gpu and not torch.cuda.is_available():
        sys.exit("bench_throughput: --gpu needs a CUDA device and torch.cuda.is_available() is False")
    device = "cuda" if args.gpu else "cpu"
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    warnings.filterwarnings("ignore")
    # the run's default trainer.deterministic=warn, as Lightning applies it; --fast: autotuned cuDNN
    torch.use_deterministic_algorithms(not args.fast, warn_only=True)
    torch.backends.cudnn.benchmark = args.fast
    torch.backends.cudnn.deterministic = not args.fast

    from solo_surgical.hosts.lightly.registry import resolve_method
    from solo_surgical.train.devices import available_cpus, resolve_precision

    precision = resolve_precision("auto", "cuda" if args.gpu else "cpu")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        work = args.work or tmp
        work.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        if args.data is None:
            args.data = make_frames(work, args.synth_videos, args.synth_seconds, args.synth_fps)
        made = time.perf_counter() - start
        out_dim = resolve_method(args.method).cls.Hparams().proj_output_dim
        teacher = make_teacher(tmp / "teacher.pth", args.teacher_arch, out_dim)
        plain_cfg = compose_run(args, args.method, teacher)
        distill_cfg = compose_run(args, f"distill_{args.method}", teacher)
        if type(resolve_method(args.method).cls.make_transform()) is not \
                type(resolve_method(f"distill_{args.method}").cls.make_transform()):
            raise SystemExit("bench_throughput: the distilled method has another transform; measure its loader too")

        # (a) the loader alone
        loader = {"per_worker": loader_rate(compose_run(args, args.method, teacher, workers=args.loader_workers),
                                            work, args.loader_batches)}
        if args.image_size != 224:
            loader["per_worker_224px"] = loader_rate(
                compose_run(args, args.method, teacher, image_size=224, workers=args.loader_workers),
                work, args.loader_batches)
        loader["end_to_end_workers"] = loader_rate(plain_cfg, work, args.loader_batches)
        for name, row in loader.items():
            print(f"(a) loader {name:<18} {row['workers']} workers: {row['images_per_s']:8.1f} images/s "
                  f"({row['images_per_s_per_worker']:.1f} per worker; {row['images_per_cpu_s']} per CPU-second)",
                  flush=True)

        variants = {"plain": build(plain_cfg, device), "distill": build(distill_cfg, device)}
        steps = {name: make_step(model, opt, device, precision) for name, (model, opt) in variants.items()}

        # (b) the step alone, on batches already on the device
        cached = [to_device(b, device) for _, b in zip(range(2), long_loader(plain_cfg, work, 2))]
        alone: dict[str, list[float]] = {name: [] for name in steps}
        for round_ in range(args.warmup + args.rounds):
            for name, step in steps.items():
                sync(device)
                t0 = time.perf_counter()
                step(cached[round_ % len(cached)])
                sync(device)
                if round_ >= args.warmup:
                    alone[name].append(time.perf_counter() - t0)
        del cached

        # (c) end to end: one running loader, plain and distilled steps alternating. Untimed first:
        # the warm-up steps and the burst of first batches every worker prepared at once (a steady
        # state starts after about one batch per worker), rounded up to whole plain+distill pairs.
        e2e: dict[str, list[float]] = {name: [] for name in steps}
        loader_e2e = long_loader(plain_cfg, work, 1)
        skip = 2 * args.warmup + loader_e2e.num_workers + loader_e2e.num_workers % 2
        total = skip + 2 * args.rounds
        it = iter(long_loader(plain_cfg, work, total))
        for i in range(total):
            name = "plain" if i % 2 == 0 else "distill"
            sync(device)
            t0 = time.perf_counter()
            steps[name](to_device(next(it), device))
            sync(device)
            if i >= skip:
                e2e[name].append(time.perf_counter() - t0)
        del it, loader_e2e

    results: dict[str, Any] = {"loader": loader}
    for name in steps:
        results[name] = {"step_alone": summarise(alone[name], args.batch), "end_to_end": summarise(e2e[name], args.batch)}
        results[name]["end_to_end_over_step_alone"] = round(
            results[name]["end_to_end"]["images_per_s"] / results[name]["step_alone"]["images_per_s"], 3)
    results["distill_over_plain"] = {
        kind: round(results["distill"][kind]["mean_s"] / results["plain"][kind]["mean_s"], 3)
        for kind in ("step_alone", "end_to_end")}
    for name in steps:
        r = results[name]
        print(f"{name:<8} (b) step alone {r['step_alone']['images_per_s']:8.1f} images/s "
              f"({r['step_alone']['mean_s']:.3f} s/step)   (c) end to end {r['end_to_end']['images_per_s']:8.1f} images/s "
              f"({r['end_to_end']['mean_s']:.3f} s/step)   end-to-end / step-alone {r['end_to_end_over_step_alone']:.3f}")
    ratio = results["distill_over_plain"]
    print(f"distill / plain time per step: step alone {ratio['step_alone']:.3f}, end to end {ratio['end_to_end']:.3f}")
    setup = {"device": torch.cuda.get_device_name(0) if args.gpu else "cpu", "precision": precision,
             "cpus": available_cpus(), "threads": torch.get_num_threads(),
             "deterministic": not args.fast, "device_augment": args.device_augment, "data": str(args.data), "synthetic_set_seconds": round(made, 1),
             **{k: getattr(args, k) for k in ("method", "arch", "teacher_arch", "image_size", "batch", "memory",
                                             "workers", "loader_workers", "rounds", "warmup")}}
    print(f"setup: {json.dumps(setup)}")
    if args.json:
        args.json.write_text(json.dumps({"setup": setup, "results": results}, indent=2, default=str))


if __name__ == "__main__":
    main()
