"""``run --uncertainty``: a per-pixel flip probability that points at the wrong pixels."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys

import numpy as np
import pytest
import rasterio

import changedet
from changedet import metrics
from changedet.uncertainty import SPREAD_FLOOR, flip_probability


def test_flip_probability_is_one_half_on_the_threshold_and_falls_with_margin_over_spread():
    t = 0.6
    score = np.array([0.6, 0.7, 0.8, 0.7, 0.5, np.nan])
    spread = np.array([0.3, 0.1, 0.1, 0.0, 0.1, 0.1])
    u = flip_probability(score, spread, t)
    assert u.dtype == np.float32
    assert u[0] == pytest.approx(0.5)
    assert u[1] > u[2]                        # further from the threshold: surer
    assert u[1] == pytest.approx(u[4])        # symmetric about the threshold
    assert u[3] < u[1]                        # views that agree: surer at the same margin
    assert u[3] == pytest.approx(0.5 * (1 + math.erf(-0.1 / SPREAD_FLOOR / np.sqrt(2))),
                                 abs=1e-7)    # the floor bounds that certainty
    assert np.isnan(u[5])


def test_auroc_matches_the_pairwise_definition():
    rng = np.random.default_rng(0)
    score = rng.normal(size=300).round(1)     # many ties
    positive = rng.random(300) < 0.3 + 0.4 * (score > 0)
    pos, neg = score[positive], score[~positive]
    pairs = (pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean()
    assert metrics.auroc(score, positive) == pytest.approx(pairs)
    assert metrics.auroc(-score, positive) == pytest.approx(1 - pairs)
    with pytest.raises(changedet.ChangedetError, match="both classes"):
        metrics.auroc(score, np.zeros(300, bool))


def _paris(sample_data):
    city = sample_data / "oscd_paris"
    return city / "imgs_1", city / "imgs_2", city / "paris-cm.tif"


def test_uncertainty_raster_lines_up_matches_best_quality_and_finds_the_wrong_pixels(
        sample_data, tmp_path):
    """The packaged model on the sample pair: the uncertainty GeoTIFF has the inputs' grid
    and NaN nodata, is NaN exactly where the mask is nodata, comes from the same pass as the
    ``quality="best"`` score and mask, and ranks the mask's wrong pixels (against the pair's
    labels) far above the right ones."""
    before, after, labels = _paris(sample_data)
    out = {k: tmp_path / f"{k}.tif" for k in ("mask", "score", "u")}
    changedet.run(before, after, out["mask"], score_path=out["score"],
                  uncertainty_path=out["u"], block_px=128, progress=False)
    with rasterio.open(next(before.glob("*_B02.tif"))) as src:  # the 10 m grid of the pair
        grid = (src.crs, src.transform, src.shape)
    with rasterio.open(out["u"]) as ds:
        assert (ds.crs, ds.transform, ds.shape) == grid
        assert ds.dtypes == ("float32",) and np.isnan(ds.nodata)
        assert "flip probability" in ds.tags()["uncertainty"]
        assert ds.tags()["quality"] == "best"
        u = ds.read(1)
    with rasterio.open(out["mask"]) as ds:
        mask = ds.read(1)
        threshold = float(ds.tags()["threshold"])
    with rasterio.open(out["score"]) as ds:
        assert ds.tags()["quality"] == "best"
        score = ds.read(1)
    np.testing.assert_array_equal(mask[mask != 255], score[mask != 255] > threshold)
    np.testing.assert_array_equal(np.isnan(u), mask == 255)
    ok = mask != 255
    assert u[ok].min() >= 0 and u[ok].max() <= 0.5
    assert u[ok].max() > 0.25  # some pixels sit on the fence
    np.testing.assert_array_less(np.abs(score[ok & (u > 0.4999)] - threshold), 0.05)
    with rasterio.open(labels) as ds:
        truth = ds.read(1) > 1 if ds.read(1).max() > 1 else ds.read(1) == 1
    wrong = (mask[ok] == 1) != truth[ok]
    assert 50 < wrong.sum() < ok.sum() / 2
    assert metrics.auroc(u[ok], wrong) > 0.8


def test_uncertainty_does_not_depend_on_the_block_size(sample_data):
    from changedet.config import ModelConfig
    from changedet.modelfile import random_init_model

    before, after, _ = _paris(sample_data)
    pair = changedet.open_pair(before, after)
    cfg = ModelConfig(num_bands=13, features=(8, 16, 16), head="msdiff", head_convs=0)
    model = dataclasses.replace(random_init_model(cfg, pair.band_ids, seed=3),
                                normalization="per_image", threshold=0.5)
    kw = dict(model=model, cloud_mask="none", uncertainty=True)
    small = changedet.detect(before, after, block_px=64, **kw)
    whole = changedet.detect(before, after, block_px=1024, **kw)
    assert float(small.uncertainty.std()) > 1e-4  # a non-trivial map
    np.testing.assert_allclose(small.uncertainty.values, whole.uncertainty.values, atol=1e-5)
    np.testing.assert_allclose(small.score.values, whole.score.values, atol=3e-5)


def test_uncertainty_with_cva_is_a_one_line_error(sample_data, tmp_path):
    before, after, _ = _paris(sample_data)
    proc = subprocess.run(
        [sys.executable, "-m", "changedet", "run", str(before), str(after), "-o",
         str(tmp_path / "m.tif"), "--method", "cva", "--uncertainty", str(tmp_path / "u.tif")],
        capture_output=True, text=True)
    assert proc.returncode == 2
    assert "learned model" in proc.stderr and "--model" in proc.stderr
    assert not list(tmp_path.iterdir())  # nothing written
