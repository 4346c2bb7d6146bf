"""The pure training step and its placement: optimiser and schedule, ``train_step`` (a pure
function of ``(graphdef, state, batch, key)``), the data mesh and the jitted, device-placed step.

Must not import rasterio, rioxarray, xarray, dask or matplotlib.
"""

from __future__ import annotations

import functools
import logging
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from changedet import inference, metrics
from changedet.config import Mining, TrainConfig
from changedet.data import Batch
from changedet.models.siamese import SiameseNet
from changedet.training import losses

__all__ = [
    "StepMetrics", "make_schedule", "make_optimizer", "train_step", "data_mesh", "placements",
    "step_function", "make_train_step", "shard_batch",
]

log = logging.getLogger(__name__)


class StepMetrics(NamedTuple):
    """Summable per-step training metrics (device scalars): loss and confusion counts."""

    loss: jax.Array
    tp: jax.Array
    fp: jax.Array
    fn: jax.Array
    tn: jax.Array


def make_schedule(cfg: TrainConfig) -> optax.Schedule:
    """Learning rate per step: linear warmup, then cosine decay (or constant)."""
    warmup = min(cfg.warmup_steps, max(cfg.total_steps - 1, 0))
    if cfg.schedule == "constant":
        if warmup == 0:
            return optax.constant_schedule(cfg.learning_rate)
        return optax.join_schedules(
            [optax.linear_schedule(0.0, cfg.learning_rate, warmup),
             optax.constant_schedule(cfg.learning_rate)],
            [warmup],
        )
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup else cfg.learning_rate,
        peak_value=cfg.learning_rate,
        warmup_steps=warmup,
        decay_steps=max(cfg.total_steps, warmup + 1),
        end_value=cfg.learning_rate * cfg.end_lr_fraction,
    )


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """AdamW with the :func:`make_schedule` learning rate and global-norm gradient clipping."""
    parts = []
    if cfg.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
    parts.append(optax.adamw(make_schedule(cfg), weight_decay=cfg.weight_decay))
    return optax.chain(*parts)


#: What a trained network is: its parameters and BatchNorm's running statistics (the optimiser
#: updates only the former).
_WEIGHTS = nnx.Any(nnx.Param, nnx.BatchStat)


def _fold_key(key: jax.Array | None) -> jax.Array | None:
    return None if key is None else jax.random.fold_in(key, 1)


def train_step(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    batch: Batch,
    key: jax.Array,
    *,
    loss: str,
    pos_weight: float,
    margin: float,
    mining: Mining,
    dice_weight: float = 0.0,
) -> tuple[nnx.State, StepMetrics]:
    """One optimiser update of ``(model, optimizer)``. Pure: new state and summable metrics.

    Args:
      graphdef: Static graph of ``(SiameseNet, nnx.Optimizer)`` from ``nnx.split``.
      state: Their state (donated by the jitted caller).
      batch: NHWC float32 ``before``/``after``, int32 ``label``, bool ``valid``.
      key: PRNG key (triplet sampling, dropout); fold the global step into it.
      loss: ``"bce"``, ``"contrastive"`` or ``"triplet"``.
      pos_weight: BCE weight of changed pixels.
      margin: Contrastive/triplet margin; distance-head pixels count as changed above
        ``margin / 2`` in the returned confusion counts.
      mining: Triplet mining strategy.
      dice_weight: Weight of the soft Dice term added to the BCE (0 = BCE only).

    Returns:
      ``(new_state, StepMetrics)``; counts are over the batch's valid pixels.
    """
    model, optimizer = nnx.merge(graphdef, state)
    # The blocks' training key (dropout, BatchNorm's batch statistics) is its own stream; none
    # at all when neither is used, so the triplet sampling of plain models keeps its keys.
    train_mode = model.cfg.dropout > 0 or model.cfg.norm == "batch"
    drop_key = jax.random.fold_in(key, 0x0D5) if train_mode else None

    before, after = jnp.asarray(batch.before), jnp.asarray(batch.after)  # traced: no copy

    def loss_fn(model: SiameseNet) -> tuple[jax.Array, jax.Array]:
        if loss == "triplet":
            e_before, e_after = model.embed_pair(before, after, drop_key)
            out = model.fuse(e_before, e_after, _fold_key(drop_key))
            value = losses.triplet_loss(
                e_before, e_after, batch.label, batch.valid, margin=margin, key=key,
                mining=mining, distance=model.cfg.distance,
            )
        elif loss == "contrastive":
            out = model(before, after, key=drop_key)
            value = losses.contrastive_loss(out, batch.label, batch.valid, margin=margin)
        else:
            out = model(before, after, key=drop_key)
            value = losses.masked_bce(out, batch.label, batch.valid, pos_weight=pos_weight)
            if dice_weight:
                value = value + dice_weight * losses.soft_dice_loss(out, batch.label, batch.valid)
        return value, out

    (value, out), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads)
    pred = out > (0.0 if loss == "bce" else margin / 2)
    counts = metrics.confusion_counts(pred, batch.label, batch.valid)
    return nnx.state((model, optimizer)), StepMetrics(value, *map(jnp.asarray, counts))


def data_mesh(batch_size: int) -> jax.sharding.Mesh:
    """A 1-D ``("data",)`` mesh over as many local devices as evenly divide ``batch_size``
    (``changedet.inference.data_mesh``, the one home of meshes)."""
    return inference.data_mesh(batch_size=batch_size)


def placements(mesh: jax.sharding.Mesh) -> tuple[jax.sharding.Sharding, jax.sharding.Sharding]:
    """``(replicated, batch)`` shardings of the train step's state and batch on ``mesh``.

    On a one-device mesh both are that device (``SingleDeviceSharding``), which skips XLA's SPMD
    partitioner: 271 against 285 ms per packaged-recipe step on an idle 2-core CPU
    (``benchmarks/bench_train_step.py``). State and batch must share one kind of placement:
    a step whose first call mixes a ``SingleDeviceSharding`` state with a ``NamedSharding``
    batch compiled ~2.7x slower in a profiling script (``fit`` never mixes them).
    """
    if mesh.size == 1:
        one = jax.sharding.SingleDeviceSharding(mesh.devices.flat[0])
        return one, one
    return NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))


def step_function(cfg: TrainConfig):
    """:func:`train_step` with ``cfg``'s loss settings bound (not jitted): ``step(graphdef,
    state, batch, key)``."""
    return functools.partial(train_step, loss=cfg.loss, pos_weight=cfg.pos_weight,
                             margin=cfg.margin, mining=cfg.mining,
                             dice_weight=cfg.dice_weight)


@functools.lru_cache(maxsize=8)
def make_train_step(cfg: TrainConfig, mesh: jax.sharding.Mesh):
    """``train_step`` jitted once for ``cfg``: batch sharded on ``mesh``, state replicated.

    Cached per ``(cfg, mesh)`` so repeated ``fit`` calls in one process reuse the compilation.

    Returns:
      ``step(graphdef, state, batch, key) -> (state, StepMetrics)``; ``state`` is donated.
    """
    replicated, _ = placements(mesh)
    return jax.jit(step_function(cfg), static_argnums=0, donate_argnums=1,
                   out_shardings=(replicated, replicated))


def shard_batch(batch: Batch, mesh: jax.sharding.Mesh) -> Batch:
    """Places a host batch on the mesh, split along the batch axis."""
    _, sharding = placements(mesh)
    return Batch(*(jax.device_put(np.asarray(x), sharding) for x in batch))
