"""Tests for changedet.io.scene and changedet.io.pair: scenes and pairs open lazily, on the right
grid, or fail clearly."""

from __future__ import annotations

import warnings
from pathlib import Path

import dask
import numpy as np
import pytest
import rasterio

from changedet.errors import (
    BandMismatchError,
    GridMismatchError,
    InputNotFoundError,
    NotARasterError,
)
from changedet.io import (
    CANONICAL_S2_BANDS,
    UngeoreferencedWarning,
    describe_scene,
    open_pair,
    open_scene,
    scene_grid,
)
from changedet.testing import write_synthetic_pair, write_variant

OSCD_CITIES = (
    "abudhabi", "aguasclaras", "beihai", "bercy", "bordeaux",
    "cupertino", "paris", "pisa", "rennes", "saclay_e",
)  # fmt: skip


def _raise_on_compute(*args, **kwargs):
    raise AssertionError("something was computed while opening")


def _b02_shape(folder: Path) -> tuple[int, int]:
    (b02,) = folder.glob("*_B02.tif")
    with rasterio.open(b02) as ds:
        return ds.height, ds.width


def _assert_one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


# -------------------------------------------------------------------------------- scenes


def test_oscd_sample_folder_opens_lazily_with_13_canonical_bands(sample_data: Path) -> None:
    folder = sample_data / "oscd_paris" / "imgs_1"
    with dask.config.set(scheduler=_raise_on_compute):
        scene = open_scene(folder, chunks_px=128)
    assert scene.dims == ("band", "y", "x")
    assert tuple(scene.band.values) == CANONICAL_S2_BANDS
    assert scene.shape[1:] == _b02_shape(folder)
    assert scene.dtype == np.uint16
    assert scene.chunks[0] == (13,)  # all bands in one chunk
    assert max(scene.chunks[1]) == 128
    assert scene.rio.crs.to_epsg() == 4326
    assert scene.attrs["source"] == str(folder)
    assert scene.attrs["nodata"] is None
    (b02,) = folder.glob("*_B02.tif")
    with rasterio.open(b02) as ds:
        assert scene.rio.transform().almost_equals(ds.transform)
        np.testing.assert_array_equal(scene.sel(band="B02").values, ds.read(1))


def test_60m_band_is_resampled_smoothly_onto_the_10m_grid(sample_data: Path) -> None:
    folder = sample_data / "oscd_paris" / "imgs_1"
    scene = open_scene(folder)
    b01 = scene.sel(band="B01").values.astype(np.float64)
    (b01_file,) = folder.glob("*_B01.tif")
    with rasterio.open(b01_file) as ds:
        native = ds.read(1).astype(np.float64)
    assert b01.shape == _b02_shape(folder)
    assert native.shape[0] * 6 == b01.shape[0]
    # bilinear upsampling x6, not nearest-neighbour blocks: most pixels differ from the blocky
    # copy, and neighbouring pixels step by a fraction of the native pixel-to-pixel step
    blocky = np.repeat(np.repeat(native, 6, axis=0), 6, axis=1)
    assert np.mean(b01 != blocky) > 0.5
    step_10m = np.abs(np.diff(b01, axis=1)).mean()
    step_60m = np.abs(np.diff(native, axis=1)).mean()
    assert step_10m < step_60m / 3
    # the mean is preserved by resampling
    assert abs(b01.mean() - native.mean()) < 0.01 * native.mean()


@pytest.mark.shared
@pytest.mark.parametrize("city", OSCD_CITIES)
def test_every_oscd_city_opens_with_13_bands_on_the_b02_grid(shared_data: Path, city: str) -> None:
    for date in ("imgs_1", "imgs_2"):
        folder = shared_data / "oscd" / "images" / city / date
        with dask.config.set(scheduler=_raise_on_compute):
            scene = open_scene(folder)
        assert tuple(scene.band.values) == CANONICAL_S2_BANDS
        assert scene.shape[1:] == _b02_shape(folder)


@pytest.mark.shared
def test_envi_landsat_opens_with_6_bands_utm_30m(shared_data: Path) -> None:
    scene = open_scene(shared_data / "landsat" / "Taizhou" / "2000TM", chunks_px=128)
    assert scene.shape == (6, 400, 400)
    assert scene.rio.crs.to_epsg() == 32651
    assert scene.rio.resolution() == (30.0, -30.0)
    assert tuple(scene.band.values) == ("1", "2", "3", "4", "5", "6")
    grid = scene_grid(scene)
    assert grid.pixel_size == (30.0, 30.0) and grid.crs == "EPSG:32651"
    text = describe_scene(shared_data / "landsat" / "Taizhou" / "2000TM")
    assert "EPSG:32651" in text and "400 x 400" in text and "6 bands" in text


@pytest.mark.shared
def test_airchange_bmp_pair_opens_with_one_warning_and_no_crs(shared_data: Path) -> None:
    folder = shared_data / "airchange" / "Szada" / "2"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pair = open_pair(folder / "im1.bmp", folder / "im2.bmp")
    ours = [w for w in caught if issubclass(w.category, UngeoreferencedWarning)]
    assert len(ours) == 1
    assert pair.grid.crs is None and pair.before.rio.crs is None
    assert pair.grid.shape == (640, 952)
    assert pair.grid.transform.is_identity
    assert pair.band_ids == ("1", "2", "3")
    assert bool(pair.valid.all())


def test_single_scene_without_crs_warns(tmp_path: Path) -> None:
    synthetic = write_synthetic_pair(tmp_path, crs=None)
    with pytest.warns(UngeoreferencedWarning):
        scene = open_scene(synthetic.before_path)
    assert scene.rio.crs is None
    assert scene_grid(scene).crs is None


# -------------------------------------------------------------------------------- pairs


def test_synthetic_pair_is_lazy_and_valid_matches_nodata(tmp_path: Path) -> None:
    synthetic = write_synthetic_pair(tmp_path)
    with dask.config.set(scheduler=_raise_on_compute):
        pair = open_pair(synthetic.before_path, synthetic.after_path, chunks_px=32)
        assert pair.valid.dtype == bool
        assert pair.valid.dims == ("y", "x")
    assert pair.valid.chunks == ((32, 13), (32, 29))
    np.testing.assert_array_equal(pair.valid.values, synthetic.valid)
    assert pair.grid.crs == "EPSG:32633" and pair.grid.shape == (45, 61)
    assert pair.band_ids == ("1", "2", "3", "4")
    assert not pair.is_aligned


def test_float_nan_and_inf_are_invalid(tmp_path: Path) -> None:
    synthetic = write_synthetic_pair(tmp_path, dtype="float32", nodata=None)
    with rasterio.open(synthetic.after_path, "r+") as ds:
        data = ds.read()
        data[0, 3, 4] = np.nan
        data[2, 10, 11] = np.inf
        ds.write(data)
    pair = open_pair(synthetic.before_path, synthetic.after_path)
    valid = pair.valid.values
    assert not valid[3, 4] and not valid[10, 11]
    assert valid.sum() == valid.size - 2


def test_dtypes_may_differ_between_dates(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = write_synthetic_pair(tmp_path / "a", dtype="uint16")
    second = write_synthetic_pair(tmp_path / "b", dtype="uint8")
    pair = open_pair(first.before_path, second.after_path)
    assert pair.before.dtype == np.uint16 and pair.after.dtype == np.uint8


def test_oscd_sample_pair_opens_on_one_grid(sample_data: Path) -> None:
    root = sample_data / "oscd_paris"
    with dask.config.set(scheduler=_raise_on_compute):
        pair = open_pair(root / "imgs_1", root / "imgs_2")
    assert pair.band_ids == CANONICAL_S2_BANDS
    assert pair.before.shape == pair.after.shape == (13, 408, 390)
    assert bool(pair.valid.all())


@pytest.mark.shared
def test_saclay_fails_without_align_and_aligns_onto_date1(shared_data: Path) -> None:
    root = shared_data / "oscd" / "images" / "saclay_e"
    with pytest.raises(GridMismatchError) as exc:
        open_pair(root / "imgs_1", root / "imgs_2")
    message = _assert_one_line(exc)
    assert "pixel size" in message and "align=True" in message
    assert "imgs_1" in message and "imgs_2" in message
    with dask.config.set(scheduler=_raise_on_compute):
        pair = open_pair(root / "imgs_1", root / "imgs_2", align=True, chunks_px=256)
    assert pair.is_aligned
    assert pair.after.shape == pair.before.shape == (13, *_b02_shape(root / "imgs_1"))
    assert pair.after.rio.transform().almost_equals(pair.before.rio.transform())
    # same bounds: the whole date-1 grid lies inside date 2's footprint
    assert float(pair.valid.mean()) > 0.99
    # resampled after correlates with before (same place), pixel for pixel
    before = pair.before.sel(band="B04").values.astype(float).ravel()
    after = pair.after.sel(band="B04").values.astype(float).ravel()
    assert np.corrcoef(before, after)[0, 1] > 0.5


def test_align_marks_pixels_outside_after_footprint_invalid(tmp_path: Path) -> None:
    synthetic = write_synthetic_pair(tmp_path, nodata=None)
    shifted = write_variant(synthetic.after_path, tmp_path / "shifted.tif", shift_px=(20, 0))
    with pytest.raises(GridMismatchError, match="origin"):
        open_pair(synthetic.before_path, shifted)
    pair = open_pair(synthetic.before_path, shifted, align=True)
    valid = pair.valid.values
    assert not valid[:, :20].any() and valid[:, 21:].all()
    # the overlap holds after's pixels, moved 20 columns right
    with rasterio.open(synthetic.after_path) as ds:
        after = ds.read()
    np.testing.assert_allclose(pair.after.values[:, :, 25:40], after[:, :, 5:20], atol=1)


def test_missing_path_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(InputNotFoundError) as exc:
        open_scene(tmp_path / "nope.tif")
    assert "nope.tif" in _assert_one_line(exc)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hello")
    with pytest.raises(InputNotFoundError) as exc:
        open_scene(tmp_path / "empty")
    assert "no band files" in _assert_one_line(exc)


def test_text_file_named_tif_is_not_a_raster(tmp_path: Path) -> None:
    fake = tmp_path / "fake.tif"
    fake.write_text("this is not an image\n")
    with pytest.raises(NotARasterError) as exc:
        open_scene(fake)
    assert "fake.tif" in _assert_one_line(exc)
    synthetic = write_synthetic_pair(tmp_path)
    with pytest.raises(NotARasterError):
        open_pair(synthetic.before_path, fake)


def test_crs_mismatch_names_both_crs(tmp_path: Path) -> None:
    synthetic = write_synthetic_pair(tmp_path)
    other = write_variant(synthetic.after_path, tmp_path / "other.tif", crs="EPSG:32634")
    with pytest.raises(GridMismatchError) as exc:
        open_pair(synthetic.before_path, other)
    message = _assert_one_line(exc)
    assert "EPSG:32633 vs EPSG:32634" in message and "other.tif" in message


def test_pixel_size_mismatch_names_pixel_sizes(tmp_path: Path) -> None:
    synthetic = write_synthetic_pair(tmp_path)
    other = write_variant(synthetic.after_path, tmp_path / "other.tif", pixel_scale=1.05)
    with pytest.raises(GridMismatchError, match=r"pixel size 10 x 10 vs 10\.5 x 10\.5"):
        open_pair(synthetic.before_path, other)


def test_disjoint_extents_fail_even_with_align(tmp_path: Path) -> None:
    synthetic = write_synthetic_pair(tmp_path)
    far = write_variant(synthetic.after_path, tmp_path / "far.tif", shift_px=(10_000, 0))
    with pytest.raises(GridMismatchError, match="overlap") as exc:
        open_pair(synthetic.before_path, far, align=True)
    _assert_one_line(exc)


def test_georeferenced_vs_not_is_a_grid_mismatch(tmp_path: Path) -> None:
    synthetic = write_synthetic_pair(tmp_path)
    bare = write_variant(synthetic.after_path, tmp_path / "bare.tif", crs=None)
    with pytest.raises(GridMismatchError, match="only one is georeferenced"):
        open_pair(synthetic.before_path, bare, align=True)


def test_different_band_sets_name_the_missing_ids(tmp_path: Path) -> None:
    synthetic = write_synthetic_pair(tmp_path)
    three = write_variant(synthetic.after_path, tmp_path / "three.tif", bands=[1, 2, 3])
    with pytest.raises(BandMismatchError) as exc:
        open_pair(synthetic.before_path, three)
    message = _assert_one_line(exc)
    assert "missing in after: 4" in message


def test_folder_band_sets_must_match(sample_data: Path, tmp_path: Path) -> None:
    src = sample_data / "oscd_paris" / "imgs_2"
    partial = tmp_path / "partial"
    partial.mkdir()
    for file in src.glob("*.tif"):
        if not file.stem.endswith(("B01", "B10")):
            (partial / file.name).symlink_to(file)
    with pytest.raises(BandMismatchError, match="missing in after: B01, B10"):
        open_pair(sample_data / "oscd_paris" / "imgs_1", partial)


def test_gdal_block_cache_is_capped_unless_the_user_sets_it():
    """GDAL's default block cache (5 % of RAM) made resident memory grow with scene size; the
    reader caps it, and a GDAL_CACHEMAX the user set wins."""
    import os
    import subprocess
    import sys

    # the reader (io.scene: every scene and pair is opened through it) sets the cap on import
    code = "import changedet.io.scene, os; print(os.environ['GDAL_CACHEMAX'])"
    env = {k: v for k, v in os.environ.items() if k != "GDAL_CACHEMAX"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env)
    from changedet.io.scene import GDAL_CACHE_MB

    assert out.stdout.strip() == str(GDAL_CACHE_MB)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**env, "GDAL_CACHEMAX": "300"})
    assert out.stdout.strip() == "300"
