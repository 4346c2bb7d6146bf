"""A scene-level cap on how much of a scene the decision marks as change.

A model's score scale moves from scene to scene: on a city it has never seen, a season or a
sensor difference can lift the scores of a whole scene, and one fixed threshold then marks a
tenth of the city where a hundredth changed. The cap bounds that failure: where ``score >
threshold`` would mark more than ``max_fraction`` of the scene's valid pixels, the scene's
threshold is raised to the smallest value at which it marks no more than that. Below the cap
nothing changes, so a scene with little change keeps the model's own decision, and the most
confident pixels stay marked however hot the scene is.

The raised threshold comes from one exact histogram of the valid scores above the model's
threshold (a dask reduction, memory independent of the scene size). The mask then marks *at
most* ``max_fraction`` of the valid pixels, whatever the chunking, so tiled output still equals
whole-image output. ``run`` applies it to the score file it has just written (no second model
pass); the packaged ``sentinel2`` model stores its cap (``ChangeModel.max_change_fraction``,
chosen by cross-validation: ``docs/models.md``).
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np

from changedet.errors import ConfigError, option

__all__ = ["CappedThreshold", "capped_threshold", "check_max_change", "cap_in_force"]

log = logging.getLogger(__name__)

#: Histogram bins between the model's threshold and the highest score: the raised threshold
#: lies within (highest - threshold) / BINS above the exact order statistic, never below it.
BINS = 1 << 14


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


def _as_dask(score):
    import dask.array as da

    if isinstance(score, da.Array):
        return score
    score = getattr(score, "data", score)  # an xarray DataArray
    if isinstance(score, da.Array):
        return score
    return da.from_array(np.asarray(score, dtype=np.float32), chunks=2048)


def _round_up_f32(value: float) -> float:
    """The smallest float32 >= ``value`` (scores are float32: ``score > t`` compares there)."""
    rounded = np.float32(value)
    if float(rounded) < value:
        rounded = np.nextafter(rounded, np.float32(np.inf))
    return float(rounded)


def capped_threshold(score, threshold: float, max_fraction: float) -> CappedThreshold:
    """The scene's threshold: ``threshold``, raised where more than ``max_fraction`` of the
    valid (finite) scores exceed it, to the smallest histogram edge above which no more than
    that many do.

    Args:
      score: The scene's scores, NaN where invalid: a dask array (computed here: two
        reductions over it), an xarray DataArray or a NumPy array.
      threshold: The model's decision threshold (``score > threshold`` is change).
      max_fraction: The cap, in (0, 1].

    Returns:
      A :class:`CappedThreshold`. ``score > result.threshold`` marks at most ``max_fraction``
      of the valid pixels (exactly: the histogram counts are integers, and the edge is
      rounded up to float32).
    """
    import dask
    import dask.array as da

    cap = check_max_change(max_fraction)
    assert cap is not None
    s = _as_dask(score)
    above = s > threshold  # False where NaN
    n_valid, n_above, top = dask.compute(
        da.isfinite(s).sum(), above.sum(), da.where(above, s, -np.inf).max())
    n_valid, n_above = int(n_valid), int(n_above)
    if n_valid == 0:
        return CappedThreshold(float(threshold), float(threshold), cap, 0.0, 0.0)
    allowed = math.floor(cap * n_valid)
    uncapped = n_above / n_valid
    if n_above <= allowed:
        return CappedThreshold(float(threshold), float(threshold), cap, uncapped, uncapped)
    top = float(top)
    edges = np.linspace(float(threshold), top, BINS + 1)
    counts, _ = da.histogram(da.where(above, s, np.nan), bins=edges)
    counts = np.asarray(counts.compute(), dtype=np.int64)
    # at_or_above[i]: scores >= edges[i] (above the threshold); the last entry (top) is 0.
    at_or_above = np.append(np.cumsum(counts[::-1])[::-1], 0)
    first = int(np.argmax(at_or_above <= allowed))
    raised = _round_up_f32(float(edges[first]))
    marked = int(at_or_above[first])  # an upper bound of the pixels above ``raised``
    log.info("change cap: %.2f %% of the valid pixels score above %.4g, more than the cap of "
             "%.3g %%; threshold raised to %.4g for this scene", 100 * uncapped, threshold,
             100 * cap, raised)
    return CappedThreshold(raised, float(threshold), cap, uncapped, marked / n_valid)
