"""Labelled points (or small polygons) read onto a scene's pixel grid, for ``run --calibrate``.

A vector file (GeoPackage, GeoJSON, Shapefile, anything OGR reads) whose features carry an
integer property (``change`` by default) that is 1 for changed and 0 for unchanged ground, in
any CRS: the geometries are reprojected to the scene's CRS; a point labels the pixel it falls
in, a polygon every pixel whose centre it contains (at least the pixel of its representative
point). Read with ``pyogrio.raw`` and ``shapely`` (the ``vector`` extra). Must not import jax.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
from rasterio import features, warp
from rasterio.crs import CRS
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from changedet.errors import CalibrationError, InputNotFoundError
from changedet.types import Grid

logger = logging.getLogger(__name__)

__all__ = ["LabelledPixels", "read_points"]


@dataclasses.dataclass(frozen=True)
class LabelledPixels:
    """Pixels of a scene labelled by the user.

    Attributes:
      rows, cols: Pixel indices on the scene's grid (int64), one entry per labelled pixel.
      labels: 1 changed, 0 unchanged (uint8), per pixel.
      feature: Index of the vector feature each pixel came from (for messages).
      num_features: Features read.
    """

    rows: np.ndarray
    cols: np.ndarray
    labels: np.ndarray
    feature: np.ndarray
    num_features: int


def _label(value: object, index: int, prop: str, path: str) -> int:
    if isinstance(value, (int, np.integer)) and int(value) in (0, 1):
        return int(value)
    if isinstance(value, (float, np.floating)) and float(value) in (0.0, 1.0):
        return int(value)
    if isinstance(value, str) and value.strip() in ("0", "1"):
        return int(value.strip())
    shown = value.item() if isinstance(value, np.generic) else value
    raise CalibrationError(
        f"{path}: feature {index} has {prop}={shown!r}; every feature needs {prop} = 1 "
        "(changed) or 0 (unchanged).")


def read_points(path: Any, grid: Grid, *, prop: str = "change") -> LabelledPixels:
    """The pixels of ``grid`` labelled by the features of the vector file ``path`` (or of a
    GeoDataFrame: anything with ``geometry``, ``crs`` and a ``prop`` column).

    Raises:
      InputNotFoundError: No such file.
      CalibrationError: Unreadable file, no features, no ``prop`` field, a label other than
        0/1, an empty or unsupported geometry, or a feature outside the scene (the message
        names the first bad feature).
    """
    import shapely

    if hasattr(path, "geometry") and hasattr(path, "crs"):  # a GeoDataFrame
        if prop not in path.columns:
            raise CalibrationError(
                f"the calibration frame has no {prop!r} column (it has "
                f"{', '.join(map(str, path.columns))}); label each feature 1 (changed) or 0 "
                "(unchanged), or name the column to use.")
        crs = None if path.crs is None else path.crs.to_wkt()
        return _pixels(np.asarray(path.geometry.values, dtype=object),
                       path[prop].to_numpy(), crs, grid, prop, "the calibration frame")
    import pyogrio

    path = Path(path)
    if not path.exists():
        raise InputNotFoundError(f"{path}: no such calibration file; pass a GeoPackage or "
                                 "GeoJSON of labelled points.")
    try:
        meta, _, wkb, field_data = pyogrio.raw.read(path)
    except Exception as err:  # pyogrio raises its own DataSourceError family
        raise CalibrationError(f"{path}: not a readable vector file ({err}).") from err
    names = list(meta["fields"])
    if prop not in names:
        raise CalibrationError(
            f"{path}: no {prop!r} property (it has {', '.join(names) or 'none'}); label each "
            "feature 1 (changed) or 0 (unchanged), or name the property to use.")
    if wkb is None or len(wkb) == 0:
        raise CalibrationError(f"{path}: no features to calibrate with.")
    return _pixels(shapely.from_wkb(wkb), field_data[names.index(prop)], meta.get("crs"), grid,
                   prop, str(path))


def _pixels(geoms: np.ndarray, values: np.ndarray, src_crs: str | None, grid: Grid, prop: str,
            path: str) -> LabelledPixels:
    """Labelled pixels of ``geoms`` (shapely, in ``src_crs``) on ``grid``."""
    import shapely

    if len(geoms) == 0:
        raise CalibrationError(f"{path}: no features to calibrate with.")
    if grid.crs is not None and src_crs is not None:
        src, dst = CRS.from_user_input(src_crs), CRS.from_user_input(grid.crs)
        if src != dst:
            def reproject(coords: np.ndarray) -> np.ndarray:
                xs, ys = warp.transform(src, dst, coords[:, 0], coords[:, 1])
                return np.column_stack([xs, ys])
            geoms = shapely.transform(geoms, reproject)
    elif grid.crs is not None:
        logger.warning("%s has no CRS: its coordinates are taken to be in the scene's CRS", path)
    inverse = ~grid.transform
    rows, cols, labels, feature = [], [], [], []
    for i, (geom, value) in enumerate(zip(geoms, values, strict=True)):
        label = _label(value, i, prop, path)
        if geom is None or shapely.is_empty(geom):
            raise CalibrationError(f"{path}: feature {i} has no geometry.")
        if geom.geom_type in ("Point", "MultiPoint"):
            pts = shapely.get_coordinates(geom)
            c, r = inverse * (pts[:, 0], pts[:, 1])
            r, c = np.floor(r).astype(np.int64), np.floor(c).astype(np.int64)
        elif geom.geom_type in ("Polygon", "MultiPolygon"):
            r, c = _polygon_pixels(geom, grid)
        else:
            raise CalibrationError(f"{path}: feature {i} is a {geom.geom_type}; use points or "
                                   "polygons.")
        inside = (r >= 0) & (r < grid.height) & (c >= 0) & (c < grid.width)
        if not inside.all():
            raise CalibrationError(
                f"{path}: feature {i} ({prop}={label}) lies outside the scene ({grid.size_px}); "
                "check that the points belong to this scene and their CRS.")
        rows.append(r)
        cols.append(c)
        labels.append(np.full(r.size, label, np.uint8))
        feature.append(np.full(r.size, i, np.int64))
    return LabelledPixels(np.concatenate(rows), np.concatenate(cols), np.concatenate(labels),
                          np.concatenate(feature), len(geoms))


def _polygon_pixels(geom, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Pixels whose centre lies in ``geom`` (at least its representative point's pixel),
    rasterised in a window around its bounds only."""
    inverse = ~grid.transform
    corners = [inverse * (x, y) for x in geom.bounds[::2] for y in geom.bounds[1::2]]
    c0 = max(math.floor(min(c for c, _ in corners)), 0)
    c1 = min(math.ceil(max(c for c, _ in corners)), grid.width)
    r0 = max(math.floor(min(r for _, r in corners)), 0)
    r1 = min(math.ceil(max(r for _, r in corners)), grid.height)
    r = c = np.empty(0, np.int64)
    if r1 > r0 and c1 > c0:
        window = Window(c0, r0, c1 - c0, r1 - r0)
        burnt = features.rasterize([(geom, 1)], out_shape=(r1 - r0, c1 - c0),
                                   transform=window_transform(window, grid.transform),
                                   dtype="uint8")
        r, c = np.nonzero(burnt)
        r, c = r.astype(np.int64) + r0, c.astype(np.int64) + c0
    if r.size == 0:
        point = geom.representative_point()
        col, row = inverse * (point.x, point.y)
        r, c = np.array([math.floor(row)]), np.array([math.floor(col)])
    return r, c
