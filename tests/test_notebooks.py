"""Executes every notebook in ``notebooks/`` top to bottom (CI runs this in the default suite).

Notebooks are the user's first contact with changedet: a cell error is a bug. They run with the
``python3`` kernel from their own folder (so relative paths such as ``../data`` work), and skip
with the reason while the packaged model weights they use by default are not present. They
must clean up what they write to the temporary folder, and the ``notebooks`` extra must install
everything they import (plus Jupyter and nbconvert to run them).
"""

from __future__ import annotations

import ast
import json
import os
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
WEIGHTS = REPO / "changedet" / "weights" / "sentinel2.msgpack"
#: Per-cell limit; every notebook is meant to finish in under 2 minutes on 2 CPU cores.
CELL_TIMEOUT_S = 300


def _ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_is_stored_without_outputs(path: Path):
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [
        i for i, c in enumerate(nb.cells)
        if c.cell_type == "code" and (c.outputs or c.execution_count)
    ]
    assert not dirty, f"{path.name}: cells {dirty} hold outputs; clear them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs(path: Path, tmp_path: Path):
    if not WEIGHTS.is_file():
        pytest.skip(f"notebooks use the packaged model by default; {WEIGHTS} is not present yet")
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        kernel_name="python3",
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(path.parent)}},
    )
    tmp = tmp_path / "tmp"  # the kernel's temporary folder, to see what it leaves there
    tmp.mkdir()
    client.execute(env={**os.environ, "TMPDIR": str(tmp)})  # raises CellExecutionError
    left = sorted(p.name for p in tmp.glob("changedet-*"))
    assert not left, f"{path.name} left {left} in the temporary folder; remove them at the end"


#: Distribution that provides a module the notebooks import, where the names differ.
DISTRIBUTION_OF = {"IPython": "ipykernel", "dask.distributed": "distributed"}


def _requirement_name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower()


def _notebook_imports(path: Path) -> set[str]:
    modules = set()
    for cell in json.loads(path.read_text())["cells"]:
        if cell["cell_type"] != "code":
            continue
        for node in ast.walk(ast.parse("".join(cell["source"]))):
            if isinstance(node, ast.Import):
                modules |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module)
    return modules


def test_the_notebooks_extra_installs_jupyter_and_what_the_notebooks_import():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extra = project["optional-dependencies"].get("notebooks")
    assert extra, "pyproject.toml has no `notebooks` extra"
    names = {_requirement_name(r) for r in extra}
    assert {"nbconvert", "ipykernel"} <= names and names & {"notebook", "jupyterlab"}, names
    provided = names | {_requirement_name(r) for r in project["dependencies"]}
    missing = {}
    for path in NOTEBOOKS:
        for module in _notebook_imports(path):
            top = module.split(".")[0]
            if top in sys.stdlib_module_names or top == "changedet":
                continue
            dist = DISTRIBUTION_OF.get(module, DISTRIBUTION_OF.get(top, top)).lower()
            if dist not in provided:
                missing.setdefault(dist, []).append(path.name)
    assert not missing, f"imported by the notebooks but not in the notebooks extra: {missing}"
