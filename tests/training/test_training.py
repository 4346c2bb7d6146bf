"""Tests for changedet.training: optimiser, data-parallel step, fit/resume on a real OSCD crop."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from changedet import config, training
from changedet.data import band_statistics, normalize_scene
from changedet.errors import ConfigError, ModelFileError
from changedet.io import datasets
from changedet.models.siamese import SiameseNet
from changedet.training.sampling import PatchSampler


@pytest.fixture(scope="module")
def paris_rgb(sample_data):
    """The real OSCD Paris pair (RGB), split by rows into a train and a validation crop."""
    root = sample_data / "oscd_paris"
    s = datasets.load_pair(root / "imgs_1", root / "imgs_2", root / "paris-cm.tif",
                           change_values=[2], name="paris", bands=("B04", "B03", "B02"))
    train = s._replace(name="paris/top", before=s.before[:, :200], after=s.after[:, :200],
                       label=s.label[:200], valid=s.valid[:200])
    val = s._replace(name="paris/bottom", before=s.before[:, 200:], after=s.after[:, 200:],
                     label=s.label[200:], valid=s.valid[200:])
    return train, val


def test_schedule_warms_up_then_decays():
    _, tc = config.tiny()
    tc = dataclasses.replace(tc, warmup_steps=4, steps_per_epoch=10, num_epochs=2)
    sched = training.make_schedule(tc)
    assert float(sched(0)) == 0.0
    assert float(sched(4)) == pytest.approx(tc.learning_rate)
    assert float(sched(19)) < 0.05 * tc.learning_rate
    assert isinstance(training.make_optimizer(tc), optax.GradientTransformation)


def test_loss_must_match_head():
    mc, tc = config.tiny()
    with pytest.raises(ConfigError, match="contrastive"):
        config.check_compatible(dataclasses.replace(mc, head="distance"), tc)
    with pytest.raises(ConfigError, match="multiple of"):
        config.check_compatible(mc, dataclasses.replace(tc, patch_px=33))


def test_data_parallel_step_matches_single_device_and_compiles_once(paris_rgb):
    assert jax.device_count() == 4
    mc, tc = config.tiny()
    train, _ = paris_rgb
    mean, std = band_statistics([train])
    sampler = PatchSampler([normalize_scene(train, mean, std)], tc.patch_px)
    batch = sampler.sample(tc.batch_size, np.random.default_rng(0))

    def fresh():
        net = SiameseNet(mc, rngs=nnx.Rngs(0))
        return nnx.split((net, nnx.Optimizer(net, training.make_optimizer(tc), wrt=nnx.Param)))

    results = []
    training.make_train_step.cache_clear()  # other tests' fits compile the same cached step
    for devices in (jax.devices()[:1], jax.devices()):
        mesh = jax.sharding.Mesh(np.array(devices), ("data",))
        step = training.make_train_step(tc, mesh)
        graphdef, state = fresh()
        state = jax.device_put(state, training.placements(mesh)[0])
        for i in range(3):
            state, m = step(graphdef, state, training.shard_batch(batch, mesh),
                            jax.random.key(i))
        assert step._cache_size() == 1
        net, _ = nnx.merge(graphdef, jax.device_get(state))
        logits = np.asarray(net(batch.before, batch.after))
        results.append((logits, float(m.loss)))
    (single, loss1), (multi, loss4) = results
    assert loss1 == pytest.approx(loss4, rel=1e-5)
    # Outputs, not raw parameters: the encoder's last bias cancels in |f(b) - f(a)|, so its
    # gradient is rounding noise that Adam amplifies differently on 1 and 4 devices.
    np.testing.assert_allclose(single, multi, rtol=1e-4, atol=1e-5)


def test_fit_lowers_loss_and_writes_artifacts(paris_rgb, tmp_path):
    mc, tc = config.tiny()
    tc = dataclasses.replace(tc, num_epochs=3, steps_per_epoch=8, learning_rate=1e-2)
    train, val = paris_rgb
    model = training.fit([train], [val], mc, tc, tmp_path, name="tiny", progress=False)
    history = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["loss"] < history[0]["loss"]
    assert all(0 <= h["val_f1"] <= 1 and h["steps_per_s"] > 0 for h in history)
    assert (tmp_path / "loss_curve.png").stat().st_size > 1000
    assert (tmp_path / "tiny.msgpack").exists()
    # Normalisation from the training scene, threshold from validation, stored in the model.
    mean, std = band_statistics([train])
    np.testing.assert_allclose(model.norm_mean, mean)
    np.testing.assert_allclose(model.norm_std, std)
    best = max(history, key=lambda h: h["val_f1"])
    assert model.threshold == pytest.approx(best["threshold"])
    assert model.training["val"]["f1"] == pytest.approx(best["val_f1"])


def test_resume_equals_uninterrupted(paris_rgb, tmp_path):
    mc, tc = config.tiny()
    train, val = paris_rgb
    full, full_result = training.fit_model([train], [val], mc, tc, tmp_path / "full",
                                           progress=False)
    # A run "killed" after one epoch, then resumed from its checkpoint.
    _, part = training.fit_model([train], [val], mc, tc, tmp_path / "resumed", progress=False,
                                 max_epochs_per_run=1)
    assert part.epochs_run == 1
    resumed, resumed_result = training.fit_model([train], [val], mc, tc, tmp_path / "resumed",
                                                 progress=False)
    assert resumed_result.epochs_run == full_result.epochs_run == tc.num_epochs
    assert resumed_result.history == [
        {**h, "steps_per_s": resumed_result.history[i]["steps_per_s"]}
        for i, h in enumerate(full_result.history)
    ]
    assert resumed.threshold == full.threshold
    for a, b in zip(jax.tree.leaves(nnx.state(full.net)), jax.tree.leaves(nnx.state(resumed.net)),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # A checkpoint from other settings is refused, not silently mixed.
    other = dataclasses.replace(tc, learning_rate=1.0)
    with pytest.raises(ModelFileError, match="other settings"):
        training.fit_model([train], [val], mc, other, tmp_path / "resumed", progress=False)


def test_batchnorm_trains_on_batch_statistics_and_infers_with_the_running_ones(paris_rgb,
                                                                                tmp_path):
    """``model.norm="batch"``: training steps update the running statistics, the model file
    carries them, and inference is a fixed per-pixel map (a sample scores the same alone as in
    any batch, so tiling stays exact)."""
    from changedet import evaluate
    from changedet.detectors import learned

    mc, tc = config.tiny()
    mc = dataclasses.replace(mc, norm="batch")
    tc = dataclasses.replace(tc, num_epochs=1, steps_per_epoch=6)
    train, val = paris_rgb
    model = training.fit([train], [val], mc, tc, tmp_path, name="bn", progress=False)
    stats = nnx.state(model.module(), nnx.BatchStat)
    means = [np.asarray(v) for path, v in nnx.to_flat_state(stats) if path[-1] == "mean"]
    assert means and all(np.abs(m).max() > 0 for m in means)  # moved off their zero init
    loaded = learned.load_model(tmp_path / "bn.msgpack")
    for a, b in zip(jax.tree.leaves(nnx.state(model.module())),
                    jax.tree.leaves(nnx.state(loaded.module())), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    net = loaded.module()
    x = np.random.default_rng(0).normal(size=(3, 32, 32, 3)).astype(np.float32)
    y = np.random.default_rng(1).normal(size=(3, 32, 32, 3)).astype(np.float32)
    batched = np.asarray(net(x, y))
    alone = np.asarray(net(x[1:2], y[1:2]))
    np.testing.assert_allclose(alone[0], batched[1], rtol=1e-5, atol=1e-6)
    # run's scoring path takes the loaded file
    score = evaluate.score_scene(loaded.prepare_scene(val), val)
    assert score.shape == val.valid.shape and np.isfinite(score[val.valid]).all()
