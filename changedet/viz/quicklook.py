"""The run quicklook: before, after, score and mask side by side with the changed area, drawn
in memory (``quicklook``) or from written outputs (``write_quicklook``, decimated reads so memory
stays flat), and the changed area of a mask on its grid (``changed_area``).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from changedet.errors import ConfigError, GridMismatchError
from changedet.io.area import M2_PER_HECTARE, row_pixel_areas_m2
from changedet.io.atomic import atomic_path
from changedet.types import MASK_NODATA, size_px

if TYPE_CHECKING:
    import xarray as xr
    from matplotlib.figure import Figure
from changedet.viz.figures import (
    _S2_RGB,
    CHANGE_COLOUR,
    NODATA_COLOUR,
    SceneLike,
    _display_bands,
    _figure,
    _hatch_nodata,
    _image_axes,
    _score_limits,
    overlay,
    true_colour_pair,
)

__all__ = ["logger", "quicklook", "changed_area", "write_quicklook"]

logger = logging.getLogger(__name__)








def quicklook(
    before: SceneLike,
    after: SceneLike,
    score: np.ndarray | None,
    mask: np.ndarray,
    *,
    title: str | None = None,
    bands: Sequence[Any] | None = None,
    threshold: float | None = None,
    colour: Any = CHANGE_COLOUR,
    panel_in: float = 4.0,
) -> Figure:
    """Before, after, score and change overlay side by side.

    The two dates share one stretch; the overlay paints changed pixels in ``colour`` over the
    ``after`` image, nodata grey and hatched.

    Args:
      before, after: ``(band, y, x)`` scenes (DataArray or array) on one grid.
      score: ``(h, w)`` float change score (NaN = invalid), or None to leave the panel out.
      mask: ``(h, w)`` uint8: 0 no change, 1 change, 255 nodata (as written by ``run``).
      title: Figure title.
      bands: Display bands (see :func:`true_colour`).
      threshold: Decision threshold, marked on the score colour bar.
      colour: Colour of changed pixels.
      panel_in: Width of the longer side of a panel, in inches.

    Returns:
      Figure with one image axes per panel (4, or 3 without ``score``) plus a colour-bar axes
      for the score.
    """
    mask = np.asarray(getattr(mask, "values", mask))
    valid = mask != MASK_NODATA
    before_rgb, after_rgb = true_colour_pair(before, after, bands, valid=valid)
    if before_rgb.shape[:2] != mask.shape:
        raise GridMismatchError(
            f"quicklook: scenes are {size_px(*before_rgb.shape[:2])} but the mask is "
            f"{size_px(*mask.shape[-2:])}; pass a mask on the scenes' grid."
        )
    num_panels = 3 if score is None else 4
    height, width = mask.shape
    panel_w, panel_h = (panel_in, panel_in * height / width) if width >= height else (
        panel_in * width / height, panel_in)
    colour_bar_in = 0.9 if score is not None else 0.0
    fig = _figure(panel_w * num_panels + colour_bar_in + 0.1 * num_panels, panel_h + 0.9)
    axes = fig.subplots(1, num_panels)
    _image_axes(axes[0], before_rgb, "before")
    _image_axes(axes[1], after_rgb, "after")
    if score is not None:
        import matplotlib

        score = np.asarray(getattr(score, "values", score), dtype=np.float32)
        cmap = matplotlib.colormaps["magma"].with_extremes(bad=NODATA_COLOUR)
        vmin, vmax = _score_limits(score)
        shown = _image_axes(axes[2], np.ma.masked_invalid(score), "change score", cmap=cmap,
                            vmin=vmin, vmax=vmax)
        bar = fig.colorbar(shown, ax=axes[2], shrink=0.8)
        if threshold is not None and vmin <= threshold <= vmax:
            bar.ax.axhline(threshold, color="cyan", linewidth=2)
            bar.set_label(f"score (threshold {threshold:.3g})")
    ax = axes[-1]
    _image_axes(ax, overlay(after_rgb, mask, colour=colour), "change over after")
    _hatch_nodata(ax, ~valid)
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=colour, label="change")]
    if (~valid).any():
        handles.append(Patch(facecolor=NODATA_COLOUR, hatch="////", label="nodata"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncols=len(handles),
              fontsize="small", frameon=False)  # below the image: hides no pixel
    if title:
        fig.suptitle(title)
    return fig


def changed_area(mask: xr.DataArray) -> tuple[int, float | None]:
    """Changed pixels of a full-resolution mask and their area (streamed with dask).

    Args:
      mask: ``(y, x)`` or ``(1, y, x)`` lazy uint8 mask DataArray (0/1/255) with rioxarray CRS and
        transform, e.g. a ``run`` output opened with :func:`changedet.io.open_scene`.

    Returns:
      ``(changed_px, area_ha)``; ``area_ha`` is None when the mask has no CRS. Areas come from
      :mod:`changedet.io.area` (geodesic on the CRS's ellipsoid for geographic CRSes), as a
      vector file's ``area_m2`` does.
    """
    from changedet.io import scene_grid

    if "band" in mask.dims:
        mask = mask.isel(band=0)
    grid = scene_grid(mask)
    per_row = np.asarray((mask == 1).sum("x").values, dtype=np.int64)
    changed_px = int(per_row.sum())
    rows = np.flatnonzero(per_row)  # geodesic areas only where something changed
    areas = row_pixel_areas_m2(grid, mask.rio.crs, rows.astype(np.float64))
    if areas is None:
        return changed_px, None
    return changed_px, float((per_row[rows] * areas).sum() / M2_PER_HECTARE)


def _decimate_mask(mask: Any, factor: int) -> np.ndarray:
    """Display mask at ``1/factor`` resolution: change if any pixel of a cell changed, nodata if
    all are nodata, else no change. Shape ``ceil(h / factor), ceil(w / factor)``."""
    import dask.array as da

    data = mask.data
    if factor == 1:
        return np.asarray(data.compute() if hasattr(data, "compute") else data, dtype=np.uint8)
    height, width = data.shape
    pad = ((0, -height % factor), (0, -width % factor))
    changed = da.pad(data == 1, pad, constant_values=False)
    nodata = da.pad(data == MASK_NODATA, pad, constant_values=True)
    chunks = tuple(max(factor, (c // factor) * factor) for c in (1024, 1024))
    changed = changed.rechunk(chunks)
    nodata = nodata.rechunk(chunks)
    any_changed = da.coarsen(np.any, changed, {0: factor, 1: factor})
    all_nodata = da.coarsen(np.all, nodata, {0: factor, 1: factor})
    any_changed, all_nodata = da.compute(any_changed, all_nodata)
    out = np.zeros(any_changed.shape, dtype=np.uint8)
    out[all_nodata] = MASK_NODATA
    out[any_changed] = 1
    return out


def _format_area(changed_px: int, area_ha: float | None, valid_px: int) -> str:
    share = f"{100.0 * changed_px / valid_px:.2f} % of valid" if valid_px else "no valid pixel"
    if area_ha is None:
        return f"{changed_px:,} px changed ({share}; no CRS, so no area)"
    return f"{area_ha:,.1f} ha changed ({changed_px:,} px, {share})"


def write_quicklook(
    path: str | Path,
    before: str | Path,
    after: str | Path,
    mask_path: str | Path,
    *,
    align: bool = False,
    bands: Sequence[Any] | None = None,
    overwrite: bool = False,
    max_px: int = 2048,
    score_path: str | Path | None = None,
    panel_px: int = 512,
    dpi: int = 100,
    band_names: Sequence[str] | str | None = None,
) -> Path:
    """Writes a PNG quicklook of a run: before, after, (score,) change overlay; area in the title.

    Each panel shows the scene at ``min(panel_px, max_px)`` pixels on its longer side, pixel for
    pixel: larger scenes are read decimated (every ``k``-th pixel, ``k`` the smallest integer that
    fits), chunk by chunk, so memory stays small even on a 10980² Sentinel-2 tile, and the
    displayed mask marks a cell changed if any of its pixels changed (small changes stay
    visible). The changed area is counted on the full-resolution mask: hectares from the
    pixel area (:mod:`changedet.io.area`: geodesic on the CRS's ellipsoid for geographic
    CRSes), or pixels without a CRS.

    Args:
      path: PNG to write (written to a temporary name in the same folder, then renamed).
      before, after: The scenes given to ``run`` (files or band folders).
      mask_path: The change mask ``run`` wrote (uint8 0/1/255 on the grid of ``before``).
      align: As given to ``run`` (resample ``after`` onto ``before``'s grid).
      bands: Bands given to ``run``; the display uses B04/B03/B02 when the scene has them, else
        the first three of ``bands``, else the scene's first three.
      overwrite: Replace an existing PNG.
      max_px: Cap on the read (and displayed) side of a panel, in pixels.
      score_path: Optional score GeoTIFF from ``run``; adds the score panel.
      panel_px: Longer side of a panel in the PNG, in pixels (raise it for more detail).
      dpi: PNG resolution (only changes the size of the text relative to the panels).
      band_names: As given to ``run`` (the files' band ids, e.g. Landsat common names), so
        the display finds red, green and blue.

    Returns:
      The PNG path.

    Raises:
      OutputError: ``path`` exists (and not ``overwrite``), or its folder is missing.
      InputNotFoundError, NotARasterError, GridMismatchError: Bad inputs, or a mask (or score)
        not on the grid of ``before``.
    """
    from changedet import io

    out = io.check_output_path(path, inputs=(before, after, mask_path), overwrite=overwrite)
    if min(max_px, panel_px) < 16:
        raise ConfigError(f"max_px and panel_px must be >= 16; got {max_px} and {panel_px}.")
    pair = io.open_pair(before, after, align=align, band_names=band_names)
    with warnings.catch_warnings():  # an ungeoreferenced pair has an ungeoreferenced mask
        warnings.simplefilter("ignore", io.UngeoreferencedWarning)
        mask = io.open_scene(mask_path)
        score = io.open_scene(score_path) if score_path is not None else None
    for name, raster in (("mask", mask), ("score", score)):
        if raster is not None and (raster.sizes["y"], raster.sizes["x"]) != pair.grid.shape:
            raise GridMismatchError(
                f"{raster.attrs['source']}: {name} is "
                f"{size_px(raster.sizes['y'], raster.sizes['x'])} but {before} is "
                f"{pair.grid.size_px}; pass the {name} written for this pair."
            )
    tags = _read_tags(Path(mask_path))
    changed_px, area_ha = changed_area(mask)
    valid_px = int((mask.isel(band=0) != MASK_NODATA).sum().values)

    height, width = pair.grid.shape
    display_px = min(max_px, panel_px)
    factor = max(1, math.ceil(max(height, width) / display_px))
    step = slice(None, None, factor)
    display = _display_bands(pair.band_ids, len(pair.band_ids), _s2_or(bands, pair.band_ids))
    before_small = pair.before.isel(band=display, y=step, x=step)  # 3 bands, decimated
    after_small = pair.after.isel(band=display, y=step, x=step)
    mask_small = _decimate_mask(mask.isel(band=0), factor)
    score_small = None
    if score is not None:
        score_small = np.asarray(score.isel(band=0, y=step, x=step).values, dtype=np.float32)

    method = tags.get("method", "change")
    if tags.get("model"):
        method += f" ({tags['model']})"
    title = f"{method}: {_format_area(changed_px, area_ha, valid_px)}"
    if factor > 1:
        title += f"  [shown at 1/{factor} resolution]"
    threshold = _float_or_none(tags.get("threshold"))
    fig = quicklook(
        before_small, after_small, score_small, mask_small, title=title, bands=(1, 2, 3),
        threshold=threshold,
        # 5 % spare room: the image is drawn a little enlarged, never shrunk, so nearest
        # resampling keeps every displayed pixel (a one-cell change never disappears); small
        # scenes are enlarged to at least 3 inches so titles fit
        panel_in=max(3.0, 1.05 * max(mask_small.shape) / dpi),
    )
    with atomic_path(out) as temp:
        fig.savefig(temp, format="png", dpi=dpi)
    logger.info("wrote quicklook %s (%s)", out, title)
    return out


def _s2_or(bands: Sequence[Any] | None, band_ids: Sequence[str]) -> Sequence[Any] | None:
    """Display bands for a run's ``bands``: None (auto) when the scene has true colour bands."""
    upper = {b.upper() for b in band_ids}
    if all(b in upper for b in _S2_RGB):
        return None
    return bands


def _float_or_none(text: Any) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _read_tags(path: Path) -> dict[str, str]:
    """GDAL metadata tags of a raster (``method``, ``threshold`` of a ``run`` output)."""
    import rasterio

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(path) as ds:
            return dict(ds.tags())
