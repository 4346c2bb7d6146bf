"""Measures the misregistration between the two dates of a pair (phase correlation).

Convention: a :class:`Shift` says where ``before``'s content appears in ``after``, in pixels of
``before``'s grid, ``dx_px`` to the right (columns) and ``dy_px`` down (rows). If ``after`` is
``before`` moved 2 px to the right, ``dx_px == +2``.

Method: the scene is cut into a grid of square blocks (sampled evenly on large scenes, so only
those windows are read); in each block every chosen band is standardised, Hann-windowed and
Fourier transformed, the cross-power spectra of the bands are summed and normalised to unit
magnitude (phase correlation) and low-passed, the integer peak is found with an inverse FFT
and refined to ``1 / upsample`` px with a matrix-multiply DFT around it (Guizar-Sicairos et
al., Opt. Lett. 2008). The per-block shifts are combined by their median, so blocks with real
change do not bias the estimate; their robust spread (1.4826 MAD) is reported.

Pure NumPy, plus window reads of a :class:`changedet.io.RasterPair`'s lazy arrays; must not
import jax, rasterio or dask.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from changedet.bands import band_positions
from changedet.errors import (
    BandMismatchError,
    ConfigError,
    CoregistrationError,
    EmptySceneError,
    option,
)
from changedet.types import size_px

log = logging.getLogger(__name__)

__all__ = ["CoregistrationError", "Shift", "estimate_shift", "phase_correlate", "plan_blocks"]

#: Smallest block edge (and image side) phase correlation is attempted on, in pixels.
MIN_BLOCK_PX = 32
#: Sentinel-2 10 m bands: used by default when present (the 20/60 m ones are resampled, blurry).
_SHARP_BANDS = ("B02", "B03", "B04", "B08")
#: Scenes with at most this many values in the chosen bands are read whole, once.
_READ_WHOLE_MAX_VALUES = 16_000_000
#: Highest spatial frequency (cycles/px) the correlation uses.
_MAX_FREQUENCY = 0.3


@dataclasses.dataclass(frozen=True)
class Shift:
    """Where ``before``'s content appears in ``after``, in pixels of ``before``'s grid.

    Attributes:
      dx_px: Shift along columns, positive to the right.
      dy_px: Shift along rows, positive down.
      quality: Median over blocks of the correlation peak ratio (main peak over the highest
        peak more than 3 px away); about 1 means no match, above ~3 is a clear match.
      spread_px: Robust spread (1.4826 x median absolute deviation, combined over both axes)
        of the per-block shifts; 0 with one block.
      num_blocks: Blocks that gave an estimate.
    """

    dx_px: float
    dy_px: float
    quality: float
    spread_px: float
    num_blocks: int

    @property
    def magnitude_px(self) -> float:
        """Length of the shift vector in pixels."""
        return math.hypot(self.dx_px, self.dy_px)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (plain floats and ints)."""
        return {k: (int(v) if k == "num_blocks" else float(v))
                for k, v in dataclasses.asdict(self).items()}


# --------------------------------------------------------------------------------------------
# Pure phase correlation


def _hann(height: int, width: int) -> np.ndarray:
    return np.outer(np.hanning(height), np.hanning(width))


def _prepare(block: np.ndarray, valid: np.ndarray, window: np.ndarray) -> np.ndarray | None:
    """Standardised, windowed ``(band, h, w)`` float64, invalid pixels 0; None if flat."""
    out = np.zeros(block.shape, dtype=np.float64)
    num_used = 0
    for i, band in enumerate(block):
        values = band[valid].astype(np.float64)
        std = values.std() if values.size else 0.0
        if not np.isfinite(std) or std <= 1e-12 * max(1.0, abs(values.mean())):
            continue
        out[i] = np.where(valid, (band - values.mean()) / std, 0.0) * window
        num_used += 1
    return out if num_used else None


def _upsampled_dft(spectrum: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Inverse DFT of ``spectrum`` evaluated at fractional pixel ``rows`` x ``cols``."""
    height, width = spectrum.shape
    kern_r = np.exp(2j * np.pi * rows[:, None] * np.fft.fftfreq(height)[None, :])
    kern_c = np.exp(2j * np.pi * np.fft.fftfreq(width)[:, None] * cols[None, :])
    return kern_r @ spectrum @ kern_c / (height * width)


def _peak_ratio(surface: np.ndarray, row: int, col: int, radius: int = 3) -> float:
    height, width = surface.shape
    dr = np.minimum(np.abs(np.arange(height) - row), height - np.abs(np.arange(height) - row))
    dc = np.minimum(np.abs(np.arange(width) - col), width - np.abs(np.arange(width) - col))
    far = (dr[:, None] > radius) | (dc[None, :] > radius)
    second = surface[far].max() if far.any() else 0.0
    return float(surface[row, col] / max(second, 1e-12))


def phase_correlate(before: np.ndarray, after: np.ndarray, *, upsample: int = 50
                    ) -> tuple[float, float, float] | None:
    """Sub-pixel shift of ``after`` relative to ``before`` by multi-band phase correlation.

    Args:
      before: ``(band, height, width)`` float, standardised and windowed (see the module doc).
      after: Same shape.
      upsample: Sub-pixel refinement factor: the result is resolved to ``1 / upsample`` px.

    Returns:
      ``(dy_px, dx_px, peak_ratio)``: where ``before``'s content is in ``after`` (rows down,
      columns right), and the peak ratio; None if the spectra are empty.

    Example:
      >>> rng = np.random.default_rng(0)
      >>> a = rng.random((1, 64, 64))
      >>> dy, dx, _ = phase_correlate(a, np.roll(a, (3, -5), axis=(1, 2)))
      >>> round(dy, 2), round(dx, 2)
      (3.0, -5.0)
    """
    f_before = np.fft.fft2(before)
    f_after = np.fft.fft2(after)
    cross = (np.conj(f_before) * f_after).sum(axis=0)
    magnitude = np.abs(cross)
    if not magnitude.any():
        return None
    cross = cross / np.maximum(magnitude, 1e-12 * magnitude.max())
    # keep frequencies below 0.3 cycles/px: near Nyquist the phase is dominated by aliasing,
    # noise and the interpolation of the data, and biases the sub-pixel peak (by ~0.1 px
    # without this on OSCD blocks; ~0.005 px with it)
    height, width = cross.shape
    radius = np.hypot(np.fft.fftfreq(height)[:, None], np.fft.fftfreq(width)[None, :])
    cross = np.where(radius < _MAX_FREQUENCY, cross, 0.0)
    surface = np.fft.ifft2(cross).real
    row, col = np.unravel_index(int(np.argmax(surface)), surface.shape)
    ratio = _peak_ratio(surface, int(row), int(col))
    dy = row - height if row > height // 2 else float(row)
    dx = col - width if col > width // 2 else float(col)
    # refine on a 1.5 px neighbourhood at 1/upsample px, then once more around the new peak
    for step, half in ((1.0 / upsample, 1.5), (1.0 / (upsample * 10), 1.5 / upsample)):
        offsets = np.arange(-half, half + step / 2, step)
        fine = _upsampled_dft(cross, dy + offsets, dx + offsets).real
        r, c = np.unravel_index(int(np.argmax(fine)), fine.shape)
        dy, dx = dy + offsets[r], dx + offsets[c]
    return float(dy), float(dx), ratio


# --------------------------------------------------------------------------------------------
# Blocks and the combined estimate


def _block_starts(length: int, block_px: int, num: int) -> list[int]:
    if num <= 1:
        return [(length - block_px) // 2]
    return sorted({int(round(s)) for s in np.linspace(0, length - block_px, num)})


def plan_blocks(shape: tuple[int, int], block_px: int, max_blocks: int
                ) -> list[tuple[int, int, int]]:
    """Evenly spread square blocks ``(row, col, size_px)`` covering (or sampling) ``shape``.

    Raises:
      CoregistrationError: The image is smaller than :data:`MIN_BLOCK_PX` on a side.
    """
    height, width = shape
    if min(height, width) < MIN_BLOCK_PX:
        raise CoregistrationError(
            f"the image is {size_px(height, width)}: too small to measure a shift (need at "
            f"least {MIN_BLOCK_PX} px on each side)."
        )
    if block_px < MIN_BLOCK_PX:
        raise CoregistrationError(
            f"{option('block_px', block_px)} is too small for phase correlation; pass at least "
            f"{MIN_BLOCK_PX}."
        )
    size = min(block_px, height, width)
    num_r, num_c = math.ceil(height / size), math.ceil(width / size)
    while num_r * num_c > max(1, max_blocks):  # sample a coarser grid on big scenes
        if num_r >= num_c:
            num_r -= 1
        else:
            num_c -= 1
    return [(r, c, size) for r in _block_starts(height, size, num_r)
            for c in _block_starts(width, size, num_c)]


def _default_bands(band_ids: Sequence[str]) -> list[int]:
    sharp = [band_ids.index(b) for b in _SHARP_BANDS if b in band_ids]
    return sharp or list(range(len(band_ids)))


def _combine(estimates: list[tuple[float, float, float]]) -> Shift:
    dy = np.array([e[0] for e in estimates])
    dx = np.array([e[1] for e in estimates])
    ratio = np.array([e[2] for e in estimates])
    med_y, med_x = float(np.median(dy)), float(np.median(dx))
    mad_y = 1.4826 * float(np.median(np.abs(dy - med_y)))
    mad_x = 1.4826 * float(np.median(np.abs(dx - med_x)))
    # the refinement resolves 1/500 px by default: 4 decimals drop only float noise
    return Shift(dx_px=round(med_x, 4) + 0.0, dy_px=round(med_y, 4) + 0.0,
                 quality=float(np.median(ratio)),
                 spread_px=math.hypot(mad_x, mad_y), num_blocks=len(estimates))


def _read_window(arr: Any, positions: list[int], rows: slice, cols: slice,
                 dtype: Any = np.float64) -> np.ndarray:
    """``arr[positions, rows, cols]`` as float64; a lazy array reads only that window, in
    this thread (a dask scheduler's overhead would dominate such small reads)."""
    window = arr[positions, rows, cols]
    data = getattr(window, "data", window)
    if hasattr(data, "compute"):
        data = data.compute(scheduler="sync")
    return np.asarray(data, dtype=dtype)


def estimate_shift(
    pair: Any = None,
    *,
    before: np.ndarray | None = None,
    after: np.ndarray | None = None,
    valid: np.ndarray | None = None,
    bands: Sequence[str] | None = None,
    block_px: int = 256,
    max_blocks: int = 25,
    max_invalid_fraction: float = 0.25,
    min_peak_ratio: float = 1.5,
    upsample: int = 50,
) -> Shift:
    """Measures where ``before``'s content appears in ``after`` (see the module doc).

    Pass either a :class:`changedet.io.RasterPair` (only the sampled blocks are read) or
    ``before``/``after`` arrays ``(band, height, width)`` or ``(height, width)``.

    Args:
      pair: A pair from :func:`changedet.io.open_pair`.
      before: First-date array (instead of ``pair``).
      after: Second-date array, same shape as ``before``.
      valid: Optional ``(height, width)`` bool, True where both dates are usable (arrays only;
        for a pair, the chosen bands' nodata is used). Non-finite pixels are always invalid.
      bands: Band ids or 1-based indices to correlate. Default: Sentinel-2's 10 m bands (B02,
        B03, B04, B08) when present, else all bands.
      block_px: Block edge in pixels (smaller images use one block as large as fits).
      max_blocks: At most this many blocks, spread evenly over the scene.
      max_invalid_fraction: Blocks with a larger fraction of invalid pixels are skipped.
      min_peak_ratio: Blocks whose correlation peak ratio is lower are skipped (no match).
      upsample: Sub-pixel refinement factor (resolution ``1 / upsample`` px, refined tenfold).

    Returns:
      The median :class:`Shift` over the usable blocks.

    Raises:
      BandMismatchError: The two dates have different band counts, or a band is unknown.
      CoregistrationError: Too small, no usable block (nodata, flat bands, no match).
      EmptySceneError: No pixel is valid in both dates.
    """
    if pair is not None:
        band_ids = list(pair.band_ids)
        where = str(pair.before_path)
        before_arr, after_arr = pair.before, pair.after
        valid_arr = None  # from the chosen bands' nodata: pair.valid would read every band
        nodata = (pair.before.attrs.get("nodata"), pair.after.attrs.get("nodata"))
        height, width = pair.grid.shape
    else:
        if before is None or after is None:
            raise ConfigError("pass a RasterPair, or both before= and after= arrays")
        before_arr = before[None] if before.ndim == 2 else before
        after_arr = after[None] if after.ndim == 2 else after
        if before_arr.shape != after_arr.shape:
            kind = BandMismatchError if before_arr.shape[0] != after_arr.shape[0] else (
                CoregistrationError)
            raise kind(
                f"before and after differ in shape: {before_arr.shape} vs {after_arr.shape} "
                "(band, rows, columns); pass two images of the same bands on the same grid."
            )
        band_ids = [str(i + 1) for i in range(before_arr.shape[0])]
        where = "the before array"
        valid_arr = None if valid is None else np.asarray(valid, dtype=bool)
        nodata = (None, None)
        height, width = before_arr.shape[1:]
    positions = (band_positions(band_ids, bands, where=where) if bands
                 else _default_bands(band_ids))
    blocks = plan_blocks((height, width), block_px, max_blocks)
    if pair is not None and len(positions) * height * width <= _READ_WHOLE_MAX_VALUES:
        # a small scene: one read of the chosen bands beats a file open per block
        before_arr = _read_window(before_arr, positions, slice(None), slice(None), dtype=None)
        after_arr = _read_window(after_arr, positions, slice(None), slice(None), dtype=None)
        positions = list(range(len(positions)))
    size = blocks[0][2]
    window = _hann(size, size)
    estimates: list[tuple[float, float, float]] = []
    num_invalid = num_flat = num_weak = 0
    for row, col, size in blocks:
        rows, cols = slice(row, row + size), slice(col, col + size)
        b = _read_window(before_arr, positions, rows, cols)
        a = _read_window(after_arr, positions, rows, cols)
        ok = np.isfinite(b).all(0) & np.isfinite(a).all(0)
        for values, value in ((b, nodata[0]), (a, nodata[1])):
            if value is not None and not math.isnan(value):
                ok &= (values != value).all(0)
        if valid_arr is not None:
            ok &= valid_arr[rows, cols]
        if 1.0 - ok.mean() > max_invalid_fraction:
            num_invalid += 1
            continue
        pb, pa = _prepare(b, ok, window), _prepare(a, ok, window)
        if pb is None or pa is None:
            num_flat += 1
            continue
        result = phase_correlate(pb, pa, upsample=upsample)
        if result is None or result[2] < min_peak_ratio:
            num_weak += 1
            continue
        log.debug("block row %d col %d: dy %.3f dx %.3f peak ratio %.2f", row, col, *result)
        estimates.append(result)
    if not estimates:
        if num_invalid == len(blocks) and valid_arr is not None and not valid_arr.any():
            raise EmptySceneError(f"{where}: no pixel is valid in both dates.")
        raise CoregistrationError(
            f"{where}: no usable block among {len(blocks)} of {size} px to measure the shift "
            f"({num_invalid} mostly nodata, {num_flat} with a constant band, {num_weak} without "
            f"a clear correlation peak); pick textured bands with {option('bands')} or use a "
            "larger, less cloudy scene."
        )
    shift = _combine(estimates)
    log.info("shift dx %+.3f px, dy %+.3f px (peak ratio %.2f, spread %.3f px, %d of %d blocks)",
             shift.dx_px, shift.dy_px, shift.quality, shift.spread_px, shift.num_blocks,
             len(blocks))
    return shift
