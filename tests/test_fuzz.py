"""Property-based tests (hypothesis): random rasters, random bytes and random grids.

Bounded ``max_examples`` keep the file well under a minute on two cores. Each example writes
real GeoTIFFs into its own temporary folder (hypothesis cannot reuse function-scoped fixtures).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rasterio.warp import transform as warp_transform

from changedet import io, pipeline
from changedet.errors import ChangedetError, EmptySceneError, GridMismatchError
from changedet.testing import write_synthetic_pair


def fuzz(max_examples: int) -> settings:
    """Bounded, deadline-free settings; no example database written into the repo."""
    return settings(max_examples=max_examples, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])

UTM = "EPSG:32633"
ORIGIN = (500_000.0, 5_000_000.0)
PIXEL_M = 10.0

DTYPES = ("uint8", "uint16", "int16", "float32")


def _write(path: Path, data: np.ndarray, *, nodata=None, crs=UTM, transform=None) -> Path:
    transform = transform or Affine(PIXEL_M, 0, ORIGIN[0], 0, -PIXEL_M, ORIGIN[1])
    with rasterio.open(path, "w", driver="GTiff", height=data.shape[1], width=data.shape[2],
                       count=data.shape[0], dtype=data.dtype.name, crs=crs, transform=transform,
                       nodata=nodata) as dst:
        dst.write(data)
    return path


# --------------------------------------------------------------------------- random rasters


@st.composite
def dates(draw, shape: tuple[int, int], num_bands: int):
    """One date: ``(data (band, h, w), nodata)`` with random nodata pixels (and NaN/inf)."""
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    is_float = dtype == "float32"
    if is_float:
        data = rng.normal(0, draw(st.sampled_from([1e-3, 1.0, 1e4])), (num_bands, *shape))
        nodata = draw(st.sampled_from([None, np.nan, -9999.0, 0.0]))
    else:
        info = np.iinfo(dtype)
        low = draw(st.integers(int(info.min), int(info.max) - 1))
        high = draw(st.integers(low + 1, int(info.max)))
        data = rng.integers(low, high, (num_bands, *shape), endpoint=True)
        nodata = draw(st.sampled_from([None, int(info.min), int(info.max), low]))
    data = data.astype(dtype)
    fraction = draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]))
    holes = rng.random(shape) < fraction
    band = rng.integers(0, num_bands, shape)  # nodata in one band is enough to be invalid
    if nodata is not None:
        data[(band[holes], *np.nonzero(holes))] = nodata
    if is_float and draw(st.booleans()):  # NaN and +-inf without a declared nodata too
        specials = rng.random(shape) < 0.1
        data[(band[specials], *np.nonzero(specials))] = rng.choice([np.nan, np.inf, -np.inf],
                                                                   specials.sum())
    return data, nodata


def _invalid(data: np.ndarray, nodata) -> np.ndarray:
    bad = ~np.isfinite(data).all(axis=0) if data.dtype.kind == "f" else np.zeros(data.shape[1:],
                                                                                   bool)
    if nodata is not None and not np.isnan(nodata):
        bad |= (data == np.asarray(nodata).astype(data.dtype)).any(axis=0)
    return bad


@st.composite
def raster_pairs(draw):
    shape = (draw(st.integers(1, 80)), draw(st.integers(1, 80)))
    num_bands = draw(st.integers(1, 3))
    return draw(dates(shape, num_bands)), draw(dates(shape, num_bands))


@fuzz(30)
@given(pair=raster_pairs(), block_px=st.sampled_from([16, 32, 1024]))
def test_cva_mask_is_on_the_input_grid_with_nodata_exactly_where_invalid(pair, block_px):
    (before, before_nodata), (after, after_nodata) = pair
    invalid = _invalid(before, before_nodata) | _invalid(after, after_nodata)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        b = _write(folder / "before.tif", before, nodata=before_nodata)
        a = _write(folder / "after.tif", after, nodata=after_nodata)
        mask_path, score_path = folder / "change.tif", folder / "score.tif"
        if invalid.all():
            with pytest.raises(EmptySceneError):
                pipeline.run(b, a, mask_path, score_path=score_path, method="cva",
                             block_px=block_px, progress=False)
            assert sorted(p.name for p in folder.iterdir()) == ["after.tif", "before.tif"]
            return
        pipeline.run(b, a, mask_path, score_path=score_path, method="cva", block_px=block_px,
                     progress=False)
        with rasterio.open(mask_path) as m, rasterio.open(score_path) as s, rasterio.open(b) as r:
            assert (m.height, m.width, m.transform, m.crs) == (r.height, r.width, r.transform,
                                                               r.crs)
            assert (s.height, s.width, s.transform) == (r.height, r.width, r.transform)
            mask, score = m.read(1), s.read(1)
    np.testing.assert_array_equal(mask == 255, invalid)
    assert set(np.unique(mask[~invalid])) <= {0, 1}
    np.testing.assert_array_equal(np.isnan(score), invalid)


# --------------------------------------------------------------------------- random bytes

MAGICS = [b"", b"II*\x00", b"MM\x00*", b"II+\x00\x08\x00\x00\x00", b"\x89PNG\r\n\x1a\n", b"BM"]


@pytest.fixture(scope="module")
def good_scene(tmp_path_factory) -> Path:
    return write_synthetic_pair(tmp_path_factory.mktemp("good"), shape=(20, 24)).before_path


@fuzz(40)
@given(magic=st.sampled_from(MAGICS), body=st.binary(max_size=600),
       suffix=st.sampled_from([".tif", ".png", ".bmp", ".img"]))
def test_random_bytes_as_a_raster_raise_a_changedet_error(good_scene, magic, body, suffix):
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        bad = folder / f"random{suffix}"
        bad.write_bytes(magic + body)
        with pytest.raises(ChangedetError):
            pipeline.run(good_scene, bad, folder / "change.tif", method="cva", progress=False)
        with pytest.raises(ChangedetError):
            io.open_scene(bad).compute()
        assert sorted(p.name for p in folder.iterdir()) == [bad.name]


@pytest.fixture(scope="module")
def tiled_scene(tmp_path_factory) -> tuple[Path, bytes]:
    folder = tmp_path_factory.mktemp("tiled")
    data = np.random.default_rng(0).integers(1, 4000, (2, 64, 64), dtype=np.uint16)
    path = _write(folder / "before.tif", data)
    with rasterio.open(path) as src:
        profile = src.profile
    profile.update(tiled=True, blockxsize=16, blockysize=16, compress="deflate")
    with rasterio.open(folder / "tiled.tif", "w", **profile) as dst:
        dst.write(data[::-1])
    return path, (folder / "tiled.tif").read_bytes()


@fuzz(30)
@given(data=st.data())
def test_damaged_geotiff_either_works_or_raises_a_changedet_error(tiled_scene, data):
    before, original = tiled_scene
    damaged = bytearray(original)
    for _ in range(data.draw(st.integers(1, 8), label="num_damages")):
        start = data.draw(st.integers(0, len(damaged) - 1), label="offset")
        length = data.draw(st.integers(1, 64), label="length")
        damaged[start : start + length] = data.draw(st.binary(min_size=length, max_size=length))
    if data.draw(st.booleans(), label="truncate"):
        damaged = damaged[: data.draw(st.integers(0, len(damaged)), label="keep")]
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        bad = folder / "damaged.tif"
        bad.write_bytes(bytes(damaged))
        out = folder / "change.tif"
        try:
            pipeline.run(before, bad, out, method="cva", progress=False)
        except ChangedetError:
            assert not out.exists()
        else:
            with rasterio.open(out) as m:
                assert (m.height, m.width) == (64, 64)
        assert not list(folder.glob("*partial*"))


# --------------------------------------------------------------------------- random grids

CRSES = [UTM, "EPSG:32634", "EPSG:3857", "EPSG:4326"]
#: Approximate metres per unit at the synthetic scene (to keep pixel sizes near 10 m).
_UNIT_M = {UTM: 1.0, "EPSG:32634": 1.0, "EPSG:3857": 1.0, "EPSG:4326": 111_000.0}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return write_synthetic_pair(tmp_path_factory.mktemp("ref"), shape=(45, 61), num_bands=2)


@fuzz(40)
@given(crs=st.sampled_from(CRSES),
       scale=st.one_of(st.just(1.0), st.floats(0.3, 3.0)),
       shift=st.one_of(st.just((0.0, 0.0)),
                       st.tuples(st.integers(-80, 80), st.integers(-80, 80)).map(
                           lambda t: (float(t[0]), float(t[1]))),
                       st.tuples(st.floats(-80, 80), st.floats(-80, 80))),
       size=st.one_of(st.just((45, 61)), st.tuples(st.integers(1, 90), st.integers(1, 90))),
       align=st.booleans())
def test_any_grid_either_opens_on_the_before_grid_or_is_a_grid_mismatch(
        reference, crs, scale, shift, size, align):
    with rasterio.open(reference.after_path) as src:
        data = src.read()[:, : size[0], : size[1]]
        nodata = src.nodata
    if data.shape[1:] != size:  # larger than the source: tile it
        reps = (1, -(-size[0] // data.shape[1]), -(-size[1] // data.shape[2]))
        data = np.tile(data, reps)[:, : size[0], : size[1]]
    (x0,), (y0,) = warp_transform(UTM, crs, [ORIGIN[0]], [ORIGIN[1]])
    pixel = PIXEL_M * scale / _UNIT_M[crs]
    x0, y0 = x0 + shift[0] * pixel, y0 - shift[1] * pixel
    transform = Affine(pixel, 0, x0, 0, -pixel, y0)
    same_grid = crs == UTM and scale == 1.0 and shift == (0.0, 0.0) and size == (45, 61)
    clearly_other = (crs != UTM or size != (45, 61) or abs(scale - 1.0) > 1e-3
                     or max(abs(shift[0]), abs(shift[1])) > 1e-3)
    with tempfile.TemporaryDirectory() as folder:
        after = _write(Path(folder) / "after.tif", data, nodata=nodata, crs=crs,
                       transform=transform)
        try:
            pair = io.open_pair(reference.before_path, after, align=align)
        except GridMismatchError:
            assert not same_grid
            return
        assert not (clearly_other and not align), "a different grid opened without align"
        assert pair.grid == io.scene_grid(io.open_scene(reference.before_path))
        assert pair.after.shape == pair.before.shape
        if same_grid or not align:
            assert not pair.is_aligned
        if not pair.is_aligned:  # only within the 1e-6 px tolerance of the same grid
            assert not clearly_other
        else:
            assert not same_grid
        valid = pair.valid.values  # computing the (resampled) pair works
        assert valid.shape == (45, 61)
        if same_grid:
            np.testing.assert_array_equal(valid, reference.valid)
