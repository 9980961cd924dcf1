"""``prepare``: raw videos + annotations -> cropped, resized JPEG frames with aligned labels.

Output layout (``DATA``)::

    DATA/manifest.json            dataset, phases, tools, options, one entry per video (below)
    DATA/<video>/000000.jpg ...   output frame k as <k:06d>.jpg (k = 0, 1, ... at --fps)
    DATA/<video>/frames.tsv       header 'frame source_frame time phase [tools...]', one row per
                                  output frame: k, source frame index at the native rate, seconds
                                  from the first frame, phase index into manifest 'phases'
                                  (-1: unlabeled), then 0/1 per tool when a tool file exists
    DATA/<video>/video.json       this video's manifest entry (written last, inside the folder)

A video's folder is built as ``DATA/.tmp-<video>-<pid>`` and renamed when complete, so a
``DATA/<video>`` folder is always finished; a rerun skips those, removes leftover ``.tmp-*``
folders and redoes the rest. ``manifest.json`` is rebuilt from the ``video.json`` files after each
video, so killing the run loses nothing already finished.

One run at a time writes to ``DATA`` (``DATA/.prepare.lock``, see :mod:`.workers`); worker
processes die with the run. The options (and dataset, phases) of a rerun are checked against the
manifest *and* every ``video.json``, so a missing or corrupt manifest cannot let two sizes or
frame rates mix. Labels must cover the video and may run past its last frame by at most one
second of native frames (off-by-a-few counts in published annotations); longer is an error, as
is an annotation shorter than the video.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Sequence

from ..atomic import write_json
from ..errors import UserError
from .annotations import StepLabels, read_phases, read_tools
from .registry import DatasetSpec, VideoSource
from .video import FALLBACK_FPS, VideoError, content_box, info, open_video, sample_frames, select_frames
from .workers import FolderLock, WorkerPool

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Options:
    """What decides the content of an output folder; a rerun must use the same."""

    fps: str = "1"  # a decimal or fraction string, kept exact
    size: tuple[int, int] | None = (250, 250)  # (width, height); None: no resize
    keep_aspect: bool = False  # size[0] is then the length of the shorter side
    quality: int = 90
    crop: bool = True


@dataclass
class Result:
    name: str
    ok: bool
    message: str = ""  # one line, names the file, when not ok
    entry: dict = field(default_factory=dict)
    frames: int = 0


def _output_size(opts: Options, box_w: int, box_h: int) -> tuple[int, int] | None:
    if opts.size is None:
        return None
    if not opts.keep_aspect:
        return opts.size
    short = opts.size[0]
    scale = short / min(box_w, box_h)
    return max(1, round(box_w * scale)), max(1, round(box_h * scale))


def _load_labels(src: VideoSource, spec_phases: Sequence[str]) -> tuple[StepLabels | None, StepLabels | None]:
    phases = None
    if src.phase_file is not None and (src.needs_phases or src.phase_file.exists()):
        if not src.phase_file.exists():
            raise UserError(f"{src.phase_file}: missing phase annotation for {src.video.name}")
        phases = read_phases(src.phase_file, spec_phases)
    tools = read_tools(src.tool_file) if src.tool_file is not None else None
    return phases, tools


def _overrun(labels: StepLabels | None, file: Path | None, src: VideoSource, decoded: int,
             native_fps: Fraction | None) -> None:
    """Refuse labels running more than a second of native frames past the video's last frame:
    they belong to another video or the video was cut, and either way they would be misaligned."""
    if labels is None:
        return
    slack = round(native_fps) if native_fps else FALLBACK_FPS
    if labels.last_frame > decoded - 1 + slack:
        raise UserError(f"{file}: labels run to source frame {labels.last_frame} but {src.video} has only "
                        f"{decoded} frames (0-{decoded - 1}); wrong annotation file or truncated video?")


def prepare_one(src: VideoSource, out: Path, opts: Options, spec_phases: Sequence[str],
                dataset: str = "") -> Result:
    """Prepare one video into ``out/<name>``; never raises for bad input, returns a Result.

    The failure message names the file that failed -- the video, an annotation, or a path in the
    output folder -- and, for an OS error, what was being done to it."""
    started = time.monotonic()
    tmp = out / f".tmp-{src.name}-{os.getpid()}"
    doing, target = "read the annotations of", src.phase_file or src.video  # for an OSError's message
    final = out / src.name
    try:
        if final.exists() or final.is_symlink():  # finished ones (with video.json) were skipped
            raise UserError(f"{final}: in the way (not a folder prepare finished: no video.json); move it "
                            f"away to prepare {src.video.name}")
        phases, tools = _load_labels(src, spec_phases)
        doing, target = "read the video", src.video
        if opts.crop:
            box = content_box(sample_frames(src.video))
        else:
            container, stream = open_video(src.video)
            meta = info(stream)
            container.close()
            box = (0, 0, meta.width, meta.height)
        left, top, right, bottom = box
        size = _output_size(opts, right - left, bottom - top)
        shutil.rmtree(tmp, ignore_errors=True)
        doing, target = "create the video's temporary folder", tmp
        tmp.mkdir(parents=True)
        rows = []
        missing = []
        from PIL import Image

        stats: dict = {}
        for sel in select_frames(src.video, Fraction(opts.fps), stats):
            rgb = sel.frame.to_ndarray(format="rgb24")[top:bottom, left:right]
            image = Image.fromarray(rgb)
            if size is not None and image.size != size:
                image = image.resize(size, Image.BILINEAR)
            doing, target = "write a frame", tmp / f"{sel.k:06d}.jpg"
            image.save(target, quality=opts.quality)
            doing, target = "read the video", src.video
            phase = -1
            if phases is not None:
                phase = phases.at(sel.source)
                if phase is None:
                    missing.append(sel.source)
                    phase = -1
            row = [str(sel.k), str(sel.source), f"{sel.time:.3f}", str(phase)]
            if tools is not None:
                present = tools.at(sel.source)
                row += [str(v) for v in (present if present is not None else [-1] * len(tools.names))]
            rows.append("\t".join(row))
        meta = stats["info"]
        _overrun(phases, src.phase_file, src, stats["decoded"], meta.fps)
        _overrun(tools, src.tool_file, src, stats["decoded"], meta.fps)
        if phases is not None and missing:
            raise UserError(
                f"{src.phase_file}: labels cover source frames {phases.frames[0]}-{phases.last_frame} "
                f"but the video has {stats['decoded']} frames ({len(missing)} sampled frames unlabeled)"
            )
        header = ["frame", "source_frame", "time", "phase"] + (list(tools.names) if tools else [])
        doing, target = "write", tmp / "frames.tsv"
        (tmp / "frames.tsv").write_text("\t".join(header) + "\n" + "\n".join(rows) + "\n")
        entry = {
            "name": src.name,
            "dataset": dataset,
            "phases": list(spec_phases),
            "source": str(src.video),
            "phase_file": str(src.phase_file) if phases is not None else None,
            "tool_file": str(src.tool_file) if tools is not None else None,
            "width": meta.width,
            "height": meta.height,
            "native_fps": float(meta.fps) if meta.fps else None,
            "native_frames": stats["decoded"],
            "output_frames": len(rows),
            "crop": list(box),
            "label_coverage": (
                {"first_frame": phases.frames[0], "last_frame": phases.last_frame,
                 "labeled_outputs": len(rows) - len(missing)} if phases is not None else None
            ),
            "options": _options_json(opts),
            "status": "ok",
            "seconds": round(time.monotonic() - started, 3),
        }
        doing, target = "write", tmp / "video.json"
        write_json(tmp / "video.json", entry)
        doing, target = "rename the finished folder", final
        os.rename(tmp, final)  # not replace: never over something that appeared meanwhile
        return Result(src.name, True, entry=entry, frames=len(rows))
    except VideoError as exc:
        message = f"{src.video}: {exc}"
    except UserError as exc:
        message = " ".join(str(exc).split())
    except OSError as exc:
        message = _os_message(exc, doing, target)
    except Exception as exc:  # a bug or an unforeseen input: report it as this video's failure
        message = f"{src.video}: unexpected {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    shutil.rmtree(tmp, ignore_errors=True)
    return Result(src.name, False, message=message)


def _os_message(exc: OSError, doing: str, target: Path) -> str:
    """'<the path the OS refused>: cannot <operation> (<reason>)' -- the path from the error itself
    when it has one (e.g. a temporary file inside ``target``), else ``target``."""
    path = exc.filename if exc.filename else target
    if exc.filename and exc.filename2:  # rename, link: both ends
        path = f"{exc.filename} -> {exc.filename2}"
    return f"{path}: cannot {doing} ({exc.strerror or type(exc).__name__})"


def _options_json(opts: Options) -> dict:
    data = asdict(opts)
    data["size"] = list(opts.size) if opts.size else None
    return data


def _collect(out: Path) -> dict[str, dict]:
    entries = {}
    for meta in sorted(out.glob("*/video.json")):
        if not meta.parent.name.startswith("."):
            entries[meta.parent.name] = json.loads(meta.read_text())
    return entries


def write_manifest(out: Path, spec: DatasetSpec, opts: Options, failed: dict[str, str], root: Path) -> dict:
    manifest = {
        "format": FORMAT_VERSION,
        "dataset": spec.name,
        "root": str(root),
        "phases": list(spec.phases),
        "tools": list(spec.tools),
        "options": _options_json(opts),
        "videos": _collect(out),
        "failed": dict(sorted(failed.items())),
    }
    write_json(out / MANIFEST, manifest)
    return manifest


def _read_record(path: Path) -> dict | None:
    """A JSON object from ``path``; None when it is not valid JSON or not an object."""
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    except OSError as exc:
        raise UserError(_os_message(exc, "read", path)) from None
    return doc if isinstance(doc, dict) else None


def _check_compatible(out: Path, spec: DatasetSpec, opts: Options) -> None:
    """Refuse a rerun whose dataset, phases or options differ from what made ``out``: checked
    against the manifest and against every finished video's own record, so a missing or corrupt
    manifest cannot let frames of two sizes or rates mix."""
    want = _options_json(opts)
    records = [(out / MANIFEST, False)] + [(p, True) for p in sorted(out.glob("*/video.json"))
                                           if not p.parent.name.startswith(".")]
    for path, per_video in records:
        if not per_video and not path.exists():
            continue
        old = _read_record(path)
        if old is None:
            if per_video:  # written atomically, so damaged by something else: do not guess
                raise UserError(f"{path}: corrupt video record; delete {path.parent} to prepare that video again")
            continue  # the manifest is rebuilt from the video records
        differs = old.get("options") != want or old.get("dataset", spec.name) != spec.name \
            or old.get("phases", list(spec.phases)) != list(spec.phases)
        if differs:
            raise UserError(
                f"{path}: this folder was prepared with dataset={old.get('dataset', '?')} options={old.get('options')}"
                f"{' phases=' + ','.join(old.get('phases') or []) if old.get('phases') != list(spec.phases) else ''}; "
                f"rerun with the same options or choose another --out"
            )


class _Progress:
    """A one-line progress display on stderr (a plain line per video when not a terminal)."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.frames = total, 0, 0
        self.start = time.monotonic()
        self.tty = sys.stderr.isatty()

    def update(self, result: Result) -> None:
        self.done += 1
        self.frames += result.frames
        rate = self.frames / max(time.monotonic() - self.start, 1e-6)
        line = f"prepare: [{self.done}/{self.total}] {result.name}: {result.frames} frames ({rate:.0f} frames/s)"
        if self.tty:
            print("\r" + line.ljust(78), end="" if self.done < self.total else "\n", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)


def prepare(spec: DatasetSpec, root: Path, out: Path, opts: Options, workers: int = 1,
            only: Sequence[str] | None = None) -> tuple[dict, dict[str, str]]:
    """Prepare every video of ``spec`` under ``root`` into ``out``. Returns (manifest, failures).

    Failures are ``{video name: one-line message}``, each also printed to stderr as it happens.
    Bad input for the whole run (no videos, ``out`` not a folder or not writable, another run
    holding ``out``, other options than ``out`` was made with) raises :class:`UserError` before
    anything in ``out`` is changed.
    """
    try:
        sources = spec.videos(root)
    except OSError as exc:
        raise UserError(_os_message(exc, "list the videos in", root)) from None
    if only:
        sources = [s for s in sources if s.name in set(only)]
    if not sources:
        raise UserError(f"{root}: no {spec.name} videos found")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: not a folder (the --out of prepare is a folder)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(_os_message(exc, "create the output folder", out)) from None
    with FolderLock(out) as lock:
        if lock.stale_pid:
            print(f"prepare: took over {lock.path} from pid {lock.stale_pid}, which is no longer running",
                  file=sys.stderr)
        _check_compatible(out, spec, opts)
        return _prepare_locked(spec, root, out, opts, workers, sources)


def _prepare_locked(spec: DatasetSpec, root: Path, out: Path, opts: Options, workers: int,
                    sources: list[VideoSource]) -> tuple[dict, dict[str, str]]:
    for leftover in out.glob(".tmp-*"):  # partial folders from an interrupted run (we hold the lock)
        shutil.rmtree(leftover, ignore_errors=True)
    todo = [s for s in sources if not (out / s.name / "video.json").exists()]
    # Longest first keeps the workers busy to the end.
    todo.sort(key=lambda s: s.video.stat().st_size if s.video.exists() else 0, reverse=True)
    failed: dict[str, str] = {}
    progress = _Progress(len(todo))
    if len(sources) > len(todo):
        print(f"prepare: {len(sources) - len(todo)} videos already prepared, skipped", file=sys.stderr)

    def manifest() -> dict:
        try:
            return write_manifest(out, spec, opts, failed, root)
        except OSError as exc:
            raise UserError(_os_message(exc, "write", out / MANIFEST)) from None

    def finish(result: Result) -> None:
        if not result.ok:
            failed[result.name] = result.message
            print(f"solo-surgical: error: {result.message}", file=sys.stderr, flush=True)
        progress.update(result)
        manifest()

    if workers <= 1 or len(todo) <= 1:
        for src in todo:
            finish(prepare_one(src, out, opts, spec.phases, spec.name))
    else:
        from concurrent.futures import as_completed

        with WorkerPool(workers, "solo_surgical.data.prepare") as pool:
            futures = [pool.submit(prepare_one, src, out, opts, spec.phases, spec.name) for src in todo]
            for future in as_completed(futures):
                finish(future.result())
    return manifest(), failed
