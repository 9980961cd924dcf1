"""Hydra configuration: compose ``pretrain`` / ``teacher`` configs with ``key=value`` overrides.

Method hyper-parameter defaults are not duplicated in YAML: every registered method (and
its ``distill_`` form) is stored in Hydra's ConfigStore under the ``method`` group, built
from the method's own ``Hparams`` dataclass. Hence ``method=distill_byol`` selects BYOL's
defaults, and ``method.kwargs.momentum=0.996`` overrides one of them.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig, OmegaConf

from ...atomic import write_text
from ...errors import UserError
from .registry import method_names, resolve_method

from . import CONFIG_MODULE


def _store_methods() -> None:
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for name in method_names(include_aliases=True):
        resolved = resolve_method(name)
        kwargs = asdict(resolved.cls.Hparams())
        store.store(group="method", name=name, node={"name": resolved.name, "kwargs": kwargs})


def compose(config_name: str, overrides: Sequence[str] = (), config_dir: str | Path | None = None,
            config_module: str = CONFIG_MODULE, addable: Sequence[str] = ()) -> DictConfig:
    """Compose ``<config_module>/<config_name>.yaml`` (default: this host's ``configs/``) with Hydra overrides.

    With ``config_dir`` (``--config-path``), ``<config_dir>/<config_name>.yaml`` is the primary config
    and the packaged configs stay on the search path, so a user's file can start from ours
    (``defaults: [pretrain, _self_]``) the way solo-learn's ``scripts/pretrain/<dataset>/*.yaml`` do.
    ``addable``: key prefixes whose missing keys the error tells how to add with ``+`` (blocks that are
    passed on to another config, which checks them); any other missing key is refused as "no such key".
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    _store_methods()
    GlobalHydra.instance().clear()
    if config_dir is not None:
        folder = Path(config_dir).expanduser().resolve()
        if not folder.is_dir():
            raise UserError(f"--config-path {config_dir}: folder not found")
        if not (folder / f"{config_name}.yaml").is_file():
            raise UserError(f"--config-name {config_name}: {folder / (config_name + '.yaml')} not found")
        context = initialize_config_dir(config_dir=str(folder), version_base="1.3")
        overrides = [f"hydra.searchpath=[pkg://{config_module}]", *overrides]
    else:
        context = initialize_config_module(config_module=config_module, version_base="1.3")
    try:
        with context:
            cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as exc:
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        first = lines[0]
        if first.startswith("Could not override") and len(lines) > 1 and lines[1].startswith("To append"):
            first = f"{first.rstrip('.')}: no such key"
            key = first.split("'")[1] if first.count("'") >= 2 else ""
            if key.startswith(tuple(addable)):  # a pass-through block lists only what it changes
                first += f" ({lines[1].replace('To append to your config use', 'to add it:')})"
        if "method" in first and "Could not find" in first:
            first += f" (registered methods: {', '.join(method_names(include_aliases=True))})"
        raise UserError(f"config {config_name}: {first}") from None
    return cfg


def expand_sweeps(overrides: Sequence[str]) -> list[list[str]]:
    """Hydra's multirun grammar (``method=simclr,byol``, ``optimizer.lr=range(1,4)``, ``choice(...)``):
    one override list per job, the cartesian product of every swept key in the order given."""
    import itertools

    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as exc:
        raise UserError(f"overrides: {' '.join(str(exc).split())}") from None
    axes = [[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override()
            else [o.input_line] for o in parsed]
    return [list(job) for job in itertools.product(*axes)]


def require(cfg: DictConfig, key: str, what: str) -> str:
    value = OmegaConf.select(cfg, key, throw_on_missing=False)
    if value is None or OmegaConf.is_missing(cfg, key):
        raise UserError(f"{key} is required: {what}")
    return str(value)


def save_config(cfg: DictConfig, path: Path) -> Path:
    """Write the resolved config as YAML, atomically."""
    return write_text(path, OmegaConf.to_yaml(cfg, resolve=True))


def global_batch_size(cfg: DictConfig) -> int:
    devices = cfg.trainer.devices
    n_devices = len(devices) if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices) else (
        int(devices) if str(devices).lstrip("-").isdigit() and int(devices) > 0 else 1)
    return int(cfg.data.batch_size) * n_devices * int(cfg.trainer.num_nodes)
