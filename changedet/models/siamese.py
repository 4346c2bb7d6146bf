"""The Siamese fully-convolutional change network (Flax NNX) and its receptive field.

One shared U-Net encoder maps each date ``(N, H, W, bands)`` to per-pixel embeddings
``(N, H, W, D)`` (one parameter tree for both dates); a head turns the two embeddings into a
per-pixel change output that is invariant to swapping the dates.

Must not import rasterio, rioxarray, xarray, dask or matplotlib.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from changedet.config import Distance, ModelConfig, Norm
from changedet.errors import ConfigError
from changedet.models.layers import ConvBlock, Footprint, Up, max_pool_2x

__all__ = [
    "DISTANCE_EPS", "distance", "UNetEncoder", "DiffDecoder", "ChangeHead", "SiameseNet",
    "receptive_radius_px", "halo_px",
]

#: Added under square roots and norms so distances have finite gradients at 0.
DISTANCE_EPS = 1e-6


def distance(e1: jax.Array, e2: jax.Array, kind: Distance = "euclidean") -> jax.Array:
    """Per-pixel distance between embeddings; finite gradients everywhere (also at ``e1 == e2``).

    Args:
      e1: ``(..., D)`` float32 embeddings.
      e2: Same shape as ``e1``.
      kind: ``"euclidean"`` (safe sqrt: 0 with zero gradient when ``|e1 - e2| < eps``),
        ``"manhattan"`` (``sum |d|``) or ``"cosine"`` (``1 - cos``, in ``[0, 2]``).

    Returns:
      ``(...)`` float32 distances, >= 0, symmetric in ``e1``, ``e2``.

    Example:
      >>> float(distance(jnp.array([3.0, 0.0]), jnp.array([0.0, 4.0])))
      5.0
    """
    match kind:
        case "euclidean":
            sq = jnp.sum(jnp.square(e1 - e2), axis=-1)
            # Double-where safe sqrt: exact value, and a zero (not NaN) gradient at sq == 0.
            positive = sq > DISTANCE_EPS**2
            return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)
        case "manhattan":
            return jnp.sum(jnp.abs(e1 - e2), axis=-1)
        case "cosine":
            n1 = jnp.sqrt(jnp.sum(jnp.square(e1), axis=-1) + DISTANCE_EPS)
            n2 = jnp.sqrt(jnp.sum(jnp.square(e2), axis=-1) + DISTANCE_EPS)
            cos = jnp.sum(e1 * e2, axis=-1) / (n1 * n2)
            return jnp.clip(1.0 - cos, 0.0, 2.0)
    raise ConfigError(f"distance kind must be euclidean, manhattan or cosine; got {kind!r}.")


def _decoder_layers(cfg: ModelConfig, rngs: nnx.Rngs) -> tuple[nnx.List, nnx.List]:
    """``up[i]`` / ``dec[i]``, which build level ``i`` from level ``i + 1`` of a pyramid."""
    f = cfg.features
    up: nnx.List[Up] = nnx.List()
    dec: nnx.List[ConvBlock] = nnx.List()
    for level in range(len(f) - 1):
        up.append(Up(f[level + 1], f[level], mode=cfg.upsample, rngs=rngs))
        dec.append(ConvBlock(2 * f[level], f[level], num_convs=cfg.convs_per_level,
                             norm=cfg.norm, dropout=cfg.dropout, rngs=rngs))
    return up, dec


def _fold(key: jax.Array | None, data: int) -> jax.Array | None:
    """An independent dropout key per block (None stays None: no dropout)."""
    return None if key is None else jax.random.fold_in(key, data)


def _decode(up: nnx.List, dec: nnx.List, skips: list[jax.Array],
            key: jax.Array | None = None) -> jax.Array:
    """From the deepest map up: upsample, then convolve ``[skips[level], upsampled]``."""
    x = skips[-1]
    for level in reversed(range(len(up))):
        x = up[level](x)
        # x is bf16 on the oneDNN route (the skip would be rounded by the next conv anyway)
        skip = skips[level].astype(x.dtype)
        x = dec[level](jnp.concatenate([skip, x], axis=-1), _fold(key, 100 + level))
    return x


def _grow_decode(up: nnx.List, dec: nnx.List, skips: list[Footprint]) -> Footprint:
    """The footprint of :func:`_decode`'s output given its inputs' footprints."""
    fp = skips[-1]
    for level in reversed(range(len(up))):
        fp = up[level].grow(fp)
        fp = dec[level].grow(skips[level].union(fp))
    return fp


class UNetEncoder(nnx.Module):
    """U-Net encoder-decoder with skip connections; full-resolution per-pixel embeddings.

    ``(N, H, W, num_bands)`` float32 -> ``(N, H, W, embed_dim)`` float32, with H and W multiples
    of ``2**cfg.num_downsamplings``. Built with ``decoder=False`` it is the down path only
    (:meth:`pyramid`).
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, decoder: bool = True) -> None:
        f = cfg.features
        k = cfg.convs_per_level
        self.down: nnx.List[ConvBlock] = nnx.List()
        for level, width in enumerate(f):
            in_features = cfg.num_bands if level == 0 else f[level - 1]
            self.down.append(ConvBlock(in_features, width, num_convs=k, norm=cfg.norm,
                                       dropout=cfg.dropout, rngs=rngs))
        # Without ``decoder`` only the down path exists (the ``msdiff`` head decodes the
        # differences of its pyramid instead).
        self.up, self.dec = _decoder_layers(cfg, rngs) if decoder else (nnx.List(), nnx.List())
        self.out = nnx.Conv(f[0], cfg.embed_dim, (1, 1), rngs=rngs) if decoder else None

    def pyramid(self, x: jax.Array, key: jax.Array | None = None, *,
                tie: int = 1) -> list[jax.Array]:
        """The down path's feature maps, finest first: level ``i`` is ``(N, H/2**i, W/2**i,
        features[i])``. ``key``/``tie``: training dropout (:class:`ConvBlock`)."""
        skips = []
        for level, block in enumerate(self.down):
            if level:
                x = max_pool_2x(x)
            x = block(x, _fold(key, level), tie=tie)
            skips.append(x)
        return skips

    def __call__(self, x: jax.Array, key: jax.Array | None = None, *, tie: int = 1) -> jax.Array:
        if self.out is None:
            raise ConfigError("this encoder was built without its decoder (the msdiff head's "
                              "down path): use pyramid().")
        levels = self.pyramid(x, key, tie=tie)
        return self.out(_decode(self.up, self.dec, levels, _fold(key, 200)))

    def grow_pyramid(self, fp: Footprint) -> list[Footprint]:
        """Footprints of :meth:`pyramid`'s maps given the input's."""
        skips = []
        for level, block in enumerate(self.down):
            if level:
                fp = fp.pool()
            fp = block.grow(fp)
            skips.append(fp)
        return skips

    def grow(self, fp: Footprint) -> Footprint:
        """Footprint of the embeddings given the input's (walks the layers as ``__call__``)."""
        fp = _grow_decode(self.up, self.dec, self.grow_pyramid(fp))
        return fp if self.out is None else fp.conv(self.out.kernel_size[0])


class DiffDecoder(nnx.Module):
    """FC-Siam-diff decoder (Daudt et al., 2018): fuses the dates at every scale.

    Input: the per-level absolute differences ``|p_before[i] - p_after[i]|`` of the shared
    encoder's pyramid (finest first). From the deepest level up, each step upsamples and
    convolves ``[|difference at this level|, upsampled]``; the result is ``(N, H, W,
    features[0])``. Early, multi-scale fusion lets the decoder see *where* two dates differ at
    every resolution, instead of through one 16-channel full-resolution embedding.
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs) -> None:
        self.up, self.dec = _decoder_layers(cfg, rngs)

    def __call__(self, diffs: list[jax.Array], key: jax.Array | None = None) -> jax.Array:
        return _decode(self.up, self.dec, diffs, key)

    def grow(self, skips: list[Footprint]) -> Footprint:
        """Footprint of the decoder output given the pyramid's footprints."""
        return _grow_decode(self.up, self.dec, skips)


class ChangeHead(nnx.Module):
    """Small conv decoder on fused embeddings -> one change logit per pixel.

    ``(N, H, W, in_features)`` -> ``(N, H, W)`` float32 logits.
    """

    def __init__(self, in_features: int, width: int, *, num_convs: int, norm: Norm,
                 dropout: float = 0.0, rngs: nnx.Rngs) -> None:
        self.block = (ConvBlock(in_features, width, num_convs=num_convs, norm=norm,
                                dropout=dropout, rngs=rngs)
                      if num_convs else None)
        self.logit = nnx.Conv(width if num_convs else in_features, 1, (1, 1), rngs=rngs)

    def __call__(self, x: jax.Array, key: jax.Array | None = None) -> jax.Array:
        if self.block is not None:
            x = self.block(x, key)
        return self.logit(x)[..., 0]

    def grow(self, fp: Footprint) -> Footprint:
        """The footprint after this head."""
        if self.block is not None:
            fp = self.block.grow(fp)
        return fp.conv(self.logit.kernel_size[0])


class SiameseNet(nnx.Module):
    """Siamese change network: shared :class:`UNetEncoder` + a date-symmetric head.

    Heads (``cfg.head``):
      * ``"distance"``: ``__call__`` returns the per-pixel embedding distance (``cfg.distance``);
        trained with a contrastive or triplet loss; change score = distance.
      * ``"diff"``: FC-Siam-diff style; decoder on ``|f(before) - f(after)|`` -> logit.
      * ``"conc"``: decoder on ``[f(before) + f(after), |f(before) - f(after)|]`` -> logit.
      * ``"msdiff"``: FC-Siam-diff proper; the shared encoder's down path gives a feature
        pyramid per date, and a :class:`DiffDecoder` fuses their differences at every scale.

    Swapping ``before`` and ``after`` leaves every head's output identical up to float
    rounding (the heads are symmetric; XLA may round a sample by its batch position).

    Example:
      >>> cfg = ModelConfig(num_bands=3, features=(4, 8), embed_dim=4, convs_per_level=1,
      ...                   head_convs=1)
      >>> net = SiameseNet(cfg, rngs=nnx.Rngs(0))
      >>> net(jnp.zeros((1, 16, 16, 3)), jnp.ones((1, 16, 16, 3))).shape
      (1, 16, 16)
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs) -> None:
        if cfg.members != 1:
            raise ConfigError(f"SiameseNet is one network; model.members={cfg.members} is an "
                              "ensemble: build it with changedet.models.build_network.")
        self.cfg = cfg
        multiscale = cfg.head == "msdiff"
        self.encoder = UNetEncoder(cfg, rngs=rngs, decoder=not multiscale)
        self.decoder = DiffDecoder(cfg, rngs=rngs) if multiscale else None
        width = max(cfg.embed_dim, 8)
        match cfg.head:
            case "distance":
                self.head = None
            case "msdiff":
                self.head = ChangeHead(cfg.features[0], cfg.features[0],
                                       num_convs=cfg.head_convs, norm=cfg.norm,
                                       dropout=cfg.dropout, rngs=rngs)
            case "diff":
                self.head = ChangeHead(cfg.embed_dim, width, num_convs=cfg.head_convs,
                                       norm=cfg.norm, dropout=cfg.dropout, rngs=rngs)
            case "conc":
                self.head = ChangeHead(2 * cfg.embed_dim, width, num_convs=cfg.head_convs,
                                       norm=cfg.norm, dropout=cfg.dropout, rngs=rngs)

    def embed(self, x: jax.Array, key: jax.Array | None = None, *, tie: int = 1) -> jax.Array:
        """Per-pixel embeddings ``(N, H, W, D)`` float32 of normalised ``(N, H, W, bands)``.

        ``key``: the training step's dropout key (None, as at inference: no dropout).

        Raises:
          ConfigError: If H or W is not a multiple of ``2**num_downsamplings`` or the band count
            differs from ``cfg.num_bands``.
        """
        _check_input(self.cfg, x.shape)
        if self.decoder is not None:
            return self.encoder.pyramid(x, key, tie=tie)[0]
        return self.encoder(x, key, tie=tie)

    def embed_pair(self, before: jax.Array, after: jax.Array,
                   key: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """Embeddings of both dates, computed in one encoder pass over a doubled batch (both
        dates of a pair share their dropout masks)."""
        e = self.embed(_pair_batch(before, after), key, tie=2)
        return e[: before.shape[0]], e[before.shape[0]:]

    def _logit_head(self) -> ChangeHead:
        if self.head is None:  # only the distance head has no logit head
            raise ConfigError(f"the {self.cfg.head!r} head has no logit head.")
        return self.head

    def fuse(self, e_before: jax.Array, e_after: jax.Array,
             key: jax.Array | None = None) -> jax.Array:
        """Head output ``(N, H, W)`` from two embeddings: distance, or change logits.

        Raises:
          ConfigError: For the ``msdiff`` head, which fuses at every scale (call the network).
        """
        match self.cfg.head:
            case "msdiff":
                raise ConfigError("the msdiff head fuses the dates at every scale, not from one "
                                  "embedding: call the network on the pair.")
            case "distance":
                return distance(e_before, e_after, self.cfg.distance)
            case "diff":
                return self._logit_head()(jnp.abs(e_before - e_after), key)
            case _:  # "conc"
                fused = jnp.concatenate([e_before + e_after, jnp.abs(e_before - e_after)], -1)
                return self._logit_head()(fused, key)

    def __call__(self, before: jax.Array, after: jax.Array, *,
                 key: jax.Array | None = None) -> jax.Array:
        """Raw head output ``(N, H, W)`` float32: distance (distance head) or logits.

        Args:
          before: ``(N, H, W, bands)`` float32, normalised.
          after: Same shape as ``before``.
          key: PRNG key of a training step: spatial dropout at rate ``cfg.dropout`` (the same
            channels dropped for both dates of a pair). None (inference): deterministic.
        """
        if self.decoder is None:
            return self.fuse(*self.embed_pair(before, after, _fold(key, 0)), _fold(key, 1))
        batch = _pair_batch(before, after)
        _check_input(self.cfg, batch.shape)
        n = before.shape[0]
        levels = self.encoder.pyramid(batch, _fold(key, 0), tie=2)
        diffs = [jnp.abs(p[:n] - p[n:]) for p in levels]
        return self._logit_head()(self.decoder(diffs, _fold(key, 2)), _fold(key, 1))

    def change_score(self, before: jax.Array, after: jax.Array) -> jax.Array:
        """Change score ``(N, H, W)`` float32, higher = more change: the distance for the
        distance head, the sigmoid probability in ``[0, 1]`` for the diff/conc heads."""
        out = self(before, after)
        return out if self.cfg.head == "distance" else jax.nn.sigmoid(out)

    def footprint(self) -> Footprint:
        """Receptive field of one output pixel, walked over the layers of this network."""
        if self.decoder is not None:
            pyramid = self.encoder.grow_pyramid(Footprint())
            return self._logit_head().grow(self.decoder.grow(pyramid))
        fp = self.encoder.grow(Footprint())
        return fp if self.head is None else self.head.grow(fp)


def _pair_batch(before: jax.Array, after: jax.Array) -> jax.Array:
    """``[before, after]`` as one doubled batch (one encoder pass for both dates)."""
    if before.shape != after.shape:
        raise ConfigError(f"before and after must have the same shape; got {before.shape} "
                          f"and {after.shape}.")
    return jnp.concatenate([before, after], axis=0)


def _check_input(cfg: ModelConfig, shape: tuple[int, ...]) -> None:
    align = cfg.align_px
    if len(shape) != 4 or shape[-1] != cfg.num_bands:
        raise ConfigError(f"model input must be NHWC with {cfg.num_bands} bands; got shape "
                          f"{tuple(shape)}.")
    if shape[1] % align or shape[2] % align:
        raise ConfigError(f"model input height/width must be multiples of {align} "
                          f"(2**num_downsamplings); got {shape[1]}x{shape[2]}: pad the tile.")


def receptive_radius_px(cfg: ModelConfig) -> int:
    """Receptive-field radius (input pixels) of one output pixel, before rounding.

    Built abstractly (``nnx.eval_shape``: no parameters are allocated) and walked layer by layer.
    An ensemble's members share one architecture, so it is one member's.
    """
    one = dataclasses.replace(cfg, members=1)
    abstract = nnx.eval_shape(lambda: SiameseNet(one, rngs=nnx.Rngs(0)))
    fp = abstract.footprint()
    return fp.radius_px


def halo_px(cfg: ModelConfig) -> int:
    """Context pixels needed on each side of a tile for exact tiled inference.

    The receptive-field radius rounded UP to a multiple of ``2**cfg.num_downsamplings`` so tile
    origins stay on the pooling grid.

    Example:
      >>> halo_px(ModelConfig(num_bands=3, features=(8, 16), convs_per_level=2, head="distance"))
      10
    """
    align = cfg.align_px
    radius = receptive_radius_px(cfg)
    return -(-radius // align) * align
