"""Tests for changedet.data (statistics) and changedet.training.sampling (patches, augmentation)."""

from __future__ import annotations

import numpy as np
import pytest

from changedet import config, data
from changedet.errors import BandMismatchError, ConfigError
from changedet.training import sampling


def _scene(name="s", shape=(40, 50), seed=0, bands=2) -> data.Scene:
    rng = np.random.default_rng(seed)
    before = rng.normal(100, 10, (bands, *shape)).astype(np.float32)
    after = before.copy()
    label = np.zeros(shape, np.uint8)
    label[5:9, 30:35] = 1
    after[:, label == 1] += 50
    valid = np.ones(shape, bool)
    valid[:, :3] = False
    return data.Scene(name, before, after, label, valid, tuple(str(i + 1) for i in range(bands)))


def test_band_statistics_exact_over_valid_pixels_of_both_dates():
    a, b = _scene(seed=0), _scene(seed=1, shape=(20, 13))
    b.before[:, ~b.valid] = 1e9  # invalid pixels must not count
    mean, std = data.band_statistics([a, b])
    for band in range(2):
        values = np.concatenate([s.before[band][s.valid] for s in (a, b)]
                                + [s.after[band][s.valid] for s in (a, b)]).astype(np.float64)
        assert mean[band] == pytest.approx(values.mean(), rel=1e-12)
        assert std[band] == pytest.approx(values.std(), rel=1e-10)
    assert mean.dtype == np.float64


def test_band_statistics_rejects_mixed_bands():
    with pytest.raises(BandMismatchError):
        data.band_statistics([_scene(bands=2), _scene(name="t", bands=3)])


def test_sampler_is_deterministic_and_class_balanced():
    s = _scene()
    sampler = sampling.PatchSampler([s], patch_px=16, changed_fraction=0.5)
    b1 = sampler.sample(8, np.random.default_rng(3))
    b2 = sampler.sample(8, np.random.default_rng(3))
    for x, y in zip(b1, b2, strict=True):
        np.testing.assert_array_equal(x, y)
    assert b1.before.shape == (8, 16, 16, 2) and b1.before.dtype == np.float32
    assert b1.label.dtype == np.int32 and b1.valid.dtype == bool
    # The first half is centred (with jitter) on the 20 changed pixels: each holds change.
    assert all(b1.label[i].sum() > 0 for i in range(4))
    # Changed pixels are 1 % of the scene; balanced batches see several times more.
    assert b1.label.mean() > 3 * s.label.mean()


def test_augmentation_keeps_dates_label_and_valid_aligned():
    s = _scene()
    sampler = sampling.PatchSampler([s], patch_px=16, changed_fraction=1.0)
    batch = sampler.sample(16, np.random.default_rng(0))
    # In this scene change <=> |after - before| = 50 on every band: holds after any transform.
    diff = np.abs(batch.after - batch.before)[..., 0]
    np.testing.assert_array_equal(diff > 25, (batch.label == 1) & (diff > 25))
    assert ((diff > 25) == (batch.label == 1))[batch.valid].all()
    # Swaps happen: some patches have before > after in the changed area.
    signs = {np.sign((batch.after - batch.before)[i][batch.label[i] == 1].mean())
             for i in range(16) if batch.label[i].any()}
    assert signs == {-1.0, 1.0}


def test_small_scene_is_padded_invalid():
    s = _scene(shape=(10, 12))
    batch = sampling.PatchSampler([s], patch_px=32, augment=False).sample(
        2, np.random.default_rng(0))
    assert batch.before.shape == (2, 32, 32, 2)
    assert int(batch.valid[0].sum()) == int(s.valid.sum())
    assert not batch.valid[0, 10:].any() and not batch.valid[0, :, 12:].any()


def _square_scene(edge=16, size=400) -> data.Scene:
    """A flat scene with one changed ``edge`` px square in the middle (after = before + 50)."""
    before = np.full((1, size, size), 100, np.float32)
    label = np.zeros((size, size), np.uint8)
    lo = size // 2 - edge // 2
    label[lo:lo + edge, lo:lo + edge] = 1
    after = before + 50 * label
    return data.Scene("sq", before, after, label, np.ones((size, size), bool), ("1",))


def test_scale_augmentation_shows_objects_at_other_sizes():
    s = _square_scene()
    plain = sampling.PatchSampler([s], patch_px=96, changed_fraction=1.0)
    areas = [int(p.sum()) for p in plain.sample(40, np.random.default_rng(0)).label]
    assert set(areas) == {256}  # the whole square in every patch, at its own size
    scaled = sampling.PatchSampler([s], patch_px=96, changed_fraction=1.0, scale=1.0)
    batch = scaled.sample(40, np.random.default_rng(0))
    areas = np.array([int(p.sum()) for p in batch.label])
    # Windows 48 to 192 px wide resampled to 96: the square is 8 to 32 px wide, never cut.
    assert areas.min() >= 8 * 8 - 40 and areas.max() <= 32 * 32 + 140
    assert areas.min() < 256 / 2 and areas.max() > 256 * 2
    assert set(np.unique(batch.label)) == {0, 1} and batch.valid.all()
    # Images and label stay aligned: change <=> the dates differ (blurred edges aside).
    diff = np.abs(batch.after - batch.before)[..., 0]
    assert (diff[batch.label == 1] > 25).mean() > 0.9
    assert (diff[batch.label == 0] > 25).mean() < 0.01


def test_zoom_keeps_padding_invalid_and_shrinks_without_aliasing():
    stripes = np.zeros((1, 66, 66), np.float32)
    stripes[:, :, ::2] = 1.0  # finer than the coarser grid can hold: a coarser sensor sees grey
    valid = np.ones((66, 66), bool)
    valid[:, 48:] = False  # padding past a scene edge
    label = np.zeros((66, 66), np.uint8)
    b, a, lab, v = sampling.zoom_arrays(stripes, stripes, label, valid, 1 / 3)
    assert b.shape == (1, 22, 22) and lab.shape == v.shape == (22, 22)
    assert v[:, :15].all() and not v[:, 17:].any()
    # Point-sampling every third pixel would give full-contrast stripes (aliasing).
    assert np.ptp(b[0, 4:18, 2:14]) < 0.1
    assert b[0, 4:18, 2:14].mean() == pytest.approx(0.5, abs=0.05)
    with pytest.raises(ConfigError):
        sampling.PatchSampler([_scene()], patch_px=16, scale=-1.0)


@pytest.mark.parametrize("scale", [0.0, 1.0])
def test_sparse_labels_keep_the_unlabelled_imagery_in_training_patches(scale):
    """A scene labelled at a few points (Landsat Taizhou): the loss sees the labelled pixels
    only, but the network must see the imagery around them, as ``run`` shows it all."""
    s = _square_scene(edge=16, size=200)
    labelled = np.zeros((200, 200), bool)
    labelled[::10, ::10] = True
    labelled[92:108, 92:108] = True  # the change is labelled
    s = s._replace(valid=labelled, image_valid=np.ones((200, 200), bool))
    sampler = sampling.PatchSampler([s], patch_px=32, changed_fraction=1.0, radiometric=0.1,
                                    scale=scale)
    batch = sampler.sample(16, np.random.default_rng(0))
    assert batch.valid.mean() < 0.4  # the loss mask stays sparse ...
    assert (np.abs(batch.before) > 1e-3).mean() > 0.9  # ... the imagery does not go to 0
    assert batch.label[batch.valid].any() and not batch.label[~batch.valid].any()


def test_resample_scene_keeps_the_ground_and_the_label_aligned():
    s = _square_scene(edge=40, size=200)._replace(image_valid=np.ones((200, 200), bool))
    coarse = sampling.resample_scene(s, 0.5)
    assert coarse.before.shape == (1, 100, 100) and coarse.label.shape == (100, 100)
    assert coarse.image_valid.shape == coarse.valid.shape == (100, 100)
    assert int(coarse.label.sum()) == 20 * 20 and coarse.name == s.name
    fine = sampling.resample_scene(s, 2.0)
    assert int(fine.label.sum()) == 80 * 80
    diff = np.abs(fine.after - fine.before)[0]
    assert (diff[fine.label == 1] > 25).mean() > 0.95 and (diff[fine.label == 0] > 25).mean() < 0.01


def test_resampling_never_mixes_nodata_into_valid_pixels():
    s = _square_scene(edge=40, size=200)
    valid = np.ones((200, 200), bool)
    valid[:, 150:] = False
    before = np.where(valid, s.before, -9999).astype(np.float32)  # raw nodata values
    s = s._replace(before=before, after=before + 50 * s.label, valid=valid)
    for zoom in (0.5, 2.0):
        r = sampling.resample_scene(s, zoom)
        assert r.before[:, r.valid].min() == 100 and r.after[:, r.valid].max() == 150
        assert (r.before[:, ~r.valid] == 0).all()  # invalid pixels come out 0
        assert int(r.label.sum()) == int((40 * zoom) ** 2)  # label and images on one grid
    with pytest.raises(ConfigError, match="zoom"):
        sampling.resample_scene(s, 0.0)


def test_the_training_config_reaches_the_sampler_and_old_checkpoints_resume():
    import importlib

    from changedet.config import TrainConfig
    from changedet.training.checkpoints import _run_signature

    fit = importlib.import_module("changedet.training.fit")  # the module, not the function

    cfg = TrainConfig(patch_px=32, scale=0.5, normalization="per_image")
    assert fit._prepare_data([_scene()], ("1", "2"), cfg).sampler.scale == 0.5
    # Off, the setting is left out of the resume signature: a checkpoint written before the
    # setting existed still resumes; on, it is part of it.
    model_cfg = config.tiny(2)[0]
    off = _run_signature(model_cfg, TrainConfig(), ("1", "2"), ["s"])
    assert "scale" not in off["train"]
    on = _run_signature(model_cfg, TrainConfig(scale=0.5), ("1", "2"), ["s"])
    assert on["train"]["scale"] == 0.5
    with pytest.raises(ConfigError, match="scale"):
        TrainConfig(scale=-0.5)


def test_normalize_scene_and_bad_config():
    s = _scene()
    mean, std = data.band_statistics([s])
    n = data.normalize_scene(s, mean, std)
    v = np.concatenate([n.before[:, n.valid], n.after[:, n.valid]], axis=1)
    np.testing.assert_allclose(v.mean(axis=1), 0, atol=1e-5)
    np.testing.assert_allclose(v.std(axis=1), 1, atol=1e-4)
    assert (n.before[:, ~n.valid] == 0).all()
    with pytest.raises(ConfigError):
        sampling.PatchSampler([s], patch_px=16, changed_fraction=1.5)


def test_per_image_scalar_keeps_the_spectral_shape_and_cancels_brightness():
    """``per_image_scalar`` pools one mean/std per date over blue, green and red: a common gain
    and offset on every band cancels (as with per-band standardisation), but the bands'
    relative levels survive, where per-band standardisation erases them."""
    ids = ("B01", "B02", "B03", "B04", "B08")
    rng = np.random.default_rng(0)
    shape = (30, 40)
    # a vegetation-like spectrum
    levels = np.array([1500.0, 1200.0, 1000.0, 900.0, 3000.0])[:, None, None]
    before = (levels * (1 + 0.1 * rng.standard_normal((5, *shape)))).astype(np.float32)
    after = (1.7 * before + 250.0).astype(np.float32)  # brighter, hazier: no ground change
    scene = data.Scene("s", before, after, np.zeros(shape, np.uint8), np.ones(shape, bool), ids)
    scalar = data.normalize_per_image(scene, scalar=True)
    np.testing.assert_allclose(scalar.before, scalar.after, atol=2e-5)
    # the NIR band stays far above the visible ones (vegetation stays vegetation) ...
    nir, red = scalar.before[4].mean(), scalar.before[3].mean()
    assert nir - red > 5.0
    # ... and the pooled statistics come from B02-B04 only: they average 0 with unit std.
    visible = scalar.before[1:4].astype(np.float64)
    assert abs(visible.mean()) < 1e-5 and visible.std() == pytest.approx(1.0, rel=1e-5)
    per_band = data.normalize_per_image(scene)
    assert abs(per_band.before[4].mean() - per_band.before[3].mean()) < 1e-5
    # one mean and std, repeated for every band; a constant image gets std 1
    m, s = data.scalar_statistics(np.array([2.0, 4.0, 6.0]), np.array([1.0, 1.0, 1.0]), (0, 2))
    assert m.tolist() == [4.0] * 3 and s.tolist() == pytest.approx([np.sqrt(5.0)] * 3)
    assert data.scalar_statistics(np.array([3.0]), np.array([0.0]), (0,))[1].tolist() == [1.0]
    assert data.scalar_reference(("3", "2", "1")) == (0, 1, 2)  # positional bands: all


def test_scene_batches_draw_each_batch_from_one_scene_with_one_jitter_and_band_set():
    """``train.scene_batches``: batch statistics must be one scene's, as ``norm_adapt``
    measures them at inference: one scene, one band-drop choice, one gain/offset per date."""
    def flat(name, value):  # a constant scene: its value says where a patch came from
        image = np.full((3, 40, 40), value, np.float32)
        label = np.zeros((40, 40), np.uint8)
        label[10:14, 10:14] = value > 0
        return data.Scene(name, image, image.copy(), label, np.ones((40, 40), bool),
                          ("1", "2", "3"))

    scenes = [flat(str(v), float(v)) for v in range(4)]
    kw = dict(patch_px=16, changed_fraction=0.5, radiometric=0.2, band_drop=1.0,
              band_sets=[np.array([1, 1, 0], bool), np.array([1, 0, 1], bool)])
    together = sampling.PatchSampler(scenes, scene_batches=True, **kw)
    mixed = sampling.PatchSampler(scenes, **kw)
    seen = set()
    for seed in range(12):
        batch = together.sample(8, np.random.default_rng(seed))
        # the same scene, jitter and kept bands in every patch: identical constant patches
        # up to the haze ramp, which is one per date too
        np.testing.assert_allclose(batch.before, batch.before[:1].repeat(8, 0), atol=1e-6)
        np.testing.assert_allclose(batch.after, batch.after[:1].repeat(8, 0), atol=1e-6)
        assert np.count_nonzero(batch.before[0, 0, 0] == 0) == 1  # one band dropped
        seen.add(round(float(np.median(batch.before[0, ..., 0])), 0))
    assert len(seen) > 1  # scenes differ from batch to batch
    batch = mixed.sample(8, np.random.default_rng(0))
    assert not np.allclose(batch.before, batch.before[:1].repeat(8, 0))
