"""Process plumbing shared by ``prepare`` and ``synth``.

* :class:`FolderLock`: one writer per output folder. Two ``prepare`` runs into one folder would
  delete each other's temporary folders and list a video as both done and failed; the second one
  is refused with a line naming the lock file and the holder's pid. The lock is an ``flock`` on
  ``<folder>/.prepare.lock``, so the kernel releases it when its holder dies, even by ``kill -9``:
  a lock file left by a dead process is noticed (its pid is no longer running) and taken over.
* :func:`worker_pool`: a process pool whose workers exit as soon as the process that started them
  is gone. ``ProcessPoolExecutor``'s workers otherwise finish (and write) the video they hold
  after their parent was killed. Each worker gets the read end of a pipe whose only write end
  the parent holds; a thread in the worker blocks on it and ends the worker when it reads EOF,
  which the kernel delivers the moment the parent dies (or when the parent closes it on error).
"""
from __future__ import annotations

import errno
import os
import threading
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Iterator

from ..errors import UserError

LOCK_NAME = ".prepare.lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class FolderLock:
    """Exclusive lock on ``folder`` (created if missing) for the ``with`` block.

    ``stale_pid`` is the pid recorded by a previous holder that died without releasing it
    (None when there was none). Raises :class:`UserError` when another live process holds it.
    """

    def __init__(self, folder: Path, command: str = "prepare", path: Path | None = None) -> None:
        self.folder, self.command = Path(folder), command
        self.path = self.folder / LOCK_NAME if path is None else Path(path)
        self.fd: int | None = None
        self.stale_pid: int | None = None

    def _holder(self) -> int | None:
        try:
            return int(self.path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _refuse(self, pid: int | None) -> UserError:
        who = f"pid {pid}" if pid else "another process"
        return UserError(f"{self.path}: another {self.command} ({who}) is writing to {self.folder}; wait for it "
                         f"to finish or use another --out (remove the lock file only if no such process exists)")

    def acquire(self) -> "FolderLock":
        import fcntl

        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as exc:
                raise UserError(f"{self.path}: cannot create the lock file ({exc.strerror})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise self._refuse(self._holder()) from None
            except OSError as exc:  # a file system without flock: fall back on the recorded pid
                if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    os.close(fd)
                    raise UserError(f"{self.path}: cannot lock ({exc.strerror})") from None
                holder = self._holder()
                if holder and holder != os.getpid() and _pid_alive(holder):
                    os.close(fd)
                    raise self._refuse(holder) from None
            # The previous holder unlinks the file before unlocking it: if we locked an unlinked
            # file, someone may already hold a fresh one at the path, so start over.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        holder = self._holder()
        # We hold the flock, so whoever wrote this pid is gone (a kill -9 leaves the file behind).
        self.stale_pid = holder if holder and holder != os.getpid() else None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)  # before unlocking: see acquire()
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _die_with_parent(conn) -> None:
    """Worker initializer: exit at once when the pipe from the parent reaches EOF (parent gone)."""

    def watch() -> None:
        try:
            conn.recv()  # nothing is ever sent: this returns only by EOF (or an error)
        except (EOFError, OSError):
            pass
        os._exit(1)  # no cleanup: stop writing now; the parent's rerun removes the temporaries

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


class WorkerPool:
    """``with WorkerPool(n, "module") as pool:`` a ``ProcessPoolExecutor`` (forkserver context,
    ``module`` preloaded by the server) whose workers die with this process. Leaving the block
    by an exception ends the workers at once instead of letting them finish their tasks."""

    def __init__(self, workers: int, preload: str) -> None:
        import multiprocessing

        # forkserver: safe when the parent holds threads (torch, a test runner), unlike fork. The
        # server imports the module and the decoding/imaging libraries its functions import
        # lazily (about 50 extension modules) once, instead of once in every worker.
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([preload, "av", "PIL.Image", "numpy"])
        self._reader, self._writer = ctx.Pipe(duplex=False)
        self.executor = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_die_with_parent,
                                            initargs=(self._reader,))

    def __enter__(self) -> ProcessPoolExecutor:
        return self.executor

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._writer.close()  # the workers read EOF and exit now
            self.executor.shutdown(wait=True, cancel_futures=True)
        else:
            self.executor.shutdown(wait=True)
        self._writer.close()
        self._reader.close()


def worker_pids(pid: int) -> Iterator[int]:
    """Every live descendant of ``pid`` (Linux /proc), for tests and diagnostics."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    stack = list(children.get(pid, []))
    while stack:
        child = stack.pop()
        yield child
        stack.extend(children.get(child, []))
