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
    select_bands,
    shift_after,
)
from changedet.io.vector import check_vector_path, write_vector, write_vector_from_rasters
from changedet.io.write import (
    MASK_NODATA,
    check_output_path,
    check_raster_path,
    mask_from_score,
    raster_format,
    remove_output,
    write_outputs,
)

__all__ = [
    "CANONICAL_S2_BANDS",
    "MASK_NODATA",
    "RasterPair",
    "UngeoreferencedWarning",
    "check_output_path",
    "check_raster_path",
    "check_vector_path",
    "describe_scene",
    "mask_from_score",
    "open_pair",
    "open_scene",
    "raster_format",
    "remove_output",
    "scene_grid",
    "select_bands",
    "shift_after",
    "write_outputs",
    "write_vector",
    "write_vector_from_rasters",
]
