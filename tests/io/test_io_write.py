"""Tests for changedet.io.write / io.vector: outputs on the exact input grid, atomic, validated."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pyogrio
import pytest
import rasterio
from affine import Affine

from changedet.errors import OutputError
from changedet.io import (
    MASK_NODATA,
    UngeoreferencedWarning,
    check_output_path,
    open_pair,
    write_outputs,
    write_vector,
    write_vector_from_rasters,
)
from changedet.testing import write_synthetic_pair
from changedet.types import Grid


def _score_of(pair, chunks_px: int) -> da.Array:
    """A simple lazy score: mean absolute band difference, NaN where invalid."""
    before = pair.before.data.astype(np.float32)
    after = pair.after.data.astype(np.float32)
    score = abs(after - before).mean(axis=0)
    return da.where(pair.valid.data, score, np.nan).rechunk(chunks_px)


def _assert_same_grid(path: Path, reference: Path) -> None:
    with rasterio.open(path) as out, rasterio.open(reference) as ref:
        assert out.crs == ref.crs
        assert out.transform == ref.transform
        assert (out.width, out.height) == (ref.width, ref.height)


@pytest.mark.parametrize("crs", ["EPSG:32633", None])
def test_outputs_have_the_input_grid_and_nodata(tmp_path: Path, crs: str | None) -> None:
    synthetic = write_synthetic_pair(tmp_path, crs=crs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UngeoreferencedWarning)
        pair = open_pair(synthetic.before_path, synthetic.after_path, chunks_px=32)
    score = _score_of(pair, 32)
    mask_path, score_path = tmp_path / "mask.tif", tmp_path / "score.tif"
    written = write_outputs(
        score,
        pair.grid,
        mask_path=mask_path,
        score_path=score_path,
        threshold=300.0,
        tags={"method": "test", "before": str(synthetic.before_path)},
        progress=False,
        block_batch=2,
    )
    assert written == [mask_path.resolve(), score_path.resolve()]
    for path in written:
        _assert_same_grid(path, synthetic.before_path)
    with rasterio.open(mask_path) as ds:
        assert ds.dtypes[0] == "uint8" and ds.nodata == MASK_NODATA
        assert ds.profile["tiled"] and ds.profile["compress"] == "deflate"
        assert ds.tags()["method"] == "test" and float(ds.tags()["threshold"]) == 300.0
        mask = ds.read(1)
    with rasterio.open(score_path) as ds:
        assert ds.dtypes[0] == "float32" and np.isnan(ds.nodata)
        written_score = ds.read(1)
    if crs is None:
        with rasterio.open(mask_path) as ds:
            assert ds.crs is None and ds.transform.is_identity
    assert set(np.unique(mask)) <= {0, 1, MASK_NODATA}
    # nodata of either date -> 255 / NaN, exactly there
    np.testing.assert_array_equal(mask == MASK_NODATA, ~synthetic.valid)
    np.testing.assert_array_equal(np.isnan(written_score), ~synthetic.valid)
    np.testing.assert_allclose(written_score, score.compute(), equal_nan=True)
    np.testing.assert_array_equal(mask[synthetic.valid], written_score[synthetic.valid] > 300.0)
    # the planted change is found by this simple score
    assert mask[synthetic.label == 1].mean() > 0.9
    assert mask[(synthetic.label == 0) & synthetic.valid].mean() < 0.05


def test_each_block_is_computed_once(tmp_path: Path) -> None:
    calls = []

    def count(block: np.ndarray) -> np.ndarray:
        if block.size:  # dask probes with an empty block to infer the output meta
            calls.append(block.shape)
        return block

    score = da.random.default_rng(0).random((70, 50), chunks=32).astype(np.float32)
    counted = score.map_blocks(count, dtype=np.float32)
    synthetic = write_synthetic_pair(tmp_path, shape=(70, 50))
    pair = open_pair(synthetic.before_path, synthetic.after_path)
    write_outputs(
        counted, pair.grid, mask_path=tmp_path / "m.tif", score_path=tmp_path / "s.tif",
        threshold=0.5, progress=False, block_batch=3,
    )  # fmt: skip
    assert len(calls) == 3 * 2  # 3 x 2 blocks, each once for both outputs


def test_failing_block_leaves_no_output_and_no_temp_file(tmp_path: Path) -> None:
    synthetic = write_synthetic_pair(tmp_path)
    pair = open_pair(synthetic.before_path, synthetic.after_path)
    out = tmp_path / "out"
    out.mkdir()

    def explode(block: np.ndarray, block_info=None) -> np.ndarray:
        if block_info[0]["chunk-location"] == (1, 1):
            raise RuntimeError("disk on fire")
        return block

    score = _score_of(pair, 16).map_blocks(explode, dtype=np.float32)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_outputs(
            score, pair.grid, mask_path=out / "mask.tif", score_path=out / "score.tif",
            threshold=1.0, progress=False, block_batch=1,
        )  # fmt: skip
    assert list(out.iterdir()) == []


def test_interrupt_leaves_no_temp_file(tmp_path: Path) -> None:
    synthetic = write_synthetic_pair(tmp_path)
    pair = open_pair(synthetic.before_path, synthetic.after_path)
    out = tmp_path / "out"
    out.mkdir()

    def interrupt(block: np.ndarray, block_info=None) -> np.ndarray:
        if block_info[0]["chunk-location"] == (1, 0):
            raise KeyboardInterrupt
        return block

    score = _score_of(pair, 16).map_blocks(interrupt, dtype=np.float32)
    with dask.config.set(scheduler="synchronous"), pytest.raises(KeyboardInterrupt):
        write_outputs(score, pair.grid, mask_path=out / "m.tif", threshold=1.0, progress=False,
                      block_batch=1)  # fmt: skip
    assert list(out.iterdir()) == []


def test_existing_output_is_refused_and_left_untouched(tmp_path: Path) -> None:
    synthetic = write_synthetic_pair(tmp_path)
    pair = open_pair(synthetic.before_path, synthetic.after_path)
    mask_path = tmp_path / "mask.tif"
    mask_path.write_bytes(b"old result")
    with pytest.raises(OutputError, match="exists; pass overwrite=True") as exc:
        write_outputs(_score_of(pair, 32), pair.grid, mask_path=mask_path, threshold=1.0,
                      progress=False)  # fmt: skip
    assert "\n" not in str(exc.value)
    assert mask_path.read_bytes() == b"old result"
    write_outputs(_score_of(pair, 32), pair.grid, mask_path=mask_path, threshold=1.0,
                  overwrite=True, progress=False)  # fmt: skip
    with rasterio.open(mask_path) as ds:
        assert ds.shape == (45, 61)


def _deny_writes_to(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``os.access`` reports ``folder`` as not writable, whoever runs the tests: root (as in
    CI) ignores permission bits, so a chmod alone would test nothing there."""
    real_access = os.access

    def access(path, mode, *args, **kwargs):
        if Path(path).resolve() == folder.resolve() and mode & os.W_OK:
            return False
        return real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)


def test_check_output_path_rules(tmp_path: Path, sample_data: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    synthetic = write_synthetic_pair(tmp_path)
    inputs = (synthetic.before_path, sample_data / "oscd_paris" / "imgs_1")
    assert check_output_path(tmp_path / "new.tif", inputs=inputs) == (tmp_path / "new.tif")
    with pytest.raises(OutputError, match="input"):
        check_output_path(synthetic.before_path, inputs=inputs, overwrite=True)
    with pytest.raises(OutputError, match="input"):
        check_output_path(sample_data / "oscd_paris" / "imgs_1" / "x.tif", inputs=inputs)
    with pytest.raises(OutputError, match="does not exist"):
        check_output_path(tmp_path / "missing" / "x.tif")
    with pytest.raises(OutputError, match="is a folder"):
        check_output_path(tmp_path, overwrite=True)
    read_only = tmp_path / "ro"
    read_only.mkdir()
    assert check_output_path(read_only / "x.tif") == read_only / "x.tif"
    _deny_writes_to(read_only, monkeypatch)
    with pytest.raises(OutputError, match="folder .*ro is not writable") as exc:
        check_output_path(read_only / "x.tif")
    assert "choose another folder" in str(exc.value)
    assert check_output_path(tmp_path / "x.tif") == tmp_path / "x.tif"  # only that folder


# -------------------------------------------------------------------------------- vectors


def _two_regions() -> tuple[np.ndarray, np.ndarray]:
    mask = np.zeros((20, 30), dtype=np.uint8)
    mask[2:6, 3:8] = 1  # 20 px
    mask[10:13, 20:29] = 1  # 27 px
    mask[0, :] = MASK_NODATA
    score = np.where(mask == 1, 0.8, 0.1).astype(np.float32)
    score[10:13, 20:29] = 0.6
    score[0, :] = np.nan
    return mask, score


@pytest.mark.parametrize("suffix", [".gpkg", ".geojson"])
def test_vector_polygons_projected_crs(tmp_path: Path, suffix: str) -> None:
    synthetic = write_synthetic_pair(tmp_path, shape=(20, 30))
    pair = open_pair(synthetic.before_path, synthetic.after_path)
    mask, score = _two_regions()
    path = write_vector(tmp_path / f"change{suffix}", mask, score, pair.grid)
    info = pyogrio.read_info(path)
    assert info["features"] == 2 and info["geometry_type"] == "Polygon"
    assert "32633" in info["crs"]
    _, _, geometry, fields = pyogrio.raw.read(path)
    columns = dict(zip(info["fields"], fields, strict=True))
    order = np.argsort(columns["area_px"])
    np.testing.assert_array_equal(columns["area_px"][order], [20, 27])
    np.testing.assert_allclose(columns["area_m2"][order], [20 * 100.0, 27 * 100.0])
    np.testing.assert_allclose(columns["mean_score"][order], [0.8, 0.6], rtol=1e-6)
    assert not list(tmp_path.glob(".*partial*"))


def test_vector_geographic_and_no_crs(tmp_path: Path, sample_data: Path) -> None:
    root = sample_data / "oscd_paris"
    pair = open_pair(root / "imgs_1", root / "imgs_2")
    mask = np.zeros(pair.grid.shape, dtype=np.uint8)
    mask[100:110, 200:210] = 1
    score = mask.astype(np.float32)
    path = write_vector(tmp_path / "paris.geojson", mask, score, pair.grid)
    doc = json.loads(path.read_text())
    (feature,) = doc["features"]
    # 100 Sentinel-2 pixels of ~8.5 m x 12.9 m (0.0001164 deg at 48.8 N)
    assert 9_000 < feature["properties"]["area_m2"] < 13_000
    grid = Grid(20, 30, Affine.identity(), None)
    m, s = _two_regions()
    path = write_vector(tmp_path / "px.gpkg", m, s, grid)
    _, _, _, fields = pyogrio.raw.read(path)
    assert sorted(fields[0].tolist()) == [20.0, 27.0]
    with pytest.raises(OutputError, match="exists"):
        write_vector(tmp_path / "px.gpkg", m, s, grid)
    with pytest.raises(OutputError, match="unknown vector format"):
        write_vector(tmp_path / "px.shp", m, s, grid)


def test_vector_from_written_rasters(tmp_path: Path) -> None:
    synthetic = write_synthetic_pair(tmp_path)
    pair = open_pair(synthetic.before_path, synthetic.after_path, chunks_px=32)
    mask_path, score_path = tmp_path / "mask.tif", tmp_path / "score.tif"
    write_outputs(_score_of(pair, 32), pair.grid, mask_path=mask_path, score_path=score_path,
                  threshold=300.0, progress=False)  # fmt: skip
    path = write_vector_from_rasters(
        tmp_path / "change.gpkg", mask_path=mask_path, score_path=score_path
    )
    info = pyogrio.read_info(path)
    assert info["features"] >= 1 and "32633" in info["crs"]
    _, _, _, fields = pyogrio.raw.read(path)
    columns = dict(zip(info["fields"], fields, strict=True))
    biggest = int(np.argmax(columns["area_px"]))
    # the planted box (15 x 21 px at 10 m) is the largest region
    assert abs(columns["area_px"][biggest] - synthetic.label.sum()) < 0.1 * synthetic.label.sum()
    np.testing.assert_allclose(columns["area_m2"][biggest], columns["area_px"][biggest] * 100.0)
    assert columns["mean_score"][biggest] > 300.0
    with pytest.raises(OutputError, match="input"):
        write_vector_from_rasters(mask_path, mask_path=mask_path, overwrite=True)


def test_png_mask_sidecars_are_checked_written_and_replaced(tmp_path: Path) -> None:
    (tmp_path / "geo").mkdir()
    georeferenced = write_synthetic_pair(tmp_path / "geo")
    pair = open_pair(georeferenced.before_path, georeferenced.after_path)
    out = tmp_path / "change.png"
    write_outputs(_score_of(pair, 32), pair.grid, mask_path=out, threshold=300.0,
                  progress=False)  # fmt: skip
    world, aux = tmp_path / "change.wld", tmp_path / "change.png.aux.xml"
    assert world.is_file() and aux.is_file()
    out.unlink()
    aux.unlink()  # a leftover world file alone still blocks a new output...
    with pytest.raises(OutputError, match=r"change\.wld exists"):
        write_outputs(_score_of(pair, 32), pair.grid, mask_path=out, threshold=300.0,
                      progress=False)  # fmt: skip
    # ...and an ungeoreferenced mask written over it with overwrite drops the stale world file
    grid = Grid(pair.grid.height, pair.grid.width, Affine.identity(), None)
    write_outputs(_score_of(pair, 32), grid, mask_path=out, threshold=300.0, overwrite=True,
                  progress=False)  # fmt: skip
    assert not world.exists()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(out) as src:
            assert src.driver == "PNG" and src.crs is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["change.png", "change.png.aux.xml", "geo"]
