"""JAX/Flax vs PyTorch (CPU) on the same network with the same weights, timed interleaved.

The network is ``common.benchmark_model(B, --network)``: by default the packaged models'
architecture (``config.default()``: msdiff head, U-Net 16/32/64/128, no head convs, shuffle
upsampling), i.e. the packaged ``sentinel2`` model itself for 13 bands; ``--network diff`` gives
the earlier default (``ModelConfig(num_bands=B)``: U-Net 16/32/64, embed 16, diff head). It is
built in Flax, copied into ``benchmarks/torch_siamese.py``, checked to agree (max |score
difference| <= 1e-4 in f32), then both are timed in this one process, alternating, for each tile
size, batch size and band count: Mpix/s per date pair, GFLOP/s (XLA's FLOP count) and the share
of the f32 matmul peak measured at the start of the same run.

Variants: JAX f32 NHWC (``jax.jit`` of ``change_score``), JAX oneDNN bf16 (the same with the
3x3 convolutions on the oneDNN route of ``changedet.kernels``, what ``run`` uses by default on
CPUs with native bf16; left out, with the reason, where that route is unavailable), JAX bf16
(params and inputs cast);
PyTorch f32 NCHW, f32 channels_last, bf16 channels_last (``--bf16`` adds the bf16 rows);
``--compile`` adds ``torch.compile`` (inductor, ``freezing`` on: PyTorch's CPU inference recipe)
of f32 channels_last and of bf16 channels_last; each is checked against eager f32 first, and
its compile time (first call) is printed. Two ratio columns: this row's speed over the best
PyTorch f32 path (NCHW, channels_last, compiled), and over the best PyTorch path of any kind
(bf16 and compiled included).

The 1-minute load average and the f32 matmul peak are printed at the start and at the end. On a
busy machine (load > 0.5 at start) the script exits with status 3 unless ``--allow-busy``.

Run (``pip install -e .[bench]``; XLA flags must be in the environment at start)::

    python benchmarks/bench_torch.py [--tiles 256,512] [--batches 1,2,4] [--bands 3,13] [--bf16]
        [--compile] [--network packaged|diff]
    XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce python benchmarks/...
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_encoder import flops_of  # noqa: E402
from common import (  # noqa: E402
    NETWORKS,
    add_busy_argument,
    benchmark_model,
    check_idle,
    machine,
    measure_conditions,
)
from torch_siamese import from_flax  # noqa: E402

from changedet import kernels  # noqa: E402
from changedet.models.layers import conv_route  # noqa: E402

TOLERANCE = 1e-4
JAX_F32 = "jax f32 NHWC"
JAX_BF16 = "jax bf16"
JAX_ONEDNN = "jax onednn bf16"
TORCH_F32 = ("torch f32 NCHW", "torch f32 channels_last", "torch f32 ch_last compiled")


def jax_fn(model, dtype, route: str = "xla"):
    graphdef, state = nnx.split(model.module())
    state = jax.tree.map(lambda a: jnp.asarray(a, dtype), state)

    @jax.jit
    def score(state, before, after):
        with conv_route(route):
            return nnx.merge(graphdef, state).change_score(before, after)

    return score, state


def run_jax(fn, *args):
    return fn(*args).block_until_ready()


def time_once(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def compiled(model, dtype: torch.dtype):
    """``torch.compile`` of a fresh channels_last copy (compiles on its first call per shape)."""
    net = from_flax(model).to(memory_format=torch.channels_last, dtype=dtype)
    return torch.compile(net, dynamic=False)


def warm_up_compiled(variants: dict, eager_f32: torch.Tensor) -> bool:
    """Compiles (first call of) the ``compiled`` variants and checks them against eager f32.

    Returns False, after saying why, if ``torch.compile`` fails on this machine.
    """
    keys = [k for k in variants if k.endswith("compiled")]
    try:
        seconds = {k: time_once(variants[k]) for k in keys}
    except Exception as err:  # inductor needs a C++ compiler; it fails in many ways
        print(f"{'':17}torch.compile FAILED ({type(err).__name__}: {str(err)[:200]}); the "
              "compiled rows are left out")
        return False
    for key in keys:
        diff = max_diff(eager_f32, variants[key]())
        print(f"{'':17}{key}: first call (compile) {seconds[key]:.1f} s; max |compiled - "
              f"eager f32| = {diff:.1e}")
        if "f32" in key and diff > TOLERANCE:
            raise SystemExit(f"{key} differs from eager f32 by {diff} > {TOLERANCE}")
    return True


def max_diff(a, b) -> float:
    """Max absolute difference of two arrays or tensors (any float dtype), in f32."""
    a, b = (v.float().numpy() if isinstance(v, torch.Tensor) else np.asarray(v, np.float32)
            for v in (a, b))
    return float(np.max(np.abs(a - b)))


def geometric_mean(values: list[float]) -> float:
    return float(np.exp(np.mean(np.log(values))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", default="256,512")
    parser.add_argument("--batches", default="1,2,4")
    parser.add_argument("--bands", default="3,13")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bf16", action="store_true", help="also time bf16 in both")
    parser.add_argument("--compile", action="store_true",
                        help="also time torch.compile of f32 and bf16 channels_last")
    parser.add_argument("--network", default="packaged", choices=NETWORKS,
                        help="packaged: config.default()'s msdiff (the packaged sentinel2 "
                        "model for 13 bands); diff: the earlier ModelConfig(num_bands) default")
    add_busy_argument(parser)
    args = parser.parse_args()
    check_idle(args.allow_busy)
    torch.set_num_threads(os.cpu_count() or 1)
    if args.compile:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True  # weights as constants: oneDNN prepacking, folding
    print(machine())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    onednn_ok, onednn_why = kernels.onednn_status()
    print(f"JAX oneDNN route: {onednn_why}")
    start = measure_conditions("start")
    print(start)
    peak = start.matmul_peak_gflops
    header = (f"{'bands':>5} {'tile':>4} {'batch':>5} {'variant':27} {'Mpix/s':>7} "
              f"{'GFLOP/s':>8} {'%peak':>6} {'/torch f32 best':>15} {'/torch best':>11}")
    summary = []
    use_compile = args.compile  # turned off if torch.compile fails on this machine
    for bands in (int(b) for b in args.bands.split(",")):
        model, name = benchmark_model(bands, args.network)
        torch_net = from_flax(model)
        jax_f32, state_f32 = jax_fn(model, jnp.float32)
        jax_bf16, state_bf16 = jax_fn(model, jnp.bfloat16)
        if onednn_ok:
            jax_onednn, _ = jax_fn(model, jnp.float32, "onednn")
        net_cl = from_flax(model).to(memory_format=torch.channels_last)
        net_bf16 = from_flax(model).to(memory_format=torch.channels_last, dtype=torch.bfloat16)
        if use_compile:
            net_cl_c, net_bf16_c = compiled(model, torch.float32), compiled(model, torch.bfloat16)
        # agreement on a real-shaped input
        rng = np.random.default_rng(bands)
        x = rng.normal(size=(2, 128, 128, bands)).astype(np.float32)
        y = (x + rng.normal(scale=0.5, size=x.shape)).astype(np.float32)
        with torch.inference_mode():
            ref = torch_net(torch.from_numpy(x.transpose(0, 3, 1, 2)),
                            torch.from_numpy(y.transpose(0, 3, 1, 2))).numpy()
        got = np.asarray(jax_f32(state_f32, x, y))
        diff = max_diff(ref, got)
        print(f"\n{name}: max |JAX - PyTorch| f32 = {diff:.2e} "
              f"({'OK' if diff <= TOLERANCE else 'MISMATCH'} at {TOLERANCE})")
        if diff > TOLERANCE:
            raise SystemExit(f"JAX and PyTorch outputs differ by {diff} > {TOLERANCE}")
        if onednn_ok:
            print(f"max |JAX oneDNN bf16 - JAX f32| = "
                  f"{max_diff(got, np.asarray(jax_onednn(state_f32, x, y))):.2e}")
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
                    JAX_F32: partial(run_jax, jax_f32, state_f32, xj, yj),
                    "torch f32 NCHW": partial(torch_net, xt, yt),
                    "torch f32 channels_last": partial(net_cl, xc, yc),
                }
                if onednn_ok:
                    variants[JAX_ONEDNN] = partial(run_jax, jax_onednn, state_f32, xj, yj)
                if args.bf16:
                    variants[JAX_BF16] = partial(run_jax, jax_bf16, state_bf16, xb, yb)
                    variants["torch bf16 ch_last"] = partial(net_bf16, xtb, ytb)
                if use_compile:
                    torch._dynamo.reset()  # one shape per compile: no recompile limit to hit
                    variants["torch f32 ch_last compiled"] = partial(net_cl_c, xc, yc)
                    variants["torch bf16 ch_last compiled"] = partial(net_bf16_c, xtb, ytb)
                with torch.inference_mode():
                    for key, fn in variants.items():  # warm-up; compiles, checked below
                        if not key.endswith("compiled"):
                            fn()
                    if use_compile and not warm_up_compiled(variants, torch_net(xt, yt)):
                        use_compile = False
                        variants = {k: v for k, v in variants.items()
                                    if not k.endswith("compiled")}
                    times: dict[str, list[float]] = {k: [] for k in variants}
                    for _ in range(args.repeats):  # interleaved
                        for key, fn in variants.items():
                            times[key].append(time_once(fn))
                pixels = batch * tile * tile
                med = {k: statistics.median(v) for k, v in times.items()}
                torch_f32 = min(t for k, t in med.items() if k in TORCH_F32)
                torch_any = min(t for k, t in med.items() if k.startswith("torch"))
                for key, t in med.items():
                    gflops = flops / t / 1e9
                    print(f"{bands:5d} {tile:4d} {batch:5d} {key:27} {pixels / t / 1e6:7.2f} "
                          f"{gflops:8.1f} {100 * gflops / peak:6.1f} {torch_f32 / t:15.2f} "
                          f"{torch_any / t:11.2f}", flush=True)
                jax_best = min(t for k, t in med.items() if k.startswith("jax"))
                summary.append((bands, tile, batch, torch_f32 / med[JAX_F32],
                                torch_any / jax_best))
    compiled_note = ", compiled" if use_compile else ""
    bf16_note = " and bf16" if args.bf16 else ""
    print(f"\nspeed ratios, > 1: JAX faster. 'f32': JAX f32 / best PyTorch f32 (NCHW, "
          f"channels_last{compiled_note}); 'best': best JAX / best PyTorch (f32{bf16_note}"
          f"{compiled_note}):")
    for bands, tile, batch, r_f32, r_best in summary:
        print(f"  bands {bands:2d} tile {tile} batch {batch}: f32 {r_f32:.2f}, best {r_best:.2f}")
    print(f"geometric mean: f32 {geometric_mean([r[3] for r in summary]):.2f}, best "
          f"{geometric_mean([r[4] for r in summary]):.2f}")
    print(measure_conditions("end"))


if __name__ == "__main__":
    main()
