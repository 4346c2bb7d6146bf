"""The PyTorch copy of the network used by ``benchmarks/bench_torch.py`` matches the Flax model.

``benchmarks/`` is not a package: its modules are scripts that put their own folder on
``sys.path``. ``torch_siamese`` needs only numpy and torch, so it is loaded here from its file,
without adding ``benchmarks/`` to ``sys.path`` for the rest of the test session.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from changedet.config import ModelConfig
from changedet.detectors import learned

torch = pytest.importorskip("torch")

TORCH_SIAMESE = Path(__file__).resolve().parents[1] / "benchmarks" / "torch_siamese.py"
BANDS = ("B02", "B03", "B04", "B08")


def _torch_siamese():
    spec = importlib.util.spec_from_file_location("torch_siamese", TORCH_SIAMESE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("cfg", [
    ModelConfig(num_bands=4, features=(4, 8, 8), head="msdiff", head_convs=0),
    ModelConfig(num_bands=4, features=(4, 8, 8), head="msdiff", head_convs=1),
    ModelConfig(num_bands=4, features=(4, 8), embed_dim=4, head="diff", head_convs=1),
], ids=["msdiff", "msdiff-head-convs", "diff"])
def test_torch_port_matches_flax_change_score(cfg: ModelConfig) -> None:
    model = learned.random_init_model(cfg, BANDS, seed=1)
    rng = np.random.default_rng(0)
    before = rng.normal(size=(2, 32, 32, 4)).astype(np.float32)
    after = (before + rng.normal(scale=0.5, size=before.shape)).astype(np.float32)
    expected = np.asarray(model.module().change_score(before, after))

    net = _torch_siamese().from_flax(model)
    with torch.inference_mode():
        got = net(torch.from_numpy(before.transpose(0, 3, 1, 2).copy()),
                  torch.from_numpy(after.transpose(0, 3, 1, 2).copy())).numpy()

    assert got.shape == expected.shape == (2, 32, 32)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
