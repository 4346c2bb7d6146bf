"""Module boundaries: the compute modules never import the I/O or plotting stack."""

from __future__ import annotations

import subprocess
import sys

COMPUTE_MODULES = [
    "changedet.models",
    "changedet.losses",
    "changedet.metrics",
    "changedet.training",
    "changedet.inference",
]
FORBIDDEN = ["rasterio", "rioxarray", "xarray", "dask", "matplotlib"]


def test_compute_modules_do_not_import_io_or_plotting():
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in COMPUTE_MODULES)
        + f"print(','.join(m for m in {FORBIDDEN!r} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        env={"JAX_PLATFORMS": "cpu", "PATH": ""},
    )
    assert out.stdout.strip() == "", f"compute modules imported: {out.stdout.strip()}"


def test_import_changedet_is_light():
    code = "import sys, changedet; print(','.join(m for m in ('jax', 'rasterio', 'dask') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


#: Raises of bare builtins that never reach a user: caught and re-raised as a ChangedetError
#: (modelfile's shape check) or an internal invariant of the layer arithmetic.
INTERNAL_RAISES = {("modelfile.py", "ValueError"), ("models/layers.py", "ValueError")}


def test_user_facing_errors_are_changedet_errors():
    """Every exception the package raises is a ChangedetError (the CLI prints it as one line and
    exits 2) except the few internal ones listed above: a bare ValueError reaches users as an
    "internal error"."""
    import ast
    from pathlib import Path

    import changedet

    root = Path(changedet.__file__).parent
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
