"""End to end through ``changedet.pipeline``: grids, nodata, block invariance, real scenes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import rasterio

import changedet
from changedet import metrics, pipeline
from changedet.errors import BandMismatchError, EmptySceneError
from changedet.testing import write_synthetic_pair


@pytest.fixture
def synthetic_pair(tmp_path):
    return write_synthetic_pair(tmp_path, shape=(45, 61), seed=0)


def _assert_same_grid(path, reference, *, nodata):
    with rasterio.open(path) as out, rasterio.open(reference) as ref:
        assert out.crs == ref.crs
        assert out.transform == ref.transform
        assert (out.width, out.height) == (ref.width, ref.height)
        if nodata is None or np.isnan(nodata):
            assert out.nodata is None or np.isnan(out.nodata)
        else:
            assert out.nodata == nodata


def test_run_cva_writes_mask_and_score_on_input_grid(synthetic_pair, tmp_path):
    out = tmp_path / "change.tif"
    score_path = tmp_path / "score.tif"
    result = changedet.run(
        synthetic_pair.before_path, synthetic_pair.after_path, out,
        score_path=score_path, method="cva", progress=False,
    )
    assert result.outputs == (out, score_path)
    _assert_same_grid(out, synthetic_pair.before_path, nodata=255)
    _assert_same_grid(score_path, synthetic_pair.before_path, nodata=np.nan)
    with rasterio.open(out) as src:
        mask = src.read(1)
        tags = src.tags()
        assert src.dtypes == ("uint8",)
    with rasterio.open(score_path) as src:
        score = src.read(1)
    # nodata of either date -> 255 in the mask, NaN in the score; nothing else is 255
    np.testing.assert_array_equal(mask == 255, ~synthetic_pair.valid)
    np.testing.assert_array_equal(np.isnan(score), ~synthetic_pair.valid)
    assert set(np.unique(mask)) <= {0, 1, 255}
    # the planted change is found
    counts = metrics.confusion_counts_np(mask == 1, synthetic_pair.label, synthetic_pair.valid)
    assert metrics.scores_from_counts(*counts).f1 > 0.9
    assert tags["method"] == "cva"
    assert float(tags["threshold"]) == pytest.approx(result.threshold)
    assert tags["changedet_version"] == changedet.__version__
    # nothing else left in the folder: no temporary files
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["before.tif", "after.tif", "change.tif", "score.tif"]
    )


def test_vector_output_is_georeferenced(synthetic_pair, tmp_path):
    pyogrio = pytest.importorskip("pyogrio")
    vector = tmp_path / "change.gpkg"
    changedet.run(
        synthetic_pair.before_path, synthetic_pair.after_path, tmp_path / "m.tif",
        vector_path=vector, method="cva", progress=False,
    )
    info = pyogrio.read_info(vector)
    with rasterio.open(synthetic_pair.before_path) as src:
        assert rasterio.crs.CRS.from_user_input(info["crs"]) == src.crs
    assert info["features"] >= 1
    assert "area_m2" in list(info["fields"]) and "mean_score" in list(info["fields"])


def test_ungeoreferenced_pair_gives_output_without_crs(tmp_path):
    pair = write_synthetic_pair(tmp_path, crs=None, dtype="uint8", seed=1)
    out = tmp_path / "change.tif"
    with pytest.warns(UserWarning):
        changedet.run(pair.before_path, pair.after_path, out, method="cva", progress=False)
    with rasterio.open(out) as src:
        assert src.crs is None
        assert src.shape == pair.label.shape


@pytest.mark.parametrize("block_px", [16, 32, 1024])
def test_block_size_does_not_change_cva_result(synthetic_pair, block_px):
    reference = changedet.detect(
        synthetic_pair.before_path, synthetic_pair.after_path, method="cva", block_px=64
    )
    other = changedet.detect(
        synthetic_pair.before_path, synthetic_pair.after_path, method="cva", block_px=block_px
    )
    np.testing.assert_array_equal(other.mask.values, reference.mask.values)


def test_detect_is_lazy_and_georeferenced(synthetic_pair):
    ds = changedet.detect(
        synthetic_pair.before_path, synthetic_pair.after_path, method="cva", threshold=1.0
    )
    assert ds.score.chunks is not None  # dask-backed
    with rasterio.open(synthetic_pair.before_path) as src:
        assert ds.rio.crs == src.crs
        assert ds.rio.transform() == src.transform
    assert ds.attrs["threshold"] == 1.0


def test_all_nodata_scene_is_a_clear_error(tmp_path):
    pair = write_synthetic_pair(tmp_path, seed=2)
    with rasterio.open(pair.after_path, "r+") as dst:
        dst.write(np.zeros((dst.count, dst.height, dst.width), dtype=dst.dtypes[0]))
    out = tmp_path / "change.tif"
    with pytest.raises(EmptySceneError, match="no pixel"):
        changedet.run(pair.before_path, pair.after_path, out, method="cva", progress=False)
    assert not out.exists()


def test_model_choice_from_bands(synthetic_pair):
    pair = changedet.open_pair(synthetic_pair.before_path, synthetic_pair.after_path)
    with pytest.raises(BandMismatchError, match="--bands"):
        pipeline.resolve_detector(pair)  # 4 generic bands: no packaged model fits
    three = pipeline.select_bands(pair, ["3", "2", "1"])
    assert three.band_ids == ("3", "2", "1")
    assert three.before.shape[0] == 3
    with pytest.raises(BandMismatchError, match="not in"):
        pipeline.select_bands(pair, ["B04"])


def test_cva_on_real_sentinel2_pair_clears_the_floors(sample_data, tmp_path):
    city = sample_data / "oscd_paris"
    # Without cloud masking: CVA's Otsu cut then separates the clouds (most of its "change");
    # with the clouds masked, Otsu on the remaining near-unimodal scores keeps almost nothing.
    ds = changedet.detect(city / "imgs_1", city / "imgs_2", method="cva", cloud_mask="none")
    with rasterio.open(city / "paris-cm.tif") as src:
        label = src.read(1) == 2  # OSCD: 1 = no change, 2 = change
    mask, score = ds.mask.values, ds.score.values
    # No nodata in the inputs and no cloud mask: every pixel is scored, 0/1, and the mask is
    # the score against the threshold the dataset reports.
    assert np.isfinite(score).all() and np.isin(mask, (0, 1)).all()
    np.testing.assert_array_equal(mask, score > ds.attrs["threshold"])
    m = metrics.scores_from_counts(*metrics.confusion_counts_np(mask == 1, label, mask != 255))
    prevalence = label.mean()
    # Marking everything gives precision = prevalence; nothing (or NaN) recall 0. CVA finds
    # ~12 % of Paris's change (clouds take Otsu's cut) at ~11x the prevalence in precision.
    assert m.precision > 2 * prevalence and m.recall > 0.05, m
    assert m.f1 > 2 * (2 * prevalence / (1 + prevalence)), m  # 2x the F1 of "everything"


def _whole_image_score(model, before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Reference: one forward pass over the whole scene, mirrored by the halo at the edges."""
    import jax.numpy as jnp

    from changedet import tiling
    from changedet.data import normalize, to_nhwc

    halo, align = model.halo_px, model.align_px
    height, width = before.shape[1:]
    dates = []
    for x in (before, after):
        x = normalize(x, np.asarray(model.norm_mean), np.asarray(model.norm_std))
        pad_h = tiling.round_up(height + 2 * halo, align) - height - halo
        pad_w = tiling.round_up(width + 2 * halo, align) - width - halo
        x = np.pad(x, ((0, 0), (halo, pad_h), (halo, pad_w)), mode="symmetric")
        dates.append(jnp.asarray(to_nhwc(x[None])))
    score = np.asarray(model.module().change_score(*dates))[0]
    return score[halo:halo + height, halo:halo + width]


@pytest.mark.parametrize("block_px", [48, 64, 400])
def test_tiled_model_output_equals_whole_image(sample_data, block_px):
    """Seam-free: the dask-tiled score equals one whole-scene pass, whatever the block size."""
    from changedet.config import ModelConfig
    from changedet.modelfile import random_init_model

    city = sample_data / "oscd_paris"
    pair = changedet.open_pair(city / "imgs_1", city / "imgs_2")
    cfg = ModelConfig(num_bands=13, features=(8, 16, 16), embed_dim=8, head="diff")
    model = random_init_model(cfg, pair.band_ids, seed=3)
    # normalise like a trained model would (raw DNs are ~1e3)
    model = dataclasses.replace(model, norm_mean=(1000.0,) * 13, norm_std=(500.0,) * 13)
    ds = changedet.detect(city / "imgs_1", city / "imgs_2", model=model, block_px=block_px,
                          cloud_mask="none")
    tiled = ds.score.values
    before = pair.before.values.astype(np.float32)
    after = pair.after.values.astype(np.float32)
    reference = _whole_image_score(model, before, after)
    assert tiled.shape == (408, 390)  # blocks of 48/64 px do not divide 408 x 390
    assert np.std(reference) > 1e-3  # a non-trivial score map, so equality means something
    np.testing.assert_allclose(tiled, reference, atol=2e-5)


@pytest.mark.parametrize("block_px", [48, 1024])
def test_per_image_model_tiled_equals_whole_image_with_whole_scene_statistics(
        sample_data, block_px):
    """Per-image standardisation uses statistics of the whole scene (one reduction first), so
    tiles stay seam-free and equal one whole-scene pass standardised by those statistics."""
    from changedet.config import ModelConfig
    from changedet.data import image_statistics
    from changedet.modelfile import random_init_model

    city = sample_data / "oscd_paris"
    pair = changedet.open_pair(city / "imgs_1", city / "imgs_2")
    cfg = ModelConfig(num_bands=13, features=(8, 16, 16), embed_dim=8, head="diff")
    model = dataclasses.replace(random_init_model(cfg, pair.band_ids, seed=3),
                                normalization="per_image")
    ds = changedet.detect(city / "imgs_1", city / "imgs_2", model=model, block_px=block_px,
                          cloud_mask="none")
    before = pair.before.values.astype(np.float32)
    after = pair.after.values.astype(np.float32)
    valid = np.ones(before.shape[1:], bool)
    (bm, bs), (am, as_) = image_statistics(before, valid), image_statistics(after, valid)
    reference = _whole_image_score(model, (before - bm[:, None, None]) / bs[:, None, None],
                                   (after - am[:, None, None]) / as_[:, None, None])
    assert np.std(reference) > 1e-3
    np.testing.assert_allclose(ds.score.values, reference, atol=3e-5)


def test_two_scenes_in_one_dask_compute_keep_their_own_scores(tmp_path):
    import dask

    pairs = []
    for seed in (0, 5):
        folder = tmp_path / str(seed)
        folder.mkdir()
        pairs.append(write_synthetic_pair(folder, seed=seed))
    graphs = [changedet.detect(p.before_path, p.after_path, method="cva", threshold=1.0).score
              for p in pairs]
    together = dask.compute(*(g.data for g in graphs))
    for graph, value in zip(graphs, together, strict=True):
        np.testing.assert_array_equal(value, graph.values)  # no key collision between graphs


def test_interrupt_while_polygonising_removes_the_run_outputs(synthetic_pair, tmp_path, monkeypatch):
    from changedet import io

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(io, "write_vector_from_rasters", interrupted)
    out, score = tmp_path / "change.tif", tmp_path / "score.tif"
    with pytest.raises(KeyboardInterrupt):
        changedet.run(synthetic_pair.before_path, synthetic_pair.after_path, out,
                      score_path=score, vector_path=tmp_path / "change.gpkg", method="cva",
                      progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["after.tif", "before.tif"]
