"""End to end through ``changedet.pipeline``: grids, nodata, block invariance, real scenes."""

from __future__ import annotations

import dataclasses

import dask.array as da
import numpy as np
import pytest
import rasterio

import changedet
from changedet import metrics, pipeline
from changedet.detectors.cva import otsu_threshold_dask
from changedet.errors import BandMismatchError, EmptySceneError
from changedet.testing import write_synthetic_pair, write_variant


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
    # the mask is the written score against the reported threshold, which is Otsu's on that
    # score (not an echo of a default)
    valid = synthetic_pair.valid
    np.testing.assert_array_equal(mask[valid], score[valid] > result.threshold)
    assert result.threshold == pytest.approx(otsu_threshold_dask(da.from_array(score)))
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


def test_detect_is_georeferenced_and_its_mask_is_score_above_threshold(synthetic_pair):
    masks = {}
    for threshold in (1.0, 2.5):
        ds = changedet.detect(synthetic_pair.before_path, synthetic_pair.after_path,
                              method="cva", threshold=threshold)
        assert ds.score.chunks is not None  # dask-backed
        assert ds.attrs["threshold"] == threshold
        score, mask = ds.score.values, ds.mask.values
        valid = synthetic_pair.valid
        np.testing.assert_array_equal(np.isnan(score), ~valid)
        np.testing.assert_array_equal(mask[valid], score[valid] > threshold)
        assert (mask[~valid] == 255).all()
        masks[threshold] = mask
    assert (masks[1.0] == 1).sum() > (masks[2.5] == 1).sum() > 0  # the threshold is applied
    with rasterio.open(synthetic_pair.before_path) as src:
        assert ds.rio.crs == src.crs
        assert ds.rio.transform() == src.transform


def _count_pixel_reads(monkeypatch) -> list[str]:
    """Records every pixel read from a file: ``read`` of rasterio's datasets and warped VRTs,
    which every lazy window of ``changedet.io`` (and any code that bypassed it) goes through."""
    import rasterio.io
    import rasterio.vrt

    reads: list[str] = []
    for cls in (rasterio.io.DatasetReader, rasterio.vrt.WarpedVRT):
        original = cls.read

        def counted_read(self, *args, _original=original, **kwargs):
            reads.append(self.name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "read", counted_read)
    return reads


def test_building_the_graph_reads_no_pixels(synthetic_pair, monkeypatch):
    reads = _count_pixel_reads(monkeypatch)
    pair = changedet.open_pair(synthetic_pair.before_path, synthetic_pair.after_path,
                               chunks_px=32)
    pair = pipeline.select_bands(pair, ["3", "1"])
    assert reads == []  # opening, checking grids, choosing bands: headers only
    detector = pipeline.resolve_detector(pair, method="cva").prepare(pair)
    one_pass = len(reads)  # the statistics: each 32 px window of each date read once
    assert one_pass == 2 * 2 * 2  # 2 dates x 2 x 2 windows
    graph = pipeline.score_graph(pair, detector, block_px=16)
    assert len(reads) == one_pass  # the score graph itself reads nothing
    graph.compute()
    assert len(reads) == 2 * one_pass
    # detect with a threshold: the statistics pass, nothing more; Otsu adds its two passes
    del reads[:]
    ds = changedet.detect(synthetic_pair.before_path, synthetic_pair.after_path, method="cva",
                          threshold=1.0, cloud_mask="none")
    assert len(reads) == 2  # one 1024 px block per date
    del reads[:]
    changedet.detect(synthetic_pair.before_path, synthetic_pair.after_path, method="cva",
                     cloud_mask="none")
    assert len(reads) == 3 * 2
    del reads[:]
    ds.mask.compute()
    assert len(reads) == 2


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
    with pytest.raises(BandMismatchError, match="with bands"):
        pipeline.resolve_detector(pair)  # 4 generic bands: no packaged model fits
    three = pipeline.select_bands(pair, ["3", "2", "1"])
    assert three.band_ids == ("3", "2", "1")
    assert three.before.shape[0] == 3
    with pytest.raises(BandMismatchError, match="not in"):
        pipeline.select_bands(pair, ["B04"])


def _named_pair(tmp_path, names):
    """A 3-band synthetic pair whose bands carry ``names`` as descriptions (band ids)."""
    pair = write_synthetic_pair(tmp_path, num_bands=3, seed=4)
    before = write_variant(pair.before_path, tmp_path / "b.tif", band_descriptions=names)
    after = write_variant(pair.after_path, tmp_path / "a.tif", band_descriptions=names)
    return before, after


def test_bands_by_id_by_index_and_mixed_pick_those_pixels(tmp_path):
    before, after = _named_pair(tmp_path, ["B02", "B03", "B04"])
    with rasterio.open(before) as src:
        raw = src.read()  # file bands 1, 2, 3 = B02, B03, B04
    pair = changedet.open_pair(before, after)
    assert pair.band_ids == ("B02", "B03", "B04")
    for request, ids, file_bands in (
        (["3", "B02"], ("B04", "B02"), [3, 1]),  # an index, then an id
        (["B03", "1"], ("B03", "B02"), [2, 1]),
        (["B04", "B03", "B02"], ("B04", "B03", "B02"), [3, 2, 1]),
        (["3", "2", "1"], ("B04", "B03", "B02"), [3, 2, 1]),
    ):
        chosen = pipeline.select_bands(pair, request)
        assert chosen.band_ids == ids, request
        np.testing.assert_array_equal(chosen.before.values, raw[[b - 1 for b in file_bands]])
        assert tuple(chosen.after.band.values) == ids
    with pytest.raises(BandMismatchError, match="'4' is not in"):
        pipeline.select_bands(pair, ["4", "B02"])
    with pytest.raises(BandMismatchError, match="'B08' is not in"):
        pipeline.select_bands(pair, ["B08"])


def test_mixed_band_request_scores_the_chosen_bands(tmp_path):
    """--bands 3,B02 scores file bands 3 and 1: the same CVA score as a file holding only
    those two bands, in that order."""
    before, after = _named_pair(tmp_path, ["B02", "B03", "B04"])
    two = [write_variant(p, tmp_path / f"two_{p.name}", bands=[3, 1]) for p in (before, after)]
    picked = changedet.detect(before, after, method="cva", bands=["3", "B02"], threshold=1.0)
    reference = changedet.detect(*two, method="cva", threshold=1.0)
    np.testing.assert_allclose(picked.score.values, reference.score.values, rtol=1e-6,
                               equal_nan=True)
    everything = changedet.detect(before, after, method="cva", threshold=1.0).score.values
    assert not np.allclose(picked.score.values, everything, equal_nan=True)


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
    from changedet.detectors.learned import random_init_model

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


@pytest.mark.parametrize(("block_px", "normalization"), [
    (48, "per_image"), (1024, "per_image"), (48, "per_image_scalar")])
def test_per_image_model_tiled_equals_whole_image_with_whole_scene_statistics(
        sample_data, block_px, normalization):
    """Per-image standardisation uses statistics of the whole scene (one reduction first), so
    tiles stay seam-free and equal one whole-scene pass standardised by those statistics
    (per band, or pooled over blue, green and red for ``per_image_scalar``)."""
    from changedet.config import ModelConfig
    from changedet.data import image_statistics, scalar_reference, scalar_statistics
    from changedet.detectors.learned import random_init_model

    city = sample_data / "oscd_paris"
    pair = changedet.open_pair(city / "imgs_1", city / "imgs_2")
    # The packaged models' head (dates fused at every level), at a test-sized width.
    cfg = ModelConfig(num_bands=13, features=(8, 16, 16), head="msdiff", head_convs=0)
    model = dataclasses.replace(random_init_model(cfg, pair.band_ids, seed=3),
                                normalization=normalization)
    ds = changedet.detect(city / "imgs_1", city / "imgs_2", model=model, block_px=block_px,
                          cloud_mask="none")
    before = pair.before.values.astype(np.float32)
    after = pair.after.values.astype(np.float32)
    valid = np.ones(before.shape[1:], bool)
    (bm, bs), (am, as_) = image_statistics(before, valid), image_statistics(after, valid)
    if normalization == "per_image_scalar":
        reference = scalar_reference(pair.band_ids)
        assert [pair.band_ids[i] for i in reference] == ["B02", "B03", "B04"]
        (bm, bs), (am, as_) = (scalar_statistics(m, s, reference) for m, s in ((bm, bs), (am, as_)))
        assert np.ptp(bm) == 0 and bm[0] > 0
    reference = _whole_image_score(model, (before - bm[:, None, None]) / bs[:, None, None],
                                   (after - am[:, None, None]) / as_[:, None, None])
    assert np.std(reference) > 1e-3
    np.testing.assert_allclose(ds.score.values, reference, atol=3e-5)


def test_per_image_scalar_scales_a_band_subset_as_the_full_image(sample_data):
    """A ``per_image_scalar`` model trained with band dropout pools its statistics over blue,
    green and red, which every accepted input holds: a 4-band cut of the real Paris pair gets
    exactly the numbers the 13-band pair gets (pooling over whatever bands came would not)."""
    from changedet.config import ModelConfig
    from changedet.detectors.learned import random_init_model
    from changedet.io.pair import select_bands

    city = sample_data / "oscd_paris"
    full = changedet.open_pair(city / "imgs_1", city / "imgs_2")
    four = select_bands(full, ["B02", "B03", "B04", "B08"])
    cfg = ModelConfig(num_bands=13, features=(8, 16, 16), head="msdiff", head_convs=0)
    model = dataclasses.replace(random_init_model(cfg, full.band_ids, seed=3),
                                normalization="per_image_scalar",
                                required_bands=("B02", "B03", "B04"))
    a, b = model.prepare(full), model.prepare(four)
    assert b.slots == (1, 2, 3, 7)
    for x, y in ((a.before_mean, b.before_mean), (a.before_std, b.before_std),
                 (a.after_mean, b.after_mean), (a.after_std, b.after_std)):
        assert np.ptp(x) == 0
        np.testing.assert_allclose(y, x[:4], rtol=1e-12)


def test_quality_best_is_seam_free_recorded_and_differs_from_fast(sample_data, tmp_path):
    """``quality="best"`` (8 dihedral transforms per tile) keeps the dask-tiled score equal
    across block sizes, records itself in the mask's tags, and changes the score."""
    from changedet.config import ModelConfig
    from changedet.detectors.learned import random_init_model

    city = sample_data / "oscd_paris"
    pair = changedet.open_pair(city / "imgs_1", city / "imgs_2")
    cfg = ModelConfig(num_bands=13, features=(8, 16, 16), head="msdiff", head_convs=0)
    model = dataclasses.replace(random_init_model(cfg, pair.band_ids, seed=3),
                                normalization="per_image")
    kw = dict(model=model, cloud_mask="none", progress=False)
    changedet.run(city / "imgs_1", city / "imgs_2", tmp_path / "best.tif", quality="best",
                  score_path=tmp_path / "best_score.tif", block_px=128, **kw)
    changedet.run(city / "imgs_1", city / "imgs_2", tmp_path / "fast.tif",
                  score_path=tmp_path / "fast_score.tif", **kw)
    with rasterio.open(tmp_path / "best.tif") as ds:
        assert ds.tags()["quality"] == "best"
    with rasterio.open(tmp_path / "fast.tif") as ds:
        assert ds.tags()["quality"] == "fast"
    best = changedet.detect(city / "imgs_1", city / "imgs_2", quality="best", block_px=1024,
                            **{k: v for k, v in kw.items() if k != "progress"}).score.values
    with rasterio.open(tmp_path / "best_score.tif") as ds:
        np.testing.assert_allclose(ds.read(1), best, atol=3e-5)
    with rasterio.open(tmp_path / "fast_score.tif") as ds:
        assert np.abs(ds.read(1) - best).max() > 1e-3
    with pytest.raises(changedet.ConfigError, match="quality must be one of"):
        changedet.detect(city / "imgs_1", city / "imgs_2", quality="slow", model=model)


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


def test_interrupt_while_polygonising_removes_the_run_outputs(synthetic_pair, tmp_path,
                                                               monkeypatch):
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
