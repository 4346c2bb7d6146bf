"""JAX/Flax vs PyTorch (CPU) on the same network with the same weights, timed interleaved.

The default changedet model (``ModelConfig(num_bands=B)``: U-Net 16/32/64, embed 16, diff head,
shuffle upsampling) is built in Flax, copied into ``benchmarks/torch_siamese.py``, checked to
agree (max |score difference| <= 1e-4 in f32), then both are timed in this one process,
alternating, for each tile size, batch size and band count: Mpix/s per date pair, GFLOP/s (XLA's
FLOP count) and the share of the f32 matmul peak measured in the same run.

Variants: JAX f32 NHWC (``jax.jit`` of ``change_score``), JAX bf16 (params and inputs cast);
PyTorch f32 NCHW, f32 channels_last, bf16 channels_last (``--bf16`` adds the bf16 rows).

Run (``pip install -e .[bench]``; XLA flags must be in the environment at start)::

    python benchmarks/bench_torch.py [--tiles 256,512] [--batches 1,2,4] [--bands 3,13] [--bf16]
    XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce python benchmarks/...
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_encoder import flops_of, matmul_peak_gflops  # noqa: E402
from common import benchmark_model, machine  # noqa: E402
from torch_siamese import from_flax  # noqa: E402

TOLERANCE = 1e-4


def jax_fn(model, dtype):
    graphdef, state = nnx.split(model.module())
    state = jax.tree.map(lambda a: jnp.asarray(a, dtype), state)

    @jax.jit
    def score(state, before, after):
        return nnx.merge(graphdef, state).change_score(before, after)

    return score, state


def time_once(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", default="256,512")
    parser.add_argument("--batches", default="1,2,4")
    parser.add_argument("--bands", default="3,13")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bf16", action="store_true", help="also time bf16 in both")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    print(machine())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    peak = matmul_peak_gflops()
    print(f"f32 matmul peak (2048^2 jnp.dot, best of 7): {peak:.0f} GFLOP/s")
    header = (f"{'bands':>5} {'tile':>4} {'batch':>5} {'variant':22} {'Mpix/s':>7} {'GFLOP/s':>8} "
              f"{'%peak':>6} {'JAX/torch(f32 best)':>8}")
    ratios = []
    for bands in (int(b) for b in args.bands.split(",")):
        model, name = benchmark_model(bands)
        torch_net = from_flax(model)
        jax_f32, state_f32 = jax_fn(model, jnp.float32)
        jax_bf16, state_bf16 = jax_fn(model, jnp.bfloat16)
        net_cl = from_flax(model).to(memory_format=torch.channels_last)
        net_bf16 = from_flax(model).to(memory_format=torch.channels_last, dtype=torch.bfloat16)
        # agreement on a real-shaped input
        rng = np.random.default_rng(bands)
        x = rng.normal(size=(2, 128, 128, bands)).astype(np.float32)
        y = (x + rng.normal(scale=0.5, size=x.shape)).astype(np.float32)
        with torch.inference_mode():
            ref = torch_net(torch.from_numpy(x.transpose(0, 3, 1, 2)),
                            torch.from_numpy(y.transpose(0, 3, 1, 2))).numpy()
        got = np.asarray(jax_f32(state_f32, x, y))
        diff = float(np.max(np.abs(ref - got)))
        print(f"\n{name}, {bands} bands: max |JAX - PyTorch| f32 = {diff:.2e} "
              f"({'OK' if diff <= TOLERANCE else 'MISMATCH'} at {TOLERANCE})")
        if diff > TOLERANCE:
            raise SystemExit(f"JAX and PyTorch outputs differ by {diff} > {TOLERANCE}")
        print(header)
        for tile in (int(t) for t in args.tiles.split(",")):
            for batch in (int(b) for b in args.batches.split(",")):
                x = rng.normal(size=(batch, tile, tile, bands)).astype(np.float32)
                y = (x + 0.3).astype(np.float32)
                xj, yj = jnp.asarray(x), jnp.asarray(y)
                xb, yb = xj.astype(jnp.bfloat16), yj.astype(jnp.bfloat16)
                xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
                yt = torch.from_numpy(np.ascontiguousarray(y.transpose(0, 3, 1, 2)))
                xc = xt.to(memory_format=torch.channels_last)
                yc = yt.to(memory_format=torch.channels_last)
                xtb, ytb = xc.to(torch.bfloat16), yc.to(torch.bfloat16)
                flops = flops_of(jax_f32, state_f32, xj, yj)
                variants = {
                    "jax f32 NHWC": lambda: jax_f32(state_f32, xj, yj).block_until_ready(),
                    "torch f32 NCHW": lambda: torch_net(xt, yt),
                    "torch f32 channels_last": lambda: net_cl(xc, yc),
                }
                if args.bf16:
                    variants["jax bf16"] = lambda: jax_bf16(state_bf16, xb, yb).block_until_ready()
                    variants["torch bf16 ch_last"] = lambda: net_bf16(xtb, ytb)
                times: dict[str, list[float]] = {k: [] for k in variants}
                with torch.inference_mode():
                    for fn in variants.values():  # warm-up / compile
                        fn()
                    for _ in range(args.repeats):  # interleaved
                        for key, fn in variants.items():
                            times[key].append(time_once(fn))
                pixels = batch * tile * tile
                med = {k: statistics.median(v) for k, v in times.items()}
                best_torch_f32 = min(med["torch f32 NCHW"], med["torch f32 channels_last"])
                for key, t in med.items():
                    gflops = flops / t / 1e9
                    ratio = best_torch_f32 / t
                    print(f"{bands:5d} {tile:4d} {batch:5d} {key:22} {pixels / t / 1e6:7.2f} "
                          f"{gflops:8.1f} {100 * gflops / peak:6.1f} {ratio:8.2f}", flush=True)
                ratios.append((bands, tile, batch, best_torch_f32 / med["jax f32 NHWC"]))
    print("\nJAX f32 speed / best PyTorch f32 speed (>1: JAX faster):")
    for bands, tile, batch, r in ratios:
        print(f"  bands {bands:2d} tile {tile} batch {batch}: {r:.2f}")
    print(f"geometric mean: {float(np.exp(np.mean([np.log(r[3]) for r in ratios]))):.2f}; "
          f"f32 matmul peak at the end: {matmul_peak_gflops():.0f} GFLOP/s")


if __name__ == "__main__":
    main()
