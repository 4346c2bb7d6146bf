"""Open scenes and before/after pairs lazily as dask-backed ``(band, y, x)`` DataArrays.

A *scene* is one raster file GDAL can read (GeoTIFF, ENVI, VRT, PNG, BMP, ...) or a folder of
single-band rasters named by Sentinel-2 band id (``..._B02.tif``, ``..._B8A.tif``; OSCD layout).
Folder bands are put in canonical order and resampled lazily (GDAL ``WarpedVRT``, bilinear) onto
the grid of the finest band. Nothing is read at open time beyond file headers.

This module owns grid checks and alignment of a pair (one place per concern). It must not import
jax or flax.
"""

from __future__ import annotations

import dataclasses
import logging
import math
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
    band_positions,
    canonical_bands,
    is_positional,
    parse_band_names,
)
from changedet.errors import (
    BandMismatchError,
    ConfigError,
    GridMismatchError,
    InputNotFoundError,
    NotARasterError,
    option,
    render,
)
from changedet.types import Grid

logger = logging.getLogger(__name__)

#: GDAL's block cache, in MB, unless ``GDAL_CACHEMAX`` is set. changedet reads every window once
#: or a few times (the halo), so GDAL's default cache (5 % of RAM) holds decompressed tiles it
#: never needs again and only makes resident memory grow with scene size: on a 4096^2 13-band
#: run, peak RSS 3.25 GB with the default cache (1.2 GB here) and 2.2 GB at 64 MB
#: (docs/benchmarks.md). Set before the process's first read; later changes are ignored by GDAL.
GDAL_CACHE_MB = 64
os.environ.setdefault("GDAL_CACHEMAX", str(GDAL_CACHE_MB))

__all__ = [
    "CANONICAL_S2_BANDS",
    "RasterPair",
    "UngeoreferencedWarning",
    "describe_scene",
    "open_pair",
    "open_scene",
    "scene_grid",
    "select_bands",
]

#: Sentinel-2 band ids in canonical order (the order of a folder scene's ``band`` coord).
CANONICAL_S2_BANDS: tuple[str, ...] = SENTINEL2_BANDS

#: Band token just before the extension: ``..._B02.tif``, ``T31UDQ_..._B8A.jp2``.
_BAND_TOKEN = re.compile(r"(?:^|[_\-.])(B\d\d|B8A)$", re.IGNORECASE)
_RASTER_SUFFIXES = {".tif", ".tiff", ".jp2", ".vrt", ".img", ".png", ".bmp", ".gtiff"}
#: Relative tolerance (fraction of a pixel) when comparing two transforms.
_TRANSFORM_TOL_PX = 1e-6
#: Minimum shared area (fraction of ``before``) for a pair to be alignable.
_MIN_OVERLAP_FRACTION = 0.01
#: Band descriptions longer than this are treated as prose, not band ids (ENVI headers).
_MAX_BAND_ID_LEN = 32


class UngeoreferencedWarning(UserWarning):
    """An image has no CRS: it is used on an identity pixel grid and outputs carry no CRS."""


@dataclasses.dataclass(frozen=True)
class RasterPair:
    """Two co-registered scenes on one grid, with their joint validity mask.

    Attributes:
      before: ``(band, y, x)`` lazy DataArray of the first date, original dtype.
      after: ``(band, y, x)`` lazy DataArray of the second date on ``before``'s grid, same band
        ids (its own dtype, which may differ from ``before``'s).
      valid: ``(y, x)`` lazy bool DataArray: True where no band of either date is nodata or
        non-finite, and (when aligned) inside ``after``'s footprint.
      grid: The common pixel grid (``before``'s).
      band_ids: Band ids shared by both dates, in order.
      before_path: Path of the first-date scene.
      after_path: Path of the second-date scene.
      is_aligned: True when ``after`` was resampled onto ``before``'s grid.
      shift_px: ``(dx_px, dy_px)`` by which ``after`` was resampled to line up with
        ``before`` (:func:`shift_after`), else None.
    """

    before: xr.DataArray
    after: xr.DataArray
    valid: xr.DataArray
    grid: Grid
    band_ids: tuple[str, ...]
    before_path: Path
    after_path: Path
    is_aligned: bool = False
    shift_px: tuple[float, float] | None = None


# --------------------------------------------------------------------------------------------
# Scenes


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
        for i, file in enumerate(band_files):
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
                    best = key  # type: ignore[assignment]
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
    arr.attrs = {"nodata": None if info.nodata is None else float(info.nodata), "source": str(info.path)}
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
    lines = [
        f"scene:      {info.path}{' (band folder)' if info.is_folder else ''}",
        f"size:       {g.size_px} (width x height), {len(info.band_ids)} "
        f"band{'s' if len(info.band_ids) != 1 else ''}",
        f"crs:        {info.crs.to_string() if info.crs is not None else 'none (not georeferenced)'}",
        f"pixel size: {size_x:.6g} x {size_y:.6g}{units}",
        f"bounds:     left {left:.6f}, bottom {bottom:.6f}, right {right:.6f}, top {top:.6f}",
        f"bands:      {', '.join(info.band_ids)}",
        f"dtype:      {info.dtype}",
        f"nodata:     {info.nodata}",
    ]
    if info.is_folder:
        lines.append(f"grid from:  finest band, resampled bilinear ({len(info.band_files)} files)")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Pairs


def _transforms_close(a: Affine, b: Affine, tol_px: float = _TRANSFORM_TOL_PX) -> bool:
    pixel = max(abs(a.a), abs(a.e), abs(a.b), abs(a.d), 1e-300)
    return all(abs(x - y) <= tol_px * pixel for x, y in zip(tuple(a)[:6], tuple(b)[:6], strict=True))


def _grid_difference(a: Grid, a_crs: CRS | None, b: Grid, b_crs: CRS | None) -> str | None:
    """What differs between two grids, in words, or None if they match."""
    if (a_crs is None) != (b_crs is None) or (a_crs is not None and a_crs != b_crs):
        return f"CRS {_crs_string(a_crs) or 'none'} vs {_crs_string(b_crs) or 'none'}"
    if a_crs is not None and not _transforms_close(a.transform, b.transform):
        (ax, ay), (bx, by) = a.pixel_size, b.pixel_size
        pixel = max(ax, ay)
        if abs(ax - bx) > _TRANSFORM_TOL_PX * pixel or abs(ay - by) > _TRANSFORM_TOL_PX * pixel:
            return f"pixel size {ax:.4g} x {ay:.4g} vs {bx:.4g} x {by:.4g}"
        a_origin = (a.transform.c, a.transform.f)
        b_origin = (b.transform.c, b.transform.f)
        return f"origin {a_origin[0]:.10g}, {a_origin[1]:.10g} vs {b_origin[0]:.10g}, {b_origin[1]:.10g}"
    if a.shape != b.shape:
        return f"size {a.size_px} vs {b.size_px}"
    return None


def _bounds(grid: Grid) -> tuple[float, float, float, float]:
    xs, ys = zip(*(grid.transform @ c for c in [(0, 0), (grid.width, grid.height)]), strict=True)
    return min(xs), min(ys), max(xs), max(ys)


def _overlap_fraction(before: Grid, after: Grid, before_crs: CRS, after_crs: CRS) -> float:
    """Share of ``before``'s bounding box covered by ``after``'s (in ``before``'s CRS)."""
    from rasterio.warp import transform_bounds

    b = _bounds(before)
    a = _bounds(after)
    if before_crs != after_crs:
        a = transform_bounds(after_crs, before_crs, *a)
    width = min(b[2], a[2]) - max(b[0], a[0])
    height = min(b[3], a[3]) - max(b[1], a[1])
    if width <= 0 or height <= 0:
        return 0.0
    return (width * height) / ((b[2] - b[0]) * (b[3] - b[1]))


def _footprint(target: Grid, target_crs: CRS, source: Grid, source_crs: CRS, chunks_px: int) -> da.Array:
    """Lazy bool ``(y, x)``: target pixel centres that fall inside ``source``'s raster."""
    inverse = ~source.transform

    def block(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        col_c, row_c = np.meshgrid(cols[0] + 0.5, rows[:, 0] + 0.5)
        x, y = target.transform @ (col_c, row_c)
        if source_crs != target_crs:
            from rasterio.warp import transform as warp_transform

            xs, ys = warp_transform(target_crs, source_crs, x.ravel(), y.ravel())
            x, y = np.asarray(xs).reshape(x.shape), np.asarray(ys).reshape(y.shape)
        src_col, src_row = inverse @ (x, y)
        return (src_col >= 0) & (src_col <= source.width) & (src_row >= 0) & (src_row <= source.height)

    rows = da.arange(target.height, chunks=chunks_px, dtype=np.float64)[:, None]
    cols = da.arange(target.width, chunks=chunks_px, dtype=np.float64)[None, :]
    return da.map_blocks(block, rows, cols, dtype=bool, chunks=(rows.chunks[0], cols.chunks[1]))


#: Extra overlap for the cubic spline's prefilter (an IIR filter whose influence decays as
#: 0.268^n: below 1e-5 of a value after 9 pixels), so blocks give the whole-image result.
_SPLINE_MARGIN_PX = 9


def shift_after(pair: RasterPair, dx_px: float, dy_px: float) -> RasterPair:
    """``pair`` with ``after`` resampled lazily so that its content lines up with ``before``.

    ``(dx_px, dy_px)`` is where ``before``'s content appears in ``after`` (the convention of
    :class:`changedet.coregister.Shift`): the new ``after`` at pixel ``(row, col)`` is the old
    one at ``(row + dy_px, col + dx_px)``, by cubic-spline interpolation (blockwise with
    enough overlap that blocks equal a whole-image pass). ``after`` becomes float32, NaN where
    its source lies outside the image or next to an invalid pixel; ``valid`` drops those pixels.
    """
    from scipy import ndimage

    depth = int(math.ceil(max(abs(dx_px), abs(dy_px)))) + _SPLINE_MARGIN_PX
    offset = (0.0, -dy_px, -dx_px)  # ndimage.shift: out[i] = in[i - offset]

    def resample(block: np.ndarray) -> np.ndarray:
        return ndimage.shift(block.astype(np.float32), offset, order=3, mode="nearest")

    def resample_valid(block: np.ndarray) -> np.ndarray:
        # order 1 reaches the 2x2 source neighbours; one more pixel covers the spline's support
        ok = ndimage.shift(block.astype(np.float32), offset[1:], order=1, mode="constant",
                           cval=0.0) > 0.999
        return ndimage.minimum_filter(ok, size=3, mode="constant", cval=False)

    after = pair.after.data
    values = after.map_overlap(resample, depth={0: 0, 1: depth, 2: depth}, boundary="nearest",
                               dtype=np.float32)
    ok = pair.valid.data.map_overlap(resample_valid, depth=depth, boundary=False, dtype=bool)
    ok = ok & pair.valid.data
    values = da.where(ok[None], values, np.float32(np.nan))
    shifted = pair.after.copy(data=values)
    shifted.attrs = {**pair.after.attrs, "nodata": float("nan")}
    valid = pair.valid.copy(data=ok)
    logger.info("resampling %s by dx %+.3f px, dy %+.3f px onto %s", pair.after_path, dx_px,
                dy_px, pair.before_path)
    return dataclasses.replace(pair, after=shifted, valid=valid,
                               shift_px=(float(dx_px), float(dy_px)))


def _valid_mask(arr: xr.DataArray) -> xr.DataArray:
    """Lazy bool ``(y, x)``: no band is nodata or non-finite."""
    nodata = arr.attrs.get("nodata")
    bad = xr.zeros_like(arr.isel(band=0), dtype=bool)
    if np.issubdtype(arr.dtype, np.floating):
        bad = ~np.isfinite(arr).all("band")
    if nodata is not None and not math.isnan(nodata):
        bad = bad | (arr == nodata).any("band")
    return ~bad


def _pair_band_ids(b_info: _SceneInfo, a_info: _SceneInfo,
                   band_names: Sequence[str] | str | None) -> tuple[str, ...]:
    """The band ids both dates share: ``band_names`` when given, else the files' own ids
    matched through the band vocabulary (``B2`` and ``B02`` are one band; a file without band
    descriptions takes the other date's names when the counts agree)."""
    if band_names is not None:
        ids = parse_band_names(band_names, len(b_info.band_ids), where=str(b_info.path))
        parse_band_names(band_names, len(a_info.band_ids), where=str(a_info.path))
        return ids
    b_ids, a_ids = b_info.band_ids, a_info.band_ids
    b_can, a_can = canonical_bands(b_ids), canonical_bands(a_ids)
    if b_can is not None and b_can == a_can:
        return b_can
    if b_ids == a_ids:
        return b_ids
    positional = [is_positional(b_ids), is_positional(a_ids)]
    if positional.count(True) == 1 and len(b_ids) == len(a_ids):
        named, plain = (a_info, b_info) if positional[0] else (b_info, a_info)
        warnings.warn(
            render(f"{plain.path} has no band descriptions; using those of {named.path} "
                   f"({','.join(named.band_ids)}) in file order. Pass {option('band_names')} "
                   "to state them."),
            stacklevel=3,
        )
        return b_can or a_can or named.band_ids
    missing_after = [b for b in b_ids if b not in a_ids]
    missing_before = [b for b in a_ids if b not in b_ids]
    if not missing_after and not missing_before:
        detail = f"same bands in a different order: {b_ids} vs {a_ids}"
    else:
        detail = (
            f"missing in after: {', '.join(missing_after) or 'none'}; "
            f"missing in before: {', '.join(missing_before) or 'none'}"
        )
    raise BandMismatchError(
        f"{b_info.path} ({len(b_ids)} bands) vs {a_info.path} ({len(a_ids)} bands): {detail}; "
        f"give both dates the same bands, or name them with {option('band_names')}."
    )


def select_bands(pair: RasterPair, bands: Sequence[str] | None) -> RasterPair:
    """``pair`` with only the given bands of both dates, in the order given: band ids
    (``"B04"``) or 1-based indices (``"4"``), as ``--bands`` takes them everywhere (``run``,
    ``train``, ``evaluate``). ``valid`` is unchanged. None or empty: the pair as it is.

    Raises:
      BandMismatchError: If a requested band is not in the scene (one line, with its bands).
    """
    if not bands:
        return pair
    positions = band_positions(pair.band_ids, bands, where=str(pair.before_path))
    chosen = [pair.band_ids[i] for i in positions]
    return dataclasses.replace(pair, before=pair.before.sel(band=chosen),
                               after=pair.after.sel(band=chosen), band_ids=tuple(chosen))


def open_pair(
    before: str | Path, after: str | Path, *, align: bool = False, chunks_px: int = 1024,
    band_names: Sequence[str] | str | None = None,
) -> RasterPair:
    """Opens two scenes of the same place and checks (or makes) them share one pixel grid.

    Nothing is computed: ``before``, ``after`` and ``valid`` are lazy and blockwise.

    Args:
      before: Scene of the first date (file or band folder, see :func:`open_scene`).
      after: Scene of the second date.
      align: Resample ``after`` lazily (bilinear) onto ``before``'s grid when the grids differ.
      chunks_px: Dask chunk edge along ``y``/``x`` in pixels.
      band_names: The bands of both files, in file order (Sentinel-2 ids, Earth Engine ids or
        common names, see :mod:`changedet.bands`), for files without band descriptions
        (Landsat exports, ENVI, plain GeoTIFFs). Default: the files' own band ids, known
        names made canonical (``B2`` -> ``B02``).

    Returns:
      A :class:`RasterPair` on ``before``'s grid.

    Raises:
      InputNotFoundError, NotARasterError: As :func:`open_scene`.
      GridMismatchError: CRS, transform or shape differ and ``align`` is False; or the extents
        overlap by less than 1 %; or one image is georeferenced and the other is not.
      BandMismatchError: The two dates do not have the same band ids.
    """
    before_path, after_path = Path(before), Path(after)
    b_info = _scene_info(before_path)
    a_info = _scene_info(after_path)

    band_ids = _pair_band_ids(b_info, a_info, band_names)

    georeferenced = (b_info.crs is not None, a_info.crs is not None)
    if georeferenced == (False, False):
        if b_info.grid.shape != a_info.grid.shape:
            raise GridMismatchError(
                f"{before_path} vs {after_path}: size {b_info.grid.size_px} vs "
                f"{a_info.grid.size_px} and neither is georeferenced, so they cannot be aligned; "
                "crop or resize them to the same size."
            )
        warnings.warn(
            f"{before_path} and {after_path} are not georeferenced: pixels are matched by index; "
            f"outputs will have no CRS.",
            UngeoreferencedWarning,
            stacklevel=2,
        )
    elif georeferenced != (True, True):
        raise GridMismatchError(
            f"{before_path} vs {after_path}: CRS {_crs_string(b_info.crs) or 'none'} vs "
            f"{_crs_string(a_info.crs) or 'none'}: only one is georeferenced; georeference both or "
            f"neither."
        )

    difference = _grid_difference(b_info.grid, b_info.crs, a_info.grid, a_info.crs)
    is_aligned = False
    footprint = None
    if difference is not None and georeferenced == (True, True):
        assert b_info.crs is not None and a_info.crs is not None  # noqa: S101
        overlap = _overlap_fraction(b_info.grid, a_info.grid, b_info.crs, a_info.crs)
        if overlap < _MIN_OVERLAP_FRACTION:
            raise GridMismatchError(
                f"{before_path} vs {after_path}: extents overlap by {overlap:.2%} of before "
                f"(need >= {_MIN_OVERLAP_FRACTION:.0%}); {difference}; pass two scenes of the same "
                f"place."
            )
        if not align:
            raise GridMismatchError(
                f"{before_path} vs {after_path}: grids differ: {difference}; pass "
                f"{option('align', True)} to resample 'after' onto the grid of 'before'."
            )
        is_aligned = True
        footprint = _footprint(b_info.grid, b_info.crs, a_info.grid, a_info.crs, chunks_px)

    before_arr, _ = _open_scene(before_path, chunks_px=chunks_px)
    if is_aligned:
        after_arr, _ = _open_scene(
            after_path, chunks_px=chunks_px, target=b_info.grid, target_crs=b_info.crs
        )
        logger.info("resampling %s onto the grid of %s (%s)", after_path, before_path, difference)
    else:
        after_arr, _ = _open_scene(after_path, chunks_px=chunks_px)
        # same grid within tolerance: share before's exact coordinates
        after_arr = after_arr.assign_coords(x=before_arr.x, y=before_arr.y)

    before_arr = before_arr.assign_coords(band=list(band_ids))
    after_arr = after_arr.assign_coords(band=list(band_ids))
    valid = _valid_mask(before_arr) & _valid_mask(after_arr)
    if footprint is not None:
        valid = valid & xr.DataArray(footprint, dims=("y", "x"), coords={"y": valid.y, "x": valid.x})
    valid = valid.drop_vars([c for c in valid.coords if c not in ("x", "y", "spatial_ref")])
    valid = valid.rename("valid")
    valid.attrs = {}
    return RasterPair(
        before=before_arr,
        after=after_arr,
        valid=valid,
        grid=b_info.grid,
        band_ids=band_ids,
        before_path=before_path,
        after_path=after_path,
        is_aligned=is_aligned,
    )
