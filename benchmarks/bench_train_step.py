"""Training speed of the packaged recipe: one optimiser step, as ``fit`` places it, against the
same step placed with ``NamedSharding`` on a one-device mesh (what ``fit`` did before).

Prints the machine, the 1-minute load average and the f32 matmul peak measured in the same run
(start and end), then per placement: milliseconds per step, training megapixels (date pairs)
per second, and the ratio to ``fit``'s placement. The step is ``training.train_step`` of
``config.default()`` (the ``msdiff`` network, batch 8 of 96 px, BCE), optionally with the
BatchNorm + dropout variant.

Run (about a minute on 2 cores)::

    python benchmarks/bench_train_step.py [--bands 13] [--batch 8] [--norm batch --dropout 0.2]

On a busy machine (1-minute load average > 0.5 at start) it exits with status 3 unless
``--allow-busy`` is given (``common.check_idle``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from changedet import config, training
from changedet.data import Batch
from changedet.models import SiameseNet

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_busy_argument, check_idle, cpu_name, measure_conditions  # noqa: E402


def fresh_state(model_cfg, train_cfg):
    net = SiameseNet(model_cfg, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(net, training.make_optimizer(train_cfg), wrt=nnx.Param)
    return nnx.split((net, optimizer))


def time_steps(step, graphdef, state, batch, repeats: int) -> float:
    """Median seconds per step after two warm-up steps (the first compiles)."""
    key = jax.random.key(0)
    for _ in range(2):
        state, m = step(graphdef, state, batch, key)
    jax.block_until_ready(m)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        state, m = step(graphdef, state, batch, key)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bands", type=int, default=13)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--norm", default="none", choices=["none", "layer", "batch"])
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--repeats", type=int, default=10)
    add_busy_argument(parser)
    args = parser.parse_args()
    check_idle(args.allow_busy)

    model_cfg, train_cfg = config.default(None if args.bands == 13 else
                                          tuple(str(i + 1) for i in range(args.bands)))
    model_cfg = dataclasses.replace(model_cfg, norm=args.norm, dropout=args.dropout)
    train_cfg = dataclasses.replace(train_cfg, batch_size=args.batch, pos_weight=6.5)
    print(f"cpu: {cpu_name()}; cores: {os.cpu_count()}; jax {jax.__version__} "
          f"({jax.default_backend()}); XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    start = measure_conditions("start")
    print(start)
    px = train_cfg.patch_px
    rng = np.random.default_rng(0)
    shape = (args.batch, px, px, args.bands)
    host = Batch(rng.normal(size=shape).astype(np.float32),
                 rng.normal(size=shape).astype(np.float32),
                 (rng.random(shape[:3]) < 0.05).astype(np.int32), np.ones(shape[:3], bool))
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    pixels = args.batch * px * px
    print(f"msdiff, {args.bands} bands, batch {args.batch} of {px} px, norm={args.norm}, "
          f"dropout={args.dropout}; one device")
    print(f"{'placement':34} {'ms/step':>8} {'Mpix/s':>7} {'ratio':>6}")

    # fit's placement (training.placements: the device itself on a one-device mesh).
    graphdef, state = fresh_state(model_cfg, train_cfg)
    state = jax.device_put(state, training.placements(mesh)[0])
    fit_s = time_steps(training.make_train_step(train_cfg, mesh), graphdef, state,
                       training.shard_batch(host, mesh), args.repeats)
    # The same step annotated with NamedSharding (XLA's SPMD partitioner).
    replicated, split = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    named = jax.jit(training.steps.step_function(train_cfg), static_argnums=0, donate_argnums=1,
                    out_shardings=(replicated, replicated))
    graphdef, state = fresh_state(model_cfg, train_cfg)
    named_s = time_steps(named, graphdef, jax.device_put(state, replicated),
                         Batch(*(jax.device_put(x, split) for x in host)), args.repeats)
    for name, seconds in (("fit (SingleDeviceSharding)", fit_s),
                          ("NamedSharding on a 1-device mesh", named_s)):
        print(f"{name:34} {1000 * seconds:8.0f} {pixels / seconds / 1e6:7.3f} "
              f"{fit_s / seconds:6.2f}")
    print(f"{measure_conditions('end')} (other load on the machine shows as a difference from "
          "the start)")


if __name__ == "__main__":
    main()
