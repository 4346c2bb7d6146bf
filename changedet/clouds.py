"""Clouds and cloud shadows are not change: per-date cloud masks that make those pixels nodata.

Two sources, chosen by ``cloud_mask`` in ``run`` (CLI ``--cloud-mask``):

* ``"auto"`` — on Sentinel-2 L1C input (bands B01, B02, B04, B05, B08, B8A, B09, B10, B11, B12
  present) with the ``clouds`` extra installed (``pip install 'changedet[clouds]'``: s2cloudless,
  whose LightGBM model ships in its wheel), each date's cloud probability is computed at 80 m
  (8 x 8 block means of the 10 m top-of-atmosphere reflectance), thresholded at 0.4, smoothed
  and dilated (s2cloudless' own post-processing, 240 m averaging, 160 m dilation). Shadows are
  the pixels within 1.2 km of a cloud whose NIR and SWIR-1 reflectance are both below 70 % of
  the other date's. Anything else
  (L2A, Landsat, RGB, no extra): nothing is masked, and the log says what was skipped;
* paths of mask rasters, one per date (``"SCL_1.tif,SCL_2.tif"``), on the pair's grid or
  resampled onto it (nearest): a Sentinel-2 L2A scene classification (file name containing
  ``SCL``: classes 3, 8, 9, 10 = cloud shadow, cloud medium/high probability, cirrus), a Landsat
  ``QA_PIXEL`` band (name containing ``QA_PIXEL``: bits 1-4, dilated cloud, cirrus, cloud,
  shadow), or any 0/1 raster (non-zero = masked).

The coarse masks are computed eagerly (one pass over the needed bands, a few MB for a whole
Sentinel-2 tile) before the main pass and upsampled lazily inside it, so tiled output still
equals whole-image output and memory stays flat.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr
from scipy import ndimage

from changedet.errors import ConfigError, GridMismatchError, option, render

log = logging.getLogger(__name__)

__all__ = ["CloudMasks", "S2CLOUDLESS_BANDS", "cloud_masks", "mask_from_raster"]

#: The Sentinel-2 bands s2cloudless takes, in its order.
S2CLOUDLESS_BANDS: tuple[str, ...] = (
    "B01", "B02", "B04", "B05", "B08", "B8A", "B09", "B10", "B11", "B12",
)  # fmt: skip
#: Coarse grid for cloud detection: 8 x 8 block means of the 10 m grid (80 m).
FACTOR = 8
#: s2cloudless settings at 80 m: probability threshold, averaging and dilation in coarse pixels.
THRESHOLD, AVERAGE_OVER, DILATION = 0.4, 3, 2
#: Shadow test: NIR (B08) and SWIR-1 (B11) below this fraction of the other date's ...
SHADOW_RATIO = 0.7
#: ... within this many coarse pixels (80 m each) of a cloud.
SHADOW_REACH = 15
#: Sentinel-2 L1C digital numbers per unit of reflectance.
S2_QUANTIFICATION = 10000.0
#: Scene classification classes masked: cloud shadow, cloud medium / high probability, cirrus.
SCL_MASKED = (3, 8, 9, 10)
#: Landsat QA_PIXEL bits masked: dilated cloud, cirrus, cloud, cloud shadow.
QA_PIXEL_BITS = (1, 2, 3, 4)


@dataclasses.dataclass(frozen=True)
class CloudMasks:
    """Per-date masks (True = cloud or shadow) on the pair's grid, lazy, and what made them.

    Attributes:
      before, after: ``(y, x)`` lazy bool arrays.
      source: ``"s2cloudless"``, ``"rasters"`` or ``"none"``.
      before_fraction, after_fraction: Share of each date's valid pixels masked.
    """

    before: da.Array | None
    after: da.Array | None
    source: str
    before_fraction: float = 0.0
    after_fraction: float = 0.0


def _upsample(coarse: np.ndarray, shape: tuple[int, int], chunks) -> da.Array:
    """The coarse mask repeated ``FACTOR`` x ``FACTOR`` onto the fine grid, lazily, block by
    block (each block reads only its own part of the small coarse array)."""

    def block(block_info=None) -> np.ndarray:
        (r0, r1), (c0, c1) = block_info[None]["array-location"]
        rows = np.arange(r0, r1) // FACTOR
        cols = np.arange(c0, c1) // FACTOR
        return coarse[np.ix_(rows, cols)]

    return da.map_blocks(block, chunks=chunks, dtype=bool, meta=np.array((), bool))


def _coarse_reflectance(arr: xr.DataArray, band_ids: Sequence[str], valid: da.Array,
                        offset: float) -> da.Array:
    """``(band, ceil(h/8), ceil(w/8))`` float32 mean TOA reflectance over valid pixels."""
    idx = [list(arr.band.values).index(b) for b in band_ids]
    data = arr.data[idx].astype(np.float32)
    height, width = data.shape[1:]
    ph, pw = (-height) % FACTOR, (-width) % FACTOR
    refl = (data - np.float32(offset)) / np.float32(S2_QUANTIFICATION)
    ok = valid.astype(np.float32)[None]
    refl = da.where(ok > 0, refl, np.float32(0))
    if ph or pw:
        refl = da.pad(refl, ((0, 0), (0, ph), (0, pw)), mode="constant")
        ok = da.pad(ok, ((0, 0), (0, ph), (0, pw)), mode="constant")
    chunk = 1024
    refl = refl.rechunk((len(idx), chunk, chunk))
    ok = ok.rechunk((1, chunk, chunk))
    total = da.coarsen(np.sum, refl, {1: FACTOR, 2: FACTOR})
    count = da.coarsen(np.sum, ok, {1: FACTOR, 2: FACTOR})
    return total / da.maximum(count, np.float32(1))


def _disk(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    return (r[:, None] ** 2 + r[None, :] ** 2) <= radius * radius


def _shadows(clouds: np.ndarray, coarse: np.ndarray, other: np.ndarray,
             band_ids: Sequence[str]) -> np.ndarray:
    """Cloud shadows: near this date's clouds, NIR and SWIR-1 both far darker than in the other
    date (a shadow dims every band; urban and water areas are dark in both dates, so an
    absolute darkness test alone would mask them)."""
    nir, swir = list(band_ids).index("B08"), list(band_ids).index("B11")
    darker = ((coarse[nir] < SHADOW_RATIO * other[nir])
              & (coarse[swir] < SHADOW_RATIO * other[swir]))
    near = ndimage.binary_dilation(clouds, structure=_disk(SHADOW_REACH))
    return darker & near & ~clouds


def _s2cloudless(coarse_dates: list[np.ndarray], band_ids: Sequence[str]) -> list[np.ndarray]:
    from s2cloudless import S2PixelCloudDetector

    detector = S2PixelCloudDetector(threshold=THRESHOLD, average_over=AVERAGE_OVER,
                                    dilation_size=DILATION, all_bands=False)
    cloud = []
    for coarse in coarse_dates:
        x = np.moveaxis(coarse, 0, -1)[None]  # (1, h, w, 10) in s2cloudless' band order
        x = np.clip(np.nan_to_num(x, nan=0.0), 0.0, 1.5)
        probability = detector.get_cloud_probability_maps(x)
        cloud.append(detector.get_mask_from_prob(probability)[0].astype(bool))
    first, second = coarse_dates
    return [cloud[0] | _shadows(cloud[0], first, second, band_ids),
            cloud[1] | _shadows(cloud[1], second, first, band_ids)]


def _fraction(mask: np.ndarray, valid_coarse: np.ndarray) -> float:
    n = int(valid_coarse.sum())
    return float((mask & valid_coarse).sum() / n) if n else 0.0


def auto_masks(pair, *, offset: float = 0.0) -> CloudMasks:
    """s2cloudless masks for a Sentinel-2 L1C pair, or ``source="none"`` with the reason logged.

    Args:
      pair: An opened :class:`~changedet.io.RasterPair`.
      offset: Digital-number offset to remove before scaling to reflectance (1000 for products
        of processing baseline 04.00 and later, i.e. acquired since 25 January 2022).
    """
    missing = [b for b in S2CLOUDLESS_BANDS if b not in pair.band_ids]
    if missing:
        log.info(render(
            "cloud mask 'auto' skipped: s2cloudless needs Sentinel-2 L1C bands %s; the input "
            f"lacks %s (pass {option('cloud_mask', ['BEFORE_MASK', 'AFTER_MASK'])} with e.g. "
            "the L2A SCL or Landsat QA_PIXEL rasters)"),
            ",".join(S2CLOUDLESS_BANDS), ",".join(missing))
        return CloudMasks(None, None, "none")
    try:
        import s2cloudless  # noqa: F401
    except ImportError:
        log.warning("cloud mask 'auto' skipped: install the clouds extra (pip install "
                    "'changedet[clouds]') to mask clouds with s2cloudless")
        return CloudMasks(None, None, "none")
    bands = list(S2CLOUDLESS_BANDS)
    valid = pair.valid.data
    coarse = [_coarse_reflectance(arr, bands, valid, offset) for arr in (pair.before, pair.after)]
    ok = _coarse_valid(valid)
    import dask

    coarse_b, coarse_a, ok_np = dask.compute(*coarse, ok)
    masks = _s2cloudless([coarse_b, coarse_a], bands)
    shape = pair.grid.shape
    chunks = pair.valid.data.chunks
    fractions = [_fraction(m, ok_np) for m in masks]
    return CloudMasks(_upsample(masks[0], shape, chunks), _upsample(masks[1], shape, chunks),
                      "s2cloudless", *fractions)


def _coarse_valid(valid: da.Array) -> da.Array:
    height, width = valid.shape
    ph, pw = (-height) % FACTOR, (-width) % FACTOR
    v = da.pad(valid, ((0, ph), (0, pw)), mode="constant") if (ph or pw) else valid
    v = v.rechunk((1024, 1024))
    return da.coarsen(np.any, v, {0: FACTOR, 1: FACTOR})


def mask_from_raster(path: str | Path, pair) -> da.Array:
    """A user's mask raster as a lazy bool array on the pair's grid (True = masked).

    SCL (name contains ``SCL``): classes 3, 8, 9, 10; ``QA_PIXEL``: bits 1-4; otherwise non-zero.
    A raster on another grid is resampled onto the pair's (nearest).

    Raises:
      GridMismatchError: The raster does not overlap the pair's grid.
    """
    from changedet import io

    path = Path(path)
    scene = io.open_scene(path)
    grid = io.scene_grid(scene)
    arr = scene.isel(band=0)
    if grid.shape != pair.grid.shape or grid.transform != pair.grid.transform:
        if pair.grid.crs is None or grid.crs is None:
            raise GridMismatchError(
                f"cloud mask {path} is {grid.size_px}, the scene {pair.grid.size_px}, and one is "
                "not georeferenced; pass a mask on the scene's grid.")
        from rasterio.enums import Resampling

        arr = arr.rio.reproject_match(pair.before.isel(band=0), resampling=Resampling.nearest)
    data = arr.data
    name = path.name.upper()
    if "SCL" in name:
        masked = da.isin(data, list(SCL_MASKED))
    elif "QA_PIXEL" in name:
        bits = sum(1 << b for b in QA_PIXEL_BITS)
        masked = (data.astype(np.uint32) & np.uint32(bits)) != 0
    else:
        masked = (data != 0) & da.isfinite(data)
    return masked.rechunk(pair.valid.data.chunks)


def cloud_masks(pair, cloud_mask: str | Sequence[str] | None, *, offset: float = 0.0
                ) -> CloudMasks:
    """The per-date masks ``run`` applies (see the module docs).

    Args:
      pair: The opened pair.
      cloud_mask: ``"auto"``, ``"none"``/None, or two raster paths (a comma-separated string
        or a sequence).
      offset: See :func:`auto_masks`.

    Raises:
      ConfigError: Not ``auto``/``none`` and not two paths.
    """
    if cloud_mask is None or cloud_mask == "none":
        return CloudMasks(None, None, "none")
    if cloud_mask == "auto":
        return auto_masks(pair, offset=offset)
    paths = cloud_mask.split(",") if isinstance(cloud_mask, str) else list(cloud_mask)
    paths = [p.strip() for p in paths if p.strip()]
    if len(paths) != 2:
        raise ConfigError(f"{option('cloud_mask')} takes auto, none or two mask rasters "
                          "(before, after); "
                          f"got {cloud_mask!r}.")
    before, after = (mask_from_raster(p, pair) for p in paths)
    import dask

    valid = pair.valid.data
    n, nb, na = dask.compute(valid.sum(), (before & valid).sum(), (after & valid).sum())
    n = max(int(n), 1)
    return CloudMasks(before, after, "rasters", int(nb) / n, int(na) / n)
