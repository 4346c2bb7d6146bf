"""Module boundaries: the package's layers import only downwards, without cycles; io/ never
imports jax, the compute modules never import the I/O or plotting stack, matplotlib stays in
viz/, and no module outgrows the size limit."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import changedet

ROOT = Path(changedet.__file__).parent

#: The layers, lowest first: a module may import from its own layer and the ones below it, never
#: from above (module-level and function-level imports alike; ``TYPE_CHECKING`` blocks are
#: annotations only and do not count). ``docs/design.md`` draws them.
LAYERS = [
    ("foundation", ["errors", "types", "bands", "config", "tiling", "metrics", "uncertainty",
                    "data", "changecap"]),
    ("io", ["io", "testing"]),
    ("viz", ["viz"]),
    ("models", ["models", "kernels"]),
    ("inference", ["inference"]),
    ("detectors", ["detectors"]),
    ("scoring", ["evaluate", "clouds", "coregister"]),
    ("training", ["training"]),
    ("pipeline", ["pipeline", "provenance", "calibrate"]),
    ("cli", ["cli", "__main__"]),
]
#: Third-party packages each top-level part must never import.
FORBIDDEN = {
    "io": {"jax", "flax", "optax", "matplotlib"},
    "models": {"rasterio", "rioxarray", "xarray", "dask", "matplotlib"},
    "kernels": {"rasterio", "rioxarray", "xarray", "dask", "matplotlib"},
    "inference": {"rasterio", "rioxarray", "xarray", "dask", "matplotlib"},
    "training": {"rasterio", "rioxarray", "xarray", "dask", "matplotlib"},
    "metrics": {"rasterio", "dask", "matplotlib"},
    "viz": {"jax", "flax", "optax"},
}
#: Matplotlib (heavy, a plotting extra) lives in viz/ only.
MATPLOTLIB_HOME = "viz"
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    """``changedet.x.y`` -> file, for every module of the package (``__init__`` as the package)."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(("changedet", *parts))] = path
    return out


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for b in node.body for n in ast.walk(b)}
    return skip


def _imports(path: Path, modules: dict[str, Path]) -> tuple[set[str], set[str]]:
    """``(changedet modules, third-party top-level packages)`` that ``path`` imports at run time."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_nodes(tree)
    own, third = set(), set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
            names += [f"{node.module}.{a.name}" for a in node.names
                      if f"{node.module}.{a.name}" in modules]
        for name in names:
            if name.split(".")[0] == "changedet":
                if name in modules and name != "changedet":
                    own.add(name)
            else:
                third.add(name.split(".")[0])
    return own, third


def _part(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def _layer(module: str) -> int:
    part = _part(module)
    for rank, (_, members) in enumerate(LAYERS):
        if part in members:
            return rank
    raise AssertionError(f"{module} is in no layer of tests/test_boundaries.py: add it")


def test_layers_only_import_downwards():
    modules = _modules()
    wrong = []
    for module, path in modules.items():
        if module == "changedet":
            continue
        own, _ = _imports(path, modules)
        for target in own:
            if _layer(target) > _layer(module):
                wrong.append(f"{module} -> {target} ({LAYERS[_layer(module)][0]} imports "
                             f"{LAYERS[_layer(target)][0]})")
    assert not wrong, "imports from a higher layer:\n" + "\n".join(sorted(wrong))


def test_no_import_cycles():
    modules = _modules()
    # A submodule importing its own package's __init__ (``from changedet.cli import train``)
    # finds it already initialised: not an edge.
    graph = {m: {t for t in _imports(p, modules)[0] if not m.startswith(t + ".") and t != m}
             for m, p in modules.items() if m != "changedet"}

    def visit(node, stack, done):
        if node in stack:
            return stack[stack.index(node):] + [node]
        if node in done:
            return None
        done.add(node)
        for nxt in sorted(graph.get(node, ())):
            cycle = visit(nxt, stack + [node], done)
            if cycle:
                return cycle
        return None

    done: set[str] = set()
    for module in sorted(graph):
        cycle = visit(module, [], done)
        assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_parts_do_not_import_forbidden_packages():
    modules = _modules()
    wrong = []
    for module, path in modules.items():
        _, third = _imports(path, modules)
        part = _part(module)
        bad = third & FORBIDDEN.get(part, set())
        if "matplotlib" in third and part != MATPLOTLIB_HOME:
            bad.add("matplotlib")
        wrong += [f"{module} imports {b}" for b in sorted(bad)]
    assert not wrong, "\n".join(wrong)


def test_no_module_over_the_size_limit():
    long = [f"{p.relative_to(ROOT)}: {n} lines" for p in sorted(ROOT.rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not long, f"split modules over {MAX_LINES} lines: " + ", ".join(long)


COMPUTE_MODULES = [
    "changedet.models",
    "changedet.training",
    "changedet.training.losses",
    "changedet.metrics",
    "changedet.inference",
]
HEAVY_IO = ["rasterio", "rioxarray", "xarray", "dask", "matplotlib"]


def test_compute_modules_do_not_import_io_or_plotting():
    """What the AST rules above imply, checked on the real import (transitive, third-party
    included)."""
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in COMPUTE_MODULES)
        + f"print(','.join(m for m in {HEAVY_IO!r} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        env={"JAX_PLATFORMS": "cpu", "PATH": ""},
    )
    assert out.stdout.strip() == "", f"compute modules imported: {out.stdout.strip()}"


def test_import_changedet_is_light():
    code = ("import sys, changedet; "
            "print(','.join(m for m in ('jax', 'rasterio', 'dask') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


#: Raises of bare builtins that never reach a user: caught and re-raised as a ChangedetError
#: (the model record's shape check) or an internal invariant of the layer arithmetic.
INTERNAL_RAISES = {("models/record.py", "ValueError"), ("models/layers.py", "ValueError")}


def test_user_facing_errors_are_changedet_errors():
    """Every exception the package raises is a ChangedetError (the CLI prints it as one line and
    exits 2) except the few internal ones listed above: a bare ValueError reaches users as an
    "internal error"."""
    root = ROOT
    bare = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                name = getattr(node.exc.func, "id", None)
                if name in {"ValueError", "RuntimeError", "TypeError", "KeyError", "OSError",
                            "Exception"} and (rel, name) not in INTERNAL_RAISES:
                    bare.append(f"{rel}:{node.lineno} raise {name}")
    assert not bare, "use a ChangedetError subclass (changedet.errors):\n" + "\n".join(bare)


def test_public_api_names_resolve():
    """Every name in ``changedet.__all__`` loads (the lazy ones included), so the README's
    ``changedet.run`` / ``load_model`` and IDE completion agree with what runs."""
    missing = [n for n in changedet.__all__ if getattr(changedet, n, None) is None]
    assert not missing
    assert set(changedet._LAZY) <= set(changedet.__all__)


def test_every_module_declares_its_public_names():
    """Each module states its public API in ``__all__`` (what ``from m import *``, the docs and
    IDEs show), and every name listed there is defined or imported by the module."""
    missing, broken = [], []
    for module, path in _modules().items():
        if module.endswith("__main__"):
            continue
        names = _declared_all(ast.parse(path.read_text()))
        if names is None:
            missing.append(module)
            continue
        mod = importlib.import_module(module)
        broken += [f"{module}.{n}" for n in names if not hasattr(mod, n)]
    assert not missing, f"no __all__ in {missing}"
    assert not broken, f"__all__ names that do not exist: {broken}"


def _declared_all(tree: ast.Module) -> list[str] | None:
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name) and node.targets[0].id == "__all__"):
            return [ast.literal_eval(e) for e in node.value.elts]  # type: ignore[attr-defined]
    return None
