"""Test configuration. Runs before any test module, so before JAX initialises."""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The float32 XLA route everywhere, so tiled-vs-whole and checksum tests compare like with like
# on every CPU; tests/models/test_kernels.py exercises the oneDNN bf16 route (the default of
# `run` on CPUs with native bf16) explicitly.
os.environ.setdefault("CHANGEDET_CPU_CONV", "xla")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SAMPLE_DATA = REPO / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; the test skips (with the reason) when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"needs the real datasets in {SHARED_DATA} (absent on this machine)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def sample_data() -> Path:
    """The small real sample pair committed in ``data/``."""
    return SAMPLE_DATA


@pytest.fixture
def synthetic_pair(tmp_path):
    """A small generated 4-band pair (45 x 61 px, UTM, nodata border) with a planted change
    rectangle (``changedet.testing.write_synthetic_pair``): the pipeline, CLI and reliability
    tests' shared input."""
    from changedet.testing import write_synthetic_pair

    return write_synthetic_pair(tmp_path, shape=(45, 61), seed=0)
