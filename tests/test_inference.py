"""Jitted data-parallel predict step and BlockPredictor on a real OSCD crop."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rasterio
from flax import nnx
from rasterio.windows import Window

from changedet import tiling
from changedet.config import ModelConfig
from changedet.data import normalize, to_nhwc
from changedet.detectors.learned import LearnedDetector, random_init_model
from changedet.errors import BandMismatchError, ConfigError
from changedet.inference import BlockPredictor, make_predict_step

BANDS = ("B02", "B03", "B04", "B08")  # the 10 m bands: one grid, no resampling needed


def tiny_model(head: str = "diff", **kw) -> LearnedDetector:
    cfg = ModelConfig(num_bands=4, features=(4, 8, 8), embed_dim=4, head=head, **kw)
    return random_init_model(cfg, BANDS, seed=1)


@pytest.fixture(scope="module")
def paris_crop(sample_data):
    """A 45x61 (odd) crop of both OSCD Paris dates, uint16 -> float32 (band, h, w)."""
    window = Window(col_off=100, row_off=120, width=61, height=45)
    dates = []
    for folder in ("imgs_1", "imgs_2"):
        bands = []
        for band in BANDS:
            (path,) = sorted((sample_data / "oscd_paris" / folder).glob(f"*_{band}.tif"))
            with rasterio.open(path) as ds:
                bands.append(ds.read(1, window=window).astype(np.float32))
        dates.append(np.stack(bands))
    return dates[0], dates[1]


def with_crop_statistics(model: LearnedDetector, before: np.ndarray) -> LearnedDetector:
    mean = before.reshape(len(BANDS), -1).mean(1)
    std = before.reshape(len(BANDS), -1).std(1)
    return LearnedDetector(config=model.config, state=model.state, band_ids=model.band_ids,
                           norm_mean=tuple(mean), norm_std=tuple(std), threshold=0.5, name="t")


def test_four_devices_give_the_one_device_result():
    assert jax.device_count() == 4
    model = tiny_model()
    graphdef, state = nnx.split(model.module())
    rng = np.random.default_rng(0)
    before = rng.normal(size=(4, 16, 16, 4)).astype(np.float32)
    after = rng.normal(size=(4, 16, 16, 4)).astype(np.float32)
    step4 = make_predict_step(graphdef)
    step1 = make_predict_step(graphdef, jax.devices()[:1])
    assert step4.num_devices == 4 and step1.num_devices == 1
    out4 = step4(step4.put_state(state), before, after)
    out1 = step1(step1.put_state(state), before, after)
    assert len(out4.sharding.device_set) == 4
    np.testing.assert_allclose(np.asarray(out4), np.asarray(out1), rtol=1e-5, atol=1e-6)
    # Output = sigmoid of the model's logits, computed outside the step.
    direct = jax.nn.sigmoid(model.module()(jnp.asarray(before), jnp.asarray(after)))
    np.testing.assert_allclose(np.asarray(out4), np.asarray(direct), rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="multiple of the 4 devices"):
        step4(step4.put_state(state), before[:3], after[:3])


def test_repeated_calls_compile_once():
    model = tiny_model("distance")
    graphdef, state = nnx.split(model.module())
    step = make_predict_step(graphdef)
    state = step.put_state(state)
    rng = np.random.default_rng(1)
    for _ in range(3):
        x = rng.normal(size=(4, 16, 16, 4)).astype(np.float32)
        step(state, x, x[::-1].copy())
    assert step.num_traces == 1 and step.cache_size() == 1


@pytest.mark.parametrize("head", ["diff", "distance"])
@pytest.mark.parametrize("tile_px", [8, 16, 64])
def test_block_predictor_equals_one_whole_block_pass(paris_crop, head, tile_px):
    _assert_tiled_equals_one_pass(paris_crop, tiny_model(head), tile_px)


def test_layernorm_model_tiled_equals_one_whole_block_pass(paris_crop):
    """The optional LayerNorm normalises each pixel over its channels, never over space, so
    16 px tiles with their halo still give the whole-block score."""
    _assert_tiled_equals_one_pass(paris_crop, tiny_model("diff", norm="layer"), 16)


def _assert_tiled_equals_one_pass(paris_crop, model: LearnedDetector, tile_px: int) -> None:
    before, after = paris_crop
    head = model.config.head
    model = with_crop_statistics(model, before)
    predictor = BlockPredictor(model, tile_px=tile_px, batch_size=4)
    score = predictor.predict(before, after)
    assert score.shape == (45, 61) and score.dtype == np.float32
    # Reference: the same mirrored halo padding, bottom/right to the pooling alignment, one pass.
    halo, align = model.halo_px, 4
    pads = ((0, 0), (halo, halo + tiling.round_up(45, align) - 45),
            (halo, halo + tiling.round_up(61, align) - 61))
    net = model.module()
    b = to_nhwc(np.pad(normalize(before, model.norm_mean, model.norm_std), pads, "symmetric"))
    a = to_nhwc(np.pad(normalize(after, model.norm_mean, model.norm_std), pads, "symmetric"))
    whole = np.asarray(net.change_score(jnp.asarray(b), jnp.asarray(a)))[0]
    expected = whole[halo:halo + 45, halo:halo + 61]
    np.testing.assert_allclose(score, expected, atol=1e-4, rtol=1e-4)
    if head == "distance":
        assert (score >= 0).all()
    else:
        assert ((score >= 0) & (score <= 1)).all()
    assert predictor.step.num_traces == 1


def test_block_predictor_is_thread_safe_and_compiles_once(paris_crop):
    before, after = paris_crop
    model = with_crop_statistics(tiny_model("conc"), before)
    predictor = BlockPredictor(model, tile_px=16)
    blocks = [(before[:, i:i + 32, j:j + 40], after[:, i:i + 32, j:j + 40])
              for i in (0, 5, 13) for j in (0, 7, 21)]
    serial = [predictor.predict(b, a) for b, a in blocks]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda ba: predictor.predict(*ba), blocks))
    for s, t in zip(serial, threaded, strict=True):
        np.testing.assert_array_equal(s, t)
    assert predictor.step.num_traces == 1
    # Swapping the dates does not change the score (symmetric head).
    np.testing.assert_allclose(predictor.predict(after, before), predictor.predict(before, after),
                               atol=1e-6)


def test_block_predictor_rejects_bad_settings_and_inputs(paris_crop):
    before, after = paris_crop
    model = tiny_model()
    with pytest.raises(ConfigError, match="multiple of 4"):
        BlockPredictor(model, tile_px=30)
    with pytest.raises(ConfigError, match="multiple of the 4 devices"):
        BlockPredictor(model, tile_px=16, batch_size=6)
    predictor = BlockPredictor(model, tile_px=16)
    with pytest.raises(BandMismatchError, match="4 bands"):
        predictor.predict(before[:3], after[:3])
    # NaN nodata in the input does not turn valid neighbours' scores into NaN.
    holed = before.copy()
    holed[:, 10:14, 10:14] = np.nan
    assert np.isfinite(predictor.predict(holed, after)).all()


@pytest.mark.parametrize("tta", [2, 8])
def test_test_time_augmentation_tiled_equals_transformed_whole_block_passes(paris_crop, tta):
    """``tta``: the mean over dihedral transforms of every tile equals the mean of the same
    transforms of one pass over the whole padded block, mapped back (so tiling stays exact)."""
    from changedet.inference import DIHEDRAL

    before, after = paris_crop
    model = with_crop_statistics(tiny_model("msdiff", head_convs=0), before)
    predictor = BlockPredictor(model, tile_px=16, batch_size=4, tta=tta)
    score = predictor.predict(before, after)
    halo, align = model.halo_px, 4
    pads = ((0, 0), (halo, halo + tiling.round_up(45, align) - 45),
            (halo, halo + tiling.round_up(61, align) - 61))
    net = model.module()
    b, a = (to_nhwc(np.pad(normalize(x, model.norm_mean, model.norm_std), pads, "symmetric"))
            for x in (before, after))
    views = []
    for turns, flip in DIHEDRAL[:tta]:
        def view(x, turns=turns, flip=flip):
            return np.rot90(x[:, :, ::-1] if flip else x, turns, axes=(1, 2)).copy()
        out = np.asarray(net.change_score(jnp.asarray(view(b)), jnp.asarray(view(a))))
        out = np.rot90(out, -turns, axes=(1, 2))
        views.append((out[:, :, ::-1] if flip else out)[0, halo:halo + 45, halo:halo + 61])
    np.testing.assert_allclose(score, np.mean(views, axis=0), atol=1e-4, rtol=1e-4)
    # The transforms are not all the same pass: augmentation changes the score.
    assert np.abs(score - BlockPredictor(model, tile_px=16).predict(before, after)).max() > 1e-4
    with pytest.raises(ConfigError, match="tta must be one of"):
        BlockPredictor(model, tile_px=16, tta=3)
