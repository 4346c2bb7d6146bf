"""Synthetic GeoTIFF pairs with a planted change, for tests (public, like ``odc.geo.testutils``).

Writes real georeferenced rasters with rasterio: a UTM CRS, an affine transform, uint16 (or
other) bands, a nodata border and a change rectangle whose label is returned, so a test can assert
the change is found where it was put. Must not import jax.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS

from changedet.errors import ConfigError

__all__ = ["SyntheticPair", "write_synthetic_pair", "write_variant"]

#: Top-left corner (metres, UTM) and pixel size of synthetic scenes.
_ORIGIN_XY_M = (500_000.0, 5_000_000.0)
_PIXEL_SIZE_M = 10.0


class SyntheticPair(NamedTuple):
    """Paths of a written pair and its truth.

    Attributes:
      before_path: GeoTIFF of the first date.
      after_path: GeoTIFF of the second date.
      label: ``(height, width)`` uint8, 1 inside the planted change box, else 0.
      valid: ``(height, width)`` bool, False where either date holds nodata.
    """

    before_path: Path
    after_path: Path
    label: np.ndarray
    valid: np.ndarray


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Spatially correlated noise in [0, 1], ``shape`` float64 (a blurred random field)."""
    field = rng.random((shape[0] + 4, shape[1] + 4))
    kernel = np.ones(5) / 5.0
    field = np.apply_along_axis(np.convolve, 0, field, kernel, mode="valid")
    field = np.apply_along_axis(np.convolve, 1, field, kernel, mode="valid")
    field -= field.min()
    return field / max(field.max(), 1e-12)


def _write(
    path: Path, data: np.ndarray, *, crs: str | None, transform: Affine, nodata: float | None
) -> None:
    profile = {
        "driver": "GTiff",
        "height": data.shape[1],
        "width": data.shape[2],
        "count": data.shape[0],
        "dtype": data.dtype.name,
        "transform": transform,
        "nodata": nodata,
    }
    if crs is not None:
        profile["crs"] = CRS.from_user_input(crs)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)


def write_synthetic_pair(
    directory: str | Path,
    *,
    shape: tuple[int, int] = (45, 61),
    num_bands: int = 4,
    dtype: str = "uint16",
    crs: str | None = "EPSG:32633",
    nodata: float | None = 0,
    seed: int = 0,
    change_box: tuple[int, int, int, int] = (12, 20, 27, 41),
    border_px: int = 2,
) -> SyntheticPair:
    """Writes ``before.tif``/``after.tif`` into ``directory`` with a planted change rectangle.

    Both dates share a textured background (``after`` = ``before`` + small noise); inside
    ``change_box`` the ``after`` bands are replaced by a different, brighter texture. ``before``
    has a ``border_px`` nodata frame and ``after`` a nodata notch in its bottom-right corner, so
    the joint valid mask differs from either date's.

    Args:
      directory: Existing folder to write into.
      shape: ``(height, width)`` in pixels.
      num_bands: Bands per date.
      dtype: Numpy dtype name of the rasters (integer or float).
      crs: CRS of both dates, or None for ungeoreferenced images (identity transform).
      nodata: Nodata value written and declared (None: no nodata, border pixels stay valid).
      seed: Random seed.
      change_box: ``(row0, col0, row1, col1)`` half-open pixel rectangle of planted change,
        clipped to ``shape``.
      border_px: Width of the nodata frame of ``before``.

    Returns:
      :class:`SyntheticPair` with the paths, the ``(height, width)`` uint8 label and valid mask.
    """
    directory = Path(directory)
    rng = np.random.default_rng(seed)
    height, width = shape
    is_float = np.issubdtype(np.dtype(dtype), np.floating)
    scale, offset = (1.0, 0.0) if is_float else (2000.0, 500.0)
    if np.dtype(dtype) == np.uint8:
        scale, offset = 150.0, 20.0
    before = np.stack([offset + scale * _smooth_noise(rng, shape) for _ in range(num_bands)])
    after = before + 0.02 * scale * rng.standard_normal(before.shape)
    row0, col0, row1, col1 = change_box
    row1, col1 = min(row1, height), min(col1, width)  # clip the box to the raster
    if not (0 <= row0 < row1 and 0 <= col0 < col1):
        raise ConfigError(f"change_box {change_box} is empty inside a {shape} raster")
    label = np.zeros(shape, dtype=np.uint8)
    label[row0:row1, col0:col1] = 1
    for band in range(num_bands):
        patch = _smooth_noise(rng, (row1 - row0, col1 - col0))
        after[band, row0:row1, col0:col1] = offset + scale * (0.8 + 0.4 * patch)
    valid = np.ones(shape, dtype=bool)
    if nodata is not None:
        # keep real pixels off the nodata value
        low = nodata + 1 if not is_float else nodata + 1e-3
        before = np.where(before == nodata, low, before)
        after = np.where(after == nodata, low, after)
        if border_px > 0:
            frame = np.zeros(shape, dtype=bool)
            frame[:border_px, :] = frame[-border_px:, :] = True
            frame[:, :border_px] = frame[:, -border_px:] = True
            before[:, frame] = nodata
            valid &= ~frame
        notch = np.zeros(shape, dtype=bool)
        notch[-max(height // 6, 1) :, -max(width // 6, 1) :] = True
        after[:, notch] = nodata
        valid &= ~notch
    if not is_float:
        info = np.iinfo(np.dtype(dtype))
        before = np.clip(np.rint(before), info.min, info.max)
        after = np.clip(np.rint(after), info.min, info.max)
    transform = (
        Affine.translation(*_ORIGIN_XY_M) @ Affine.scale(_PIXEL_SIZE_M, -_PIXEL_SIZE_M)
        if crs is not None
        else Affine.identity()
    )
    before_path, after_path = directory / "before.tif", directory / "after.tif"
    _write(before_path, before.astype(dtype), crs=crs, transform=transform, nodata=nodata)
    _write(after_path, after.astype(dtype), crs=crs, transform=transform, nodata=nodata)
    return SyntheticPair(before_path, after_path, label, valid)


def write_variant(
    src_path: str | Path,
    dst_path: str | Path,
    *,
    crs: str | None | Literal[True] = True,
    shift_px: tuple[float, float] = (0.0, 0.0),
    pixel_scale: float = 1.0,
    bands: list[int] | None = None,
    band_descriptions: list[str] | None = None,
) -> Path:
    """Copies a raster with a changed grid or bands: a mismatched partner for error tests.

    Args:
      src_path: Raster to copy (pixels are copied unchanged, only metadata differs).
      dst_path: Output GeoTIFF.
      crs: New CRS string; ``True`` keeps the source CRS, ``None`` drops it.
      shift_px: ``(col, row)`` shift of the origin in source pixels (e.g. ``(1e6, 0)`` to make
        the extents disjoint).
      pixel_scale: Factor applied to the pixel size (e.g. ``1.01``).
      bands: 1-based band indexes to keep (default all).
      band_descriptions: Descriptions to set on the written bands.

    Returns:
      ``dst_path`` as a Path.
    """
    dst_path = Path(dst_path)
    with rasterio.open(src_path) as src:
        data = src.read(bands) if bands is not None else src.read()
        t = src.transform
        new_crs = (src.crs.to_string() if src.crs is not None else None) if crs is True else crs
        origin_x, origin_y = t @ shift_px
        transform = Affine(t.a * pixel_scale, t.b, origin_x, t.d, t.e * pixel_scale, origin_y)
        nodata = src.nodata
    _write(dst_path, data, crs=new_crs, transform=transform, nodata=nodata)
    if band_descriptions is not None:
        with rasterio.open(dst_path, "r+") as dst:
            for i, description in enumerate(band_descriptions, start=1):
                dst.set_band_description(i, description)
    return dst_path
