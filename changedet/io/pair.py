"""Open a before/after pair of scenes: grid checks (CRS, transform, overlap), alignment of the
after scene onto the before grid, sub-pixel shifts, the joint valid mask and band selection.

This module owns grid checks and alignment of a pair (one place per concern). It must not import
jax or flax.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr
from rasterio.crs import CRS

from changedet.bands import (
    band_positions,
    canonical_bands,
    is_positional,
    parse_band_names,
)
from changedet.errors import (
    BandMismatchError,
    GridMismatchError,
    option,
    render,
)
from changedet.io.scene import (
    _TRANSFORM_TOL_PX,
    UngeoreferencedWarning,
    _crs_string,
    _open_scene,
    _scene_info,
    _SceneInfo,
    _transforms_close,
)
from changedet.types import Grid

__all__ = ["logger", "RasterPair", "shift_after", "select_bands", "open_pair"]

logger = logging.getLogger(__name__)




#: Minimum shared area (fraction of ``before``) for a pair to be alignable.
_MIN_OVERLAP_FRACTION = 0.01


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
        return (f"origin {a_origin[0]:.10g}, {a_origin[1]:.10g} vs {b_origin[0]:.10g}, "
                f"{b_origin[1]:.10g}")
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


def _footprint(target: Grid, target_crs: CRS, source: Grid, source_crs: CRS,
               chunks_px: int) -> da.Array:
    """Lazy bool ``(y, x)``: target pixel centres that fall inside ``source``'s raster."""
    inverse = ~source.transform

    def block(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        col_c, row_c = np.meshgrid(cols[0] + 0.5, rows[:, 0] + 0.5)
        x_any, y_any = target.transform @ (col_c, row_c)  # affine's stubs say float
        x, y = np.asarray(x_any), np.asarray(y_any)
        if source_crs != target_crs:
            from rasterio.warp import transform as warp_transform

            xs, ys = warp_transform(target_crs, source_crs, x.ravel(), y.ravel())
            x, y = np.asarray(xs).reshape(x.shape), np.asarray(ys).reshape(y.shape)
        src_col, src_row = inverse @ (x, y)
        return ((src_col >= 0) & (src_col <= source.width)
                & (src_row >= 0) & (src_row <= source.height))

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
        bad = ~xr.apply_ufunc(np.isfinite, arr, dask="allowed").all("band")
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
        valid = valid & xr.DataArray(footprint, dims=("y", "x"),
                                     coords={"y": valid.y, "x": valid.x})
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
