"""Raw ``(band, y, x)`` arrays -> model batches: normalisation, NHWC layout, patch sampling.

The normalisation / layout helpers come first; below them, the training-data part: in-memory
:class:`Scene` records, exact per-band statistics, the class-balanced :class:`PatchSampler` and
augmentation. NumPy only: must not import jax, rasterio, rioxarray, xarray, dask or matplotlib.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from changedet.bands import REQUIRED_BANDS, canonical_band
from changedet.errors import BandMismatchError, ConfigError, EmptySceneError

__all__ = [
    "normalize", "to_nhwc", "Scene", "Batch", "band_statistics", "MIN_STD", "stats_from_sums",
    "image_statistics", "normalize_per_image", "normalize_scene", "scalar_reference",
    "scalar_statistics",
]

log = logging.getLogger(__name__)


def normalize(block: np.ndarray, mean: Sequence[float] | np.ndarray,
              std: Sequence[float] | np.ndarray) -> np.ndarray:
    """Per-band standardisation ``(x - mean) / std`` of raw values.

    Args:
      block: ``(band, height, width)`` (or ``(..., band, height, width)``) raw values, any dtype.
      mean: ``(band,)`` per-band means, in the raw units.
      std: ``(band,)`` per-band standard deviations (> 0), in the raw units.

    Returns:
      float32 array of the same shape. Non-finite results (NaN nodata) become 0, the band mean,
      so a nodata pixel cannot spread NaN through the convolutions into valid neighbours.

    Raises:
      BandMismatchError: If ``mean``/``std`` do not have one value per band.

    Example:
      >>> normalize(np.array([[[10.0, 30.0]]]), [20.0], [10.0]).tolist()
      [[[-1.0, 1.0]]]
    """
    mean = np.asarray(mean, np.float64).reshape(-1)
    std = np.asarray(std, np.float64).reshape(-1)
    num_bands = block.shape[-3] if block.ndim >= 3 else -1
    if mean.shape != (num_bands,) or std.shape != (num_bands,):
        raise BandMismatchError(
            f"normalisation statistics have {mean.size}/{std.size} values but the block "
            f"{block.shape} has {num_bands} bands; use the model made for these bands."
        )
    out = ((block - mean[:, None, None]) / std[:, None, None]).astype(np.float32)
    return np.where(np.isfinite(out), out, np.float32(0.0))


def to_nhwc(block: np.ndarray) -> np.ndarray:
    """``(band, height, width)`` -> ``(1, height, width, band)``, or
    ``(n, band, height, width)`` -> ``(n, height, width, band)``; contiguous, dtype kept.

    Example:
      >>> to_nhwc(np.zeros((3, 4, 5))).shape
      (1, 4, 5, 3)
    """
    if block.ndim == 3:
        block = block[None]
    if block.ndim != 4:
        raise ConfigError(f"to_nhwc expects (band, h, w) or (n, band, h, w); got {block.shape}")
    return np.ascontiguousarray(block.transpose(0, 2, 3, 1))


class Scene(NamedTuple):
    """One labelled bi-temporal scene held in memory (training and evaluation samples).

    Attributes:
      name: Unique scene name (e.g. ``"oscd/paris"``); splits are made by name.
      before: float32 ``(band, height, width)`` raw values of the first date.
      after: float32 ``(band, height, width)`` raw values of the second date, same grid.
      label: uint8 ``(height, width)``, 1 = change, 0 = no change (meaningless where invalid).
      valid: bool ``(height, width)``; False on nodata of either date and unlabelled pixels.
      band_ids: Band ids of the band axis, e.g. ``("B04", "B03", "B02")`` or ``("1", "2", "3")``.
      image_valid: bool ``(height, width)`` where the imagery of both dates is valid, labelled
        or not (sparse labels); None: same as ``valid``. Per-image statistics use it, as
        ``run`` does.
    """

    name: str
    before: np.ndarray
    after: np.ndarray
    label: np.ndarray
    valid: np.ndarray
    band_ids: tuple[str, ...]
    image_valid: np.ndarray | None = None

    @property
    def pixels_valid(self) -> np.ndarray:
        """Where the imagery is valid (``image_valid``, else ``valid``)."""
        return self.valid if self.image_valid is None else self.image_valid


class Batch(NamedTuple):
    """A training/evaluation batch in the model's layout.

    Attributes:
      before: float32 ``[batch, height, width, channels]``.
      after: float32, same shape as ``before``.
      label: int32 ``[batch, height, width]`` in {0, 1}.
      valid: bool ``[batch, height, width]``; False on nodata, unlabelled pixels and padding.
    """

    before: np.ndarray
    after: np.ndarray
    label: np.ndarray
    valid: np.ndarray


def band_statistics(scenes: Sequence[Scene]) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and standard deviation over the valid pixels of both dates of all scenes.

    Exact: two passes with float64 accumulators (mean first, then squared deviations), so no
    cancellation even for large uint16 reflectances.

    Args:
      scenes: Scenes with the same bands in the same order.

    Returns:
      ``(mean, std)``, float64 arrays of shape ``(band,)`` in the units of the raw values. A band
      that is constant over all valid pixels gets ``std = 1`` (and a warning), so normalising by
      it never divides by zero.

    Raises:
      BandMismatchError: If the scenes do not all have the same band ids.
      EmptySceneError: If no pixel of any scene is valid.
    """
    if not scenes:
        raise EmptySceneError("band_statistics needs at least one scene; got none.")
    band_ids = scenes[0].band_ids
    for s in scenes:
        if s.band_ids != band_ids:
            raise BandMismatchError(
                f"scene {s.name!r} has bands {s.band_ids}, expected {band_ids} like "
                f"{scenes[0].name!r}: select the same bands for every scene."
            )
    num_bands = len(band_ids)
    total = np.zeros(num_bands, np.float64)
    count = 0
    for s in scenes:
        for img in (s.before, s.after):
            total += img[:, s.valid].sum(axis=1, dtype=np.float64)
        count += 2 * int(s.valid.sum())
    if count == 0:
        raise EmptySceneError("band_statistics: no valid pixel in any scene; check the masks.")
    mean = total / count
    sq = np.zeros(num_bands, np.float64)
    for s in scenes:
        for img in (s.before, s.after):
            dev = img[:, s.valid].astype(np.float64) - mean[:, None]
            sq += np.einsum("bn,bn->b", dev, dev)
    std = np.sqrt(sq / count)
    constant = std <= 0
    if constant.any():
        log.warning(
            "bands %s are constant over the valid pixels; using std = 1 for them",
            [band_ids[i] for i in np.flatnonzero(constant)],
        )
        std = np.where(constant, 1.0, std)
    return mean, std


#: Standard deviations at or below this are treated as a constant band (std = 1).
MIN_STD = 1e-6


def stats_from_sums(total: np.ndarray, total_sq: np.ndarray, count: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Per-band ``(mean, std)`` from sums of values and of squares over ``count`` pixels.

    The one formula behind :func:`image_statistics` and the pipeline's dask reduction, so
    evaluation and ``run`` standardise with the same numbers. A constant band gets std 1.
    """
    if count <= 0:
        raise EmptySceneError("no valid pixel to compute band statistics on.")
    mean = np.asarray(total, np.float64) / count
    var = np.maximum(np.asarray(total_sq, np.float64) / count - mean * mean, 0.0)
    std = np.sqrt(var)
    return mean, np.where(std > MIN_STD * np.maximum(1.0, np.abs(mean)), std, 1.0)


def image_statistics(image: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and standard deviation of one date over its ``valid`` pixels (float64).

    This is the per-image standardisation the ``per_image`` models use (as FC-Siam-diff does):
    each date is scaled by its own statistics, so gains, offsets and units (DN, reflectance
    x 10000, 8 bit, the +1000 offset of processing baseline 04.00) cancel out. A constant band
    gets ``std = 1``. ``changedet.pipeline`` computes the same figures with dask, in one pass.

    Example:
      >>> m, s = image_statistics(np.array([[[1.0, 3.0]]]), np.ones((1, 2), bool))
      >>> m.tolist(), s.tolist()
      ([2.0], [1.0])
    """
    values = image[:, valid].astype(np.float64)
    return stats_from_sums(values.sum(axis=1), (values * values).sum(axis=1), int(valid.sum()))


def scalar_reference(band_ids: Sequence[str]) -> tuple[int, ...]:
    """Positions of the bands whose pooled statistics scale a ``per_image_scalar`` image.

    Sentinel-2 band ids holding blue, green and red (:data:`changedet.bands.REQUIRED_BANDS`,
    which every accepted band set holds): those three, so a 4-band or Landsat input is scaled
    by the same numbers as the full 13-band image it was cut from. Otherwise every band.

    Example:
      >>> scalar_reference(("B01", "B02", "B03", "B04", "B08")), scalar_reference(("1", "2"))
      ((1, 2, 3), (0, 1))
      >>> scalar_reference(("nir", "red", "green", "blue"))
      (3, 2, 1)
    """
    ids = tuple(canonical_band(str(b)) or str(b) for b in band_ids)  # blue, B2, B02: one band
    if all(b in ids for b in REQUIRED_BANDS):
        return tuple(ids.index(b) for b in REQUIRED_BANDS)
    return tuple(range(len(ids)))


def scalar_statistics(mean: np.ndarray, std: np.ndarray, reference: Sequence[int]
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Per-band ``(mean, std)`` replaced by one mean and one std pooled over the
    ``reference`` bands (equal pixel counts), repeated for every band.

    Standardising by these (``per_image_scalar``, as FC-Siam-diff does) removes a date's overall
    brightness and contrast but keeps its spectral shape: the ratios between bands, which tell
    vegetation, water, soil and roofs apart, survive, where per-band standardisation maps every
    band of every image to mean 0 and std 1.

    Example:
      >>> m, s = scalar_statistics(np.array([1.0, 3.0]), np.array([0.0, 0.0]), (0, 1))
      >>> m.tolist(), s.tolist()
      ([2.0, 2.0], [1.0, 1.0])
    """
    mean = np.asarray(mean, np.float64)
    std = np.asarray(std, np.float64)
    ref = list(reference)
    # each band's sums over its n pixels are n * mean and n * (std^2 + mean^2); n cancels
    (m,), (s,) = stats_from_sums(mean[ref].sum(keepdims=True),
                                 (std[ref] ** 2 + mean[ref] ** 2).sum(keepdims=True), len(ref))
    return np.full(mean.shape, m), np.full(mean.shape, s)


def normalize_per_image(scene: Scene, scalar: bool = False) -> Scene:
    """The scene with each date standardised by its own per-band statistics (see
    :func:`image_statistics`), or with ``scalar`` by one mean and std per date pooled over
    :func:`scalar_reference`'s bands (:func:`scalar_statistics`); invalid pixels are 0."""

    ok = scene.pixels_valid
    reference = scalar_reference(scene.band_ids) if scalar else ()

    def scale(x: np.ndarray) -> np.ndarray:
        mean, std = image_statistics(x, ok)
        if scalar:
            mean, std = scalar_statistics(mean, std, reference)
        return np.where(ok[None], normalize(x, mean, std), np.float32(0.0))

    return scene._replace(before=scale(scene.before), after=scale(scene.after))


def normalize_scene(scene: Scene, mean: np.ndarray, std: np.ndarray) -> Scene:
    """The scene with both dates scaled to ``(x - mean) / std`` per band, float32.

    Invalid pixels are set to 0 after scaling (finite, and the band mean), so NaN nodata never
    reaches the model; they stay ``valid=False``.
    """

    def scale(x: np.ndarray) -> np.ndarray:
        return np.where(scene.valid[None], normalize(x, mean, std), np.float32(0.0))

    return scene._replace(before=scale(scene.before), after=scale(scene.after))
