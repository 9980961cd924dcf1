"""``solo-surgical linear``: frame-level phase classification on a prepared folder.

* default (linear probe): the backbone is frozen; features of every labeled frame are computed
  once (evaluation transform) and a linear layer is trained on them by Lightning (``probe.py``:
  logs in ``OUT/logs/version_N/metrics.csv`` and ``OUT/tensorboard/``, one line per epoch);
* ``--solver lbfgs``: the same frozen features, L2-regularised logistic regression solved to convergence
  (``logistic.py``), lambda chosen on the validation videos: no seed, no epoch choice, one answer
  (the benchmark's probe: the Adam probe's epoch choice moved test accuracy by ~5 points between seeds);
* ``--finetune``: backbone and linear layer trained end to end with crop/flip augmentation.

The epoch kept is the one with the best accuracy on the **validation** videos of the split
(Cholec80 ``standard`` by default); test videos are only scored, once, with that model. A split
without validation videos keeps the last epoch and says so.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional, Union

from .. import argtypes as at
from ..atomic import torch_save, write_json
from ..errors import UserError
from .features import eval_transform, evaluation_backbone


def _loader(dataset, batch_size: int, shuffle: bool, workers: int, seed: int = 0):
    import torch
    from torch.utils.data import DataLoader

    gen = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers, generator=gen)


def _epoch_loader(dataset, batch_size: int, workers: int, seed: int):
    """One epoch's training batches in an order fixed by ``seed``: a precomputed permutation, so the order
    is the same however many times the loader is iterated (Lightning iterates a reloaded loader twice)."""
    import torch
    from torch.utils.data import DataLoader

    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    return DataLoader(dataset, batch_size=batch_size, sampler=order, num_workers=workers)


def _features(module, dataset, batch_size: int, workers: int, device: str):
    """(N, F) features and (N,) labels of a LabeledFrames set, in record order."""
    import torch

    feats, labels = [], []
    module.eval()
    with torch.inference_mode():
        for images, phases in _loader(dataset, batch_size, False, workers):
            feats.append(module(images.to(device)).float().cpu())
            labels.append(phases)
    return torch.cat(feats), torch.cat(labels)


def _accuracy(logits, labels) -> float:
    from .probe import accuracy

    return accuracy(logits, labels)


def train_probe(train_x, train_y, val_x, val_y, num_classes: int, epochs: int, lr: float,
                batch_size: int, weight_decay: float = 0.0, seed: int = 0, **options: Any):
    """Linear layer on fixed features, trained by Lightning (:func:`solo_surgical.evaluation.probe.train_probe`;
    ``options``: ``out`` for its logs, ``loggers``, ``progress``). Returns ``(head, mean, std, history, best_epoch)``."""
    from .probe import train_probe as train  # Lightning is imported only when a probe is trained

    return train(train_x, train_y, val_x, val_y, num_classes, epochs, lr, batch_size, weight_decay, seed, **options)


# The rule of each numeric option: argparse's type= and LinearConfig's check, one table for both.
RULES = {"init_seed": at.non_negative_int, "epochs": at.int_range(1, 100_000), "lr": at.positive_float,
         "weight_decay": at.non_negative_float, "batch_size": at.batch_size, "image_size": at.image_size,
         "seed": at.non_negative_int, "budget_seed": at.non_negative_int, "workers": at.workers,
         "threads": at.threads}
SOLVERS = ("adam", "lbfgs")


@dataclass
class LinearConfig:
    """Everything ``solo-surgical linear`` takes (same names as its options, ``--init-seed`` -> ``init_seed``).

    ``lr`` None means 1e-3 (Adam for the probe, SGD for ``finetune``); ``budget`` is a fraction
    (``0.5``), a percentage (``"50%"``) or a count of training videos; ``device`` ``auto`` picks CUDA
    when available. Values are checked when the config is made (one-line :class:`UserError`).
    """

    data: str
    out: str
    checkpoint: Optional[str] = None
    backbone: Optional[str] = None
    init_seed: int = 0
    finetune: bool = False
    solver: str = "adam"  # the probe's: adam (Lightning, epochs) | lbfgs (logistic regression, lambda on val)
    protocol: Optional[str] = None
    budget: Union[str, float, int, None] = None
    epochs: int = 10
    lr: Optional[float] = None
    weight_decay: float = 0.0
    batch_size: int = 64
    image_size: int = 224
    seed: int = 0
    budget_seed: int = 0
    workers: int = 0
    threads: int = 1
    device: str = "auto"
    progress: bool = True  # the probe's progress (bar on a terminal, else one line per epoch); False: silent

    def __post_init__(self) -> None:
        self.data, self.out = str(self.data), str(self.out)
        self.checkpoint = None if self.checkpoint is None else str(self.checkpoint)
        self.budget = None if self.budget is None else str(self.budget)
        if self.lr is None:
            self.lr = 1e-3
        at.check_fields(self, RULES, "linear")
        if self.solver not in SOLVERS:
            raise UserError(f"linear: solver={self.solver!r}: not one of {', '.join(SOLVERS)}")
        if self.finetune and self.solver != "adam":
            raise UserError(f"linear: solver={self.solver} is a probe's; --finetune trains by SGD")
        if Path(self.out).exists() and not Path(self.out).is_dir():
            raise UserError(f"--out {self.out}: exists and is not a folder")
        if self.checkpoint is not None and not Path(self.checkpoint).is_file():
            raise UserError(f"--checkpoint {self.checkpoint}: checkpoint file not found")

    @classmethod
    def from_args(cls, args: Any) -> "LinearConfig":
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


def _epoch_selection(best_epoch: int, has_val: bool) -> str:
    return f"best validation accuracy (epoch {best_epoch})" if has_val \
        else "last epoch (this split has no validation videos)"


def run_linear(args: LinearConfig) -> dict[str, Any]:
    """Train the probe (or fine-tune) and score it; writes ``OUT/linear.json``, ``OUT/linear.ckpt``,
    per-video predictions and (probe) the training logs; returns what ``linear.json`` holds (``val_acc``,
    ``test_acc``, history, ...)."""
    import torch
    from torch import nn
    from torchvision import transforms as T

    from ..backbones import IMAGENET_MEAN, IMAGENET_STD
    from ..data.datasets import LabeledFrames, PreparedData, parse_budget
    from .labels import write_phase_file

    from ..train.devices import resolve_device

    torch.set_num_threads(max(1, args.threads))
    args.device = resolve_device(args.device)  # "auto" -> cuda when available, else cpu
    data = PreparedData(args.data)
    protocol = data.spec.resolve_protocol(args.protocol)  # None: the dataset spec's default_protocol
    module, dim, name, layout = evaluation_backbone(args.checkpoint, args.backbone, args.init_seed)
    module.to(args.device)
    n_cls = len(data.phases)
    test_tf = eval_transform(args.image_size)
    budget = parse_budget(args.budget)
    train_tf = test_tf if not args.finetune else T.Compose([
        T.RandomResizedCrop(args.image_size, scale=(0.5, 1.0)), T.RandomHorizontalFlip(), T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    train_set = LabeledFrames(data, "train", protocol, budget, args.budget_seed, train_tf)
    has_val = bool(data.part("val", protocol))
    val_set = LabeledFrames(data, "val", protocol, transform=test_tf) if has_val else None
    test_set = LabeledFrames(data, "test", protocol, transform=test_tf) if data.part("test", protocol) else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.finetune:
        tx, ty = _features(module, train_set, args.batch_size, args.workers, args.device)
        vx, vy = _features(module, val_set, args.batch_size, args.workers, args.device) if val_set else (None, None)
        if args.solver == "lbfgs":
            from .logistic import DEFAULT_GRID, NO_VALIDATION_L2, train_logistic_probe

            probe = train_logistic_probe(tx, ty, vx, vy, n_cls, DEFAULT_GRID if val_set else (NO_VALIDATION_L2,))
            head, mean, std, history = probe.head, probe.mean, probe.std, probe.history
            grid = f"{DEFAULT_GRID[0]:g}..{DEFAULT_GRID[-1]:g}"
            selection = f"best validation accuracy (lambda {probe.l2:g} of {grid})" if val_set is not None \
                else f"lambda {NO_VALIDATION_L2:g} (this split has no validation videos to choose it)"
        else:
            head, mean, std, history, best_epoch = train_probe(tx, ty, vx, vy, n_cls, args.epochs, args.lr,
                                                               args.batch_size, args.weight_decay, args.seed,
                                                               out=out, progress=bool(args.progress))
            selection = _epoch_selection(best_epoch, val_set is not None)

        def classify(dataset):
            # the head acts on standardised features, in its own precision (float64 for lbfgs)
            x, y = (vx, vy) if dataset is val_set else _features(module, dataset, args.batch_size, args.workers,
                                                                  args.device)
            with torch.no_grad():
                return head(((x - mean) / std).to(head.weight.dtype)).argmax(1), y
        # saved as one linear map on raw features, float32 like every checkpoint
        state = {**{f"backbone.{k}": v for k, v in module.state_dict().items()},
                 "head.weight": (head.weight.detach() / std[None, :]).float(),
                 "head.bias": (head.bias.detach() - (head.weight.detach() * (mean / std)[None, :]).sum(1)).float()}
    else:
        head = nn.Linear(dim, n_cls).to(args.device)
        model = nn.Sequential(module, head)
        from .finetune import train_finetune  # Lightning is imported only when fine-tuning runs

        def score(net):
            return _accuracy(*_features(net, val_set, args.batch_size, args.workers, args.device))

        history, best_epoch = train_finetune(
            model, lambda epoch: _epoch_loader(train_set, args.batch_size, args.workers, args.seed + epoch),
            score if val_set is not None else None, args.epochs, args.lr, args.weight_decay, args.device,
            out=out, progress=bool(args.progress))
        selection = _epoch_selection(best_epoch, val_set is not None)

        def classify(dataset):
            x, y = _features(model, dataset, args.batch_size, args.workers, args.device)
            return x.argmax(1), y
        state = {**{f"backbone.{k}": v for k, v in module.state_dict().items()},
                 **{f"head.{k}": v for k, v in head.state_dict().items()}}
    result: dict = {"mode": "finetune" if args.finetune else "linear", "backbone": name, "layout": layout,
                    "checkpoint": args.checkpoint, "protocol": protocol, "phases": data.phases,
                    **({"solver": args.solver} if not args.finetune else {}),
                    "selection": selection, "history": history}
    if val_set is not None:
        pred, y = classify(val_set)
        result["val_acc"] = 100.0 * float((pred == y).float().mean())
    if test_set is not None:
        pred, y = classify(test_set)
        result["test_acc"] = 100.0 * float((pred == y).float().mean())
        per_video: dict[str, list] = {}
        for record, p in zip(test_set.records, pred.tolist()):
            per_video.setdefault(record.video, []).append((record.source, data.phases[p]))
        for video, rows in per_video.items():
            write_phase_file(out / "predictions" / f"{video}_pred.txt", [r[0] for r in rows], [r[1] for r in rows])
    torch_save({"state_dict": {k: v.cpu() for k, v in state.items()},
                "hyper_parameters": {"backbone": name, "num_classes": n_cls, "phases": data.phases}},
               out / "linear.ckpt")
    write_json(out / "linear.json", result)
    shown = {k: round(v, 2) for k, v in result.items() if k.endswith("_acc")}
    print(f"{result['mode']} {name}: {shown}; {result['selection']}; wrote {out / 'linear.json'}")
    return result


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "linear", help="linear probe (frozen backbone) or --finetune on labeled frames",
        description="Frame-level phase classification on a prepared folder. The epoch kept is the best on "
                    "the split's validation videos; test videos are scored once with it.")
    p.add_argument("--data", required=True, help="prepared folder (with manifest.json)")
    p.add_argument("--out", required=True)
    p.add_argument("--checkpoint", help="backbone checkpoint (any layout 'extract' reads)")
    p.add_argument("--backbone", help="architecture (default: from the checkpoint); alone: random init")
    p.add_argument("--init-seed", type=RULES["init_seed"], default=0, help="seed of the random init (--backbone alone)")
    p.add_argument("--finetune", action="store_true", help="train the backbone too")
    p.add_argument("--solver", choices=SOLVERS, default="adam",
                   help="the probe's: adam (Lightning, --epochs, best epoch on val; default) or lbfgs "
                        "(logistic regression solved to convergence, lambda chosen on val; no seed)")
    p.add_argument("--protocol", help="split scheme (default: the dataset's default_protocol; cholec80: standard)")
    p.add_argument("--budget", help="training videos: fraction, percentage or count (default: all)")
    p.add_argument("--epochs", type=RULES["epochs"], default=10)
    p.add_argument("--lr", type=RULES["lr"], default=None, help="default 1e-3 (probe, Adam) / 1e-3 (finetune, SGD)")
    p.add_argument("--weight-decay", type=RULES["weight_decay"], default=0.0)
    p.add_argument("--batch-size", type=RULES["batch_size"], default=64)
    p.add_argument("--image-size", type=RULES["image_size"], default=224, help=f"16 to {at.MAX_IMAGE_SIZE} (default 224)")
    p.add_argument("--seed", type=RULES["seed"], default=0)
    p.add_argument("--budget-seed", type=RULES["budget_seed"], default=0, help="seed of the video subset (default 0)")
    p.add_argument("--workers", type=RULES["workers"], default=0)
    p.add_argument("--threads", type=RULES["threads"], default=1)
    p.add_argument("--device", default="auto", help="auto (cuda when available, else cpu), cpu, cuda, cuda:N")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar or per-epoch lines (the result lines stay)")
    p.set_defaults(func=cmd_linear)


def cmd_linear(args: Any) -> int:
    run_linear(LinearConfig.from_args(args))
    return 0
