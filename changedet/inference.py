"""Jitted, device-parallel prediction: ``PredictStep`` (arrays in, scores out) and
``BlockPredictor`` (a raw numpy ``(band, h, w)`` block pair in, a ``(h, w)`` score out).

The step is compiled once per ``(batch, tile, tile, bands)`` shape with ``jax.jit`` over a 1-D
``jax.make_mesh`` mesh of all local devices: the batch axis is sharded, the model state
replicated. It never sees files or configs.

Must not import rasterio, rioxarray, xarray, dask or matplotlib.
"""

from __future__ import annotations

import copy
import logging
import math
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from changedet import kernels, tiling
from changedet.data import normalize, to_nhwc
from changedet.errors import BandMismatchError, ConfigError, option
from changedet.models.layers import conv_route
from changedet.types import size_px

if TYPE_CHECKING:
    from changedet.models.record import ChangeModel

__all__ = [
    "DIHEDRAL", "TTA_CHOICES", "data_mesh", "predict_step", "PredictStep", "make_predict_step",
    "BlockPredictor",
]

log = logging.getLogger(__name__)


#: Test-time augmentation: the dihedral transforms ``(quarter turns, flip)`` of a tile, in the
#: order ``tta=n`` takes the first ``n`` of them (1: none; 2: + left-right mirror; 4: + the
#: up-down mirror and the half turn; 8: the whole dihedral group).
DIHEDRAL = ((0, False), (0, True), (2, True), (2, False),
            (1, False), (1, True), (3, False), (3, True))
TTA_CHOICES = (1, 2, 4, 8)


def _transform(x: jax.Array, turns: int, flip: bool) -> jax.Array:
    """Mirror (left-right) then rotate the spatial axes 1, 2 of ``x``."""
    if flip:
        x = jnp.flip(x, axis=2)
    return jnp.rot90(x, turns, axes=(1, 2))


def _untransform(x: jax.Array, turns: int, flip: bool) -> jax.Array:
    """The inverse of :func:`_transform`."""
    x = jnp.rot90(x, -turns, axes=(1, 2))
    return jnp.flip(x, axis=2) if flip else x


def predict_step(graphdef: nnx.GraphDef, state: nnx.State, before: jax.Array,
                 after: jax.Array, tta: int = 1) -> jax.Array:
    """Change score ``(B, H, W)`` float32 of normalised NHWC ``before``/``after``. Pure.

    The score is the embedding distance (distance head) or the sigmoid change probability
    (diff/conc heads); see ``SiameseNet.change_score``. With ``tta > 1`` it is the mean of the
    scores of the first ``tta`` :data:`DIHEDRAL` transforms of the tiles, each mapped back
    (one compiled network applied ``tta`` times in sequence, so memory stays one pass deep).
    Quarter turns need square tiles.
    """
    model = nnx.merge(graphdef, state)
    if tta == 1:
        return model.change_score(before, after)
    if tta not in TTA_CHOICES:
        raise ConfigError(f"tta must be one of {TTA_CHOICES}; got {tta}.")
    if tta > 4 and before.shape[1] != before.shape[2]:
        raise ConfigError(f"tta={tta} rotates the tiles a quarter turn, which needs square "
                          f"tiles; got {before.shape[1]}x{before.shape[2]}.")
    transforms = DIHEDRAL[:tta]
    stacked = [jnp.stack([_transform(x, *t) for t in transforms]) for x in (before, after)]
    scores = jax.lax.map(lambda pair: model.change_score(*pair), stacked)
    total = _untransform(scores[0], *transforms[0])
    for i, t in enumerate(transforms[1:], start=1):
        total = total + _untransform(scores[i], *t)
    return total / tta


def data_mesh(devices: Sequence[jax.Device] | None = None, *,
              batch_size: int | None = None) -> jax.sharding.Mesh:
    """The one home of device meshes: a 1-D ``("data",)`` mesh over ``devices`` (default: all
    local devices), batches split along its axis (inference and training alike).

    With ``batch_size``, only the first ``gcd(len(devices), batch_size)`` devices are used, so
    the batch splits evenly (a warning says so when that leaves devices idle).
    """
    devices = list(devices) if devices is not None else jax.local_devices()
    if batch_size is not None:
        n = math.gcd(len(devices), batch_size)
        if n < len(devices):
            log.warning("batch_size %d is not a multiple of the %d local devices: using %d",
                        batch_size, len(devices), n)
        devices = devices[:n]
    # Auto axis types: plain jit + NamedSharding propagation, no explicit-sharding typing.
    return jax.make_mesh((len(devices),), ("data",), axis_types=(AxisType.Auto,),
                         devices=devices)


class PredictStep:
    """``predict_step`` jitted once per input shape, data-parallel over a device mesh.

    Call with a state from :meth:`put_state` and ``(B, H, W, bands)`` float32 arrays, ``B`` a
    multiple of :attr:`num_devices`. Thread-safe: the first call for a new shape compiles under a
    lock, so concurrent dask threads never compile the same shape twice.

    Attributes:
      mesh: 1-D mesh ``("data",)`` over the devices.
      num_devices: Devices the batch is split over.
      num_traces: How many times ``predict_step`` was traced (one per distinct shape).
      compile_seconds: Wall time of the first call for each shape: tracing and XLA
        compilation (the launch of that first batch is included; its execution, dispatched
        asynchronously, mostly is not).
      tta: Test-time transforms averaged per tile (see :func:`predict_step`).
      conv_route: How the 3x3 convolutions run: ``"xla"`` (float32) or ``"onednn"`` (bf16
        through oneDNN on CPUs; see :mod:`changedet.kernels`).
    """

    def __init__(self, graphdef: nnx.GraphDef, devices: Sequence[jax.Device] | None = None,
                 *, tta: int = 1, conv: str | None = None):
        if tta not in TTA_CHOICES:
            raise ConfigError(f"tta must be one of {TTA_CHOICES}; got {tta}.")
        self.tta = tta
        self.mesh = data_mesh(devices)
        self.num_devices = self.mesh.size
        self.conv_route = kernels.resolve_route(conv, list(self.mesh.devices.flat))
        self.batch_sharding = NamedSharding(self.mesh, P("data"))
        self.replicated = NamedSharding(self.mesh, P())
        self.num_traces = 0
        self.compile_seconds = 0.0
        self._graphdef = graphdef
        self._lock = threading.Lock()
        self._shapes: set[tuple[int, ...]] = set()
        #: Held while a batch runs: XLA already spreads one batch over every core (or runs it on
        #: the accelerators), so concurrent dask tasks queue here instead of each holding a
        #: batch's activations at once; memory stays one batch deep whatever the thread count.
        self.run_lock = threading.Lock()

        def step(state: nnx.State, before: jax.Array, after: jax.Array) -> jax.Array:
            self.num_traces += 1  # Python side effect: runs at trace time only
            with conv_route(self.conv_route):
                return predict_step(graphdef, state, before, after, tta)

        # out_shardings is pinned: the score stays split along the batch exactly like the
        # inputs, so every call (and every shape) gets the same, known output layout and the
        # host gathers it shard by shard; left to inference, an equivalent but differently
        # spelled sharding can make later calls miss the cache and recompile.
        self._jitted = jax.jit(
            step,
            in_shardings=(self.replicated, self.batch_sharding, self.batch_sharding),
            out_shardings=self.batch_sharding,
        )

    def put_state(self, state: Any) -> Any:
        """The model state replicated on every device of the mesh (do this once)."""
        return jax.device_put(state, self.replicated)

    def cache_size(self) -> int:
        """Compiled executables held by the jitted step (one per distinct input shape)."""
        return self._jitted._cache_size()  # type: ignore[attr-defined]  # private JAX API; used by tests and logging only

    def __call__(self, state: Any, before: np.ndarray | jax.Array,
                 after: np.ndarray | jax.Array) -> jax.Array:
        """Scores ``(B, H, W)`` float32, sharded along ``B`` like the inputs."""
        if before.shape[0] % self.num_devices:
            raise ConfigError(f"batch size {before.shape[0]} must be a multiple of the "
                              f"{self.num_devices} devices; pad the batch.")
        shape = tuple(before.shape)
        if shape not in self._shapes:
            with self._lock:
                if shape not in self._shapes:
                    start = time.perf_counter()
                    out = self._jitted(state, before, after)
                    seconds = time.perf_counter() - start
                    self.compile_seconds += seconds
                    self._shapes.add(shape)
                    log.debug("compiled predict_step for %s on %d device(s) in %.2f s", shape,
                              self.num_devices, seconds)
                    return out
        return self._jitted(state, before, after)


def make_predict_step(graphdef: nnx.GraphDef, devices: Sequence[jax.Device] | None = None,
                      *, tta: int = 1, conv: str | None = None) -> PredictStep:
    """A :class:`PredictStep` for the model ``graphdef`` over ``devices`` (default: all local)."""
    return PredictStep(graphdef, devices, tta=tta, conv=conv)


class BlockPredictor:
    """Scores raw numpy block pairs with a :class:`~changedet.models.ChangeModel`,
    tile by tile.

    The block is normalised (the model's per-band mean/std), mirrored-padded by the model's halo
    (and bottom/right to whole tiles), cut into tiles of ``tile_px`` core + halo with core
    origins at multiples of ``tile_px`` (a multiple of ``2**num_downsamplings``, so every tile
    is on the block's pooling grid), scored in fixed-size batches on all devices, and the cores
    are stitched back. The result equals one forward pass over the whole padded block (float
    tolerance). Thread-safe; compiles once per (batch, tile) shape.

    Args:
      model: The model (config, state, normalisation).
      tile_px: Core edge of a tile; blocks smaller than one tile use a smaller core (rounded up
        to the pooling alignment) so tiny blocks do not pay for a whole tile.
      batch_size: Tiles per step, a multiple of the device count (default: the device count).
      devices: Devices to run on (default: all local devices).
      tta: Test-time augmentation: the mean score over this many dihedral transforms of
        every (square) tile, 1, 2, 4 or 8 (``tta`` times the cost). Tiles are transformed
        whole, halo included, so the result still equals the same transforms applied to one
        pass over the whole padded block.
      conv: The convolution route, ``"auto"``, ``"xla"`` or ``"onednn"`` (None: the
        ``CHANGEDET_CPU_CONV`` environment variable, default ``"auto"``: oneDNN bf16 on CPUs
        with native bf16, else XLA float32; see :mod:`changedet.kernels`). Tiled equals
        whole-image on the same route.

    Raises:
      ConfigError: If ``tile_px`` is not a positive multiple of ``2**num_downsamplings``,
        ``batch_size`` is not a positive multiple of the device count, or ``tta`` is not one
        of 1, 2, 4, 8.
    """

    def __init__(self, model: ChangeModel, *, tile_px: int = 256, batch_size: int | None = None,
                 devices: Sequence[jax.Device] | None = None, tta: int = 1,
                 conv: str | None = None) -> None:
        cfg = model.config
        self.align_px = cfg.align_px
        if tile_px < 1 or tile_px % self.align_px:
            raise ConfigError(f"tile_px must be a positive multiple of {self.align_px} for this "
                              f"model; got {tile_px}.")
        self.tile_px = tile_px
        self.halo_px = model.halo_px
        self.num_bands = cfg.num_bands
        self.norm_mean = np.asarray(model.norm_mean, np.float64)
        self.norm_std = np.asarray(model.norm_std, np.float64)
        graphdef, state = nnx.split(model.module())
        self.step = make_predict_step(graphdef, devices, tta=tta, conv=conv)
        n = self.step.num_devices
        self.batch_size = n if batch_size is None else batch_size
        if self.batch_size < 1 or self.batch_size % n:
            raise ConfigError(f"batch_size must be a positive multiple of the {n} devices; "
                              f"got {self.batch_size}.")
        self.state = self.step.put_state(jax.tree.map(jnp.asarray, state))

    def rebind(self, model: ChangeModel) -> BlockPredictor:
        """A predictor for ``model``'s weights (same architecture and normalisation) on this
        one's compiled step: nothing is compiled again."""
        other = copy.copy(self)
        _, state = nnx.split(model.module())
        other.state = self.step.put_state(jax.tree.map(jnp.asarray, state))
        return other

    def core_px(self, shape: tuple[int, int]) -> int:
        """Core edge used for a block of ``shape``: ``tile_px``, or less for a smaller block."""
        return min(self.tile_px, tiling.round_up(max(shape), self.align_px))

    def predict(self, before: np.ndarray, after: np.ndarray, *,
                context_px: int = 0, normalized: bool = False) -> np.ndarray:
        """Change score of every block pixel, or of the block's core when it carries context.

        Args:
          before: ``(band, h, w)`` raw values (any real dtype); non-finite values are treated
            as the band mean.
          after: Same shape as ``before``.
          context_px: Pixels of real context the caller included on every side (e.g. dask's
            overlap). When ``>= halo_px`` the tiles take their halo from that context instead
            of mirroring, so no compute is spent on a second halo ring, and only the core
            ``(h - 2*context_px, w - 2*context_px)`` is returned.
          normalized: The blocks are already standardised (``PreparedModel`` does it with
            per-image statistics); skip the model's stored normalisation.

        Returns:
          ``(h, w)`` float32 score (distance, or change probability), or the core's score.

        Raises:
          BandMismatchError: If the blocks do not have the model's band count.
        """
        if before.shape != after.shape or before.ndim != 3:
            raise ConfigError(f"before/after blocks must both be (band, h, w) of one shape; "
                              f"got {before.shape} and {after.shape}.")
        if before.shape[0] != self.num_bands:
            raise BandMismatchError(f"the model takes {self.num_bands} bands but the block has "
                                    f"{before.shape[0]}; pass the model's bands "
                                    f"({option('bands')}).")
        if context_px and context_px < self.halo_px:
            raise ConfigError(f"context_px ({context_px}) must be 0 or >= the model's halo "
                              f"({self.halo_px}).")
        height, width = before.shape[1:]
        shape = (height - 2 * context_px, width - 2 * context_px)
        if min(shape) < 1:
            raise ConfigError(f"a {size_px(height, width)} block has no core inside "
                              f"{context_px} px of context on each side.")
        core = self.core_px(shape)
        tiles = tiling.plan_tiles(shape, core)
        padded_dates = []
        for block in (before, after):
            if not normalized:
                block = normalize(block, self.norm_mean, self.norm_std)
            if context_px:  # the halo is already there: keep halo_px of it, pad bottom/right
                start = context_px - self.halo_px
                block = block[:, start:height - start, start:width - start]
                out_h, out_w = tiling.padded_shape(shape, core, self.halo_px)
                pads = [(0, 0), (0, out_h - block.shape[1]), (0, out_w - block.shape[2])]
                padded_dates.append(np.pad(block, pads, mode=tiling.PAD_MODE))
            else:
                padded_dates.append(tiling.pad_block(block, core, self.halo_px))
        result = np.empty(shape, dtype=np.float32)
        # Tiles are cut, scored and stitched one batch at a time: memory holds one batch of
        # tiles, not the whole block twice over.
        for first in range(0, len(tiles), self.batch_size):
            batch_tiles = tiles[first:first + self.batch_size]
            dates = [to_nhwc(tiling.extract_tiles(p, batch_tiles, core, self.halo_px))
                     for p in padded_dates]
            missing = self.batch_size - len(batch_tiles)
            if missing:  # pad the last batch to the compiled shape; its scores are discarded
                pad = [(0, missing), (0, 0), (0, 0), (0, 0)]
                dates = [np.pad(d, pad) for d in dates]
            with self.step.run_lock:
                scores = np.asarray(self.step(self.state, dates[0], dates[1]))
            tiling.stitch(scores, batch_tiles, shape, self.halo_px, out=result)
        return result

    __call__ = predict
