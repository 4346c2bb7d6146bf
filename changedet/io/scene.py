"""Open one scene lazily as a dask-backed ``(band, y, x)`` DataArray.

A *scene* is one raster file GDAL can read (GeoTIFF, ENVI, VRT, PNG, BMP, ...) or a folder of
single-band rasters named by Sentinel-2 band id (``..._B02.tif``, ``..._B8A.tif``; OSCD layout).
Folder bands are put in canonical order and resampled lazily (GDAL ``WarpedVRT``, bilinear) onto
the grid of the finest band. Nothing is read at open time beyond file headers. Sets GDAL's block
cache to :data:`GDAL_CACHE_MB` unless the user set ``GDAL_CACHEMAX``.

Must not import jax or flax.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import rasterio
import rasterio.errors
import rioxarray
import xarray as xr
from affine import Affine
from rasterio._err import CPLE_BaseError  # GDAL errors raised through rasterio
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT

from changedet.bands import (
    SENTINEL2_BANDS,
)
from changedet.errors import (
    ConfigError,
    InputNotFoundError,
    NotARasterError,
)
from changedet.types import Grid

__all__ = [
    "logger", "GDAL_CACHE_MB", "CANONICAL_S2_BANDS", "UngeoreferencedWarning", "open_scene",
    "scene_grid", "describe_scene",
]

logger = logging.getLogger(__name__)


#: GDAL's block cache, in MB, unless ``GDAL_CACHEMAX`` is set. changedet reads every window once
#: or a few times (the halo), so GDAL's default cache (5 % of RAM) holds decompressed tiles it
#: never needs again and only makes resident memory grow with scene size: on a 4096^2 13-band
#: run, peak RSS 3.25 GB with the default cache (1.2 GB here) and 2.2 GB at 64 MB
#: (docs/benchmarks.md). Set before the process's first read; later changes are ignored by GDAL.
GDAL_CACHE_MB = 64


os.environ.setdefault("GDAL_CACHEMAX", str(GDAL_CACHE_MB))


#: Sentinel-2 band ids in canonical order (the order of a folder scene's ``band`` coord).
CANONICAL_S2_BANDS: tuple[str, ...] = SENTINEL2_BANDS


#: Band token just before the extension: ``..._B02.tif``, ``T31UDQ_..._B8A.jp2``.
_BAND_TOKEN = re.compile(r"(?:^|[_\-.])(B\d\d|B8A)$", re.IGNORECASE)


_RASTER_SUFFIXES = {".tif", ".tiff", ".jp2", ".vrt", ".img", ".png", ".bmp", ".gtiff"}


#: Band descriptions longer than this are treated as prose, not band ids (ENVI headers).
_MAX_BAND_ID_LEN = 32


class UngeoreferencedWarning(UserWarning):
    """An image has no CRS: it is used on an identity pixel grid and outputs carry no CRS."""


@dataclasses.dataclass(frozen=True)
class _SceneInfo:
    """Header facts about a scene (no pixels read)."""

    path: Path
    band_ids: tuple[str, ...]
    band_files: tuple[Path, ...]  # one per band for a folder scene, else (path,)
    grid: Grid
    crs: CRS | None
    nodata: float | None
    dtype: str
    is_folder: bool


def _crs_string(crs: CRS | None) -> str | None:
    """Normalise a CRS to the hashable string stored in a :class:`Grid`."""
    if crs is None:
        return None
    return crs.to_string()


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise InputNotFoundError(
            f"{path}: no such file or folder; check the path (a scene is a raster file or a "
            f"folder of single-band files named like *_B02.tif)."
        )


def _open_header(path: Path) -> rasterio.DatasetReader:
    """Opens a raster with rasterio, turning GDAL failures into :class:`NotARasterError`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            return rasterio.open(path)
    except rasterio.errors.RasterioIOError as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise NotARasterError(
            f"{path}: GDAL cannot read this as a raster ({first_line}); pass a GeoTIFF/ENVI/VRT/"
            f"PNG/BMP file or a folder of *_Bxx.tif band files."
        ) from exc


def _is_georeferenced(ds: rasterio.DatasetReader) -> bool:
    return ds.crs is not None


def _band_files(folder: Path) -> dict[str, Path]:
    """Maps Sentinel-2 band ids to the files of a folder scene (``{"B02": path, ...}``)."""
    found: dict[str, Path] = {}
    for file in sorted(folder.iterdir()):
        if not file.is_file() or file.suffix.lower() not in _RASTER_SUFFIXES:
            continue
        match = _BAND_TOKEN.search(file.stem)
        if match is None:
            continue
        band_id = match.group(1).upper()
        if band_id in found:
            raise InputNotFoundError(
                f"{folder}: two files for band {band_id} ({found[band_id].name}, {file.name}); "
                f"keep one file per band in a scene folder."
            )
        found[band_id] = file
    return found


def _band_ids_from_descriptions(descriptions: Sequence[str | None], count: int) -> tuple[str, ...]:
    """Band descriptions when all set, unique and short (ids, not prose), else ``"1".."n"``."""
    if (
        all(descriptions)
        and len(set(descriptions)) == count
        and all(len(d) <= _MAX_BAND_ID_LEN for d in descriptions)  # type: ignore[arg-type]
    ):
        return tuple(str(d) for d in descriptions)
    return tuple(str(i + 1) for i in range(count))


def _grid_of(ds: rasterio.DatasetReader) -> Grid:
    return Grid(height=ds.height, width=ds.width, transform=ds.transform, crs=_crs_string(ds.crs))


def _scene_info(path: Path) -> _SceneInfo:
    """Reads the headers of a scene (file or band folder); raises with the fix on bad input."""
    _check_exists(path)
    if path.is_dir():
        files = _band_files(path)
        if not files:
            raise InputNotFoundError(
                f"{path}: folder holds no band files (expected names ending in _B01.._B12 or "
                f"_B8A, e.g. T31UDQ_B02.tif); pass a raster file or a Sentinel-2 band folder."
            )
        band_ids = tuple(b for b in CANONICAL_S2_BANDS if b in files)
        band_files = tuple(files[b] for b in band_ids)
        best: tuple[float, int] | None = None
        best_info = None
        dtypes = set()
        for file in band_files:
            with _open_header(file) as ds:
                if ds.count != 1:
                    raise NotARasterError(
                        f"{file}: a band file of a folder scene must hold 1 band, found "
                        f"{ds.count}; keep one band per file."
                    )
                dtypes.add(ds.dtypes[0])
                area = abs(ds.transform.a * ds.transform.e) if _is_georeferenced(ds) else 1.0
                # finest band first; among equals, the larger raster, then canonical order
                key = (area, -ds.width * ds.height)
                if best is None or key < best:
                    best = key
                    best_info = (_grid_of(ds), ds.crs, ds.nodata)
        assert best_info is not None  # noqa: S101  (files is non-empty)
        grid, crs, nodata = best_info
        if len(dtypes) > 1:
            logger.info("%s: band dtypes differ %s; promoting", path, sorted(dtypes))
        dtype = str(np.result_type(*[np.dtype(d) for d in dtypes]))
        return _SceneInfo(path, band_ids, band_files, grid, crs, nodata, dtype, True)
    with _open_header(path) as ds:
        if ds.count < 1:
            raise NotARasterError(f"{path}: raster has no bands; pass an image with pixels.")
        band_ids = _band_ids_from_descriptions(ds.descriptions, ds.count)
        return _SceneInfo(
            path, band_ids, (path,), _grid_of(ds), ds.crs, ds.nodata, ds.dtypes[0], False
        )


def _chunks(chunks_px: int) -> dict[str, int]:
    if chunks_px < 1:
        raise ConfigError(f"chunks_px must be >= 1, got {chunks_px}")
    return {"band": -1, "y": chunks_px, "x": chunks_px}


class _GuardedReads:
    """Array-like over a lazily loaded raster whose window reads name the file when they fail.

    The header of a truncated or corrupt GeoTIFF opens fine; its pixel data fails only when a
    block is read, deep inside a dask computation. This wrapper turns that GDAL error into a
    :class:`NotARasterError` naming the file and the window, instead of an internal error.
    """

    def __init__(self, lazy: xr.DataArray, path: Path) -> None:
        self._lazy = lazy
        self._path = path
        self.shape = lazy.shape
        self.dtype = lazy.dtype
        self.ndim = lazy.ndim

    def __getitem__(self, key: tuple) -> np.ndarray:
        try:
            return np.asarray(self._lazy[key].values)
        except (rasterio.errors.RasterioError, CPLE_BaseError, OSError) as exc:
            cause: BaseException = exc
            while cause.__cause__ is not None:  # GDAL's root cause is the most specific
                cause = cause.__cause__
            reason = " ".join(str(cause).split()) or type(cause).__name__
            raise NotARasterError(
                f"{self._path}: reading pixels {_describe_window(key)} failed ({reason}); the "
                f"file is truncated or corrupt: re-download or re-export it."
            ) from exc


def _describe_window(key: tuple) -> str:
    """``rows 0:64, cols 64:128`` for a ``(band, row, col)`` tuple of slices."""
    if isinstance(key, tuple) and len(key) == 3 and all(isinstance(k, slice) for k in key[1:]):
        rows, cols = key[1], key[2]
        return f"rows {rows.start or 0}:{rows.stop}, cols {cols.start or 0}:{cols.stop}"
    return "window"


def _open_file_lazily(
    file: Path,
    *,
    chunks_px: int,
    target: Grid | None,
    target_crs: CRS | None,
    resampling: Resampling,
    dtype: str | None = None,
) -> xr.DataArray:
    """Opens one raster file as a lazy ``(band, y, x)`` array, warped onto ``target`` if given."""
    with _open_header(file) as ds:
        needs_warp = target is not None and not (
            ds.height == target.height
            and ds.width == target.width
            and _transforms_close(ds.transform, target.transform)
            and ds.crs == target_crs
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            if needs_warp:
                assert target is not None  # noqa: S101
                vrt = WarpedVRT(
                    ds,
                    crs=target_crs,
                    transform=target.transform,
                    width=target.width,
                    height=target.height,
                    resampling=resampling,
                    dtype=dtype,
                )
                with vrt:
                    arr = rioxarray.open_rasterio(vrt, lock=False, cache=False)
            else:
                arr = rioxarray.open_rasterio(file, lock=False, cache=False)
    assert isinstance(arr, xr.DataArray)  # noqa: S101  (single raster, no subdatasets)
    stat = file.stat()
    token = dask.base.tokenize(
        str(file), stat.st_mtime_ns, stat.st_size, repr(target), str(target_crs), resampling, dtype
    )
    data = da.from_array(
        _GuardedReads(arr, file),
        chunks=(-1, chunks_px, chunks_px),
        lock=False,
        asarray=True,
        meta=np.empty((0, 0, 0), dtype=arr.dtype),
        name=f"read-{file.name}-{token}",
    )
    arr = arr.copy(data=data)
    if dtype is not None and arr.dtype != np.dtype(dtype):
        arr = arr.astype(dtype)
    return arr


def _finish(
    arr: xr.DataArray, info: _SceneInfo, grid: Grid, crs: CRS | None, band_ids: Sequence[str]
) -> xr.DataArray:
    """Sets coords, CRS, transform and attrs the same way for every kind of scene."""
    arr = arr.drop_vars([c for c in arr.coords if c not in ("band", "x", "y", "spatial_ref")])
    arr = arr.assign_coords(band=list(band_ids))
    arr.attrs = {"nodata": None if info.nodata is None else float(info.nodata),
                 "source": str(info.path)}
    arr.encoding = {}
    if crs is not None:
        arr = arr.rio.write_crs(crs)
    arr = arr.rio.write_transform(grid.transform)
    return arr


def _open_scene(
    path: Path, *, chunks_px: int, target: Grid | None = None, target_crs: CRS | None = None
) -> tuple[xr.DataArray, _SceneInfo]:
    """Opens a scene, optionally resampled (bilinear) onto ``target``; returns it and its info."""
    info = _scene_info(path)
    grid = target if target is not None else info.grid
    crs = target_crs if target is not None else info.crs
    if info.is_folder:
        parts = [
            _open_file_lazily(
                f,
                chunks_px=chunks_px,
                target=grid,
                target_crs=crs,
                resampling=Resampling.bilinear,
                dtype=info.dtype,
            )
            for f in info.band_files
        ]
        arr = xr.concat(parts, dim="band", join="override", coords="minimal", compat="override")
        arr = arr.chunk(_chunks(chunks_px))
    else:
        arr = _open_file_lazily(
            path,
            chunks_px=chunks_px,
            target=target,
            target_crs=target_crs,
            resampling=Resampling.bilinear,
        )
    return _finish(arr, info, grid, crs, info.band_ids), info


def open_scene(path: str | Path, *, chunks_px: int = 1024) -> xr.DataArray:
    """Opens a scene lazily as a dask-backed ``(band, y, x)`` DataArray.

    Args:
      path: A raster file GDAL can read, or a folder of single-band Sentinel-2 files named by
        band id (``*_B02.tif``, ``*_B8A.tif``), resampled (bilinear) onto the finest band's grid.
      chunks_px: Dask chunk edge along ``y`` and ``x`` in pixels (all bands in one chunk).

    Returns:
      DataArray ``(band, y, x)`` in the file's dtype; coord ``band`` holds band ids as strings
      (``"B01"``.. for folders, else short band descriptions if all set, else ``"1".."n"``);
      ``.rio.crs``/``.rio.transform()`` set (CRS None and an identity transform for images without
      georeferencing, with one :class:`UngeoreferencedWarning`); ``attrs["nodata"]`` (float or
      None) and ``attrs["source"]`` (the path).

    Raises:
      InputNotFoundError: The path does not exist, or a folder holds no band files.
      NotARasterError: GDAL cannot read the file as a raster.
    """
    path = Path(path)
    arr, info = _open_scene(path, chunks_px=chunks_px)
    if info.crs is None:
        warnings.warn(
            f"{path} is not georeferenced: using pixel coordinates; outputs will have no CRS.",
            UngeoreferencedWarning,
            stacklevel=2,
        )
    logger.debug("opened %s: %s bands %s", path, arr.shape, info.band_ids)
    return arr


def scene_grid(arr: xr.DataArray) -> Grid:
    """The pixel grid of a ``(band, y, x)`` scene from :func:`open_scene`.

    Args:
      arr: DataArray with rioxarray CRS/transform set (CRS may be None).

    Returns:
      ``Grid`` with height/width in pixels, the affine transform and CRS string (or None).
    """
    crs = arr.rio.crs
    return Grid(
        height=int(arr.sizes["y"]),
        width=int(arr.sizes["x"]),
        transform=arr.rio.transform(recalc=False),
        crs=_crs_string(crs),
    )


def describe_scene(path: str | Path) -> str:
    """Multi-line human-readable summary of a scene (headers only, no pixels read).

    Args:
      path: A scene as accepted by :func:`open_scene`.

    Returns:
      Text with the path, size in pixels, CRS, pixel size, bounds, band ids, dtype and nodata.
    """
    info = _scene_info(Path(path))
    g = info.grid
    size_x, size_y = g.pixel_size
    left, top = g.transform @ (0, 0)
    right, bottom = g.transform @ (g.width, g.height)
    units = ""
    if info.crs is not None:
        units = " degrees" if info.crs.is_geographic else f" {info.crs.linear_units}"
    crs_text = info.crs.to_string() if info.crs is not None else "none (not georeferenced)"
    lines = [
        f"scene:      {info.path}{' (band folder)' if info.is_folder else ''}",
        f"size:       {g.size_px} (width x height), {len(info.band_ids)} "
        f"band{'s' if len(info.band_ids) != 1 else ''}",
        f"crs:        {crs_text}",
        f"pixel size: {size_x:.6g} x {size_y:.6g}{units}",
        f"bounds:     left {left:.6f}, bottom {bottom:.6f}, right {right:.6f}, top {top:.6f}",
        f"bands:      {', '.join(info.band_ids)}",
        f"dtype:      {info.dtype}",
        f"nodata:     {info.nodata}",
    ]
    if info.is_folder:
        lines.append(f"grid from:  finest band, resampled bilinear ({len(info.band_files)} files)")
    return "\n".join(lines)


#: Relative tolerance (fraction of a pixel) when comparing two transforms.
_TRANSFORM_TOL_PX = 1e-6


def _transforms_close(a: Affine, b: Affine, tol_px: float = _TRANSFORM_TOL_PX) -> bool:
    pixel = max(abs(a.a), abs(a.e), abs(a.b), abs(a.d), 1e-300)
    return all(abs(x - y) <= tol_px * pixel
               for x, y in zip(tuple(a)[:6], tuple(b)[:6], strict=True))
