"""Scene-adapted difference BatchNorms (``ModelConfig.norm_adapt``): what is re-estimated, what
is kept, the sample it comes from, and that ``run`` and cross-validation score alike with it."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rasterio
from flax import nnx

from changedet import config, evaluate, io
from changedet.cli import main
from changedet.config import ModelConfig
from changedet.data import Scene
from changedet.detectors import modelfile
from changedet.detectors.learned import load_model, random_init_model
from changedet.errors import ConfigError
from changedet.io import datasets
from changedet.models import adapt
from changedet.training import crossval


def adapting(head: str = "msdiff", **kw) -> ModelConfig:
    values = dict(num_bands=3, features=(4, 8, 8), embed_dim=4, head=head, head_convs=1,
                  norm="batch", norm_adapt="difference")
    values.update(kw)
    return ModelConfig(**values)


def leaves(state: dict, path: tuple = ()):
    for k, v in state.items():
        if isinstance(v, dict):
            yield from leaves(v, path + (k,))
        else:
            yield path + (k,), np.asarray(v)


def calm_trained(model):
    """``model`` as if trained on calm scenes: small running variances after the difference."""
    def shrink(state, path=()):
        return {k: shrink(v, path + (k,)) if isinstance(v, dict) else
                (np.asarray(v) * 1e-3 if k == "var" and path[0] != "encoder" else v)
                for k, v in state.items()}
    return model.with_weights(shrink(model.state))


def scene(before: np.ndarray, after: np.ndarray, valid: np.ndarray | None = None) -> Scene:
    valid = np.ones(before.shape[1:], bool) if valid is None else valid
    return Scene("synthetic", before, after, np.zeros(before.shape[1:], np.uint8), valid,
                 ("1", "2", "3"))


@pytest.mark.parametrize("head", ["msdiff", "conc"])
def test_only_the_layers_after_the_difference_adapt_and_never_amplify(head):
    model = calm_trained(random_init_model(adapting(head), ("1", "2", "3")))
    rng = np.random.default_rng(0)
    before = rng.normal(size=(2, 24, 40, 3)).astype(np.float32)
    after = before + rng.normal(scale=3.0, size=before.shape).astype(np.float32)
    state = adapt.adapt_difference_norms(model, before, after)
    old = dict(leaves(model.state))
    new = dict(leaves(state))
    assert old.keys() == new.keys()
    changed = {p for p in old if not np.array_equal(old[p], new[p])}
    assert changed, "nothing was re-estimated"
    # the shared encoder (one date at a time) keeps its trained statistics; so do all weights
    assert all(p[0] != "encoder" and p[-1] in ("mean", "var") for p in changed)
    assert any(p[-1] == "mean" for p in changed) and any(p[-1] == "var" for p in changed)
    # the variance only ever grows: a hot scene is scaled back, a calm one is not amplified
    assert all((new[p] >= old[p]).all() for p in old if p[-1] == "var")
    # on a calmer sample than training (trained variances high) only the means move
    fresh = random_init_model(adapting(head), ("1", "2", "3"))
    trained = dict(leaves(fresh.state))
    state = adapt.adapt_difference_norms(fresh, before, before + 1e-3)
    assert {p[-1] for p, v in leaves(state) if not np.array_equal(v, trained[p])} == {"mean"}


def test_statistics_are_the_valid_pixels_batch_statistics():
    """With every pixel valid, the first BatchNorm after the difference takes exactly the batch
    statistics flax's own BatchNorm measures on its input; with none valid, nothing moves."""
    model = calm_trained(random_init_model(adapting(), ("1", "2", "3")))
    rng = np.random.default_rng(3)
    before = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
    after = before + rng.normal(size=before.shape).astype(np.float32)
    state = adapt.adapt_difference_norms(model, before, after)
    net = model.module()
    levels = net.encoder.pyramid(jnp.concatenate([before, after]))
    diffs = [jnp.abs(p[:2] - p[2:]) for p in levels]
    deepest = len(net.decoder.dec) - 1
    x = jnp.concatenate([diffs[deepest], net.decoder.up[deepest](diffs[-1])], axis=-1)
    conv = net.decoder.dec[deepest].convs[0](x)
    bn = nnx.BatchNorm(conv.shape[-1], momentum=0.0, use_running_average=False,
                       rngs=nnx.Rngs(0))
    bn(conv)
    got = state["decoder"]["dec"][deepest]["norms"][0]
    np.testing.assert_allclose(got["mean"], np.asarray(bn.mean[...]), rtol=1e-4, atol=1e-5)
    trained = model.state["decoder"]["dec"][deepest]["norms"][0]["var"]
    np.testing.assert_allclose(got["var"], np.maximum(np.asarray(bn.var[...]), trained),
                               rtol=1e-3, atol=1e-6)
    nothing = adapt.adapt_difference_norms(model, before, after,
                                           np.zeros(before.shape[:3], bool))
    for (path, v), (_, w) in zip(leaves(nothing), leaves(model.state), strict=True):
        np.testing.assert_array_equal(v, w, err_msg=str(path))


@pytest.mark.parametrize("head", ["msdiff", "conc"])
def test_all_adapts_every_batchnorm_to_the_samples_batch_statistics(head):
    """``norm_adapt="all"`` (networks trained on one scene per batch): with every pixel valid,
    every BatchNorm takes the statistics a training-mode forward pass measures on the sample
    (both dates through the encoder): AdaBN proper, no floor anywhere."""
    model = random_init_model(adapting(head, norm_adapt="all"), ("1", "2", "3"))  # var 1
    rng = np.random.default_rng(4)
    before = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
    after = before + rng.normal(scale=0.01, size=before.shape).astype(np.float32)  # calm
    state = adapt.adapt_difference_norms(model, before, after)
    net = model.module()
    nnx.update(net, jax.tree.map(jnp.array, nnx.state(net)))  # writable copies
    for _, node in nnx.iter_graph(net):
        if isinstance(node, nnx.BatchNorm):
            node.momentum = 0.0  # the running averages become the batch statistics
    net(jnp.asarray(before), jnp.asarray(after), key=jax.random.key(0))  # dropout is 0
    batch = dict(leaves(jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(net)))))
    trained = dict(leaves(model.state))
    moved = set()
    for path, v in leaves(state):
        if path[-1] not in ("mean", "var"):
            np.testing.assert_array_equal(v, trained[path])
            continue
        np.testing.assert_allclose(v, batch[path], rtol=2e-3, atol=1e-5, err_msg=str(path))
        moved.add(path[0])
    assert "encoder" in moved and len(moved) > 1
    # the calm sample's difference variances fall below the trained ones: no floor held them
    assert any((v < trained[p]).any() for p, v in leaves(state)
               if p[-1] == "var" and p[0] != "encoder")


def test_pixels_outside_the_mask_count_at_no_level():
    """A sample window with no valid pixel (a cloud, nodata) adds nothing to any layer's
    statistics, whatever it holds: every decoder level pools the mask with the features."""
    model = calm_trained(random_init_model(adapting("msdiff"), ("1", "2", "3")))
    rng = np.random.default_rng(2)
    before = rng.normal(size=(1, 32, 48, 3)).astype(np.float32)
    after = before + rng.normal(scale=2.0, size=before.shape).astype(np.float32)
    alone = adapt.adapt_difference_norms(model, before, after)
    garbage = rng.normal(scale=50.0, size=(2, 1, 32, 48, 3)).astype(np.float32)
    valid = np.zeros((2, 32, 48), bool)
    valid[0] = True
    with_cloud = adapt.adapt_difference_norms(
        model, np.concatenate([before, garbage[0]]), np.concatenate([after, garbage[1]]), valid)
    for (path, v), (_, w) in zip(leaves(with_cloud), leaves(alone), strict=True):
        np.testing.assert_allclose(v, w, rtol=1e-4, atol=1e-6, err_msg=str(path))


def test_the_sample_covers_small_scenes_whole_and_spreads_over_large_ones():
    assert adapt.window_grid(100, 70) == [(0, 0, 100, 70)]
    small = adapt.window_grid(600, 900)
    covered = np.zeros((600, 900), bool)
    for y, x, h, w in small:
        covered[y:y + h, x:x + w] = True
    assert covered.all() and len(small) == 3 * 4
    large = adapt.window_grid(10980, 10980)
    assert len(large) == adapt.PER_AXIS ** 2
    assert all(h == w == adapt.WINDOW_PX for _, _, h, w in large)
    assert {(y, x) for y, x, _, _ in large} >= {(0, 0), (10980 - 256, 10980 - 256)}


def test_adapted_models_reuse_the_compiled_step():
    """Every scene gets its own statistics but not its own compile: the adapted copies score on
    the base model's compiled step."""
    model = random_init_model(adapting(), ("1", "2", "3"))
    rng = np.random.default_rng(4)
    steps = []
    for _ in range(2):
        before = rng.normal(size=(3, 40, 40)).astype(np.float32)
        s = scene(before, before + rng.normal(size=before.shape).astype(np.float32))
        prepared = model.prepare_scene(s)
        assert prepared.model is not model
        steps.append(prepared.model.predictor().step)
    assert steps[0] is steps[1] is model.predictor().step


def test_mostly_nodata_windows_stay_out_of_the_sample(monkeypatch):
    model = random_init_model(adapting(), ("1", "2", "3"))
    rng = np.random.default_rng(2)
    before = rng.normal(size=(3, 256, 1024)).astype(np.float32)
    after = before + rng.normal(size=before.shape).astype(np.float32)
    valid = np.ones((256, 1024), bool)
    valid[:, :600] = False  # a nodata band over the left: windows 0 and 1 are mostly nodata
    seen = []
    real = adapt.adapt_difference_norms
    monkeypatch.setattr(adapt, "adapt_difference_norms",
                        lambda m, b, a, ok: seen.append(b) or real(m, b, a, ok))
    model.prepare_scene(scene(before, after, valid))
    # 4 windows of 256 px across; the two over x >= 512 are at least half valid
    assert len(seen) == 1 and seen[0].shape[0] == 2


def test_config_refuses_what_it_cannot_adapt_and_files_keep_the_setting(tmp_path):
    for bad in (dict(norm="none"), dict(head="distance"), dict(members=2),
                dict(norm_adapt="encoder"), dict(head="diff", head_convs=0)):
        with pytest.raises(ConfigError, match="norm_adapt"):
            adapting(**bad)
    model = random_init_model(adapting(), ("1", "2", "3"))
    path = modelfile.save_model(tmp_path / "m.msgpack", model)
    assert modelfile.read_model(path).config.norm_adapt == "difference"
    # a fold model that cannot adapt (no BatchNorm) is left as it is, without an error
    plain = random_init_model(dataclasses.replace(adapting(), norm="none", norm_adapt="none"),
                              ("1", "2", "3"))
    other = modelfile.save_model(tmp_path / "plain.msgpack", plain)
    crossval._adopt_inference_settings(other, adapting())
    assert modelfile.read_model(other).config.norm_adapt == "none"
    # a file written before the setting existed reads as "none"
    record = config.to_dict(model.config)
    record.pop("norm_adapt")
    assert config.model_config_from_dict(record).norm_adapt == "none"


def test_fold_models_adopt_the_setting_and_run_scores_what_cross_validation_scored(
        shared_data, tmp_path):
    root = shared_data / "levir_dsifn_samples" / "samples_LEVIR"
    scenes = datasets.load_levir(root)[:4]
    model_cfg, train_cfg = config.tiny(3)
    model_cfg = dataclasses.replace(model_cfg, norm="batch")
    plain = crossval.cross_validate(scenes, 2, model_cfg, train_cfg, tmp_path / "cv",
                                    name="tiny", baseline=False)
    plain_oof = dict(np.load(tmp_path / "cv" / "oof.npz"))
    # the same fold models, scored with the recipe's inference setting: no retraining, the
    # files now say how they were scored, and the scores differ
    adapted_cfg = dataclasses.replace(model_cfg, norm_adapt="difference")
    result = crossval.cross_validate(scenes, 2, adapted_cfg, train_cfg, tmp_path / "cv",
                                     name="tiny", baseline=False)
    assert result.model_paths == plain.model_paths
    assert all(load_model(p).config == adapted_cfg for p in result.model_paths)
    oof = dict(np.load(tmp_path / "cv" / "oof.npz"))
    name = result.folds[0][0]
    key = name.replace("/", "__")
    assert not np.array_equal(oof[key], plain_oof[key])
    assert json.loads((tmp_path / "cv" / "cv.json").read_text())["model"]["norm_adapt"] == \
        "difference"
    # `changedet run` with that fold model writes the held-out scene's OOF score
    sample = name.split("/")[1]
    before = next((root / "A").glob(f"{sample}.*"))
    after = next((root / "B").glob(f"{sample}.*"))
    score_path = tmp_path / "score.tif"
    assert main(["run", str(before), str(after), "-o", str(tmp_path / "m.tif"), "--score",
                 str(score_path), "--model", result.model_paths[0], "-q"]) == 0
    with rasterio.open(score_path) as src:
        np.testing.assert_allclose(src.read(1), oof[key], atol=1e-6)
    # fold models of another architecture are not rewritten
    other = dataclasses.replace(adapted_cfg, head_convs=2)
    crossval._adopt_inference_settings(result.model_paths[0], other)
    assert load_model(result.model_paths[0]).config == adapted_cfg


def test_the_packaged_sentinel2_does_not_call_a_haze_ramp_change(sample_data):
    """Haze thickening across the second date (a ramp of up to 2 standard deviations per band
    over the Paris pair, which per-image standardisation cannot remove) makes the network
    without adaptation mark more and more pixels; with the scene's difference statistics the
    packaged model marks no more than on the clear pair."""
    model = load_model("sentinel2")
    assert model.config.norm_adapt == "difference"
    plain = dataclasses.replace(model, config=dataclasses.replace(model.config,
                                                                  norm_adapt="none"))
    city = sample_data / "oscd_paris"
    pair = io.open_pair(city / "imgs_1", city / "imgs_2")
    before, after = (np.asarray(x.values, np.float32) for x in (pair.before, pair.after))
    ok = np.asarray(pair.valid.values)
    ramp = np.linspace(0.0, 2.0, ok.shape[1], dtype=np.float32)[None, None, :]
    hazy = after + ramp * after.std(axis=(1, 2), keepdims=True)
    marked = {}
    for label, m in (("plain", plain), ("adapted", model)):
        for date2, what in ((after, "clear"), (hazy, "hazy")):
            s = Scene("paris", before, date2, np.zeros(ok.shape, np.uint8), ok, pair.band_ids)
            score = evaluate.score_scene(m.prepare_scene(s), s)
            marked[label, what] = float((score[ok] > model.threshold).mean())
    assert marked["plain", "hazy"] > marked["plain", "clear"] * 1.1, marked
    assert marked["adapted", "hazy"] <= marked["adapted", "clear"], marked
