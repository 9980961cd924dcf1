"""The core never imports a host library; hosts activate only when used."""
from __future__ import annotations

import subprocess
import sys


def test_core_imports_neither_lightly_nor_solo_learn():
    code = ("import sys; import solo_surgical, solo_surgical.distill, solo_surgical.checkpoints, "
            "solo_surgical.backbones, solo_surgical.cli; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('lightly', 'solo', 'lightning', 'pytorch_lightning')]; "
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", out


def test_registry_activates_the_lightly_host():
    code = "import sys, solo_surgical; solo_surgical.method_names(); print('lightly' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "True"


def _imports(path) -> set[str]:
    """Absolute names of the solo_surgical modules a source file imports (relative imports resolved)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    parts = path.relative_to(root).with_suffix("").parts
    package = parts[:-1]  # the package a relative import starts from (for __init__.py: its own)
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - node.level + 1])
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.add(name)
            found |= {f"{name}.{a.name}" for a in node.names}
    return {n for n in found if n.startswith("solo_surgical")}


def test_import_direction_no_module_reaches_up_to_the_cli_and_the_core_to_no_host():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "solo_surgical"
    files = sorted(root.rglob("*.py"))
    assert len(files) > 30
    cli_users = [str(p.relative_to(root)) for p in files
                 if p.name not in ("cli.py", "__main__.py") and any(n == "solo_surgical.cli" for n in _imports(p))]
    assert cli_users == [], cli_users  # stages are functions; only the entry point parses argv
    core = [p for p in (root / "distill").rglob("*.py")] + [root / "checkpoints.py", root / "backbones.py"]
    host_users = [str(p.relative_to(root)) for p in core if any(n.startswith("solo_surgical.hosts") for n in _imports(p))]
    assert host_users == [], host_users


def test_hosts_are_self_contained_and_load_their_methods_by_import_statements():
    """Each host owns its registry, runner and configs; shared Lightning plumbing (train/) imports no host;
    the lightly registry finds its method modules by plain import statements, not by module-name strings."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "solo_surgical"
    plumbing = [str(p.relative_to(root)) for p in (root / "train").rglob("*.py")
                if any(n.startswith("solo_surgical.hosts") for n in _imports(p))]
    assert plumbing == [], plumbing
    for host in ("lightly", "solo"):
        assert (root / "hosts" / host / "registry.py").is_file() and (root / "hosts" / host / "configs").is_dir()
    registry = root / "hosts" / "lightly" / "registry.py"
    calls = [n for n in ast.walk(ast.parse(registry.read_text())) if isinstance(n, ast.Call)
             and getattr(n.func, "attr", getattr(n.func, "id", "")) in ("import_module", "__import__")]
    assert calls == []
    assert {"solo_surgical.hosts.lightly.methods", "solo_surgical.hosts.lightly.swav"} <= _imports(registry)
    assert not (root / "methods.py").exists() and not (root / "configs").exists()


def test_every_command_handler_is_named_cmd_after_its_command():
    """One naming convention: the command line calls ``cmd_<command>`` handlers (typed stage functions are
    ``run_<stage>`` or a verb, and handlers only turn parsed options into their arguments)."""
    import argparse

    from solo_surgical.cli import build_parser

    def handlers(parser, path=()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                names: dict[int, list[str]] = {}  # a command's aliases share its parser
                for name, sub in action.choices.items():
                    names.setdefault(id(sub), []).append(name)
                for sub in {id(s): s for s in action.choices.values()}.values():
                    yield from handlers(sub, (*path, names[id(sub)]))
        func = parser.get_default("func")
        if func is not None and path:
            yield path, func.__name__

    found = list(handlers(build_parser()))
    assert len(found) >= 17, found
    wrong = [(path, name) for path, name in found
             if name not in {"cmd_" + "_".join([*(p[0] for p in path[:-1]), alias]).replace("-", "_") for alias in path[-1]}]
    assert wrong == []
