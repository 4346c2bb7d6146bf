"""Small immutable value objects shared by all modules (no I/O, no JAX)."""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import numpy as np
from affine import Affine

__all__ = ["MASK_NODATA", "size_px", "Grid", "ScoringDetector", "Detector"]

#: Nodata value of every change mask changedet writes (uint8: 0 no change, 1 change).
MASK_NODATA = 255


def size_px(height: int, width: int) -> str:
    """A raster size in the words every message uses: columns x rows, ``"W x H px"``.

    Example:
      >>> size_px(408, 390)  # 408 rows, 390 columns
      '390 x 408 px'
    """
    return f"{int(width)} x {int(height)} px"


@dataclasses.dataclass(frozen=True)
class Grid:
    """A raster pixel grid: shape, affine transform and CRS (``None`` if not georeferenced).

    Attributes:
      height: Rows, in pixels.
      width: Columns, in pixels.
      transform: Affine map from (col, row) pixel corners to CRS coordinates.
      crs: CRS as a WKT/authority string (hashable), or ``None`` for ungeoreferenced images.
    """

    height: int
    width: int
    transform: Affine
    crs: str | None

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)`` in pixels."""
        return (self.height, self.width)

    @property
    def size_px(self) -> str:
        """``"W x H px"`` (see :func:`size_px`)."""
        return size_px(self.height, self.width)

    @property
    def is_georeferenced(self) -> bool:
        """True when the grid carries a CRS."""
        return self.crs is not None

    @property
    def pixel_size(self) -> tuple[float, float]:
        """Pixel ``(width, height)`` in CRS units (positive)."""
        return (abs(self.transform.a), abs(self.transform.e))

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "height": self.height,
            "width": self.width,
            "transform": list(self.transform)[:6],
            "crs": self.crs,
        }


class ScoringDetector(Protocol):
    """What scoring needs from a change detector (``evaluate.score_scene``): the score of a
    raw ``(band, h, w)`` block pair that carries ``context_px`` of real context per side."""

    @property
    def name(self) -> str: ...

    @property
    def halo_px(self) -> int: ...

    @property
    def threshold(self) -> float | None: ...

    def score_block(
        self, before: np.ndarray, after: np.ndarray, *, context_px: int = 0
    ) -> np.ndarray: ...


class Detector(ScoringDetector, Protocol):
    """What the pipeline needs from a change detector (see docs/design.md): a scorer that binds
    itself to a pair (``prepare``: bands matched, per-scene statistics computed)."""

    @property
    def band_ids(self) -> tuple[str, ...] | None: ...

    def prepare(self, pair: Any) -> Detector: ...
