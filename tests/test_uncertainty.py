"""``run --uncertainty``: a calibrated per-pixel probability that the mask is wrong."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import rasterio

import changedet
from changedet import metrics
from changedet.uncertainty import ScoreCalibration, error_probability, fit_calibration


def test_calibration_measures_change_frequency_per_score_and_survives_a_model_file(tmp_path):
    rng = np.random.default_rng(0)
    score = rng.random((200, 200))
    label = rng.random((200, 200)) < score**2        # P(change | s) = s^2
    valid = rng.random((200, 200)) > 0.1
    cal = fit_calibration([score], [label], [valid], num_bins=10)
    centres = (np.asarray(cal.edges[:-1]) + np.asarray(cal.edges[1:])) / 2
    np.testing.assert_allclose(cal.p_change, centres**2 + 1 / 1200, atol=0.03)
    assert cal.pixels == int(valid.sum())
    # u: P(change) where mapped unchanged, 1 - P(change) where mapped changed
    u = error_probability(np.array([0.05, 0.95, np.nan]), 0.5, cal)
    assert u[0] == pytest.approx(cal.p_change[0]) and u[1] == pytest.approx(1 - cal.p_change[-1])
    assert np.isnan(u[2])
    # the model file keeps it
    from changedet.config import ModelConfig
    from changedet.detectors.learned import random_init_model

    model = dataclasses.replace(random_init_model(ModelConfig(num_bands=3, features=(4, 8)),
                                                  ("1", "2", "3")), calibration=cal)
    path = changedet.save_model(tmp_path / "m.msgpack", model)
    assert changedet.load_model(path).calibration == cal
    with pytest.raises(changedet.ChangedetError, match="increasing"):
        ScoreCalibration((0.0, 0.0), (0.5,))


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


def test_uncertainty_raster_lines_up_and_finds_the_wrong_pixels(sample_data, tmp_path):
    """The packaged model on the sample pair: the uncertainty GeoTIFF has the inputs' grid and
    NaN nodata, is NaN exactly where the mask is nodata, is the calibration applied to the
    written score, ranks the mask's wrong pixels (against the pair's labels) far above the
    right ones, and its mean is the right order of magnitude for the error rate."""
    before, after, labels = _paris(sample_data)
    out = {k: tmp_path / f"{k}.tif" for k in ("mask", "score", "u")}
    changedet.run(before, after, out["mask"], score_path=out["score"],
                  uncertainty_path=out["u"], block_px=128, progress=False)
    with rasterio.open(next(before.glob("*_B02.tif"))) as src:  # the 10 m grid of the pair
        grid = (src.crs, src.transform, src.shape)
    with rasterio.open(out["u"]) as ds:
        assert (ds.crs, ds.transform, ds.shape) == grid
        assert ds.dtypes == ("float32",) and np.isnan(ds.nodata)
        assert "out-of-fold pixels" in ds.tags()["uncertainty"]
        u = ds.read(1)
    with rasterio.open(out["mask"]) as ds:
        mask = ds.read(1)
        threshold = float(ds.tags()["threshold"])
    with rasterio.open(out["score"]) as ds:
        score = ds.read(1)
    np.testing.assert_array_equal(np.isnan(u), mask == 255)
    ok = mask != 255
    calibration = changedet.load_model("sentinel2").calibration
    np.testing.assert_allclose(u[ok], error_probability(score[ok], threshold, calibration))
    with rasterio.open(labels) as ds:
        truth = ds.read(1) == 2  # OSCD: 1 no change, 2 change
    wrong = (mask[ok] == 1) != truth[ok]
    assert 50 < wrong.sum() < ok.sum() / 2
    assert metrics.auroc(u[ok], wrong) > 0.8
    assert wrong.mean() / 3 < u[ok].mean() < 3 * wrong.mean()


def test_uncertainty_needs_a_calibrated_learned_model(sample_data, tmp_path):
    before, after, _ = _paris(sample_data)
    proc = subprocess.run(
        [sys.executable, "-m", "changedet", "run", str(before), str(after), "-o",
         str(tmp_path / "m.tif"), "--method", "cva", "--uncertainty", str(tmp_path / "u.tif")],
        capture_output=True, text=True)
    assert proc.returncode == 2
    assert "learned model" in proc.stderr and "--model" in proc.stderr
    assert not list(tmp_path.iterdir())  # nothing written
    from changedet.config import ModelConfig
    from changedet.detectors.learned import random_init_model

    pair = changedet.open_pair(before, after)
    model = random_init_model(ModelConfig(num_bands=13, features=(4, 8)), pair.band_ids)
    with pytest.raises(changedet.ChangedetError, match="train --cv"):
        changedet.detect(before, after, model=model, uncertainty=True, cloud_mask="none")
