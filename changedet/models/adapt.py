"""Scene-adapted BatchNorm statistics after the dates' difference (``ModelConfig.norm_adapt``).

A Siamese change network's encoder sees one date at a time; the layers after it see the dates'
feature differences, whose spread depends on the scene as much as on its change: season, haze,
a sensor's noise and the share of changed ground all move it. With ``norm_adapt="difference"``
the BatchNorms of those layers (all but the shared encoder's) take the mean and variance of
the scene being scored, measured in one forward pass over a sample of it (AdaBN, Li et al.
2016, restricted to the difference layers), and the variance never drops below the trained one,
so a scene is only ever scaled back towards the training range, never amplified. The
statistics are fixed before the main pass, so tiled inference stays exact.

The statistics are measured layer by layer over the sample's valid pixels only (nodata and
cloud pixels, filled as ``run`` fills them, still feed their neighbours but do not count), each
layer's input normalised by the statistics it will use at inference. Each window is scored on
its own (zero padding at its borders, no halo of real context), as the cross-validation that
chose this measured it; a window read with the model's halo is a possible refinement.

Measured on the packaged ``sentinel2`` recipe's fold models (``docs/models.md``): pooled
out-of-fold F1 0.371 -> 0.413 and AP 0.251 -> 0.335 over 14 held-out cities; on unchanged
160 px windows of those cities the share marked as change fell from 5.8 % to 1.5 %. On the
``rgb`` sources, whose scenes hold up to 66 % change, it costs F1 (the change itself sets the
statistics), so ``rgb`` does not use it.

``norm_adapt="all"`` is AdaBN proper: every BatchNorm, the shared encoder's (over both dates'
valid pixels) and the difference layers', takes the sample's statistics, with no floor: the
statistics a network trained on one scene per batch (``TrainConfig.scene_batches``) always
normalised with. On the screening (folds 0-1, ``docs/models.md``) such a network scored pooled
F1 0.302 / AP 0.230 this way against 0.274 / 0.195 with the difference layers floored.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from changedet.errors import ConfigError
from changedet.models.layers import ConvBlock, max_pool_2x
from changedet.models.record import ChangeModel
from changedet.models.siamese import SiameseNet

__all__ = ["adapt_difference_norms", "window_grid"]

#: The sample the statistics come from: up to ``PER_AXIS`` x ``PER_AXIS`` windows of
#: ``WINDOW_PX`` (about 1 Mpx), spread evenly over the scene; a scene of up to
#: ``PER_AXIS * WINDOW_PX`` pixels a side is covered whole.
WINDOW_PX = 256
PER_AXIS = 4


def window_grid(height: int, width: int, *, window_px: int = WINDOW_PX,
                per_axis: int = PER_AXIS) -> list[tuple[int, int, int, int]]:
    """``(row, col, height, width)`` windows for the statistics pass: per axis as many windows
    of ``window_px`` (the whole axis if shorter) as cover it, at most ``per_axis``, spread
    evenly from edge to edge.

    Example:
      >>> window_grid(600, 200)
      [(0, 0, 256, 200), (172, 0, 256, 200), (344, 0, 256, 200)]
    """
    def axis(n: int) -> list[tuple[int, int]]:
        size = min(window_px, n)
        count = min(per_axis, -(-n // size))
        return [(int(s), size) for s in np.linspace(0, n - size, count).round()]

    return [(y, x, h, w) for y, h in axis(height) for x, w in axis(width)]


def _pad_to(x: np.ndarray, align: int, mode: Any = "symmetric", **kw: Any) -> np.ndarray:
    """``(N, H, W, ...)`` padded at the bottom/right to multiples of ``align``."""
    pad = [(0, 0), (0, -x.shape[1] % align), (0, -x.shape[2] % align)] + [(0, 0)] * (x.ndim - 3)
    return np.pad(x, pad, mode=mode, **kw) if pad[1][1] or pad[2][1] else x


def _pool_valid(valid: jax.Array) -> jax.Array:
    """``(N, H, W, 1)`` validity at half the resolution: a pixel is valid where all four are."""
    n, h, w, _ = valid.shape
    return valid.reshape(n, h // 2, 2, w // 2, 2, 1).all(axis=(2, 4))


def _adapt_block(block: ConvBlock, x: jax.Array, valid: jax.Array, *, floor: bool = True
                 ) -> jax.Array:
    """Runs ``block`` (conv -> BatchNorm -> ReLU per conv) with each BatchNorm's mean and
    variance taken over the ``valid`` pixels of its input (``floor``: the variance not below
    the trained one); returns the block's output."""
    weight = valid.astype(jnp.float32)
    total = weight.sum()
    count = jnp.maximum(total, 1.0)
    for conv, norm in zip(block.convs, block.norms, strict=True):
        assert isinstance(norm, nnx.BatchNorm)  # norm_adapt needs norm="batch" (ModelConfig)
        x = conv(x)
        mean = (x * weight).sum(axis=(0, 1, 2)) / count
        var = (jnp.square(x - mean) * weight).sum(axis=(0, 1, 2)) / count
        trained_mean, trained_var = norm.mean[...], norm.var[...]  # type: ignore[index]
        norm.mean[...] = jnp.where(total > 0, mean, trained_mean)  # type: ignore[index]
        norm.var[...] = jnp.where(total > 0,  # type: ignore[index]
                                  jnp.maximum(var, trained_var) if floor else var,
                                  trained_var)
        x = jax.nn.relu(norm(x, use_running_average=True))
    return x


def _adapt_pyramid(net: SiameseNet, pair: jax.Array, masks: list[jax.Array]) -> list[jax.Array]:
    """The encoder's down path with every BatchNorm measured on the valid pixels of both
    dates (no floor), as a network trained on one scene per batch normalised them."""
    levels = []
    x = pair
    for level, block in enumerate(net.encoder.down):
        if level:
            x = max_pool_2x(x)
        x = _adapt_block(block, x, masks[level], floor=False)
        levels.append(x)
    return levels


def _adapt_decode(up: Any, dec: Any, skips: list[jax.Array], masks: list[jax.Array], *,
                  floor: bool) -> jax.Array:
    """A U-Net up path (``siamese._decode``) with every BatchNorm measured on ``masks``' valid
    pixels: from the deepest map up, upsample, then convolve ``[skips[level], upsampled]``."""
    x = skips[-1]
    for level in reversed(range(len(up))):
        x = up[level](x)
        x = _adapt_block(dec[level], jnp.concatenate([skips[level], x], axis=-1), masks[level],
                         floor=floor)
    return x


def adapt_difference_norms(model: ChangeModel, before: np.ndarray, after: np.ndarray,
                           valid: np.ndarray | None = None) -> dict[str, Any]:
    """``model``'s state with the BatchNorms after the dates' difference re-estimated on one
    scene's sample.

    Args:
      model: A model with ``config.norm_adapt != "none"``.
      before, after: ``(N, H, W, num_bands)`` float32 windows of the scene, standardised and
        band-expanded exactly as the model's inputs are (invalid pixels at 0); any H, W (they
        are mirrored up to the model's alignment).
      valid: ``(N, H, W)`` bool, the pixels whose statistics count (default: all). Invalid
        pixels (nodata, clouds) still feed their neighbours, as in ``run``, but not the
        statistics; at coarser levels a pixel counts where all the pixels under it are valid.

    Returns:
      The nested state dict, all weights unchanged. ``"difference"``: every BatchNorm after
      the difference with the sample's mean and the larger of the sample's and the trained
      variance, the encoder's statistics unchanged. ``"all"``: every BatchNorm with the
      sample's mean and variance (the encoder's over both dates).
      Where no pixel is valid at some level, the trained statistics stay.

    Raises:
      ConfigError: If the model's config does not adapt (``norm_adapt="none"``).
    """
    cfg = model.config
    if cfg.norm_adapt == "none":
        raise ConfigError(f"model {model.name!r} has norm_adapt='none': nothing to adapt.")
    net = model.module()
    assert isinstance(net, SiameseNet)  # ModelConfig refuses norm_adapt for ensembles
    graphdef, state = nnx.split(net)
    b, a = (jnp.asarray(_pad_to(np.asarray(x, np.float32), cfg.align_px)) for x in (before, after))
    ok = np.ones(before.shape[:3], bool) if valid is None else np.asarray(valid, bool)
    mask = jnp.asarray(_pad_to(ok[..., None], cfg.align_px, "constant", constant_values=False))
    state = _adapted_state(graphdef, state, b, a, mask, cfg.head, cfg.norm_adapt == "all")
    return jax.tree.map(np.asarray, nnx.to_pure_dict(state))


@functools.partial(jax.jit, static_argnums=(0, 5, 6))
def _adapted_state(graphdef: Any, state: Any, b: jax.Array, a: jax.Array, mask: jax.Array,
                   head_kind: str, encoder: bool) -> Any:
    """The measuring pass, compiled once per model structure and sample shape."""
    net = nnx.merge(graphdef, state)
    n = b.shape[0]
    pair = jnp.concatenate([b, a])
    masks = [mask]
    for _ in net.encoder.down[1:]:
        masks.append(_pool_valid(masks[-1]))
    pair_masks = [jnp.concatenate([m, m]) for m in masks]  # both dates through the encoder
    # "difference": the encoder in inference mode (its trained statistics), every variance
    # set below floored; "all": every BatchNorm the sample's, no floor
    if head_kind == "msdiff":
        assert net.decoder is not None  # the msdiff head has one
        levels = (_adapt_pyramid(net, pair, pair_masks) if encoder
                  else net.encoder.pyramid(pair))
        diffs = [jnp.abs(p[:n] - p[n:]) for p in levels]
        x = _adapt_decode(net.decoder.up, net.decoder.dec, diffs, masks, floor=not encoder)
    else:
        enc = net.encoder
        if encoder:
            assert enc.out is not None  # a diff/conc head's encoder has its decoder
            e = enc.out(_adapt_decode(enc.up, enc.dec, _adapt_pyramid(net, pair, pair_masks),
                                      pair_masks, floor=False))
        else:
            e = enc(pair)
        x = jnp.abs(e[:n] - e[n:])
        if head_kind == "conc":
            x = jnp.concatenate([e[:n] + e[n:], x], axis=-1)
    head = net._logit_head()
    if head.block is not None:
        _adapt_block(head.block, x, mask, floor=not encoder)
    return nnx.state(net)

