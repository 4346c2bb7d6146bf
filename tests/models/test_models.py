"""SiameseNet: shapes, one shared encoder, date-swap invariance, distances, receptive field."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from changedet.config import ModelConfig
from changedet.errors import ConfigError
from changedet.models import SiameseNet, distance, halo_px, receptive_radius_px

HEADS = ["distance", "diff", "conc", "msdiff"]


def tiny(head: str = "diff", **kw) -> ModelConfig:
    values = dict(num_bands=3, features=(4, 8, 8), embed_dim=4, head=head)
    values.update(kw)
    return ModelConfig(**values)


def pair(key: int = 0, shape=(2, 16, 16, 3)):
    k1, k2 = jax.random.split(jax.random.key(key))
    return jax.random.normal(k1, shape), jax.random.normal(k2, shape)


@pytest.mark.parametrize("head", HEADS)
def test_shapes_and_date_swap_invariance(head):
    net = SiameseNet(tiny(head), rngs=nnx.Rngs(0))
    before, after = pair()
    forward = jax.jit(lambda b, a: net(b, a))
    out = forward(before, after)
    assert out.shape == (2, 16, 16) and out.dtype == jnp.float32
    assert net.embed(before).shape == (2, 16, 16, 4)
    # Swapping the dates gives the same output for every head. Not always bit for bit: the
    # encoder runs on the doubled batch [before, after], and XLA's CPU convolutions (jaxlib
    # 0.10.2) can round a sample differently by its position in the batch (<= 1 ulp seen).
    np.testing.assert_allclose(np.asarray(forward(after, before)), np.asarray(out), rtol=0,
                               atol=1e-6)
    score = np.asarray(jax.jit(lambda b, a: net.change_score(b, a))(before, after))
    if head == "distance":
        assert (score >= 0).all()
        np.testing.assert_allclose(score, np.asarray(out))
    else:
        assert ((score >= 0) & (score <= 1)).all()
        np.testing.assert_allclose(score, np.asarray(jax.nn.sigmoid(out)), rtol=1e-6)
    # Identical dates: zero distance / the same logit everywhere the input is the same.
    if head == "distance":
        np.testing.assert_allclose(np.asarray(forward(before, before)), 0.0, atol=1e-6)


def test_one_encoder_shared_by_both_dates():
    net = SiameseNet(tiny("diff"), rngs=nnx.Rngs(0))
    before, after = pair(1)
    e_before, e_after = net.embed_pair(before, after)
    np.testing.assert_allclose(np.asarray(e_before), np.asarray(net.embed(before)), atol=1e-6)
    np.testing.assert_allclose(np.asarray(e_after), np.asarray(net.embed(after)), atol=1e-6)
    # One parameter tree: encoder + head, no second copy of the encoder.
    state = nnx.to_pure_dict(nnx.state(net, nnx.Param))
    assert set(state) == {"encoder", "head"}
    n_encoder = sum(x.size for x in jax.tree.leaves(state["encoder"]))
    n_total = sum(x.size for x in jax.tree.leaves(state))
    n_head = sum(x.size for x in jax.tree.leaves(state["head"]))
    assert n_total == n_encoder + n_head


@pytest.mark.parametrize("upsample", ["shuffle", "nearest"])
def test_upsampling_modes_and_layernorm_run(upsample):
    net = SiameseNet(tiny("conc", upsample=upsample, norm="layer"), rngs=nnx.Rngs(0))
    before, after = pair(2)
    out = net(before, after)
    assert out.shape == (2, 16, 16) and bool(jnp.isfinite(out).all())


def test_input_must_be_aligned_and_have_the_model_bands():
    net = SiameseNet(tiny("diff"), rngs=nnx.Rngs(0))
    with pytest.raises(ConfigError, match="multiples of 4"):
        net.embed(jnp.zeros((1, 18, 16, 3)))
    with pytest.raises(ConfigError, match="3 bands"):
        net.embed(jnp.zeros((1, 16, 16, 5)))


@pytest.mark.parametrize("kind", ["euclidean", "manhattan", "cosine"])
def test_distance_values_symmetry_and_finite_gradient_at_zero(kind):
    e1 = jnp.array([[3.0, 0.0], [1.0, 1.0]])
    e2 = jnp.array([[0.0, 4.0], [1.0, 1.0]])
    d = np.asarray(distance(e1, e2, kind))
    expected = {"euclidean": [5.0, 0.0], "manhattan": [7.0, 0.0], "cosine": [1.0, 0.0]}[kind]
    np.testing.assert_allclose(d, expected, atol=1e-5)
    np.testing.assert_array_equal(d, np.asarray(distance(e2, e1, kind)))
    grad = jax.grad(lambda a: distance(a, e2, kind).sum())(e1)
    assert bool(jnp.isfinite(grad).all())
    same = jax.grad(lambda a: distance(a, a + 0.0, kind).sum())(e1)
    assert bool(jnp.isfinite(same).all())
    opposite = np.asarray(distance(jnp.array([1.0, 0.0]), jnp.array([-2.0, 0.0]), "cosine"))
    np.testing.assert_allclose(opposite, 2.0, atol=1e-5)


def test_halo_is_computed_from_the_layers():
    # Two levels, 2 convs per level, distance head: 2 + 2*2 (pooled) + 1 (up) + 2 = 9 -> 10.
    cfg = ModelConfig(num_bands=3, features=(8, 16), convs_per_level=2, head="distance")
    assert receptive_radius_px(cfg) == 9 and halo_px(cfg) == 10
    deeper = ModelConfig(num_bands=3, features=(8, 16, 32), convs_per_level=2, head="distance")
    assert halo_px(deeper) > halo_px(cfg) and halo_px(deeper) % 4 == 0
    # The diff head adds its own convolutions; nearest+conv upsampling adds more than shuffle.
    assert receptive_radius_px(tiny("diff")) > receptive_radius_px(tiny("distance"))
    assert (receptive_radius_px(tiny("diff", upsample="nearest"))
            > receptive_radius_px(tiny("diff")))


@pytest.mark.parametrize("head,upsample", [("diff", "shuffle"), ("distance", "nearest"),
                                           ("msdiff", "shuffle")])
def test_halo_bounds_the_receptive_field_empirically(head, upsample):
    cfg = tiny(head, upsample=upsample, features=(8, 16, 16), embed_dim=8)
    halo, radius = halo_px(cfg), receptive_radius_px(cfg)
    net = SiameseNet(cfg, rngs=nnx.Rngs(3))
    size = 2 * halo + 24
    before, after = pair(4, (1, size, size, 3))
    noise_b, noise_a = pair(5, before.shape)
    forward = jax.jit(lambda b, a: net(b, a))
    # d out[r, c] / d inputs, as the gradient of sum(out * onehot): one compile for all pixels.
    pixel_grad = jax.jit(jax.grad(lambda b, a, w: jnp.sum(net(b, a) * w), argnums=(0, 1)))
    rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    reach = 0
    out = np.asarray(forward(before, after))
    for r, c in [(size // 2, size // 2), (size // 2 + 1, size // 2 + 3),
                 (size // 2 + 2, size // 2 - 1)]:
        cheb = np.maximum(np.abs(rows - r), np.abs(cols - c))
        far = jnp.asarray((cheb > halo)[None, :, :, None])
        perturbed = forward(jnp.where(far, noise_b, before), jnp.where(far, noise_a, after))
        np.testing.assert_allclose(float(perturbed[0, r, c]), float(out[0, r, c]), atol=1e-6)
        onehot = jnp.zeros((1, size, size)).at[0, r, c].set(1.0)
        grad_b, grad_a = pixel_grad(before, after, onehot)
        influence = np.abs(np.asarray(grad_b[0])).sum(-1) + np.abs(np.asarray(grad_a[0])).sum(-1)
        assert influence[cheb > radius].max() == 0.0  # the bound holds before rounding too
        if (influence > 0).any():  # (a tiny random net can have all ReLUs off at a pixel)
            reach = max(reach, int(cheb[influence > 0].max()))
    # Not grossly over-estimated: some input pixel near the computed radius matters.
    assert reach >= radius - 2, (reach, radius, halo)


@pytest.mark.parametrize("head", ["msdiff", "diff"])
def test_dropout_acts_in_training_only_and_keeps_the_parameter_tree(head):
    small = dict(num_bands=3, features=(4, 8), embed_dim=4, convs_per_level=1, head_convs=1,
                 head=head)
    plain = SiameseNet(ModelConfig(**small), rngs=nnx.Rngs(0))
    dropped = SiameseNet(ModelConfig(**small, dropout=0.3), rngs=nnx.Rngs(0))
    # Same parameters (model files of dropout-free models load unchanged; dropout is not state).
    p1 = jax.tree.leaves(nnx.state(plain))
    p2 = jax.tree.leaves(nnx.state(dropped))
    assert len(p1) == len(p2) and all(np.array_equal(a, b) for a, b in zip(p1, p2, strict=True))
    b = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
    a = jax.random.normal(jax.random.key(2), (2, 16, 16, 3))
    # inference: no key, identical to the dropout-free network
    np.testing.assert_array_equal(np.asarray(dropped(b, a)), np.asarray(plain(b, a)))
    # training: a key drops channels, differently per key, reproducibly per key
    key = jax.random.key(3)
    out = np.asarray(dropped(b, a, key=key))
    assert not np.allclose(out, np.asarray(plain(b, a)))
    np.testing.assert_array_equal(out, np.asarray(dropped(b, a, key=key)))
    assert not np.allclose(out, np.asarray(dropped(b, a, key=jax.random.key(4))))
    # both dates of a pair lose the same channels: identical dates still give zero differences
    # (and, with the zero-initialised biases, zero decoder activations to drop)
    if head == "msdiff":
        same = np.asarray(dropped(b, b, key=key))
        np.testing.assert_allclose(same, np.asarray(plain(b, b)), atol=1e-5)
    with pytest.raises(ConfigError, match="dropout"):
        ModelConfig(dropout=1.0)
