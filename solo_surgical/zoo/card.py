"""``solo-surgical export RUN_DIR``: a DINO-style release of one of our runs.

The export folder holds, next to each other:

* ``<name>-<sha8>.pth``: backbone-only weights, a plain torchvision-layout state dict whose
  file name carries the first 8 hex digits of its SHA-256 (so ``torch.hub`` can check it);
* ``<name>-full-<sha8>.ckpt``: the full Lightning checkpoint (projector, predictor, optimiser);
* ``config.yaml`` (resolved config), the CSV training log(s) at their run-folder paths
  (``logs/version_N/metrics.csv``), ``eval/*.json`` (metrics and their protocol);
* ``card.json`` (machine-readable) and ``MODEL_CARD.md`` (the table and how to load it).

The folder is assembled under a temporary name and renamed at the end, so a failed export
never leaves a half-written card.
"""
from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any, Mapping, Optional

import yaml

from ..checkpoints import CheckpointError, load_file, sha256_file
from ..errors import UserError
from .convert import convert_object, serialise

CARD_FORMAT = "solo-surgical-model-card"


def _arch_from_config(cfg: Any) -> Optional[str]:
    """A registered backbone name under an ``arch``/``backbone`` key anywhere in the config."""
    from ..backbones import backbone_names

    known = set(backbone_names())
    stack = [cfg]
    while stack:
        node = stack.pop()
        if isinstance(node, Mapping):
            for key, value in node.items():
                if key in ("arch", "backbone") and isinstance(value, str) and value in known:
                    return value
                if key == "backbone" and isinstance(value, Mapping):
                    for sub in ("arch", "name"):
                        if isinstance(value.get(sub), str) and value[sub] in known:
                            return value[sub]
                stack.append(value)
        elif isinstance(node, list):
            stack.extend(node)
    return None


def _normalisation(cfg: Any) -> tuple[list[float], list[float]]:
    """``mean``/``std`` (three numbers each) from the config, else ImageNet's."""
    from ..backbones import IMAGENET_MEAN, IMAGENET_STD

    found: dict[str, list[float]] = {}
    stack = [cfg]
    while stack:
        node = stack.pop()
        if isinstance(node, Mapping):
            for key, value in node.items():
                if key in ("mean", "std") and key not in found and isinstance(value, list) and len(value) == 3 \
                        and all(isinstance(v, (int, float)) for v in value):
                    found[key] = [float(v) for v in value]
                else:
                    stack.append(value)
    if len(found) == 2:
        return found["mean"], found["std"]
    return list(IMAGENET_MEAN), list(IMAGENET_STD)


def find_logs(run_dir: Path) -> list[Path]:
    """CSV logs of a run: ``RUN_DIR/logs/version_N/metrics.csv`` (one per launch) or ``RUN_DIR/metrics.csv``."""
    versions = sorted((run_dir / "logs").glob("version_*/metrics.csv"),
                      key=lambda p: int(p.parent.name.split("_")[-1]) if p.parent.name.split("_")[-1].isdigit() else -1)
    return versions or ([run_dir / "metrics.csv"] if (run_dir / "metrics.csv").is_file() else [])


def summarise_log(paths: list[Path]) -> dict[str, Any]:
    """Rows, last epoch/step and the last logged value of every column, over logs in launch order."""
    rows: list[dict[str, str]] = []
    for path in paths:
        with open(path, newline="", encoding="utf-8") as handle:
            rows += list(csv.DictReader(handle))
    last: dict[str, float] = {}
    for row in rows:  # CSVLogger leaves a column empty in rows where it was not logged
        for key, value in row.items():
            try:
                number = float(value)
            except (TypeError, ValueError):
                continue
            if math.isfinite(number):
                last[key] = number
    summary: dict[str, Any] = {"rows": len(rows), "last": last}
    for key in ("epoch", "step"):
        if key in last:
            summary[key] = int(max(float(r[key]) for r in rows if r.get(key) not in (None, "")))
    return summary


def _flat_numbers(obj: Any, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            out.update(_flat_numbers(value, f"{prefix}{key}."))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        out[prefix[:-1]] = float(obj)
    return out


def evaluation_files(run_dir: Path) -> list[tuple[Path, str]]:
    """``(file, name in the export)`` of the metrics the stages write for this run: ``eval/*.json``
    (``solo-surgical evaluate``) and ``linear/linear.json`` (``solo-surgical linear --out RUN_DIR/linear``),
    in the run folder and, for a benchmark cell's ``pretrain/`` run, in the cell folder around it."""
    places = [run_dir]
    if run_dir.name == "pretrain" and (run_dir.parent / "result.json").is_file():
        places.append(run_dir.parent)
    found: list[tuple[Path, str]] = []
    for place in places:
        found += [(p, f"eval/{p.name}") for p in sorted((place / "eval").glob("*.json"))]
        if (place / "linear" / "linear.json").is_file():
            found.append((place / "linear" / "linear.json", "eval/linear.json"))
    unique: dict[str, Path] = {}
    for path, name in found:  # the run folder's own file wins over the cell's of the same name
        unique.setdefault(name, path)
    return [(path, name) for name, path in unique.items()]


def read_evaluations(files: list[tuple[Path, str]] | Path) -> list[dict[str, Any]]:
    """One record per metrics file (see :func:`evaluation_files`; a folder: its ``*.json``): the file's
    name in the export, its protocol and its numeric metrics."""
    if isinstance(files, Path):
        files = [(p, f"eval/{p.name}") for p in sorted(files.glob("*.json"))] if files.is_dir() else []
    records = []
    for path, name in files:
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(obj, Mapping):
            raise UserError(f"{path}: an evaluation file must hold a JSON object")
        # `solo-surgical evaluate` puts its numbers under "summary"; other files are taken whole.
        body = obj["summary"] if isinstance(obj.get("summary"), Mapping) else obj
        # per-phase tables stay in the copied file; the card keeps the overall numbers
        metrics = _flat_numbers({k: v for k, v in body.items()
                                 if k not in ("protocol", "fps") and not str(k).startswith("per_")})
        record = {"file": name, "source": str(path), "protocol": obj.get("protocol"), "metrics": metrics}
        if obj.get("dataset") is not None:
            record["dataset"] = obj["dataset"]
        records.append(record)
    return records


def _teacher(cfg: Any) -> dict[str, Any]:
    """Where the distilled knowledge came from: ``distill.teacher`` / ``teacher.source`` of the config."""
    found = {}
    for section, key in (("distill", "teacher"), ("teacher", "source")):
        node = cfg.get(section) if isinstance(cfg, Mapping) else None
        if isinstance(node, Mapping) and node.get(key) is not None:
            found[f"{section}.{key}"] = node[key]
    return found


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "_", text).strip("_") or "model"


def _save_hashed(obj: Any, folder: Path, stem: str, suffix: str) -> tuple[Path, str]:
    data = serialise(obj)
    digest = hashlib.sha256(data).hexdigest()
    final = folder / f"{stem}-{digest[:8]}{suffix}"
    final.write_bytes(data)  # inside the staging folder, which is renamed as a whole
    return final, digest


def export_run(run_dir: str | Path, out: str | Path | None = None, name: Optional[str] = None,
               ckpt: str | Path | None = None, arch: Optional[str] = None, force: bool = False) -> Path:
    """Write the model card folder for ``run_dir``; return its path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: run folder not found")
    ckpt = Path(ckpt) if ckpt else run_dir / "checkpoints" / "last.ckpt"
    config_path = run_dir / "config.yaml"
    for required in (ckpt, config_path):
        if not required.is_file():
            raise UserError(f"{required}: not found; `solo-surgical export` needs a run folder made by "
                            f"`solo-surgical pretrain`")
    try:
        config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{config_path}: not valid YAML ({' '.join(str(exc).split())[:160]})") from None
    out = Path(out) if out else run_dir / "export"
    if out.exists() and any(out.iterdir()) and not force:
        raise UserError(f"{out}: already exists and is not empty; pass --force to replace it")

    obj = load_file(ckpt)
    conversion = convert_object(obj, where=ckpt, arch=arch or _arch_from_config(config))
    if conversion.layout != "lightning":
        raise CheckpointError(f"{ckpt}: expected a Lightning checkpoint of a run (state_dict with backbone.*), "
                              f"found {conversion.layout} layout")
    method = config.get("method") if isinstance(config, Mapping) else None
    method = method.get("name") if isinstance(method, Mapping) else method
    # DINO-style default (dino_resnet50); the hash in the file name tells runs apart.
    name = _slug(name or (f"{method}_{conversion.arch}" if isinstance(method, str) else run_dir.resolve().name))
    mean, std = _normalisation(config)
    log_paths, metric_files = find_logs(run_dir), evaluation_files(run_dir)

    staging = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        weights, weights_sha = _save_hashed(conversion.state, staging, name, ".pth")
        full_sha = sha256_file(ckpt)
        full = staging / f"{name}-full-{full_sha[:8]}.ckpt"
        shutil.copyfile(ckpt, full)
        shutil.copyfile(config_path, staging / "config.yaml")
        log = None
        if log_paths:
            files = [str(p.relative_to(run_dir)) for p in log_paths]
            for rel in files:
                (staging / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(run_dir / rel, staging / rel)
            log = {"files": files, **summarise_log(log_paths)}
        evaluations = read_evaluations(metric_files)
        if evaluations:
            (staging / "eval").mkdir()
            for record in evaluations:
                shutil.copyfile(record.pop("source"), staging / record["file"])
        from .. import __version__

        card = {
            "format": CARD_FORMAT, "name": name, "arch": conversion.arch,
            "num_params": int(sum(v.numel() for k, v in conversion.state.items()
                                  if v.is_floating_point() and not k.endswith(("running_mean", "running_var")))),
            "backbone": {"file": weights.name, "sha256": weights_sha, "layout": "torchvision (no fc)" if conversion.arch.startswith("resnet") else
                         f"solo_surgical.build_backbone({conversion.arch!r})",
                         "num_tensors": len(conversion.state), "mean": mean, "std": std},
            "checkpoint": {"file": full.name, "sha256": full_sha, "epoch": obj.get("epoch"),
                           "global_step": obj.get("global_step")},
            "config": {"file": "config.yaml", "sha256": sha256_file(config_path), "teacher": _teacher(config)},
            "training_log": log,
            "evaluation": evaluations,
            "run_dir": str(run_dir.resolve()),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "solo_surgical_version": __version__,
        }
        (staging / "card.json").write_text(json.dumps(card, indent=2, default=str) + "\n", encoding="utf-8")
        (staging / "MODEL_CARD.md").write_text(render_card(card), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _headline(metrics: Mapping[str, float]) -> dict[str, str]:
    """Table cells: plain numbers, and ``x.mean`` (with ``x.std``) shown as ``mean ± std``."""
    cells = {}
    for key, value in metrics.items():
        if "." not in key:
            cells[key] = f"{value:.4g}"
        elif key.endswith(".mean") and key.count(".") == 1:
            base = key[: -len(".mean")]
            std = metrics.get(f"{base}.std")
            cells[base] = f"{value:.4g}" + (f" ± {std:.2g}" if std is not None else "")
    return cells


def render_card(card: Mapping[str, Any]) -> str:
    """MODEL_CARD.md: the DINO README table (arch, params, metrics, downloads) and a loading snippet."""
    evals = card["evaluation"]
    metric_cols, metric_vals = [], []
    for e in evals:
        for label, cell in _headline(e["metrics"]).items():
            metric_cols.append(f"{label} ({e['protocol'] or 'protocol not stated'})")
            metric_vals.append(cell)
    head = ["arch", "params"] + metric_cols + ["download"]
    links = [f"[backbone only]({card['backbone']['file']})", f"[full ckpt]({card['checkpoint']['file']})",
             "[config](config.yaml)"]
    if card["training_log"]:
        links += [f"[training log]({f})" for f in card["training_log"]["files"]]
    links += [f"[eval]({e['file']})" for e in evals]
    params = card["num_params"]
    size = f"{params / 1e6:.1f}M" if params >= 1e6 else f"{params / 1e3:.1f}k"
    row = [card["arch"], size] + metric_vals + [" / ".join(links)]
    lines = [f"# {card['name']}", "",
             "Self-supervised on surgical video with solo-surgical "
             f"{card['solo_surgical_version']}.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head), "| " + " | ".join(row) + " |", ""]
    lines += ["## Files", ""]
    lines.append(f"- `{card['backbone']['file']}`: backbone only, no head, layout {card['backbone']['layout']}; "
                 f"sha256 `{card['backbone']['sha256']}`")
    ck = card["checkpoint"]
    lines.append(f"- `{ck['file']}`: full Lightning checkpoint (epoch {ck['epoch']}, step {ck['global_step']}); "
                 f"sha256 `{ck['sha256']}`")
    lines.append("- `config.yaml`: resolved training config")
    log = card["training_log"]
    if log:
        finals = ", ".join(f"{k}={v:.4g}" for k, v in log["last"].items() if k not in ("epoch", "step"))
        names = ", ".join(f"`{f}`" for f in log["files"])
        lines.append(f"- {names}: training log, {log['rows']} rows; last values: {finals or 'none'}")
    else:
        lines.append("- no training log was found in the run folder")
    lines += ["", "## Evaluation", ""]
    if not evals:
        lines.append("No evaluation was found in the run folder (`RUN_DIR/eval/*.json`).")
    for e in evals:
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in e["metrics"].items())
        lines.append(f"- `{e['file']}`: protocol `{e['protocol'] or 'not stated'}`: {metrics}")
    mean, std = card["backbone"]["mean"], card["backbone"]["std"]
    if card["arch"].startswith("resnet"):
        build = ["import torch, torchvision", "", f"model = torchvision.models.{card['arch']}()",
                 "model.fc = torch.nn.Identity()"]
    else:  # our own small backbones are only built by solo-surgical
        build = ["import torch, solo_surgical", "", f"model, _ = solo_surgical.build_backbone({card['arch']!r})"]
    lines += ["", "## Loading", "", "```python", *build,
              f"model.load_state_dict(torch.load({card['backbone']['file']!r}, map_location='cpu'))",
              f"# inputs: RGB in [0, 1], normalised with mean={mean}, std={std}", "```", ""]
    return "\n".join(lines)
