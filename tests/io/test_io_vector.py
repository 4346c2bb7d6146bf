"""Tests for changedet.io.vector: where the polygons land, and their exact fields.

Known masks on known grids, read back from the written files: every vertex must be a pixel
corner of the grid, in the grid's CRS, and ``mean_score`` the exact mean of a region's finite
scores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyogrio
import pyogrio.raw
import pytest
import rasterio
import shapely
from affine import Affine
from rasterio.crs import CRS

from changedet.io import MASK_NODATA, write_vector, write_vector_from_rasters
from changedet.types import Grid

#: A UTM grid with a non-round origin and non-square pixels (10 m wide, 20 m high).
ORIGIN_X, ORIGIN_Y = 500_005.0, 5_000_015.0
UTM = Grid(12, 16, Affine(10.0, 0.0, ORIGIN_X, 0.0, -20.0, ORIGIN_Y), "EPSG:32633")


def _corner(grid: Grid, row: float, col: float) -> tuple[float, float]:
    """CRS ``(x, y)`` of the top-left corner of pixel ``(row, col)``."""
    return grid.transform * (col, row)


def _known_mask() -> np.ndarray:
    """A 2x3 block, an L and a ring (3x3 with its centre unchanged), apart from each other."""
    mask = np.zeros((12, 16), np.uint8)
    mask[1:3, 2:5] = 1  # block: rows 1-2, cols 2-4
    mask[6:10, 1] = 1  # L: a column of 4 ...
    mask[9, 1:4] = 1  # ... and a foot of 3 (one shared pixel): 6 px
    mask[5:8, 10:13] = 1  # ring: 8 px around the unchanged (6, 11)
    mask[6, 11] = 0
    mask[0, :] = MASK_NODATA  # nodata is never a polygon, even next to one
    return mask


def _read(path: Path) -> tuple[list, dict[str, np.ndarray], dict]:
    info = pyogrio.read_info(path)
    _, _, wkb, fields = pyogrio.raw.read(path)
    return list(shapely.from_wkb(wkb)), dict(zip(info["fields"], fields, strict=True)), info


#: A pixel inside each region of :func:`_known_mask`: block, L, ring.
REGION_PIXELS = ((1, 2), (9, 3), (5, 10))


def _regions(geoms: list, columns: dict[str, np.ndarray], grid: Grid = UTM
             ) -> tuple[list, dict[str, np.ndarray]]:
    """Polygons and their fields in the order of :data:`REGION_PIXELS` (file order is GDAL's)."""
    assert len(geoms) == len(REGION_PIXELS)
    order = []
    for row, col in REGION_PIXELS:
        centre = shapely.Point(grid.transform * (col + 0.5, row + 0.5))
        (index,) = [i for i, g in enumerate(geoms) if g.contains(centre)]
        order.append(index)
    return [geoms[i] for i in order], {k: v[order] for k, v in columns.items()}


@pytest.mark.parametrize("suffix", [".gpkg", ".geojson"])
def test_polygons_lie_on_the_pixel_edges_in_the_crs(tmp_path: Path, suffix: str) -> None:
    mask = _known_mask()
    geoms, columns, info = _read(write_vector(
        tmp_path / f"change{suffix}", mask, mask.astype(np.float32), UTM))
    assert CRS.from_user_input(info["crs"]) == CRS.from_epsg(32633)
    (block, l_shape, ring), columns = _regions(geoms, columns)
    # block: pixel rows 1-2, cols 2-4 -> x from col 2 to col 5, y from row 3 (bottom) to row 1
    (x0, y1), (x1, y0) = _corner(UTM, 1, 2), _corner(UTM, 3, 5)
    assert block.bounds == (x0, y0, x1, y1) == (500_025.0, 4_999_955.0, 500_055.0, 4_999_995.0)
    assert block.equals(shapely.box(x0, y0, x1, y1))
    # L: the union of its two pixel rectangles, exactly (no simplification, no offset)
    expected_l = shapely.union(
        shapely.box(*_corner(UTM, 10, 1), *_corner(UTM, 6, 2)),
        shapely.box(*_corner(UTM, 10, 1), *_corner(UTM, 9, 4)),
    )
    assert l_shape.equals(expected_l) and l_shape.area == 6 * 10.0 * 20.0
    # ring: outer 3x3 box with the centre pixel as a hole (an interior ring, not a gap)
    outer = shapely.box(*_corner(UTM, 8, 10), *_corner(UTM, 5, 13))
    hole = shapely.box(*_corner(UTM, 7, 11), *_corner(UTM, 6, 12))
    assert len(ring.interiors) == 1
    assert ring.equals(outer.difference(hole)) and ring.area == 8 * 200.0
    np.testing.assert_array_equal(columns["area_px"], [6, 6, 8])
    np.testing.assert_allclose(columns["area_m2"], [1200.0, 1200.0, 1600.0])
    # every vertex is a pixel corner: integer pixel coordinates under the inverse transform
    for geom in (block, l_shape, ring):
        coords = shapely.get_coordinates(geom)
        cols, rows = (~UTM.transform) * (coords[:, 0], coords[:, 1])
        np.testing.assert_array_equal(cols, np.round(cols))
        np.testing.assert_array_equal(rows, np.round(rows))


def test_ungeoreferenced_polygons_are_in_pixel_coordinates(tmp_path: Path) -> None:
    mask = _known_mask()
    grid = Grid(12, 16, Affine.identity(), None)
    geoms, columns, info = _read(write_vector(tmp_path / "px.gpkg", mask,
                                              mask.astype(np.float32), grid))
    assert info["crs"] is None
    (block, _, _), _ = _regions(geoms, columns, grid)
    assert block.bounds == (2.0, 1.0, 5.0, 3.0)  # (col0, row0, col1, row1), rows down


def test_polygon_bounds_from_written_rasters_match_the_geotiff_grid(tmp_path: Path) -> None:
    """Through the GeoTIFF round trip ``run`` uses: the mask raster's own transform places
    the polygons."""
    mask = _known_mask()
    mask_path = tmp_path / "mask.tif"
    with rasterio.open(mask_path, "w", driver="GTiff", height=12, width=16, count=1,
                       dtype="uint8", crs="EPSG:32633", transform=UTM.transform,
                       nodata=MASK_NODATA) as dst:
        dst.write(mask, 1)
    geoms, columns, _ = _read(write_vector_from_rasters(tmp_path / "c.gpkg",
                                                        mask_path=mask_path))
    (block, _, _), _ = _regions(geoms, columns)
    assert block.bounds == (500_025.0, 4_999_955.0, 500_055.0, 4_999_995.0)


# -------------------------------------------------------------------------------- mean_score


def test_mean_score_is_the_exact_mean_of_each_regions_finite_scores(tmp_path: Path) -> None:
    mask = _known_mask()
    rng = np.random.default_rng(0)
    score = rng.uniform(0.5, 1.0, mask.shape).astype(np.float32)
    score[mask != 1] = rng.uniform(0.0, 0.4, int(np.sum(mask != 1)))  # outside: ignored
    score[2, 4] = np.nan  # a NaN inside the block: left out of its mean, not 0, not NaN
    score[9, 3] = 1e3  # an outlier in the L: in its mean, unclipped
    ring_rows, ring_cols = np.nonzero(mask[5:8, 10:13] == 1)
    score[5 + ring_rows, 10 + ring_cols] = np.nan  # the ring: no finite score at all
    geoms, columns, _ = _read(write_vector(tmp_path / "c.gpkg", mask, score, UTM))
    _, columns = _regions(geoms, columns)
    block_px = score[1:3, 2:5].astype(np.float64)
    l_px = np.concatenate([score[6:10, 1], score[9, 2:4]]).astype(np.float64)
    expected_block = np.nanmean(block_px)
    assert np.isnan(block_px).sum() == 1 and expected_block != np.mean(np.nan_to_num(block_px))
    np.testing.assert_allclose(columns["mean_score"][:2], [expected_block, l_px.mean()],
                               rtol=1e-12)
    assert np.isnan(columns["mean_score"][2])  # the all-NaN ring: null, not 0
    # and from rasters, with the score GeoTIFF's NaN nodata
    paths = {}
    for name, data, dtype, nodata in (("mask", mask, "uint8", MASK_NODATA),
                                      ("score", score, "float32", np.nan)):
        paths[name] = tmp_path / f"{name}.tif"
        with rasterio.open(paths[name], "w", driver="GTiff", height=12, width=16, count=1,
                           dtype=dtype, crs="EPSG:32633", transform=UTM.transform,
                           nodata=nodata) as dst:
            dst.write(data, 1)
    geoms, from_rasters, _ = _read(write_vector_from_rasters(
        tmp_path / "r.gpkg", mask_path=paths["mask"], score_path=paths["score"]))
    _, from_rasters = _regions(geoms, from_rasters)
    np.testing.assert_array_equal(from_rasters["mean_score"], columns["mean_score"])


def test_vector_area_and_quicklook_hectares_agree_on_a_geographic_grid(tmp_path):
    """One geodesy (changedet.io.area): the polygons' area_m2 summed equals the quicklook's
    hectares for the same mask, on a geographic grid at 60 N where planar degrees would be far
    off."""
    import rioxarray  # noqa: F401  (registers .rio)
    import xarray as xr

    from changedet import viz
    from changedet.io import write_vector
    from changedet.types import Grid

    transform = Affine(1e-4, 0, 10.0, 0, -1e-4, 60.0)
    mask = np.zeros((40, 50), np.uint8)
    mask[5:15, 10:30] = 1
    mask[20:38, 2:9] = 1
    grid = Grid(40, 50, transform, "EPSG:4326")
    path = write_vector(tmp_path / "v.gpkg", mask, None, grid)
    meta, _, _, fields = pyogrio.raw.read(path)
    total_m2 = float(np.sum(fields[list(meta["fields"]).index("area_m2")]))
    arr = xr.DataArray(mask, dims=("y", "x")).rio.write_crs("EPSG:4326").rio.write_transform(
        transform)
    changed_px, area_ha = viz.changed_area(arr)
    assert changed_px == int(mask.sum())
    assert area_ha * 1e4 == pytest.approx(total_m2, rel=1e-6)
    assert 30 < total_m2 / changed_px < 80  # ~5.6 m x 11.1 m pixels at 60 N
