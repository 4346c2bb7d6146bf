"""Polygonise a change mask: one polygon per connected changed region, with area and mean score.

Writes GeoPackage (``.gpkg``) or GeoJSON (``.geojson``/``.json``) through ``pyogrio.raw`` (no
geopandas), atomically (temporary name + rename). Must not import jax or flax.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from rasterio.crs import CRS

from changedet.errors import GridMismatchError, OutputError
from changedet.io.area import polygon_areas_m2
from changedet.io.atomic import atomic_path
from changedet.io.write import check_output_path
from changedet.types import Grid

logger = logging.getLogger(__name__)

__all__ = ["check_vector_path", "write_vector", "write_vector_from_rasters"]

_DRIVERS = {".gpkg": "GPKG", ".geojson": "GeoJSON", ".json": "GeoJSON"}


def _region_means(score: np.ndarray, labels: np.ndarray, changed: np.ndarray,
                  num_regions: int) -> np.ndarray:
    """Mean finite score of each labelled region (float64; NaN only for a region without a
    finite score, which a mask made from the score never has)."""
    finite = np.isfinite(score) & changed
    sums = np.bincount(labels[finite], weights=score[finite], minlength=num_regions + 1)[1:]
    counts = np.bincount(labels[finite], minlength=num_regions + 1)[1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan).astype(np.float64)


def check_vector_path(
    path: str | Path, *, inputs: Iterable[str | Path] = (), overwrite: bool = False
) -> Path:
    """Validates a vector output path (format and folder) before any computation starts.

    Args:
      path: ``.gpkg`` or ``.geojson``/``.json`` output.
      inputs: Input scenes that must not be overwritten.
      overwrite: Allow replacing an existing file.

    Returns:
      The absolute output path.

    Raises:
      OutputError: Unknown extension, or as :func:`~changedet.io.write.check_output_path`.
    """
    out = check_output_path(path, inputs=inputs, overwrite=overwrite)
    if out.suffix.lower() not in _DRIVERS:
        raise OutputError(
            f"{out}: unknown vector format {out.suffix!r}; use .gpkg or .geojson (or .json)."
        )
    return out


def write_vector(
    path: str | Path,
    mask: np.ndarray,
    score: np.ndarray | None,
    grid: Grid,
    *,
    overwrite: bool = False,
) -> Path:
    """Writes one polygon per 4-connected region of ``mask == 1``.

    Args:
      path: ``.gpkg`` (GeoPackage) or ``.geojson``/``.json`` output.
      mask: ``(height, width)`` uint8 change mask on ``grid`` (1 = change; 0 and 255 ignored).
      score: ``(height, width)`` float32 change score on ``grid`` (NaN ignored in the mean),
        or None: the file then has no ``mean_score`` field.
      grid: Pixel grid of ``mask``; its CRS is written to the file (none if None).
      overwrite: Replace an existing file.

    Returns:
      The written path. Fields: ``area_m2`` (planar area times the CRS unit factor squared for a
      projected CRS, geodesic area on the CRS ellipsoid for a geographic one, the pixel count when
      there is no CRS), ``area_px`` (pixels in the region), ``mean_score`` (mean change
      score of the region's pixels; only with ``score``).

    Raises:
      OutputError: Unknown extension, or the output exists / cannot be written.
    """
    import pyogrio.raw
    import rasterio.features
    import shapely
    from scipy import ndimage

    out = check_vector_path(path, overwrite=overwrite)
    driver = _DRIVERS[out.suffix.lower()]
    if mask.shape != grid.shape or (score is not None and score.shape != grid.shape):
        raise GridMismatchError(f"mask {mask.shape} / score {getattr(score, 'shape', None)} "
                                f"do not match grid {grid.shape}")
    changed = mask == 1
    labels, num_regions = ndimage.label(changed)  # 4-connectivity, as rasterio.features.shapes
    pixel_counts = np.bincount(labels.ravel(), minlength=num_regions + 1)[1:]

    ids, geometries = [], []
    for geojson, value in rasterio.features.shapes(
        labels.astype(np.int32), mask=changed, connectivity=4, transform=grid.transform
    ):
        ids.append(int(value))
        geometries.append(shapely.geometry.shape(geojson))
    region = np.asarray(ids, dtype=np.int64) - 1  # label k -> row k-1 of the per-region arrays
    areas = polygon_areas_m2(geometries, grid, pixel_counts[region])
    fields = ["area_m2", "area_px"]
    field_data = [areas.astype(np.float64), pixel_counts[region].astype(np.int64)]
    if score is not None:
        fields.append("mean_score")
        field_data.append(_region_means(score, labels, changed, num_regions)[region])
    wkb = (np.array(shapely.to_wkb(geometries), dtype=object) if geometries
           else np.array([], dtype=object))
    crs_wkt = CRS.from_user_input(grid.crs).to_wkt() if grid.crs is not None else None

    with atomic_path(out) as temp, warnings.catch_warnings():
        # no CRS is deliberate for ungeoreferenced images
        warnings.filterwarnings("ignore", message="'crs' was not provided")
        pyogrio.raw.write(
            temp,
            wkb,
            field_data,
            fields,
            layer="change",
            driver=driver,
            geometry_type="Polygon",
            crs=crs_wkt,
        )
    logger.info("wrote %d change polygons to %s", len(geometries), out)
    return out


def write_vector_from_rasters(
    path: str | Path,
    *,
    mask_path: str | Path,
    score_path: str | Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Polygonises a finished change-mask GeoTIFF (see :func:`write_vector`).

    Reads the mask (and the score, for ``mean_score``) back from disk: memory is about
    5 bytes per pixel (the uint8 mask and an int32 region-label image) plus the score when given.

    Args:
      path: ``.gpkg`` or ``.geojson``/``.json`` output.
      mask_path: uint8 mask (GeoTIFF or PNG) written by
        :func:`~changedet.io.write.write_outputs`.
      score_path: Matching float32 score GeoTIFF, or None (the file then has no
        ``mean_score`` field; ``changedet.run`` always passes the run's score).
      overwrite: Replace an existing file.

    Returns:
      The written path.

    Raises:
      InputNotFoundError / NotARasterError: ``mask_path`` or ``score_path`` cannot be read.
      OutputError: As :func:`write_vector`.
    """
    from changedet.io.scene import _check_exists, _open_header

    check_output_path(path, inputs=[p for p in (mask_path, score_path) if p], overwrite=overwrite)
    _check_exists(Path(mask_path))
    with _open_header(Path(mask_path)) as ds:
        mask = ds.read(1)
        grid = Grid(ds.height, ds.width, ds.transform, ds.crs.to_string() if ds.crs else None)
    if score_path is not None:
        _check_exists(Path(score_path))
        with _open_header(Path(score_path)) as ds:
            if ds.shape != mask.shape:
                raise GridMismatchError(
                    f"{score_path}: size {ds.shape} differs from mask {mask.shape}")
            score = ds.read(1).astype(np.float32)
    else:
        score = None
    return write_vector(path, mask, score, grid, overwrite=overwrite)
