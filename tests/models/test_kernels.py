"""The oneDNN bf16 convolution route (changedet.kernels): agreement with XLA's float32
convolutions, seam-free tiling on its own path, the packaged model's mask on the README pair,
and how the route is chosen."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rasterio

from changedet import kernels, metrics
from changedet.errors import ConfigError
from changedet.models.layers import conv_route

OK, WHY = kernels.onednn_status()
needs_onednn = pytest.mark.skipif(not OK, reason=f"oneDNN route unavailable here: {WHY}")


def _xla_conv(x, kernel, bias, relu):
    y = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias
    return jax.nn.relu(y) if relu else y


@needs_onednn
@pytest.mark.parametrize("size", [3, 1])
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("out_dtype", [jnp.float32, jnp.bfloat16])
def test_onednn_conv_matches_xla_on_bf16_rounded_inputs(size, relu, out_dtype):
    rng = np.random.default_rng(size)
    x = jnp.asarray(rng.normal(size=(2, 21, 34, 13)), jnp.float32)  # odd sizes: edge handling
    kernel = jnp.asarray(rng.normal(size=(size, size, 13, 24)) / (3 * size), jnp.float32)
    bias = jnp.asarray(rng.normal(size=24), jnp.float32)
    got = jax.jit(lambda *a: kernels.conv2d(*a, relu=relu, out_dtype=out_dtype))(
        x, kernel, bias)
    assert got.shape == (2, 21, 34, 24) and got.dtype == out_dtype
    # the same sums in float32 over the bf16-rounded inputs: only the sum order and (for bf16
    # output) the final rounding differ
    rounded = [a.astype(jnp.bfloat16).astype(jnp.float32) for a in (x, kernel)]
    want = _xla_conv(*rounded, bias, relu)
    tol = 1e-4 if out_dtype == jnp.float32 else 1e-2
    np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=tol, atol=tol)
    if relu:
        assert float(jnp.min(got.astype(jnp.float32))) == 0.0


@needs_onednn
def test_packaged_model_on_the_readme_pair_same_mask_within_tolerance(sample_data, monkeypatch):
    """`detect` with the packaged model, by route: scores within 0.05 of float32 (mean |diff|
    < 1e-3), the mask's F1 against the OSCD label unchanged within 0.005, and on the oneDNN
    route 128 px blocks equal one whole-scene block."""
    import changedet

    city = sample_data / "oscd_paris"
    with rasterio.open(city / "paris-cm.tif") as ds:
        truth = ds.read(1) == 2  # OSCD labels: 1 no change, 2 change
    scores, f1 = {}, {}
    for route, block in (("xla", 1024), ("onednn", 1024), ("onednn", 128)):
        monkeypatch.setenv("CHANGEDET_CPU_CONV", route)
        ds = changedet.detect(city / "imgs_1", city / "imgs_2", block_px=block,
                              cloud_mask="none")
        scores[route, block] = ds.score.values
        counts = metrics.confusion_counts_np(ds["mask"].values == 1, truth,
                                             np.ones_like(truth))
        f1[route, block] = metrics.scores_from_counts(*counts).f1
    diff = np.abs(scores["onednn", 1024] - scores["xla", 1024])
    assert diff.max() < 0.05 and diff.mean() < 1e-3, (diff.max(), diff.mean())
    np.testing.assert_array_equal(scores["onednn", 128], scores["onednn", 1024])
    assert f1["xla", 1024] > 0.1  # a real mask, so "unchanged" means something
    assert abs(f1["onednn", 1024] - f1["xla", 1024]) <= 0.005, f1


def _batchnorm_net(seed: int, tiny_var: bool = False):
    """A small msdiff network with BatchNorm whose running averages are far from the identity
    (as after training), so folding them matters; ``tiny_var``: each norm's first channel has
    variance 1e-4, where the folded epsilon matters."""
    from flax import nnx

    from changedet.config import ModelConfig
    from changedet.models.siamese import SiameseNet

    net = SiameseNet(ModelConfig(num_bands=4, features=(8, 16), head="msdiff", head_convs=0,
                                 norm="batch"), rngs=nnx.Rngs(seed))
    rng = np.random.default_rng(seed)
    for _, bn in nnx.iter_graph(net):
        if isinstance(bn, nnx.BatchNorm):
            n = bn.mean[...].shape[0]
            bn.mean[...] = jnp.asarray(rng.normal(size=n), jnp.float32)
            var = rng.uniform(0.2, 3.0, n)
            if tiny_var:
                var[0] = 1e-4
            bn.var[...] = jnp.asarray(var, jnp.float32)
            bn.scale[...] = jnp.asarray(rng.uniform(0.5, 2.0, n), jnp.float32)
            bn.bias[...] = jnp.asarray(rng.normal(size=n) * 0.3, jnp.float32)
    return net


def test_batchnorm_folds_into_the_convolution_exactly_in_float32():
    """conv -> BatchNorm (running averages) equals one conv with the folded kernel and bias."""
    from flax import nnx

    from changedet.models.layers import ConvBlock, fold_batchnorm

    net = _batchnorm_net(1, tiny_var=True)
    convs = [(c, b) for _, blk in nnx.iter_graph(net) if isinstance(blk, ConvBlock)
             for c, b in zip(blk.convs, blk.norms, strict=True)]
    assert convs
    conv, bn = convs[0]
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 12, 10, conv.in_features)),
                    jnp.float32)
    want = bn(conv(x), use_running_average=True)
    kernel, bias = fold_batchnorm(bn, conv.kernel[...], conv.bias[...])
    # the 1e-4-variance channel is scaled ~100x: float32 rounding grows with it, while a
    # dropped epsilon would move it by 5 %
    np.testing.assert_allclose(_xla_conv(x, kernel, bias, relu=False), want, rtol=2e-5,
                               atol=2e-4)


@needs_onednn
def test_batchnorm_network_runs_on_the_onednn_route():
    """A BatchNorm model takes the oneDNN route (its norms folded) and scores as on XLA."""
    from flax import nnx

    from changedet.models.layers import ConvBlock, Up

    net = _batchnorm_net(3)
    rng = np.random.default_rng(4)
    a, b = (jnp.asarray(rng.normal(size=(1, 32, 32, 4)), jnp.float32) for _ in range(2))
    want = jax.jit(net.change_score)(a, b)
    convs = sum(len(blk.convs) for _, blk in nnx.iter_graph(net) if isinstance(blk, ConvBlock))
    ups = sum(1 for _, up in nnx.iter_graph(net) if isinstance(up, Up))
    with conv_route("onednn"):
        # every convolution of every (BatchNorm) block is a oneDNN call, not only the Up's
        calls = str(jax.make_jaxpr(net.change_score)(a, b)).count("changedet_onednn_conv")
        got = jax.jit(net.change_score)(a, b)
    assert convs >= 4 and calls == convs + ups, (calls, convs, ups)
    assert float(jnp.std(want)) > 1e-3
    np.testing.assert_allclose(got, want, atol=0.03)
    assert float(jnp.mean(jnp.abs(got - want))) < 3e-3


def test_route_choice_and_its_errors(monkeypatch):
    monkeypatch.setenv("CHANGEDET_CPU_CONV", "xla")
    assert kernels.resolve_route() == "xla"
    assert kernels.resolve_route("xla") == "xla"
    monkeypatch.setenv("CHANGEDET_CPU_CONV", "fast")
    with pytest.raises(ConfigError, match="one of auto, xla, onednn.*CHANGEDET_CPU_CONV"):
        kernels.resolve_route()
    auto = kernels.resolve_route("auto")
    native = OK and WHY.rsplit(" ", 1)[-1] in kernels.NATIVE_BF16_ISAS
    assert auto == ("onednn" if native else "xla")
    if not OK:
        with pytest.raises(ConfigError, match="oneDNN convolution route is unavailable"):
            kernels.resolve_route("onednn")


@needs_onednn
def test_the_route_is_fixed_when_traced():
    """A function traced inside ``conv_route("onednn")`` calls oneDNN (its jaxpr holds the FFI
    call); outside it the same network is plain XLA."""
    from flax import nnx

    from changedet.config import ModelConfig
    from changedet.models.siamese import SiameseNet

    net = SiameseNet(ModelConfig(num_bands=3, features=(4, 8), embed_dim=4, head="msdiff"),
                     rngs=nnx.Rngs(0))
    x = jnp.ones((1, 16, 16, 3))
    plain = str(jax.make_jaxpr(net.change_score)(x, x))
    with conv_route("onednn"):
        fast = str(jax.make_jaxpr(net.change_score)(x, x))
    assert "changedet_onednn_conv" in fast and "changedet_onednn_conv" not in plain


@needs_onednn
def test_a_cpu_without_bf16_convolutions_falls_back_to_xla(tmp_path):
    """oneDNN limited to AVX2 (ONEDNN_MAX_CPU_ISA, as on an older CPU) has no bf16 convolution:
    the probe finds out, "auto" runs XLA, and asking for oneDNN is a one-line ConfigError."""
    import os
    import subprocess
    import sys

    code = ("from changedet import kernels\n"
            "from changedet.errors import ConfigError\n"
            "print(kernels.onednn_status()[0], kernels.resolve_route('auto'))\n"
            "try:\n    kernels.resolve_route('onednn')\n"
            "except ConfigError as err:\n    print(err)\n")
    env = os.environ | {"ONEDNN_MAX_CPU_ISA": "AVX2"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=300, check=True).stdout.splitlines()
    assert out[0] == "False xla"
    assert out[1].startswith("the oneDNN convolution route is unavailable: oneDNN has no bf16 "
                             "convolution on this CPU (avx2)") and len(out) == 2
