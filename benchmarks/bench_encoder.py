"""Inference speed of the Siamese U-Net encoder and the full diff model on 512x512 tiles.

Prints the machine, the 1-minute load average and the f32 matmul peak measured in the same run
(at the start and at the end), and for each model, band count and batch size: megapixels/second
(per date pair for the full model, per image for the encoder), FLOPs per pixel (XLA cost
analysis) and the achieved GFLOP/s as a share of the start's peak.

Run (a few minutes on 2 cores)::

    python benchmarks/bench_encoder.py [--upsample shuffle|nearest] [--norm none|layer]
    XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce python benchmarks/...

XLA flags must be set in the environment before the script starts (JAX reads them once). On a
busy machine (1-minute load average > 0.5 at start) it exits with status 3 unless
``--allow-busy`` is given (``common.check_idle``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import jax
from flax import nnx

from changedet.config import ModelConfig
from changedet.models import SiameseNet

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    add_busy_argument,
    check_idle,
    cpu_name,
    measure_conditions,
)


def timed(fn, *args, repeats: int) -> float:
    """Median wall time (s) of ``fn(*args)`` after one warm-up call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def flops_of(jitted, *args) -> float:
    cost = jitted.lower(*args).compile().cost_analysis()
    if isinstance(cost, list):  # older JAX returned one dict per device
        cost = cost[0]
    return float(cost.get("flops", float("nan"))) if cost else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upsample", default="shuffle",
                        help="comma-separated variants, timed interleaved: shuffle,nearest")
    parser.add_argument("--norm", default="none", choices=["none", "layer"])
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--batches", default="1,2,4")
    parser.add_argument("--bands", default="3,13")
    parser.add_argument("--repeats", type=int, default=3)
    add_busy_argument(parser)
    args = parser.parse_args()
    check_idle(args.allow_busy)

    print(f"cpu: {cpu_name()}; cores: {os.cpu_count()}; jax {jax.__version__} "
          f"({jax.default_backend()}, {jax.device_count()} device(s)); "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    start = measure_conditions("start")
    print(start)
    peak = start.matmul_peak_gflops
    print(f"norm={args.norm} tile={args.tile}; Mpix/s: encoder per image, diff per date pair")
    print(f"{'model':8} {'upsample':8} {'bands':>5} {'batch':>5} {'Mpix/s':>8} {'kFLOP/px':>9} "
          f"{'GFLOP/s':>8} {'%peak':>6}")
    tile = args.tile
    rows = []
    for bands in (int(b) for b in args.bands.split(",")):
        models = {}
        for upsample in args.upsample.split(","):
            cfg = ModelConfig(num_bands=bands, head="diff", upsample=upsample, norm=args.norm)
            graphdef, state = nnx.split(SiameseNet(cfg, rngs=nnx.Rngs(0)))

            def encoder(state, x, graphdef=graphdef):
                return nnx.merge(graphdef, state).embed(x)

            def full(state, before, after, graphdef=graphdef):
                return nnx.merge(graphdef, state).change_score(before, after)

            models[upsample] = (state, jax.jit(encoder), jax.jit(full))
        for batch in (int(b) for b in args.batches.split(",")):
            x = jax.random.normal(jax.random.key(batch), (batch, tile, tile, bands))
            y = x[::-1] + 0.1
            pixels = batch * tile * tile
            for name in ("encoder", "diff"):
                for upsample, (state, encoder_jit, full_jit) in models.items():  # interleaved
                    fn, fargs = ((encoder_jit, (state, x)) if name == "encoder"
                                 else (full_jit, (state, x, y)))
                    flops = flops_of(fn, *fargs)
                    seconds = timed(fn, *fargs, repeats=args.repeats)
                    rows.append((name, upsample, bands, batch, pixels / seconds / 1e6,
                                 flops / pixels / 1e3, flops / seconds / 1e9))
                    print(f"{name:8} {upsample:8} {bands:5d} {batch:5d} {rows[-1][4]:8.2f} "
                          f"{rows[-1][5]:9.1f} {rows[-1][6]:8.1f} "
                          f"{100 * rows[-1][6] / peak:6.1f}", flush=True)
    print(f"{measure_conditions('end')} (other load on the machine shows as a difference from "
          "the start)")


if __name__ == "__main__":
    main()
