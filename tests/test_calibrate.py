"""`run --calibrate`: a handful of labelled points re-chooses the scene's threshold."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from rasterio import warp

import changedet
from changedet import metrics
from changedet.calibrate import calibrate_threshold
from changedet.cli import main
from changedet.errors import CalibrationError
from changedet.io.points import read_points


def test_threshold_separates_the_labels_and_stays_at_the_prior_when_it_already_does():
    scores = np.array([0.1, 0.2, 0.3, 0.35, 0.6, 0.7, 0.8, 0.9])
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    moved = calibrate_threshold(scores, labels, prior=0.95, min_per_class=3)
    assert moved.used and moved.balanced_accuracy == 1.0 and moved.prior_balanced_accuracy == 0.5
    assert 0.35 < moved.threshold < 0.6
    kept = calibrate_threshold(scores, labels, prior=0.5, min_per_class=3)
    assert kept.threshold == 0.5 and kept.balanced_accuracy == 1.0
    # Balanced accuracy: ten times more unchanged clicks do not drag the threshold up.
    many = calibrate_threshold(np.r_[scores[:4].repeat(10), scores[4:]],
                               np.r_[labels[:4].repeat(10), labels[4:]], prior=0.95,
                               min_per_class=3)
    assert 0.35 < many.threshold < 0.6


def test_too_few_points_of_a_class_keep_the_prior(caplog):
    with caplog.at_level(logging.WARNING, logger="changedet"):
        cal = calibrate_threshold(np.array([0.1, 0.2, 0.9]), np.array([0, 0, 1]), prior=0.7)
    assert not cal.used and cal.threshold == 0.7
    assert "at least 5 changed" in caplog.text


@pytest.fixture(scope="module")
def paris(sample_data):
    city = sample_data / "oscd_paris"
    pair = changedet.open_pair(city / "imgs_1", city / "imgs_2")
    with rasterio.open(city / "paris-cm.tif") as src:
        changed = src.read(1) == 2
    return city, pair, changed


def write_points(path, pair, rows, cols, labels, *, crs="EPSG:3857", prop="change"):
    """Pixel centres as points in ``crs`` (not the scene's EPSG:4326: reprojection is used)."""
    xs, ys = pair.grid.transform * (cols + 0.5, rows + 0.5)
    xs, ys = warp.transform(pair.grid.crs, crs, xs, ys)
    geometry = shapely.to_wkb(shapely.points(np.column_stack([xs, ys])))
    pyogrio.raw.write(path, geometry, [np.asarray(labels, np.int32)], fields=[prop], crs=crs,
                      geometry_type="Point", driver="GeoJSON")
    return path


def sample(changed, num_changed, num_unchanged, seed):
    rng = np.random.default_rng(seed)
    pos = np.argwhere(changed)[rng.choice(changed.sum(), num_changed, replace=False)]
    neg = np.argwhere(~changed)[rng.choice((~changed).sum(), num_unchanged, replace=False)]
    cells = np.concatenate([pos, neg])
    return cells[:, 0], cells[:, 1], np.r_[np.ones(num_changed), np.zeros(num_unchanged)]


def test_points_in_another_crs_land_on_their_pixels(paris, tmp_path):
    _, pair, _ = paris
    rows, cols = np.array([0, 10, 407, 200]), np.array([0, 389, 5, 123])
    path = write_points(tmp_path / "p.geojson", pair, rows, cols, [1, 0, 1, 0])
    pixels = read_points(path, pair.grid)
    np.testing.assert_array_equal(pixels.rows, rows)
    np.testing.assert_array_equal(pixels.cols, cols)
    np.testing.assert_array_equal(pixels.labels, [1, 0, 1, 0])
    # A polygon labels every pixel whose centre it holds.
    square = shapely.box(*(pair.grid.transform * (10, 20)), *(pair.grid.transform * (13, 24)))
    pyogrio.raw.write(tmp_path / "poly.gpkg", shapely.to_wkb(np.array([square])),
                      [np.array([1], np.int32)], fields=["change"], crs=pair.grid.crs,
                      geometry_type="Polygon", driver="GPKG")
    poly = read_points(tmp_path / "poly.gpkg", pair.grid)
    assert sorted(set(poly.rows.tolist())) == [20, 21, 22, 23]
    assert sorted(set(poly.cols.tolist())) == [10, 11, 12]


def test_calibration_lifts_the_scenes_f1_when_the_stored_threshold_is_off(paris, tmp_path):
    """The packaged model with its threshold set far too low (0.02) marks 17 % of Paris; 40
    changed and 80 unchanged clicked pixels bring the threshold back and the scene's F1 up."""
    city, pair, changed = paris
    model = dataclasses.replace(changedet.load_model("sentinel2"), threshold=0.02)
    rows, cols, labels = sample(changed, 40, 80, seed=0)
    points = write_points(tmp_path / "points.geojson", pair, rows, cols, labels)
    kw = dict(model=model, cloud_mask="none", progress=False)
    # the stored change cap would rescue the bad threshold on its own: off here
    changedet.run(city / "imgs_1", city / "imgs_2", tmp_path / "off.tif", max_change=1, **kw)
    result = changedet.run(city / "imgs_1", city / "imgs_2", tmp_path / "cal.tif",
                           calibrate=points, **kw)
    f1 = {}
    for name in ("off", "cal"):
        with rasterio.open(tmp_path / f"{name}.tif") as src:
            mask, tags = src.read(1), src.tags()
        valid = mask != 255
        f1[name] = metrics.scores_from_counts(
            *metrics.confusion_counts_np(mask == 1, changed, valid)).f1
    assert tags["calibration_used"] == "true" and tags["calibration_features"] == "120"
    assert float(tags["threshold"]) == pytest.approx(result.threshold)
    assert result.threshold > 0.1, result.threshold
    assert float(tags["calibration_prior_threshold"]) == 0.02
    # Paris's labels are sparse (0.3 % of the pixels): the stored threshold reaches F1 0.11 here,
    # 0.02 gives 0.03; the calibrated one (~0.33) gets 0.09.
    assert f1["cal"] > 2.5 * f1["off"] and f1["cal"] > 0.08, f1


@pytest.mark.parametrize(("problem", "message"), [
    ("property", "no 'change' property"),
    ("label", "feature 1 has change=7"),
    ("outside", "feature 0 (change=1) lies outside the scene"),
])
def test_bad_points_are_a_one_line_error_naming_the_feature(paris, tmp_path, capsys, problem,
                                                            message):
    city, pair, _ = paris
    rows, cols, labels = np.array([5, 6]), np.array([5, 6]), [1, 0]
    if problem == "outside":
        rows = np.array([-40, 6])
    if problem == "label":
        labels = [1, 7]
    prop = "label" if problem == "property" else "change"
    points = write_points(tmp_path / "bad.geojson", pair, rows, cols, labels, prop=prop)
    code = main(["run", str(city / "imgs_1"), str(city / "imgs_2"), "-o",
                 str(tmp_path / "m.tif"), "--method", "cva", "--cloud-mask", "none",
                 "--calibrate", str(points), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "m.tif").exists()
    with pytest.raises(CalibrationError, match=message.split(" (")[0]):
        read_points(points, pair.grid)
