"""Scene I/O: open scenes and pairs lazily, write change maps and vectors atomically.

The only package importing rasterio / rioxarray / dask for file access; must not import jax/flax.
"""

from changedet.io.read import (
    CANONICAL_S2_BANDS,
    RasterPair,
    UngeoreferencedWarning,
    describe_scene,
    open_pair,
    open_scene,
    scene_grid,
)

__all__ = [
    "CANONICAL_S2_BANDS",
    "RasterPair",
    "UngeoreferencedWarning",
    "describe_scene",
    "open_pair",
    "open_scene",
    "scene_grid",
]
