"""Per-pixel uncertainty of a change mask: how likely each pixel's decision is wrong.

A learned model scores every tile under the 8 dihedral transforms (``run --quality best``
already averages them); the transforms are views the answer should not depend on. Where they
disagree (a large standard deviation ``s`` of the 8 scores) or where their mean ``m`` sits
close to the decision threshold ``t``, the decision is fragile. The uncertainty combines both
as the probability that the decision would flip if the score were drawn from a normal law
with that mean and spread:

    u = Phi(-|m - t| / max(s, floor))

``u`` is 0.5 on the threshold and falls towards 0 as the score leaves it by several spreads;
``floor`` keeps pixels whose views agree exactly from claiming certainty at any margin.
``docs/uncertainty.md`` reports how well ``u`` picks out the misclassified pixels of the
cross-validation scenes (area under the ROC curve) and its cost (8x the model time).

Must not import rasterio, rioxarray, xarray or matplotlib (dask arrays pass through).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import ndtr

__all__ = ["SPREAD_FLOOR", "flip_probability"]

#: The smallest spread the margin is measured in (score units: probabilities for the BCE
#: heads); views that agree exactly still leave this much doubt.
SPREAD_FLOOR = 0.02


def flip_probability(score: Any, spread: Any, threshold: float,
                     floor: float = SPREAD_FLOOR) -> Any:
    """``Phi(-|score - threshold| / max(spread, floor))``, float32, NaN where ``score`` is.

    Works elementwise on numpy or dask arrays (dask stays lazy).

    Example:
      >>> flip_probability(np.array([0.5, 0.9, 0.9]), np.array([0.1, 0.1, 0.4]), 0.5).round(3)
      array([0.5  , 0.   , 0.159], dtype=float32)
    """
    if not floor > 0:
        raise ValueError(f"floor must be > 0; got {floor}")
    z = -abs(score - threshold) / np.maximum(spread, floor)
    if hasattr(z, "map_blocks"):  # dask: keep it lazy, blockwise
        return z.map_blocks(lambda b: ndtr(b).astype(np.float32), dtype=np.float32)
    return ndtr(z).astype(np.float32)
