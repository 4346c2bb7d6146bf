"""Scene I/O: open scenes and pairs lazily, write change maps and vectors atomically.

``scene`` (one scene, lazily, as a dask-backed DataArray), ``pair`` (grid checks and alignment of
a before/after pair), ``write`` (rasters), ``vector`` (polygons), ``points`` (labelled points),
``atomic`` (temporary name, then rename), ``datasets`` (the labelled datasets on disk as
in-memory scenes for training and evaluation).

The only package importing rasterio / rioxarray for file access; must not import jax/flax. The
names below load their module on first use, so ``changedet.io.atomic`` does not pull in GDAL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from changedet.io.pair import (
        RasterPair,
        open_pair,
        select_bands,
        shift_after,
    )
    from changedet.io.scene import (
        CANONICAL_S2_BANDS,
        UngeoreferencedWarning,
        describe_scene,
        open_scene,
        scene_grid,
    )
    from changedet.io.vector import (
        check_vector_path,
        write_vector,
        write_vector_from_rasters,
    )
    from changedet.io.write import (
        MASK_NODATA,
        check_output_path,
        check_raster_path,
        hidden_path,
        mask_from_score,
        raster_format,
        read_score,
        remove_output,
        write_outputs,
    )

_LAZY = {
    "CANONICAL_S2_BANDS": "changedet.io.scene",
    "MASK_NODATA": "changedet.io.write",
    "RasterPair": "changedet.io.pair",
    "UngeoreferencedWarning": "changedet.io.scene",
    "check_output_path": "changedet.io.write",
    "check_raster_path": "changedet.io.write",
    "check_vector_path": "changedet.io.vector",
    "describe_scene": "changedet.io.scene",
    "hidden_path": "changedet.io.write",
    "mask_from_score": "changedet.io.write",
    "open_pair": "changedet.io.pair",
    "open_scene": "changedet.io.scene",
    "raster_format": "changedet.io.write",
    "read_score": "changedet.io.write",
    "remove_output": "changedet.io.write",
    "scene_grid": "changedet.io.scene",
    "select_bands": "changedet.io.pair",
    "shift_after": "changedet.io.pair",
    "write_outputs": "changedet.io.write",
    "write_vector": "changedet.io.vector",
    "write_vector_from_rasters": "changedet.io.vector",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'changedet.io' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)

__all__ = [
    "CANONICAL_S2_BANDS",
    "MASK_NODATA",
    "RasterPair",
    "UngeoreferencedWarning",
    "check_output_path",
    "check_raster_path",
    "check_vector_path",
    "describe_scene",
    "hidden_path",
    "mask_from_score",
    "open_pair",
    "open_scene",
    "raster_format",
    "read_score",
    "remove_output",
    "scene_grid",
    "select_bands",
    "shift_after",
    "write_outputs",
    "write_vector",
    "write_vector_from_rasters",
]
