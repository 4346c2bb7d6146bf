"""Areas on the ground, in m²: the one home of pixel and polygon areas, so a quicklook's hectares
and a vector file's ``area_m2`` come from the same geodesy.

Projected CRS: the planar area times the CRS's linear unit squared. Geographic CRS: the geodesic
area on the CRS's own ellipsoid (``pyproj.Geod``), of each polygon or of one pixel per row (all
pixels of a row of a north-up grid have the same area). No CRS: None (callers fall back to
pixel counts).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from rasterio.crs import CRS

from changedet.types import Grid

__all__ = ["M2_PER_HECTARE", "polygon_areas_m2", "row_pixel_areas_m2"]

M2_PER_HECTARE = 10_000.0


def _crs(crs: Any) -> CRS | None:
    return None if crs is None else CRS.from_user_input(crs)


def _geod(crs: CRS) -> Any:
    import pyproj

    geod = pyproj.CRS.from_wkt(crs.to_wkt()).get_geod()
    assert geod is not None  # noqa: S101  (a geographic CRS has an ellipsoid)
    return geod


def _unit_m2(crs: CRS) -> float:
    factor = crs.linear_units_factor[1] if crs.linear_units_factor else 1.0
    return factor * factor


def row_pixel_areas_m2(grid: Grid, crs: Any, rows: np.ndarray) -> np.ndarray | None:
    """Area in m² of one pixel in each of ``rows`` (full-resolution row indices), or None
    without a CRS. Geographic grids: the geodesic area of the pixel at the row's middle column
    (exact for north-up grids, whose rows have equal pixels)."""
    crs = _crs(crs)
    if crs is None:
        return None
    t = grid.transform
    det = abs(t.a * t.e - t.b * t.d)
    if not crs.is_geographic:
        return np.full(np.shape(rows), det * _unit_m2(crs), dtype=np.float64)
    geod = _geod(crs)
    col = grid.width // 2
    out = np.empty(np.shape(rows), dtype=np.float64)
    for i, row in enumerate(np.asarray(rows, dtype=np.float64)):
        corners = [t * (col, row), t * (col + 1, row), t * (col + 1, row + 1), t * (col, row + 1)]
        area, _ = geod.polygon_area_perimeter([c[0] for c in corners], [c[1] for c in corners])
        out[i] = abs(area)
    return out


def polygon_areas_m2(geometries: list, grid: Grid, pixel_counts: np.ndarray) -> np.ndarray:
    """Area of each (shapely) polygon in m², in the grid's CRS; the pixel counts without one."""
    crs = _crs(grid.crs)
    if crs is None:
        return np.asarray(pixel_counts, dtype=np.float64)
    if crs.is_geographic:
        geod = _geod(crs)
        return np.array([abs(geod.geometry_area_perimeter(g)[0]) for g in geometries])
    return np.array([g.area for g in geometries]) * _unit_m2(crs)
