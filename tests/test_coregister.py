"""Misregistration is measured: known shifts injected into real OSCD scenes are recovered."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import numpy as np
import pytest
import rasterio
from scipy import ndimage

from changedet import coregister, io
from changedet.cli import main
from changedet.errors import BandMismatchError
from changedet.testing import write_synthetic_pair, write_variant

SHARP = ["B02", "B03", "B04", "B08"]
CROP_PX = 12  # removes the borders a shift fills in
TOL_PX = 0.1


def _shift(stack: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """``stack``'s content moved ``dx`` px right and ``dy`` px down (cubic spline)."""
    return np.stack([ndimage.shift(b, (dy, dx), order=3, mode="nearest") for b in stack])


def _crop(stack: np.ndarray) -> np.ndarray:
    return stack[:, CROP_PX:-CROP_PX, CROP_PX:-CROP_PX]


@pytest.fixture(scope="module")
def paris(sample_data):
    folder = sample_data / "oscd_paris"
    pair = io.open_pair(folder / "imgs_1", folder / "imgs_2")
    before = pair.before.sel(band=SHARP).values.astype(np.float64)
    after = pair.after.sel(band=SHARP).values.astype(np.float64)
    return pair, before, after


INJECTED = [(0.0, 2.0), (0.3, -0.7), (-1.25, 0.4), (2.0, -3.0), (0.5, 0.5), (-4.6, 3.2)]


@pytest.mark.parametrize(("dy", "dx"), INJECTED)
def test_recovers_shift_injected_into_before(paris, dy, dx):
    _, before, _ = paris
    shift = coregister.estimate_shift(before=_crop(before), after=_crop(_shift(before, dy, dx)),
                                      block_px=128)
    assert abs(shift.dx_px - dx) < TOL_PX and abs(shift.dy_px - dy) < TOL_PX, shift
    assert shift.num_blocks >= 4 and shift.quality > 3


@pytest.fixture(scope="module")
def paris_base(paris):
    """The real pair's own shift, measured with the blocks the injected tests use."""
    _, before, after = paris
    return coregister.estimate_shift(before=_crop(before), after=_crop(after), block_px=128)


@pytest.mark.parametrize(("dy", "dx"), [(0.0, 2.0), (0.3, -0.7), (-2.5, 1.5)])
def test_recovers_shift_injected_into_real_after(paris, paris_base, dy, dx):
    """Real change and radiometric differences between the dates: the injected shift adds to
    the pair's own (near zero) misregistration."""
    _, before, after = paris
    base = paris_base
    shift = coregister.estimate_shift(before=_crop(before), after=_crop(_shift(after, dy, dx)),
                                      block_px=128)
    assert abs(shift.dx_px - base.dx_px - dx) < TOL_PX, (shift, base)
    assert abs(shift.dy_px - base.dy_px - dy) < TOL_PX, (shift, base)


def test_right_shift_is_positive_dx():
    """The convention, on a plain integer roll: AFTER = BEFORE moved 2 px right, 3 px up."""
    rng = np.random.default_rng(0)
    before = ndimage.gaussian_filter(rng.random((96, 96)), 1.5)
    after = np.roll(before, (-3, 2), axis=(0, 1))
    shift = coregister.estimate_shift(before=before, after=after)
    assert shift.dx_px == pytest.approx(2.0, abs=TOL_PX)
    assert shift.dy_px == pytest.approx(-3.0, abs=TOL_PX)


def test_unshifted_real_pair_is_small(paris):
    pair, _, _ = paris
    shift = coregister.estimate_shift(pair)
    assert shift.magnitude_px < 0.3, shift
    assert shift.spread_px < 0.3 and shift.num_blocks >= 1


def test_nodata_blocks_are_skipped(paris):
    _, before, _ = paris
    after = _crop(_shift(before, 0.6, -1.2))
    after[:, :200, :] = np.nan  # the top half is missing
    shift = coregister.estimate_shift(before=_crop(before), after=after, block_px=128)
    assert abs(shift.dx_px + 1.2) < TOL_PX and abs(shift.dy_px - 0.6) < TOL_PX
    assert shift.num_blocks < 9


def test_shared_city(shared_data):
    city = shared_data / "oscd" / "images" / "rennes"
    pair = io.open_pair(city / "imgs_1", city / "imgs_2")
    before = pair.before.sel(band=SHARP).values.astype(np.float64)
    shift = coregister.estimate_shift(before=_crop(before), after=_crop(_shift(before, -0.8, 1.7)))
    assert abs(shift.dx_px - 1.7) < TOL_PX and abs(shift.dy_px + 0.8) < TOL_PX, shift


def test_errors():
    flat = np.ones((3, 64, 64))
    with pytest.raises(coregister.CoregistrationError, match="constant band"):
        coregister.estimate_shift(before=flat, after=flat)
    with pytest.raises(coregister.CoregistrationError, match="too small"):
        coregister.estimate_shift(before=np.zeros((2, 20, 40)), after=np.zeros((2, 20, 40)))
    with pytest.raises(BandMismatchError):
        coregister.estimate_shift(before=flat, after=flat[:2])


def _write_stack(path, data, profile):
    profile = dict(profile, count=data.shape[0], dtype="float32", driver="GTiff")
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data.astype(np.float32))
        dst.descriptions = tuple(SHARP)


def test_cli_json_through_subprocess(shifted_paris_files):
    before, after = shifted_paris_files
    out = subprocess.run(
        [sys.executable, "-m", "changedet", "coregister", str(before), str(after), "--json"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)  # the whole of stdout is one JSON object
    assert {"dx_px", "dy_px", "quality", "spread_px"} <= set(result)
    # the borders filled by the shift are in the blocks here: a slightly looser tolerance
    assert result["dx_px"] == pytest.approx(-2.5, abs=0.15)
    assert result["dy_px"] == pytest.approx(1.0, abs=0.15)


def test_cli_human_line(capsys, sample_data):
    paris_dir = sample_data / "oscd_paris"
    assert main(["coregister", str(paris_dir / "imgs_1"), str(paris_dir / "imgs_2"), "-q"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("dx ") and len(out.splitlines()) == 1


@pytest.mark.parametrize("problem", ["band_count", "too_small"])
def test_cli_bad_input_is_one_line_exit_2(capsys, tmp_path, problem):
    shape = (20, 24) if problem == "too_small" else (64, 64)
    pair = write_synthetic_pair(tmp_path, shape=shape)
    after = pair.after_path
    if problem == "band_count":
        after = write_variant(pair.after_path, tmp_path / "after3.tif", bands=[1, 2, 3])
    code = main(["coregister", str(pair.before_path), str(after), "--json", "-q"])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("changedet: error:"), captured.err


@pytest.fixture
def shifted_paris_files(paris, sample_data, tmp_path):
    _, before, _ = paris
    band = next((sample_data / "oscd_paris" / "imgs_1").glob("*_B02.tif"))
    with rasterio.open(band) as src:
        profile = {"crs": src.crs, "transform": src.transform, "height": src.height,
                   "width": src.width}
    _write_stack(tmp_path / "before.tif", before, profile)
    _write_stack(tmp_path / "after.tif", _shift(before, 1.0, -2.5), profile)
    return tmp_path / "before.tif", tmp_path / "after.tif"


def test_run_warns_and_records_misregistration(shifted_paris_files, tmp_path, caplog):
    from changedet import pipeline

    before, after = shifted_paris_files
    with caplog.at_level(logging.WARNING, logger="changedet"):
        pipeline.run(before, after, tmp_path / "change.tif", method="cva", cloud_mask="none",
                     progress=False)
    assert any("misregistered" in r.getMessage() for r in caplog.records), caplog.text
    with rasterio.open(tmp_path / "change.tif") as src:
        tags = src.tags()
    assert float(tags["coregistration_dx_px"]) == pytest.approx(-2.5, abs=0.15)
    assert float(tags["coregistration_dy_px"]) == pytest.approx(1.0, abs=0.15)


def test_run_coregister_resamples_after_and_records_the_shift(shifted_paris_files, tmp_path):
    """``coregister=True``: AFTER (BEFORE moved 2.5 px left and 1 px down) is moved back by the
    measured shift, so the residual is a fraction of a pixel, the false edge change is gone,
    the strip whose source lies outside AFTER is nodata, and blocks stay seam-free."""
    import changedet
    from changedet import pipeline

    before, after = shifted_paris_files
    kw = dict(method="cva", cloud_mask="none", progress=False)
    plain = pipeline.run(before, after, tmp_path / "plain.tif", score_path=tmp_path / "p.tif",
                         **kw)
    pipeline.run(before, after, tmp_path / "fixed.tif", score_path=tmp_path / "f.tif",
                 coregister=True, threshold=plain.threshold, **kw)
    with rasterio.open(tmp_path / "fixed.tif") as src:
        tags, mask = src.tags(), src.read(1)
    assert float(tags["coregistration_applied_dx_px"]) == pytest.approx(-2.5, abs=TOL_PX)
    assert float(tags["coregistration_applied_dy_px"]) == pytest.approx(1.0, abs=TOL_PX)
    assert abs(float(tags["coregistration_dx_px"])) < TOL_PX  # the residual after resampling
    assert abs(float(tags["coregistration_dy_px"])) < TOL_PX
    assert (mask[:, :2] == 255).all() and (mask[-1:] == 255).all()  # source outside AFTER
    assert (mask[5:-5, 5:-5] != 255).all()
    with rasterio.open(tmp_path / "p.tif") as p, rasterio.open(tmp_path / "f.tif") as f:
        plain_score, fixed_score = p.read(1), f.read(1)
    with rasterio.open(tmp_path / "plain.tif") as src:
        plain_mask = src.read(1)
    inner = (slice(5, -5), slice(5, -5))
    assert np.nanmean(fixed_score[inner]) < 0.2 * np.nanmean(plain_score[inner])
    assert (mask[inner] == 1).mean() < 0.2 * (plain_mask[inner] == 1).mean()
    blocked = changedet.detect(before, after, method="cva", cloud_mask="none", coregister=True,
                               block_px=64, threshold=plain.threshold).score.values
    np.testing.assert_allclose(blocked, fixed_score, atol=1e-4, equal_nan=True)
