"""Benchmark cells in worker processes (``jobs`` in the benchmark config).

Why processes: a cell is a small model trained by a few-threaded torch, which keeps one core busy
better than two. Cells are independent once the data, the public model and the
teachers exist, and each writes only its own folder, so they can run in any order.

Same numbers for any ``jobs``: every worker runs its cells with ``threads`` torch threads (the main
process's thread count divided by ``jobs``), and a cell's numbers depend only on its settings, its
seed and that thread count (recorded in its ``result.json``). So ``jobs=2`` under
``OMP_NUM_THREADS=2`` gives the numbers of ``jobs=1`` under ``OMP_NUM_THREADS=1``
(tests/test_benchmark.py: test_cells_side_by_side_give_the_numbers_of_one_at_a_time). Teacher
stages run in the workers too, for the same reason.

A worker's output (the cell's training log, warnings) goes to ``OUT/logs/<cell>.log``; the main
process prints one line per finished cell.
"""
from __future__ import annotations

import multiprocessing
import os
import sys
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from ..errors import one_line

_STATE: dict[str, Any] = {}  # the worker's Benchmark and log folder, set once per worker process


def cell_threads(jobs: int) -> int:
    """Torch threads per worker: the main process's share (at least one)."""
    import torch

    return max(1, torch.get_num_threads() // jobs)


@contextmanager
def output_to(path: Path) -> Iterator[None]:
    """Send this process's stdout and stderr (Python and C level alike) to ``path`` for a while."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    os.dup2(handle, 1)
    os.dup2(handle, 2)
    os.close(handle)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def _init_worker(config_yaml: str, data_dir: str, sources: dict[str, str], threads: int, logs: str) -> None:
    import torch
    from omegaconf import OmegaConf

    from .run import Benchmark

    torch.set_num_threads(threads)
    bench = Benchmark(OmegaConf.create(config_yaml), log=lambda m: print(m, flush=True))
    bench.data_dir = Path(data_dir)
    bench._sources = {k: Path(v) for k, v in sources.items()}  # resolved by the main process
    _STATE.update(bench=bench, logs=Path(logs))


def _work(task: tuple) -> tuple[str, Any, dict[str, float]]:
    """Run one task in a worker: ``("teacher", source, budget)`` or ``("cell", cell)``.

    Returns ``(status, result or message, shared stage seconds)``; a failure is returned, not
    raised, so that the other tasks go on (as with ``jobs=1``)."""
    bench, logs = _STATE["bench"], _STATE["logs"]
    from .plan import _source_label

    name = f"teacher-{_source_label(task[1])}-b{task[2]}" if task[0] == "teacher" else task[1].name
    bench.stage_seconds = {}
    with output_to(logs / f"{name}.log"):
        try:
            if task[0] == "teacher":
                result: Any = str(bench.ensure_teacher(task[1], task[2]))
            else:
                result = bench.run_cell(task[1])
            return "ok", result, dict(bench.stage_seconds)
        except Exception as exc:  # reported by the main process, like a failed cell with jobs=1
            import traceback

            traceback.print_exc()
            return "failed", one_line(exc), dict(bench.stage_seconds)


def run_tasks(bench: Any, tasks: list[tuple], jobs: int, threads: int,
              on_done: Optional[Any] = None) -> list[tuple[tuple, str, Any]]:
    """Run ``tasks`` on ``jobs`` worker processes; ``on_done(task, status, payload)`` as each ends.

    Returns ``[(task, status, payload)]`` in the order of ``tasks``."""
    from omegaconf import OmegaConf

    logs = bench.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    init = (OmegaConf.to_yaml(bench.cfg, resolve=True), str(bench.data_dir),
            {k: str(v) for k, v in bench._sources.items()}, threads, str(logs))
    # spawn, not fork: the main process has torch (and maybe its thread pools) initialised already
    context = multiprocessing.get_context("spawn")
    outcomes: dict[int, tuple[str, Any]] = {}
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_init_worker, initargs=init) as pool:
        pending = {pool.submit(_work, task): i for i, task in enumerate(tasks)}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                i = pending.pop(future)
                try:
                    status, payload, seconds = future.result()
                except Exception as exc:  # the worker itself died (killed, out of memory): its tasks fail
                    status, payload, seconds = "failed", f"its worker process ended: {one_line(exc)}", {}
                for stage, value in seconds.items():
                    bench.stage_seconds[stage] = bench.stage_seconds.get(stage, 0.0) + value
                outcomes[i] = (status, payload)
                if on_done is not None:
                    on_done(tasks[i], status, payload)
    return [(task, *outcomes[i]) for i, task in enumerate(tasks)]


def run_pending(bench: Any, pending: list[tuple[int, Any]], jobs: int, report: Callable[..., None]) -> None:
    """``jobs`` worker processes (benchmark/parallel.py): the public models are resolved here, the
    teachers the pending distill cells need are made first, then the cells run side by side."""
    from .plan import _source_label

    threads = cell_threads(jobs)
    broken: dict[Any, str] = {}  # a public model or a teacher that failed: its cells fail with its message
    for source in sorted({c.source for _, c in pending if c.source is not None}):
        try:
            bench.source_path(source)  # the generic public model is trained here, once per user
        except Exception as exc:
            broken[source] = one_line(exc)
    needed = sorted({(c.source, c.budget) for _, c in pending if c.kind == "distill" and c.source not in broken},
                    key=str)
    missing = [t for t in needed
               if not (bench.out / "teachers" / f"{_source_label(t[0])}-b{t[1]}" / "teacher.pth").is_file()]
    bench.log(f"{len(pending)} cells on {jobs} worker processes, {threads} torch thread(s) each "
              f"(their output: {bench.out / 'logs'})")
    if missing:
        bench.log(f"teacher stage: {', '.join(f'{s} (budget {b})' for s, b in missing)}")
        for task, status, payload in run_tasks(bench, [("teacher", s, b) for s, b in missing], jobs, threads):
            if status != "ok":
                broken[(task[1], task[2])] = f"its teacher failed: {payload}"
    runnable = []
    for i, cell in pending:
        why = broken.get(cell.source) or (broken.get((cell.source, cell.budget)) if cell.kind == "distill" else None)
        if why:
            report(i, cell, "failed", why, 0.0)
        else:
            runnable.append((i, cell))
    index = {cell.name: i for i, cell in runnable}

    def done(task: tuple, status: str, payload: Any) -> None:
        seconds = sum(payload["seconds"].values()) if status == "ok" else 0.0
        report(index[task[1].name], task[1], status, payload, seconds)

    run_tasks(bench, [("cell", cell) for _, cell in runnable], jobs, threads, on_done=done)
