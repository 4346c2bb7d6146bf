"""A scene-level cap on how much of a scene the decision marks as change.

A model's score scale moves from scene to scene: on a city it has never seen, a season or a
sensor difference can lift the scores of a whole scene, and one fixed threshold then marks a
tenth of the city where a hundredth changed. The cap bounds that failure: where ``score >
threshold`` would mark more than ``max_fraction`` of the scene's valid pixels, the scene's
threshold is raised to the smallest score value at which it marks no more than that. Below the
cap nothing changes, so a scene with little change keeps the model's own decision, and the most
confident pixels stay marked however hot the scene is (all but scores tied at the raised
threshold, which cannot be split: a mask never exceeds the cap).

The raised threshold is the exact order statistic of the valid float32 scores, found by two
histograms of their order-preserving 32-bit keys (the high 16 bits, then the low 16 bits in the
one high bin that holds it): dask reductions whose memory does not depend on the scene size.
The mask then marks *at most* ``max_fraction`` of the valid pixels, whatever the chunking, so
tiled output still equals whole-image output. ``run`` applies it to the score file it has just
written (no second model pass); the packaged ``sentinel2`` model stores its cap
(``ChangeModel.max_change_fraction``, chosen by cross-validation: ``docs/models.md``).
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np

from changedet.errors import ConfigError, option

__all__ = ["CappedThreshold", "capped_threshold", "check_max_change", "cap_in_force"]

log = logging.getLogger(__name__)

#: The raised threshold is an exact order statistic of the float32 scores, found in two
#: histograms of their order-preserving 32-bit keys: the high 16 bits, then the low 16 bits
#: inside the one high bin that holds it.
HALF_BITS = 16


@dataclasses.dataclass(frozen=True)
class CappedThreshold:
    """The scene's threshold under a change cap.

    Attributes:
      threshold: The threshold to apply (``>=`` the model's).
      model_threshold: The threshold before the cap.
      max_fraction: The cap, a fraction of the valid pixels.
      uncapped_fraction: Fraction of the valid pixels above ``model_threshold``.
      fraction: Fraction of the valid pixels above ``threshold`` (``<= max_fraction``).
    """

    threshold: float
    model_threshold: float
    max_fraction: float
    uncapped_fraction: float
    fraction: float

    @property
    def raised(self) -> bool:
        """Whether the cap raised the threshold on this scene."""
        return self.threshold > self.model_threshold

    def tags(self) -> dict[str, str]:
        """GeoTIFF tags recording the cap and what it did."""
        tags = {"max_change_fraction": repr(self.max_fraction),
                "model_threshold": repr(self.model_threshold)}
        if self.raised:
            tags["change_cap"] = (
                f"threshold raised from {self.model_threshold:.4g} to {self.threshold:.4g}: "
                f"{100 * self.uncapped_fraction:.2f} % of the valid pixels scored above the "
                f"model's threshold, more than its cap of {100 * self.max_fraction:.3g} %")
        return tags


def check_max_change(value: float | None) -> float | None:
    """Validates a cap given by a user: None, or a number in (0, 1]."""
    if value is None:
        return None
    cap = float(value)
    if not (math.isfinite(cap) and 0.0 < cap <= 1.0):
        raise ConfigError(f"{option('max_change', value)} must be a fraction in (0, 1] of the "
                          "valid pixels (1 turns the cap off).")
    return cap


def cap_in_force(max_change: float | None, stored: float | None, *,
                 own_threshold: bool) -> float | None:
    """The cap a run applies (None: none): ``max_change`` when given (1 turns it off), else
    the model's ``stored`` one, which belongs to the model's own threshold: a threshold the user
    gives or calibrates (``own_threshold=False``) is applied as it is."""
    cap = check_max_change(max_change)
    if cap is None and own_threshold:
        cap = stored
    return None if cap is None or cap >= 1.0 else float(cap)


def _keys(values: np.ndarray) -> np.ndarray:
    """Order-preserving uint32 keys of float32 values: ``a < b`` iff ``key(a) < key(b)``."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    return np.where(bits >> 31, ~bits, bits | np.uint32(1 << 31))


def _from_key(key: int) -> float:
    """The float32 value (as a Python float) whose key is ``key``."""
    bits = key & 0x7FFFFFFF if key >> 31 else ~key & 0xFFFFFFFF
    return float(np.array([bits], dtype=np.uint32).view(np.float32)[0])


def _block_counts(block: np.ndarray, threshold: float, high: int | None) -> np.ndarray:
    """One block's counts: ``[valid, above threshold, *histogram]``. With ``high`` None the
    histogram is over the high 16 bits of the keys above the threshold, else over the low 16
    bits of those whose high bits are ``high``."""
    values = np.asarray(block, dtype=np.float32)
    finite = np.isfinite(values)
    above = finite & (values > np.float32(threshold))
    keys = _keys(values[above])
    if high is None:
        digits = keys >> HALF_BITS
    else:
        digits = keys[(keys >> HALF_BITS) == high] & ((1 << HALF_BITS) - 1)
    hist = np.bincount(digits.astype(np.int64), minlength=1 << HALF_BITS)
    return np.concatenate([[finite.sum(), above.sum()], hist]).astype(np.int64)


def _counts(score, threshold: float, high: int | None = None) -> np.ndarray:
    """:func:`_block_counts` over the whole scene: one pass, blockwise for a dask array (a tree
    reduction of fixed-size vectors: memory independent of the scene size)."""
    import dask.array as da

    data = getattr(score, "data", score)  # an xarray DataArray
    if not isinstance(data, da.Array):
        return _block_counts(np.asarray(data), threshold, high)
    size, one = 2 + (1 << HALF_BITS), (1,) * data.ndim
    parts = da.map_blocks(
        lambda b: _block_counts(b, threshold, high).reshape(one + (size,)), data, dtype=np.int64,
        new_axis=data.ndim, chunks=tuple((1,) * n for n in data.numblocks) + ((size,),))
    return np.asarray(parts.sum(axis=tuple(range(data.ndim))).compute(), dtype=np.int64)


def _select(hist: np.ndarray, allowed: int) -> tuple[int, int]:
    """In a histogram of digits, the digit holding the (allowed + 1)-th largest value, and how
    many values lie in higher digits."""
    at_or_above = np.append(np.cumsum(hist[::-1])[::-1], 0)
    digit = int(np.count_nonzero(at_or_above > allowed)) - 1
    return digit, int(at_or_above[digit + 1])


def capped_threshold(score, threshold: float, max_fraction: float) -> CappedThreshold:
    """The scene's threshold: ``threshold``, raised where more than ``max_fraction`` of the
    valid (finite) scores exceed it, to the smallest score value above which no more than that
    many do.

    Args:
      score: The scene's scores, NaN where invalid: a dask array (computed here: one pass
        over it, a second one where the cap raises the threshold), an xarray DataArray or a
        NumPy array.
      threshold: The model's decision threshold (``score > threshold`` is change).
      max_fraction: The cap, in (0, 1].

    Returns:
      A :class:`CappedThreshold`. ``score > result.threshold`` (in float32) marks at most
      ``max_fraction`` of the valid pixels and, but for ties at the raised threshold, exactly
      ``floor(max_fraction * valid)`` of them.
    """
    cap = check_max_change(max_fraction)
    assert cap is not None
    counts = _counts(score, threshold)
    n_valid, n_above = int(counts[0]), int(counts[1])
    if n_valid == 0:
        return CappedThreshold(float(threshold), float(threshold), cap, 0.0, 0.0)
    allowed = math.floor(cap * n_valid + 1e-9)  # 1e-9: 0.29 * 100 is 28.999999999999996
    uncapped = n_above / n_valid
    if n_above <= allowed:
        return CappedThreshold(float(threshold), float(threshold), cap, uncapped, uncapped)
    high, above_high = _select(counts[2:], allowed)
    low, above_low = _select(_counts(score, threshold, high)[2:], allowed - above_high)
    raised = _from_key((high << HALF_BITS) | low)
    marked = above_high + above_low
    log.info("change cap: %.2f %% of the valid pixels score above %.4g, more than the cap of "
             "%.3g %%; threshold raised to %.4g for this scene", 100 * uncapped, threshold,
             100 * cap, raised)
    return CappedThreshold(raised, float(threshold), cap, uncapped, marked / n_valid)
