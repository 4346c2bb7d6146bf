"""Halo and padding arithmetic; split a block into overlapping tiles and stitch their cores.

A block ``(band, height, width)`` is cut into square *cores* of ``core_px`` whose origins are
multiples of ``core_px`` (so, with ``core_px`` a multiple of the model's pooling alignment, every
tile sits on the pooling grid of the whole block). Each tile is its core plus ``halo_px`` of
context on every side, taken from the block padded by ``halo_px`` (mirrored, like dask's
``boundary="reflect"``) and, at the bottom/right, up to a whole number of cores. Stitching keeps
each tile's core only, so with ``halo_px`` >= the receptive-field radius the result equals one
forward pass over the whole padded block.

NumPy only: must not import jax, rasterio, rioxarray, xarray, dask or matplotlib.
"""

from __future__ import annotations

from typing import Final, Literal, NamedTuple

import numpy as np

from changedet.errors import ConfigError

__all__ = [
    "PadMode", "PAD_MODE", "Tile", "round_up", "plan_tiles", "padded_shape", "pad_block",
    "extract_tiles", "stitch",
]

PadMode = Literal["symmetric", "reflect", "edge", "constant"]
PAD_MODE: Final = "symmetric"  # numpy's name for dask's boundary="reflect" (the edge pixel repeats)


class Tile(NamedTuple):
    """A tile's core, in block pixels.

    Attributes:
      row: First row of the core (a multiple of the core size).
      col: First column of the core.
      height: Rows of the core inside the block (the last row of tiles may be shorter).
      width: Columns of the core inside the block.
    """

    row: int
    col: int
    height: int
    width: int


def round_up(value: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` >= ``value`` (``value >= 0``, ``multiple >= 1``).

    Example:
      >>> round_up(45, 8), round_up(48, 8), round_up(0, 8)
      (48, 48, 0)
    """
    if multiple < 1:
        raise ConfigError(f"multiple must be >= 1; got {multiple}")
    return -(-value // multiple) * multiple


def plan_tiles(shape: tuple[int, int], core_px: int) -> list[Tile]:
    """Cores of ``core_px`` covering a block, row-major, origins at multiples of ``core_px``.

    Args:
      shape: Block ``(height, width)`` in pixels, both >= 1.
      core_px: Core edge in pixels, >= 1.

    Returns:
      Tiles whose cores partition the block exactly (no overlap, every pixel once); the last
      row/column of cores is clipped to the block edge.

    Example:
      >>> [tuple(t) for t in plan_tiles((5, 7), 4)]
      [(0, 0, 4, 4), (0, 4, 4, 3), (4, 0, 1, 4), (4, 4, 1, 3)]
    """
    height, width = shape
    if height < 1 or width < 1:
        raise ConfigError(f"block shape must be at least 1x1; got {shape}")
    if core_px < 1:
        raise ConfigError(f"core_px must be >= 1; got {core_px}")
    return [
        Tile(row, col, min(core_px, height - row), min(core_px, width - col))
        for row in range(0, height, core_px)
        for col in range(0, width, core_px)
    ]


def padded_shape(shape: tuple[int, int], core_px: int, halo_px: int) -> tuple[int, int]:
    """Shape of the padded block :func:`pad_block` returns: halo + whole cores + halo."""
    return (round_up(shape[0], core_px) + 2 * halo_px, round_up(shape[1], core_px) + 2 * halo_px)


def pad_block(block: np.ndarray, core_px: int, halo_px: int,
              mode: PadMode = PAD_MODE) -> np.ndarray:
    """Pads ``(..., height, width)`` by ``halo_px`` on every side, plus bottom/right up to whole
    cores; block pixel ``(r, c)`` lands at ``(r + halo_px, c + halo_px)``.

    Args:
      block: ``(..., height, width)`` array.
      core_px: Core edge in pixels.
      halo_px: Context pixels on each side (>= 0).
      mode: ``numpy.pad`` mode; ``"symmetric"`` mirrors like dask's ``boundary="reflect"``
        (numpy repeats the mirroring when the pad is wider than the block).

    Returns:
      Array of shape ``(..., *padded_shape((height, width), core_px, halo_px))``, same dtype.
    """
    height, width = block.shape[-2:]
    out_h, out_w = padded_shape((height, width), core_px, halo_px)
    pads = [(0, 0)] * (block.ndim - 2)
    pads += [(halo_px, out_h - height - halo_px), (halo_px, out_w - width - halo_px)]
    return np.pad(block, pads, mode=mode)


def extract_tiles(padded: np.ndarray, tiles: list[Tile], core_px: int,
                  halo_px: int) -> np.ndarray:
    """Tiles (core + halo) cut from a :func:`pad_block` output.

    Args:
      padded: ``(..., H, W)`` padded block.
      tiles: From :func:`plan_tiles` on the unpadded block.
      core_px: Core edge in pixels.
      halo_px: Halo in pixels.

    Returns:
      ``(num_tiles, ..., core_px + 2*halo_px, core_px + 2*halo_px)``, same dtype.
    """
    size = core_px + 2 * halo_px
    return np.stack([padded[..., t.row:t.row + size, t.col:t.col + size] for t in tiles])


def stitch(outputs: np.ndarray, tiles: list[Tile], shape: tuple[int, int], halo_px: int,
           dtype: np.dtype | type = np.float32, out: np.ndarray | None = None) -> np.ndarray:
    """Reassembles per-tile outputs into a block, keeping each tile's core.

    Args:
      outputs: ``(num_tiles, tile, tile)`` outputs over whole tiles (core + halo); at least
        ``len(tiles)`` of them (extra ones, e.g. batch padding, are ignored).
      tiles: From :func:`plan_tiles`.
      shape: Block ``(height, width)``.
      halo_px: Halo in pixels.
      dtype: Output dtype.
      out: Write into this ``(height, width)`` array instead of a new one (to stitch batch by
        batch); pixels of tiles not given are left as they are.

    Returns:
      ``(height, width)`` array; each pixel from exactly one tile's core.
    """
    result = np.empty(shape, dtype=dtype) if out is None else out
    for out, t in zip(outputs, tiles, strict=False):
        result[t.row:t.row + t.height, t.col:t.col + t.width] = out[
            halo_px:halo_px + t.height, halo_px:halo_px + t.width
        ]
    return result
