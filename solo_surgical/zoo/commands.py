"""Sub-commands ``solo-surgical zoo list|fetch|verify|convert`` and ``solo-surgical export``.

torch is imported inside the handlers only, so ``--help`` and ``zoo list`` stay fast.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import UserError


def _common() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--cache-dir", metavar="DIR",
                        help="download cache (default: $SOLO_SURGICAL_ZOO_CACHE, else torch's "
                             "$TORCH_HOME/hub/checkpoints, i.e. ~/.cache/torch/hub/checkpoints)")
    parent.add_argument("--manifest", metavar="FILE", help="use another manifest (default: the packaged one)")
    return parent


def register(subparsers: argparse._SubParsersAction) -> None:
    common = _common()
    zoo = subparsers.add_parser("zoo", help="public teacher sources: list, fetch, verify, convert",
                                description="Public pretrained backbones to distil from, checked by hash.")
    actions = zoo.add_subparsers(dest="zoo_command", metavar="ACTION", required=True)

    p = actions.add_parser("list", parents=[common], help="list the sources and whether they are cached")
    p.add_argument("--json", action="store_true", help="print the manifest entries as JSON")
    p.set_defaults(func=cmd_zoo_list)

    p = actions.add_parser("fetch", parents=[common], help="download NAME into the cache and check its hash")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--file", metavar="F", help="a manually downloaded copy: check its hash and add it to the cache")
    p.add_argument("--timeout", type=float, metavar="S", help="seconds per network operation (default 10)")
    p.set_defaults(func=cmd_zoo_fetch)

    p = actions.add_parser("verify", parents=[common], help="check a file's hash and key layout")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--name", metavar="NAME", help="zoo source to check against (default: found by file name)")
    p.add_argument("--sha256", metavar="HEX", help="also compare with this SHA-256 (or prefix)")
    p.set_defaults(func=cmd_zoo_verify)

    p = actions.add_parser("convert", parents=[common],
                           help="write a teacher init: torchvision-layout backbone state dict + FILE.json")
    p.add_argument("source", metavar="NAME-or-FILE")
    p.add_argument("--out", required=True, metavar="FILE", help="teacher init to write (metadata in FILE.json)")
    p.add_argument("--name", metavar="NAME", help="for a FILE: the zoo source it should be")
    p.add_argument("--file", metavar="F", help="for a NAME: use this manually downloaded copy")
    p.add_argument("--arch", metavar="ARCH", help="backbone architecture, when the keys do not tell")
    p.add_argument("--timeout", type=float, metavar="S", help="seconds per network operation (default 10)")
    p.set_defaults(func=cmd_zoo_convert)

    p = subparsers.add_parser("export", help="model card of a run: backbone-only weights, checkpoint, config, logs",
                              description="Write a DINO-style release folder for a pretraining run.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--out", metavar="DIR", help="output folder (default: RUN_DIR/export)")
    p.add_argument("--name", help="model name used in file names (default: the run folder's name)")
    p.add_argument("--ckpt", metavar="FILE", help="checkpoint to export (default: RUN_DIR/checkpoints/last.ckpt)")
    p.add_argument("--arch", metavar="ARCH", help="backbone architecture, when neither keys nor config tell")
    p.add_argument("--force", action="store_true", help="replace an existing export folder")
    p.set_defaults(func=cmd_export)


def _manifest(args: argparse.Namespace):
    from .manifest import load_manifest

    return load_manifest(args.manifest)


def cmd_zoo_list(args: argparse.Namespace) -> int:
    from .fetch import cache_dir

    manifest, cache = _manifest(args), cache_dir(args.cache_dir)
    if args.json:
        from dataclasses import asdict

        print(json.dumps({n: asdict(s) for n, s in manifest.sources.items()}, indent=2, default=list))
        return 0
    rows = [("NAME", "ARCH", "LAYOUT", "PUBLISHED HASH", "CACHED", "LICENCE")]
    for name in manifest.names():
        s = manifest.sources[name]
        hashes = " ".join(f"{a}:{h}" for a, h in (("sha256", s.sha256), ("md5", s.md5)) if h) or "none"
        rows.append((name, s.arch or "", s.layout, hashes, "yes" if (cache / s.file_name).is_file() else "no",
                     s.licence.split(";")[0]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
    try:
        import importlib.util

        timm_state = "installed" if importlib.util.find_spec("timm") else "not installed"
    except ValueError:
        timm_state = "unknown"
    print(f"\ntimm:<model>  any timm ResNet with torchvision key names, e.g. timm:resnet50.a1_in1k (timm {timm_state})")
    print(f"cache: {cache}")
    return 0


def cmd_zoo_fetch(args: argparse.Namespace) -> int:
    from .fetch import fetch

    source = _manifest(args).get(args.name)
    if source.timm_model:
        raise UserError(f"{source.name}: timm downloads its own weights; run `solo-surgical zoo convert "
                        f"{source.name} --out FILE`")
    result = fetch(source, cache=args.cache_dir, file=args.file, timeout=args.timeout)
    action = "downloaded" if result.downloaded else ("registered" if args.file else "cached")
    print(f"{action}: {result.path}")
    print(f"sha256: {result.digests.sha256}")
    _report_checked(source.name, result.checked, result.digests.sha256)
    return 0


def _report_checked(name: str, checked: list[str], sha256: str) -> None:
    if checked:
        print(f"verified: {', '.join(checked)} (published for {name})")
    else:
        print(f"warning: {name} has no published hash; its layout was checked, and sha256 {sha256} "
              f"can be pinned in the manifest after comparing with a trusted copy", file=sys.stderr)


def cmd_zoo_verify(args: argparse.Namespace) -> int:
    from ..checkpoints import CheckpointError, load_file
    from .convert import convert_object
    from .fetch import check_hashes, file_digests

    path = Path(args.file).expanduser()
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    manifest = _manifest(args)
    source = manifest.get(args.name) if args.name else manifest.by_file_name(path.name)
    if source is not None and source.timm_model:
        raise UserError(f"{source.name}: timm files are checked by timm; verify a converted file without --name")
    digests = file_digests(path)
    checked = check_hashes(path, source, digests) if source else []
    if args.sha256:
        want = args.sha256.strip().lower()
        if not digests.sha256.startswith(want):
            raise CheckpointError(f"{path}: SHA-256 {digests.sha256[:len(want)]}... does not match {want} "
                                  f"({digests.size} bytes)")
        checked.append(f"SHA-256 {'=' if len(want) == 64 else 'prefix'} {want} (--sha256)")
    obj = load_file(path, trusted=source is None)  # a published file: tensors only, no pickled code
    conversion = convert_object(obj, source=source, where=path)
    print(f"file: {path} ({digests.size} bytes)")
    print(f"sha256: {digests.sha256}")
    print(f"layout: {conversion.layout} -> {conversion.arch} backbone, {len(conversion.state)} tensors, "
          f"{len(conversion.dropped)} keys dropped" + (f", {len(conversion.filled)} BatchNorm counters added"
                                                         if conversion.filled else ""))
    if source is None and not checked:
        print("warning: not a known zoo file and no --sha256 given: the hash was not checked", file=sys.stderr)
    elif source is not None:
        _report_checked(source.name, checked, digests.sha256)
    else:
        print(f"verified: {', '.join(checked)}")
    return 0


def cmd_zoo_convert(args: argparse.Namespace) -> int:
    from ..checkpoints import load_file
    from .convert import convert_object, load_timm, source_meta, write_teacher_init
    from .fetch import check_hashes, fetch, file_digests

    out = Path(args.out).expanduser()
    if out.is_dir():  # checked before any download or conversion
        raise UserError(f"--out {out}: is a folder; give the file to write (e.g. {out / 'teacher_init.pth'})")
    if out.parent.exists() and not out.parent.is_dir():
        raise UserError(f"--out {out}: {out.parent} is not a folder")
    manifest = _manifest(args)
    path = Path(args.source).expanduser()
    extra: dict[str, Any] = {}
    if path.is_file():
        source = manifest.get(args.name) if args.name else manifest.by_file_name(path.name)
        digests = file_digests(path)
        checked = check_hashes(path, source, digests) if source and not source.timm_model else []
        obj = load_file(path, trusted=source is None)  # a bare FILE may be our own run
        conversion = convert_object(obj, source=source, where=path, arch=args.arch)
        meta = source_meta(source, path, digests.sha256, checked)
    else:
        if args.source not in manifest.sources and not args.source.startswith("timm:") \
                and (path.suffix or "/" in args.source):
            raise UserError(f"{args.source}: file not found (and not a zoo name; see `solo-surgical zoo list`)")
        source = manifest.get(args.source)
        if source.timm_model:
            conversion, source, extra = load_timm(source, args.file)
            meta = source_meta(source, Path(args.file) if args.file else None, None, [])
        else:
            result = fetch(source, cache=args.cache_dir, file=args.file, timeout=args.timeout)
            conversion = convert_object(load_file(result.path, trusted=False), source=source, where=result.path,
                                        arch=args.arch)
            meta = source_meta(source, result.path, result.digests.sha256, result.checked)
    out, sidecar = write_teacher_init(conversion, args.out, {**meta, **extra})
    print(f"wrote {out} ({conversion.arch}, {len(conversion.state)} tensors, from {conversion.layout} layout; "
          f"dropped {len(conversion.dropped)} keys) and {sidecar.name}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .card import export_run

    out = export_run(args.run_dir, out=args.out, name=args.name, ckpt=args.ckpt, arch=args.arch, force=args.force)
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        print(path)
    return 0
