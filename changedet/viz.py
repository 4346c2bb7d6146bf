"""Pictures of scenes, change maps and training runs (matplotlib, imported lazily).

Every function returns a :class:`matplotlib.figure.Figure` built without ``pyplot``: no GUI
backend or display is ever needed (PNG files are rendered by the Agg canvas, headless), figures
do not pile up in pyplot's registry, and Jupyter shows a returned figure once, as a PNG. Call
``fig.savefig(path)`` to keep one. :func:`write_quicklook` is the one function doing I/O: it
reads a pair and a written mask through :mod:`changedet.io`, at reduced resolution for large
scenes, and writes a PNG atomically.

No other changedet module imports this one; it must not import jax.
"""

from __future__ import annotations

import functools
import io as io_bytes
import json
import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from changedet.atomic import atomic_path
from changedet.errors import ConfigError, GridMismatchError, InputNotFoundError
from changedet.types import MASK_NODATA, size_px

if TYPE_CHECKING:
    import xarray as xr
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

__all__ = [
    "CHANGE_COLOUR",
    "changed_area",
    "distance_histograms",
    "overlay",
    "pair_grid",
    "plot_loss_curve",
    "plot_pr_curve",
    "quicklook",
    "stretch_limits",
    "true_colour",
    "true_colour_pair",
    "write_quicklook",
]

#: Default colour of changed pixels in overlays (vivid magenta: stands out on vegetation,
#: water and built-up areas alike).
CHANGE_COLOUR = "#ff00ff"
#: Colour of nodata pixels in overlays.
NODATA_COLOUR = "#9e9e9e"
#: Sentinel-2 true colour bands (red, green, blue).
_S2_RGB = ("B04", "B03", "B02")
_NAMED_RGB = ("red", "green", "blue")
#: WGS84 semi-major axis (m) and first eccentricity squared, for geodesic pixel areas.
_WGS84_A_M = 6378137.0
_WGS84_E2 = 6.69437999014e-3
_M2_PER_HECTARE = 10_000.0

SceneLike = Any  # xr.DataArray (band, y, x) or np.ndarray (band, h, w)


# --------------------------------------------------------------------------------- helpers


@functools.cache
def _figure_class() -> type:
    """A :class:`~matplotlib.figure.Figure` that Jupyter displays as a PNG without pyplot."""
    from matplotlib.figure import Figure

    class ChangedetFigure(Figure):
        """A matplotlib Figure with a PNG rich display (IPython/Jupyter)."""

        def _repr_png_(self) -> bytes:
            buffer = io_bytes.BytesIO()
            self.savefig(buffer, format="png", bbox_inches="tight")
            return buffer.getvalue()

    return ChangedetFigure


def _figure(width_in: float, height_in: float) -> Figure:
    """A pyplot-free figure (renders with Agg on ``savefig``; shown once, inline, by Jupyter)."""
    return _figure_class()(figsize=(width_in, height_in), layout="constrained")


def _band_ids_of(scene: SceneLike) -> tuple[str, ...] | None:
    if hasattr(scene, "coords") and "band" in getattr(scene, "coords", {}):
        return tuple(str(b) for b in np.atleast_1d(scene.coords["band"].values))
    return None


def _num_bands(scene: SceneLike) -> int:
    shape = np.shape(scene)
    if len(shape) != 3:
        raise ConfigError(
            f"a scene must be a (band, height, width) array; got shape {tuple(shape)}. "
            "Add a band axis (arr[None]) for a single-band image."
        )
    return int(shape[0])


def _display_bands(
    band_ids: Sequence[str] | None, num_bands: int, bands: Sequence[Any] | None
) -> list[int]:
    """0-based indices of the (up to) three bands shown as red, green, blue.

    Explicit ``bands`` (ids or 1-based indices) win; else Sentinel-2 B04/B03/B02, else bands
    named red/green/blue, else the first three. A 1- or 2-band scene shows its first band grey.
    """
    ids = list(band_ids) if band_ids is not None else [str(i + 1) for i in range(num_bands)]
    if bands:
        chosen = []
        for band in list(bands)[:3]:
            text = str(band).strip()
            if text in ids:
                chosen.append(ids.index(text))
            elif text.isdigit() and 1 <= int(text) <= num_bands:
                chosen.append(int(text) - 1)
            else:
                raise ConfigError(
                    f"display band {band!r} is not in the scene (bands {', '.join(ids)}); pass "
                    "band ids or 1-based indices from that list."
                )
        return chosen if len(chosen) == 3 else [chosen[0]] * 3
    upper = [i.upper() for i in ids]
    if all(b in upper for b in _S2_RGB):
        return [upper.index(b) for b in _S2_RGB]
    lower = [i.lower() for i in ids]
    if all(b in lower for b in _NAMED_RGB):
        return [lower.index(b) for b in _NAMED_RGB]
    if num_bands >= 3:
        return [0, 1, 2]
    return [0, 0, 0]


def _rgb_bands(scene: SceneLike, bands: Sequence[Any] | None) -> tuple[np.ndarray, np.ndarray]:
    """The display bands as float32 ``(3, h, w)`` and their valid mask ``(h, w)`` (computed)."""
    index = _display_bands(_band_ids_of(scene), _num_bands(scene), bands)
    if hasattr(scene, "isel"):  # DataArray: read only the three bands
        nodata = scene.attrs.get("nodata")
        data = np.asarray(scene.isel(band=index).values, dtype=np.float32)
    else:
        nodata = None
        data = np.asarray(scene, dtype=np.float32)[index]
    valid = np.isfinite(data).all(axis=0)
    if nodata is not None and not math.isnan(float(nodata)):
        valid &= ~(data == np.float32(nodata)).any(axis=0)
    return data, valid


def _as_bool_mask(valid: Any, shape: tuple[int, int]) -> np.ndarray:
    arr = np.asarray(getattr(valid, "values", valid)).astype(bool)
    if arr.shape != shape:
        raise ConfigError(f"valid mask shape {arr.shape} does not match the image {shape}.")
    return arr


# ------------------------------------------------------------------------------ true colour


def _percentile_limits(
    parts: Sequence[tuple[np.ndarray, np.ndarray]], percentiles: tuple[float, float]
) -> np.ndarray:
    """``(3, 2)`` limits pooled over ``(data (3, h, w), valid (h, w))`` parts."""
    low_pct, high_pct = percentiles
    if not 0 <= low_pct < high_pct <= 100:
        raise ConfigError(f"percentiles must satisfy 0 <= low < high <= 100; got {percentiles}.")
    limits = np.zeros((3, 2), dtype=np.float64)
    for k in range(3):
        values = np.concatenate([data[k][ok] for data, ok in parts])
        if values.size == 0:
            limits[k] = (0.0, 1.0)
            continue
        low, high = np.percentile(values, [low_pct, high_pct])
        if not high > low:  # constant band: avoid a division by zero
            high = low + 1.0
        limits[k] = (low, high)
    return limits


def _stretch(data: np.ndarray, ok: np.ndarray, limits: np.ndarray) -> np.ndarray:
    """``(3, h, w)`` values -> ``(h, w, 3)`` float32 in ``[0, 1]``; invalid pixels black."""
    limits = np.asarray(limits, dtype=np.float64)
    if limits.shape != (3, 2):
        raise ConfigError(
            f"limits must have shape (3, 2) ([low, high] per band); got {limits.shape}."
        )
    low = limits[:, 0].astype(np.float32)[:, None, None]
    span = np.maximum(limits[:, 1] - limits[:, 0], 1e-12).astype(np.float32)[:, None, None]
    rgb = np.clip((data - low) / span, 0.0, 1.0)
    rgb = np.where(ok[None], rgb, np.float32(0.0))
    return np.ascontiguousarray(np.moveaxis(rgb, 0, -1), dtype=np.float32)


def _valid_bands(
    scene: SceneLike, bands: Sequence[Any] | None, valid: Any
) -> tuple[np.ndarray, np.ndarray]:
    data, ok = _rgb_bands(scene, bands)
    if valid is not None:
        ok &= _as_bool_mask(valid, ok.shape)
    return data, ok


def stretch_limits(
    *scenes: SceneLike,
    bands: Sequence[Any] | None = None,
    percentiles: tuple[float, float] = (2, 98),
    valid: Any = None,
) -> np.ndarray:
    """Per-band percentile limits pooled over the valid pixels of one or more scenes.

    Pass both dates to get one stretch for the pair, so equal reflectance shows as equal colour.

    Args:
      *scenes: ``(band, y, x)`` DataArrays (``attrs["nodata"]`` honoured) or arrays, same bands.
      bands: Display bands (ids or 1-based indices); default as :func:`true_colour`.
      percentiles: Lower and upper percentile, in ``[0, 100]``.
      valid: Optional ``(y, x)`` bool mask applied to every scene (e.g. ``RasterPair.valid``).

    Returns:
      ``(3, 2)`` float64 ``[low, high]`` per display band, in the scenes' units (``high > low``).

    Example:
      >>> stretch_limits(np.arange(12.0).reshape(3, 2, 2), percentiles=(0, 100)).tolist()
      [[0.0, 3.0], [4.0, 7.0], [8.0, 11.0]]
    """
    if not scenes:
        raise ConfigError("stretch_limits needs at least one scene.")
    return _percentile_limits([_valid_bands(s, bands, valid) for s in scenes], percentiles)


def true_colour(
    scene: xr.DataArray | np.ndarray,
    bands: Sequence[Any] | None = None,
    *,
    percentiles: tuple[float, float] = (2, 98),
    limits: np.ndarray | None = None,
    valid: Any = None,
) -> np.ndarray:
    """A display RGB image of a scene: three bands, percentile-stretched to ``[0, 1]``.

    Band choice: ``bands`` if given (ids or 1-based indices, red first); else Sentinel-2
    B04/B03/B02 when present; else bands named red/green/blue; else the first three (a 1- or
    2-band scene shows its first band in grey).

    Args:
      scene: ``(band, y, x)`` DataArray from :func:`changedet.io.open_scene` (only the three
        display bands are read) or a ``(band, h, w)`` array.
      bands: Display bands, red, green, blue.
      percentiles: Stretch percentiles over the valid pixels, ignored when ``limits`` is given.
      limits: ``(3, 2)`` ``[low, high]`` per band from :func:`stretch_limits` (share them
        between dates so colours compare; or use :func:`true_colour_pair`).
      valid: Optional ``(y, x)`` bool mask; pixels outside it (and nodata/NaN) are black.

    Returns:
      ``(h, w, 3)`` float32 in ``[0, 1]``.

    Example:
      >>> rgb = true_colour(np.arange(12.0).reshape(3, 2, 2), percentiles=(0, 100))
      >>> rgb.shape, float(rgb.min()), float(rgb.max())
      ((2, 2, 3), 0.0, 1.0)
    """
    data, ok = _valid_bands(scene, bands, valid)
    if limits is None:
        limits = _percentile_limits([(data, ok)], percentiles)
    return _stretch(data, ok, limits)


def true_colour_pair(
    before: SceneLike,
    after: SceneLike,
    bands: Sequence[Any] | None = None,
    *,
    percentiles: tuple[float, float] = (2, 98),
    valid: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Both dates as RGB with ONE stretch (limits pooled over both), so colours compare.

    Each date's three display bands are read once.

    Args:
      before, after: Scenes as for :func:`true_colour`, same bands and size.
      bands, percentiles, valid: As for :func:`stretch_limits`.

    Returns:
      ``(before_rgb, after_rgb)``, each ``(h, w, 3)`` float32 in ``[0, 1]``.
    """
    parts = [_valid_bands(s, bands, valid) for s in (before, after)]
    limits = _percentile_limits(parts, percentiles)
    return _stretch(*parts[0], limits), _stretch(*parts[1], limits)


def overlay(
    rgb: np.ndarray,
    mask: np.ndarray,
    *,
    colour: Any = CHANGE_COLOUR,
    alpha: float = 0.65,
    nodata_colour: Any = NODATA_COLOUR,
) -> np.ndarray:
    """Paints changed pixels (and nodata) over an RGB image.

    Args:
      rgb: ``(h, w, 3)`` float in ``[0, 1]`` or uint8 image.
      mask: ``(h, w)`` change mask: bool, or uint8 0 = no change, 1 = change, 255 = nodata.
      colour: Any matplotlib colour for changed pixels.
      alpha: Opacity of the change colour in ``[0, 1]``.
      nodata_colour: Colour painted (opaque) on nodata pixels; None leaves them as they are.

    Returns:
      ``(h, w, 3)`` float32 in ``[0, 1]``.
    """
    from matplotlib.colors import to_rgb

    image = np.asarray(rgb)
    if image.dtype == np.uint8:
        image = image.astype(np.float32) / 255.0
    image = np.asarray(image, dtype=np.float32)
    mask = np.asarray(mask)
    if image.ndim != 3 or image.shape[2] != 3 or mask.shape != image.shape[:2]:
        raise ConfigError(
            f"overlay needs an (h, w, 3) image and an (h, w) mask; got {image.shape} and "
            f"{mask.shape}."
        )
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must be in [0, 1]; got {alpha}.")
    out = image.copy()
    changed = mask == 1 if mask.dtype != bool else mask
    out[changed] = (1 - alpha) * out[changed] + alpha * np.asarray(to_rgb(colour), np.float32)
    if nodata_colour is not None and mask.dtype != bool:
        out[mask == MASK_NODATA] = np.asarray(to_rgb(nodata_colour), np.float32)
    return np.clip(out, 0.0, 1.0)


# ------------------------------------------------------------------------------- quicklook


def _score_limits(score: np.ndarray) -> tuple[float, float]:
    finite = score[np.isfinite(score)]
    if finite.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(finite, [1, 99.5])
    return float(low), float(high if high > low else low + 1e-6)


def _hatch_nodata(ax: Axes, nodata: np.ndarray) -> None:
    """Hatches the nodata area (over the grey fill of :func:`overlay`)."""
    if not nodata.any():
        return
    xlim, ylim = ax.get_xlim(), ax.get_ylim()
    rows, cols = np.arange(nodata.shape[0]), np.arange(nodata.shape[1])  # pixel centres
    ax.contourf(cols, rows, nodata.astype(np.float32), levels=[0.5, 1.5], colors="none",
                hatches=["////"])
    ax.set_xlim(xlim)
    ax.set_ylim(ylim)


def _image_axes(ax: Axes, image: np.ndarray, title: str, **kwargs: Any) -> Any:
    shown = ax.imshow(image, interpolation="nearest", **kwargs)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    return shown


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


# ----------------------------------------------------------------------------- change area


def _row_pixel_areas_m2(grid: Any, crs: Any, rows: np.ndarray) -> np.ndarray | None:
    """Area in m² of one pixel in each of ``rows`` (full-resolution row indices), or None.

    Projected CRS: ``|det(transform)|`` in the CRS's linear unit, converted to metres. Geographic
    CRS: exact area of the cell on the WGS84 ellipsoid between the row's edge latitudes (north-up
    grids), else ``|det|`` scaled by the meridian and parallel radii at the row centre.
    """
    if crs is None:
        return None
    t = grid.transform
    det = abs(t.a * t.e - t.b * t.d)
    if not crs.is_geographic:
        unit = crs.linear_units_factor[1] if crs.linear_units_factor else 1.0
        return np.full(rows.shape, det * unit * unit, dtype=np.float64)
    e = math.sqrt(_WGS84_E2)
    if t.b == 0 and t.d == 0:

        def authalic(lat_deg: np.ndarray) -> np.ndarray:
            s = np.sin(np.radians(lat_deg))
            return s / (1 - _WGS84_E2 * s * s) + np.log((1 + e * s) / (1 - e * s)) / (2 * e)

        lat_top = t.f + t.e * rows
        lat_bottom = lat_top + t.e
        b2 = _WGS84_A_M**2 * (1 - _WGS84_E2)
        return b2 * math.radians(abs(t.a)) / 2 * np.abs(authalic(lat_top) - authalic(lat_bottom))
    lat = np.radians(t.f + t.d * (grid.width / 2) + t.e * (rows + 0.5))  # row centre
    s2 = np.sin(lat) ** 2
    radius_n = _WGS84_A_M / np.sqrt(1 - _WGS84_E2 * s2)
    radius_m = _WGS84_A_M * (1 - _WGS84_E2) / (1 - _WGS84_E2 * s2) ** 1.5
    return det * math.radians(1) ** 2 * radius_m * radius_n * np.cos(lat)


def changed_area(mask: xr.DataArray) -> tuple[int, float | None]:
    """Changed pixels of a full-resolution mask and their area (streamed with dask).

    Args:
      mask: ``(y, x)`` or ``(1, y, x)`` lazy uint8 mask DataArray (0/1/255) with rioxarray CRS and
        transform, e.g. a ``run`` output opened with :func:`changedet.io.open_scene`.

    Returns:
      ``(changed_px, area_ha)``; ``area_ha`` is None when the mask has no CRS. Geographic CRSes
      use geodesic cell areas on the WGS84 ellipsoid.
    """
    from changedet.io import scene_grid

    if "band" in mask.dims:
        mask = mask.isel(band=0)
    grid = scene_grid(mask)
    per_row = np.asarray((mask == 1).sum("x").values, dtype=np.int64)
    changed_px = int(per_row.sum())
    areas = _row_pixel_areas_m2(grid, mask.rio.crs, np.arange(grid.height, dtype=np.float64))
    if areas is None:
        return changed_px, None
    return changed_px, float((per_row * areas).sum() / _M2_PER_HECTARE)


# ------------------------------------------------------------------------- write_quicklook


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
    pixel area (geodesic on the WGS84 ellipsoid for geographic CRSes), or pixels without a CRS.

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


# --------------------------------------------------------------------------- training plots


def _load_records(source: str | Path | Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            path = path / "metrics.jsonl"
        if not path.is_file():
            raise InputNotFoundError(
                f"{path}: no such file; pass a training workdir's metrics.jsonl (written by fit)."
            )
        records = []
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ConfigError(
                    f"{path}:{number}: not a JSON line ({err.msg}); pass an intact metrics.jsonl."
                ) from err
        source_name = str(path)
    else:
        records = list(source)
        source_name = "records"
    if not records or not all("loss" in r for r in records):
        raise ConfigError(
            f"{source_name}: needs one record per epoch with 'epoch' and 'loss' (as fit writes); "
            f"got {len(records)} records."
        )
    return records


def plot_loss_curve(metrics: str | Path | Sequence[Mapping[str, Any]]) -> Figure:
    """Training loss and F1 (train and validation) per epoch.

    Args:
      metrics: Path to ``metrics.jsonl`` (or the training workdir holding it), or the records
        themselves: dicts with ``epoch``, ``loss`` and optionally ``train_f1``, ``val_f1``.

    Returns:
      Figure with the loss axes (left) and an F1 axes (right, ``[0, 1]``); the best validation
      epoch is marked.

    Raises:
      InputNotFoundError: The file does not exist.
      ConfigError: The file or records hold no ``loss`` per epoch.
    """
    records = _load_records(metrics)
    epochs = [r.get("epoch", i + 1) for i, r in enumerate(records)]
    fig = _figure(6.5, 3.8)
    ax = fig.add_subplot()
    ax.plot(epochs, [r["loss"] for r in records], "o-", color="tab:blue", label="train loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax_f1 = ax.twinx()
    ax_f1.set_ylim(0, 1)
    ax_f1.set_ylabel("F1 (change class)")
    handles = ax.get_lines()[:]
    for key, style, colour, label in (
        ("train_f1", "^:", "tab:green", "train F1"),
        ("val_f1", "s--", "tab:orange", "validation F1"),
    ):
        points = [
            (e, r[key]) for e, r in zip(epochs, records, strict=True) if r.get(key) is not None
        ]
        if points:
            (line,) = ax_f1.plot(*zip(*points, strict=True), style, color=colour, label=label)
            handles.append(line)
            if key == "val_f1":
                best_epoch, best_f1 = max(points, key=lambda p: p[1])
                ax_f1.annotate(
                    f"best {best_f1:.3f}", (best_epoch, best_f1), textcoords="offset points",
                    xytext=(0, 8), ha="center", color=colour,
                )
    ax.legend(handles=handles, loc="center right", fontsize="small")
    ax.set_title("training")
    return fig


def plot_pr_curve(
    precision: Any,
    recall: Any,
    thresholds: Any,
    best: float | None = None,
) -> Figure:
    """Precision–recall curve and precision/recall/F1 against the threshold.

    Args:
      precision: ``(n,)`` precision at each threshold (e.g. ``metrics.pr_curve(...).precision``).
      recall: ``(n,)`` recall, same length.
      thresholds: ``(n,)`` ascending thresholds (score units; rule ``score > threshold``).
      best: Threshold to mark; default the one maximising F1.

    Returns:
      Figure with two axes: precision vs recall (with F1 iso-lines) and P/R/F1 vs threshold.
    """
    p = np.asarray(precision, dtype=np.float64)
    r = np.asarray(recall, dtype=np.float64)
    t = np.asarray(thresholds, dtype=np.float64)
    if not (p.shape == r.shape == t.shape) or p.ndim != 1 or p.size == 0:
        raise ConfigError(
            f"precision, recall and thresholds must be 1-D of one length; got {p.shape}, "
            f"{r.shape}, {t.shape}."
        )
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    k = int(np.argmax(f1)) if best is None else int(np.argmin(np.abs(t - best)))
    fig = _figure(10, 4)
    ax_pr, ax_t = fig.subplots(1, 2)
    grid = np.linspace(0.01, 1, 100)
    for level in (0.2, 0.4, 0.6, 0.8):
        with np.errstate(divide="ignore", invalid="ignore"):
            prec = level * grid / (2 * grid - level)
        keep = (prec > 0) & (prec <= 1)
        ax_pr.plot(grid[keep], prec[keep], color="0.8", linewidth=0.8)
        ax_pr.annotate(f"F1={level}", (grid[keep][-1], prec[keep][-1]), fontsize="x-small",
                       color="0.5")
    ax_pr.plot(r, p, color="tab:blue")
    ax_pr.plot(r[k], p[k], "o", color="tab:red",
               label=f"threshold {t[k]:.3g}: P {p[k]:.2f}, R {r[k]:.2f}, F1 {f1[k]:.2f}")
    ax_pr.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision",
              title="precision–recall")
    ax_pr.legend(loc="lower left", fontsize="small")
    ax_t.plot(t, p, label="precision")
    ax_t.plot(t, r, label="recall")
    ax_t.plot(t, f1, label="F1", color="black")
    ax_t.axvline(t[k], color="tab:red", linestyle="--", linewidth=1)
    ax_t.set(ylim=(0, 1.02), xlabel="threshold (score > threshold = change)", title="by threshold")
    ax_t.legend(fontsize="small")
    ax_t.grid(alpha=0.3)
    return fig


def _target_image(target: Any) -> np.ndarray:
    """A 0/1(/255) target as an RGB image: white change, black no change, grey nodata."""
    arr = np.asarray(getattr(target, "values", target))
    image = np.zeros(arr.shape + (3,), dtype=np.float32)
    image[arr == 1] = 1.0
    nodata = (arr == MASK_NODATA) | ~np.isfinite(arr.astype(np.float64))
    image[nodata] = 0.62
    return image


def pair_grid(
    rows: Sequence[tuple[Any, Any, Any, Any, Any]],
    *,
    names: Sequence[str] | None = None,
    bands: Sequence[Any] | None = None,
) -> Figure:
    """A grid of samples: before, after, target, predicted, score for each row.

    Args:
      rows: ``(before, after, target, predicted, score)`` per sample: two ``(band, h, w)``
        scenes (one shared stretch per row), the ``(h, w)`` 0/1 reference (255 or NaN =
        unlabelled; None to leave blank), the ``(h, w)`` 0/1/255 prediction and the ``(h, w)``
        float score.
      names: Row labels (e.g. scene names).
      bands: Display bands (see :func:`true_colour`).

    Returns:
      Figure with ``len(rows) x 5`` axes.
    """
    if not rows:
        raise ConfigError(
            "pair_grid needs at least one (before, after, target, predicted, score) row."
        )
    if names is not None and len(names) != len(rows):
        raise ConfigError(f"pair_grid: {len(names)} names for {len(rows)} rows.")
    import matplotlib

    cmap = matplotlib.colormaps["magma"].with_extremes(bad=NODATA_COLOUR)
    fig = _figure(2.4 * 5, 2.4 * len(rows) + 0.3)
    axes = np.atleast_2d(fig.subplots(len(rows), 5, squeeze=False))
    titles = ("before", "after", "target", "predicted", "score")
    for i, (before, after, target, predicted, score) in enumerate(rows):
        before_rgb, after_rgb = true_colour_pair(before, after, bands)
        score = np.asarray(getattr(score, "values", score), dtype=np.float32)
        vmin, vmax = _score_limits(score)
        panels = [
            (before_rgb, {}),
            (after_rgb, {}),
            (None if target is None else _target_image(target), {}),
            (_target_image(predicted), {}),
            (np.ma.masked_invalid(score), {"cmap": cmap, "vmin": vmin, "vmax": vmax}),
        ]
        for j, (image, kwargs) in enumerate(panels):
            ax = axes[i, j]
            if image is None:
                ax.set_axis_off()
                ax.text(0.5, 0.5, "no label", ha="center", va="center", transform=ax.transAxes)
                continue
            _image_axes(ax, image, titles[j] if i == 0 else "", **kwargs)
        if names is not None:
            axes[i, 0].set_ylabel(names[i])
    return fig


def distance_histograms(
    distances: Any,
    label: Any,
    valid: Any,
    *,
    threshold: float | None = None,
    margin: float | None = None,
    num_bins: int = 60,
) -> Figure:
    """Histograms of the change score (embedding distance) of changed vs unchanged pixels.

    A well-trained Siamese model pushes unchanged pixels towards 0 and changed ones beyond the
    contrastive margin; overlap between the two histograms is where errors come from.

    Args:
      distances: ``(h, w)`` float scores (or a list of them, one per scene).
      label: Matching 0/1 reference map(s).
      valid: Matching bool mask(s); invalid and non-finite pixels are ignored.
      threshold: Decision threshold to mark.
      margin: Contrastive margin to mark.
      num_bins: Histogram bins over the pooled range.

    Returns:
      Figure with one axes (density, log scale) holding the two histograms.
    """
    def as_list(x: Any) -> list[np.ndarray]:
        return [np.asarray(a) for a in x] if isinstance(x, (list, tuple)) else [np.asarray(x)]

    ds, labels, valids = as_list(distances), as_list(label), as_list(valid)
    if not (len(ds) == len(labels) == len(valids)):
        raise ConfigError(
            f"distance_histograms needs as many label and valid maps as score maps; got "
            f"{len(ds)}, {len(labels)}, {len(valids)}."
        )
    changed, unchanged = [], []
    for d, lab, ok in zip(ds, labels, valids, strict=True):
        if not d.shape == lab.shape == ok.shape:
            raise ConfigError(
                f"score {d.shape}, label {lab.shape} and valid {ok.shape} differ in shape."
            )
        d = d.astype(np.float64)
        keep = ok.astype(bool) & np.isfinite(d)
        changed.append(d[keep & (lab == 1)])
        unchanged.append(d[keep & (lab == 0)])
    changed_all, unchanged_all = np.concatenate(changed), np.concatenate(unchanged)
    both = np.concatenate([changed_all, unchanged_all])
    fig = _figure(6.5, 3.8)
    ax = fig.add_subplot()
    if both.size:
        edges = np.linspace(both.min(), max(both.max(), both.min() + 1e-6), num_bins + 1)
        for values, colour, name in (
            (unchanged_all, "tab:blue", "unchanged"),
            (changed_all, CHANGE_COLOUR, "changed"),
        ):
            if values.size:
                ax.hist(values, bins=edges, density=True, alpha=0.55, color=colour,
                        label=f"{name} ({values.size:,} px)")
        ax.set_yscale("log")
    for value, style, name in ((threshold, "--", "threshold"), (margin, ":", "margin")):
        if value is not None:
            ax.axvline(value, color="black", linestyle=style, label=f"{name} {value:.3g}")
    ax.set_xlabel("change score (distance)")
    ax.set_ylabel("density")
    ax.set_title("score of changed vs unchanged pixels")
    ax.legend(fontsize="small")
    return fig
