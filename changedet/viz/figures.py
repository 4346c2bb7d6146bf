"""Figures of scenes and results: true-colour stretches, change overlays, the pair grid of a
dataset and the distance histograms of a metric-learning model (matplotlib, imported lazily).
"""

from __future__ import annotations

import functools
import io as io_bytes
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from changedet.errors import ConfigError
from changedet.types import MASK_NODATA

if TYPE_CHECKING:
    import xarray as xr
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "CHANGE_COLOUR", "NODATA_COLOUR", "SceneLike", "stretch_limits", "true_colour",
    "true_colour_pair", "overlay", "pair_grid", "distance_histograms",
]



#: Default colour of changed pixels in overlays (vivid magenta: stands out on vegetation,
#: water and built-up areas alike).
CHANGE_COLOUR = "#ff00ff"


#: Colour of nodata pixels in overlays.
NODATA_COLOUR = "#9e9e9e"


#: Sentinel-2 true colour bands (red, green, blue).
_S2_RGB = ("B04", "B03", "B02")


_NAMED_RGB = ("red", "green", "blue")


SceneLike = Any  # xr.DataArray (band, y, x) or np.ndarray (band, h, w)


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
    valid = np.asarray(np.isfinite(data).all(axis=0))
    if nodata is not None and not math.isnan(float(nodata)):
        valid &= ~(data == np.float32(nodata)).any(axis=0)
    return data, valid


def _as_bool_mask(valid: Any, shape: tuple[int, int]) -> np.ndarray:
    arr = np.asarray(getattr(valid, "values", valid)).astype(bool)
    if arr.shape != shape:
        raise ConfigError(f"valid mask shape {arr.shape} does not match the image {shape}.")
    return arr


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
                ax.hist(values, bins=edges.tolist(), density=True, alpha=0.55, color=colour,
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
