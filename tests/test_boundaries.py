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
