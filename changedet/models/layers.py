"""Building blocks of the Siamese U-Net and their receptive-field arithmetic.

Every block is tiling-exact: 'SAME' zero padding, 2x2/stride-2 max pooling, and no normalisation
that pools over space at inference (an optional per-pixel LayerNorm over channels, or a BatchNorm
that pools over the batch in training steps only and is a fixed per-channel affine map at
inference). Each block also knows how
much it grows the receptive field (:class:`Footprint`), so :func:`changedet.models.siamese.halo_px`
is computed from the layers actually built.

Must not import rasterio, rioxarray, xarray, dask or matplotlib.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator
from typing import cast

import jax
import jax.numpy as jnp
from flax import nnx

from changedet.config import Norm, Upsample

__all__ = ["Footprint", "max_pool_2x", "depth_to_space_2x", "spatial_dropout", "ConvBlock", "Up",
           "conv_route", "fold_batchnorm"]

_ROUTE: contextvars.ContextVar[str] = contextvars.ContextVar("conv_route", default="xla")


@contextlib.contextmanager
def conv_route(route: str) -> Iterator[None]:
    """While tracing inside this context, the convolutions of inference blocks (:class:`Up`, and
    :class:`ConvBlock` without dropout key or norm layer) go by ``route``: ``"xla"``
    (``nnx.Conv``, float32) or ``"onednn"`` (:func:`changedet.kernels.conv2d`, bf16 with
    float32 sums; the route must be registered,
    see :func:`changedet.kernels.resolve_route`). Read at trace time: a jitted function keeps
    the route it was traced with."""
    token = _ROUTE.set(route)
    try:
        yield
    finally:
        _ROUTE.reset(token)


@dataclasses.dataclass(frozen=True)
class Footprint:
    """Receptive field of a feature map, as an upper bound.

    A feature pixel ``i`` at ``scale`` (input pixels per feature pixel) depends only on the input
    pixels ``[scale*i - radius_px, scale*(i+1) - 1 + radius_px]`` along each axis.

    Attributes:
      radius_px: Extra input pixels on each side of the pixel's own footprint.
      scale: Input pixels per feature pixel (1 at full resolution, 2**level after pooling).
    """

    radius_px: int = 0
    scale: int = 1

    def conv(self, kernel_size: int) -> Footprint:
        """After a stride-1 'SAME' convolution with an odd ``kernel_size``."""
        return Footprint(self.radius_px + (kernel_size // 2) * self.scale, self.scale)

    def pool(self) -> Footprint:
        """After 2x2 stride-2 pooling: the pixel's own footprint doubles, the radius stays."""
        return Footprint(self.radius_px, self.scale * 2)

    def upsample(self) -> Footprint:
        """After a 2x nearest/pixel-shuffle upsampling: a fine pixel sees its whole coarse parent,
        which reaches up to one fine-scale footprint (``scale // 2``) past its own."""
        fine = self.scale // 2
        return Footprint(self.radius_px + fine, fine)

    def union(self, other: Footprint) -> Footprint:
        """Of a concatenation of two maps at the same scale."""
        if self.scale != other.scale:
            raise ValueError(f"cannot merge footprints at scales {self.scale} and {other.scale}")
        return Footprint(max(self.radius_px, other.radius_px), self.scale)


def max_pool_2x(x: jax.Array) -> jax.Array:
    """2x2, stride-2 max pooling of ``(N, H, W, C)`` (H, W even) to ``(N, H/2, W/2, C)``."""
    return nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2), padding="VALID")


def depth_to_space_2x(x: jax.Array) -> jax.Array:
    """Pixel shuffle ``(N, H, W, 4C)`` -> ``(N, 2H, 2W, C)``; channel ``(dy*2+dx)*C + c``."""
    n, h, w, c4 = x.shape
    c = c4 // 4
    x = x.reshape(n, h, w, 2, 2, c)
    x = x.transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, 2 * h, 2 * w, c)


def spatial_dropout(x: jax.Array, rate: float, key: jax.Array, *, tie: int = 1) -> jax.Array:
    """Drops whole channels of ``(N, H, W, C)`` with probability ``rate`` (Dropout2d), scaling
    the kept ones by ``1 / (1 - rate)``.

    ``tie`` > 1: the batch is ``tie`` stacked copies of ``N / tie`` samples (the Siamese pair
    batch ``[before, after]``); each copy gets the same mask, so both dates lose the same
    channels and their difference stays a difference of like with like.
    """
    n = x.shape[0] // tie
    keep = jax.random.bernoulli(key, 1.0 - rate, (n, 1, 1, x.shape[-1]))
    if tie > 1:
        keep = jnp.tile(keep, (tie, 1, 1, 1))
    return jnp.where(keep, x / (1.0 - rate), 0.0)


def _onednn_conv(conv: nnx.Conv, x: jax.Array, *, relu: bool, out_dtype: jnp.dtype,
                 norm: nnx.BatchNorm | None = None) -> jax.Array:
    """``conv`` (3x3 or 1x1, 'SAME', stride 1) applied by the oneDNN route; an inference
    BatchNorm after it is folded into its weights and bias (``norm``)."""
    from changedet.kernels import conv2d

    kernel = conv.kernel[...]  # type: ignore[index]  # always set
    bias = conv.bias[...] if conv.bias is not None else jnp.zeros(kernel.shape[-1])
    if norm is not None:
        kernel, bias = fold_batchnorm(norm, kernel, bias)
    return conv2d(x, kernel, bias, relu=relu, out_dtype=out_dtype)


def fold_batchnorm(norm: nnx.BatchNorm, kernel: jax.Array, bias: jax.Array
                   ) -> tuple[jax.Array, jax.Array]:
    """``(kernel, bias)`` of one convolution equal to the convolution followed by ``norm``
    with its running averages (inference): ``scale * (conv(x) + b - mean) / sqrt(var + eps) +
    offset`` is a per-output-channel affine map, so it folds into the HWIO kernel's last axis
    and the bias, in float32 before the route rounds to bf16.

    Example:
      >>> from flax import nnx
      >>> bn = nnx.BatchNorm(1, use_running_average=True, rngs=nnx.Rngs(0))
      >>> k, b = fold_batchnorm(bn, jnp.ones((1, 1, 1, 1)), jnp.zeros(1))
      >>> round(float(k[0, 0, 0, 0]), 4), float(b[0])   # var 1, eps 1e-5: 1 / sqrt(1 + 1e-5)
      (1.0, 0.0)
    """
    inv = jax.lax.rsqrt(norm.var[...] + norm.epsilon)  # type: ignore[index]
    if norm.scale is not None:
        inv = inv * norm.scale[...]  # type: ignore[index]
    offset = norm.bias[...] if norm.bias is not None else 0.0  # type: ignore[index]
    return kernel * inv, (bias - norm.mean[...]) * inv + offset  # type: ignore[index]


class ConvBlock(nnx.Module):
    """``num_convs`` x (3x3 'SAME' conv -> optional LayerNorm / BatchNorm -> ReLU
    -> spatial dropout in training).

    Maps ``(N, H, W, in_features)`` float32 to ``(N, H, W, out_features)``. A ``key`` marks a
    training step: dropout acts and BatchNorm normalises by the batch's statistics (updating
    its running averages). Inference never passes one: no dropout, BatchNorm applies its running
    averages, and tiling stays exact.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        num_convs: int,
        norm: Norm = "none",
        dropout: float = 0.0,
        rngs: nnx.Rngs,
    ) -> None:
        self.dropout = float(dropout)
        self.convs: nnx.List[nnx.Conv] = nnx.List()
        self.norms: nnx.List[nnx.Module] = nnx.List()
        for i in range(num_convs):
            self.convs.append(
                nnx.Conv(in_features if i == 0 else out_features, out_features, (3, 3),
                         padding="SAME", rngs=rngs)
            )
            if norm == "layer":
                # Normalises over channels only, per pixel: no spatial pooling, so tiling
                # stays exact.
                self.norms.append(nnx.LayerNorm(out_features, rngs=rngs))
            elif norm == "batch":
                self.norms.append(nnx.BatchNorm(out_features, momentum=0.9,
                                                use_running_average=True, rngs=rngs))

    def __call__(self, x: jax.Array, key: jax.Array | None = None, *, tie: int = 1) -> jax.Array:
        """``key``: PRNG key of a training step (None: inference). ``tie``: see
        :func:`spatial_dropout`."""
        if key is None and _ROUTE.get() == "onednn" and all(
                isinstance(n, nnx.BatchNorm) for n in self.norms):
            return self._onednn(x)
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if len(self.norms):
                norm = self.norms[i]
                if isinstance(norm, nnx.BatchNorm):
                    x = norm(x, use_running_average=key is None)
                else:
                    x = norm(x)
            x = jax.nn.relu(x)
            if key is not None and self.dropout > 0.0:
                x = spatial_dropout(x, self.dropout, jax.random.fold_in(key, i), tie=tie)
        return x

    def _onednn(self, x: jax.Array) -> jax.Array:
        """Inference by the oneDNN route: bf16 between the block's convolutions (each fused
        with its bias, its BatchNorm if any, and ReLU); the block's output is float32, like
        the XLA route's."""
        last = len(self.convs) - 1
        for i, conv in enumerate(self.convs):
            # __call__ routes here only blocks without norms or with BatchNorms
            norm = cast(nnx.BatchNorm, self.norms[i]) if len(self.norms) else None
            x = _onednn_conv(conv, x, relu=True,
                             out_dtype=jnp.float32 if i == last else jnp.bfloat16, norm=norm)
        return x

    def grow(self, fp: Footprint) -> Footprint:
        """The footprint after this block."""
        for conv in self.convs:
            fp = fp.conv(conv.kernel_size[0])
        return fp


class Up(nnx.Module):
    """2x upsampling ``(N, H, W, in)`` -> ``(N, 2H, 2W, out)``, linear (no activation).

    ``"shuffle"``: 1x1 conv to ``4*out`` channels + depth-to-space; exactly the U-Net's 2x2,
    stride-2 transposed convolution, without XLA CPU's slow transposed-conv kernel.
    ``"nearest"``: nearest-neighbour resize + 3x3 conv.
    """

    def __init__(self, in_features: int, out_features: int, *, mode: Upsample,
                 rngs: nnx.Rngs) -> None:
        self.mode = mode
        if mode == "shuffle":
            self.conv = nnx.Conv(in_features, 4 * out_features, (1, 1), rngs=rngs)
        else:
            self.conv = nnx.Conv(in_features, out_features, (3, 3), padding="SAME", rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.mode == "shuffle":
            if _ROUTE.get() == "onednn":  # bf16 out: the next block's convolution is bf16
                return depth_to_space_2x(_onednn_conv(self.conv, x, relu=False,
                                                      out_dtype=jnp.bfloat16))
            return depth_to_space_2x(self.conv(x))
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return self.conv(x)

    def grow(self, fp: Footprint) -> Footprint:
        """The footprint after this block."""
        if self.mode == "shuffle":
            return fp.conv(self.conv.kernel_size[0]).upsample()
        return fp.upsample().conv(self.conv.kernel_size[0])
