"""Tiling: cores partition the block, tiles stay on the pooling grid, stitch inverts split."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from changedet import tiling


@settings(deadline=None, max_examples=60)
@given(height=st.integers(1, 90), width=st.integers(1, 90), align=st.sampled_from([1, 2, 4, 8]),
       cores=st.integers(1, 6), halos=st.integers(0, 4))
def test_stitch_of_extracted_tiles_is_the_block(height, width, align, cores, halos):
    core, halo = cores * align, halos * align
    block = np.random.default_rng(height * 100 + width).random((2, height, width), np.float32)
    tiles = tiling.plan_tiles((height, width), core)
    # Cores partition the block: every pixel exactly once, none out of bounds.
    count = np.zeros((height, width), int)
    for t in tiles:
        assert t.row % core == 0 and t.col % core == 0  # on the pooling grid
        assert 0 < t.height <= core and 0 < t.width <= core
        assert t.row + t.height <= height and t.col + t.width <= width
        count[t.row:t.row + t.height, t.col:t.col + t.width] += 1
    assert (count == 1).all()
    padded = tiling.pad_block(block, core, halo)
    assert padded.shape[1:] == tiling.padded_shape((height, width), core, halo)
    assert padded.shape[1] % align == 0 and padded.shape[2] % align == 0
    np.testing.assert_array_equal(padded[:, halo:halo + height, halo:halo + width], block)
    pieces = tiling.extract_tiles(padded, tiles, core, halo)
    assert pieces.shape == (len(tiles), 2, core + 2 * halo, core + 2 * halo)
    # An identity "model" on band 1, plus a padding tile that must be ignored.
    outputs = np.concatenate([pieces[:, 1], np.full_like(pieces[:1, 1], -1)])
    np.testing.assert_array_equal(tiling.stitch(outputs, tiles, (height, width), halo), block[1])


def test_padding_mirrors_like_dask_reflect():
    block = np.arange(5, dtype=np.float32)[None, None, :].repeat(2, 1)
    padded = tiling.pad_block(block, core_px=4, halo_px=2)
    assert padded[0, 0].tolist() == [1, 0, 0, 1, 2, 3, 4, 4, 3, 2, 1, 0]
    # Wider than the block: mirrored again, no error.
    assert tiling.pad_block(np.ones((1, 1, 1)), 8, 8).shape == (1, 24, 24)


def test_plan_tiles_rejects_bad_arguments():
    with pytest.raises(ValueError, match="at least 1x1"):
        tiling.plan_tiles((0, 5), 4)
    with pytest.raises(ValueError, match="core_px"):
        tiling.plan_tiles((5, 5), 0)
