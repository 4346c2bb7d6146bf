"""Where the CPU time of the packaged network goes, and which 3x3 convolution route is fastest.

The packaged ``msdiff`` network spends its time in fourteen 3x3 'SAME' convolutions (the shapes
of one 512 px tile with its 56 px halo, 624 px in all: the encoder sees both dates, batch 2; the
decoder the fused pair, batch 1). Each is timed, interleaved in this one process, by every
route this script knows, and the table gives ms per layer and the ratio to XLA's own f32
convolution:

- ``xla f32``: ``lax.conv_general_dilated`` in f32 NHWC (what ``changedet`` runs);
- ``xla bf16``: the same with bf16 inputs and weights (XLA's CPU backend converts them to f32);
- ``im2col3 f32`` / ``im2col3 bf16``: the three horizontal taps concatenated on the channel axis,
  then three matmuls over row-shifted views (3x the input in memory instead of 9x);
- ``winograd f32``: Winograd F(2x2, 3x3) written in ``jnp`` (2.25x fewer multiplications; the
  input and output transforms are strided slices XLA must materialise);
- ``onednn bf16``: ``changedet.kernels.conv2d``, the XLA FFI call into oneDNN that ``run``
  uses on CPUs with native bf16 (f32 out, no ReLU here, to compare like with like; left out,
  with the reason, where the route is unavailable);
- ``torch f32 cl`` / ``torch bf16 cl``: PyTorch's ``conv2d`` in channels_last (oneDNN), if
  PyTorch is installed (``pip install -e .[bench]``).

Every route is checked against ``xla f32`` first (max relative error printed). The 1-minute
load average and the f32 matmul peak are printed at the start and at the end; on a busy machine
(load > 0.5 at start) the script exits with status 3 unless ``--allow-busy``.

Run (a minute or two on 2 cores; XLA flags must be in the environment at start)::

    python benchmarks/bench_conv_routes.py [--tile 512] [--repeats 5] [--routes xla,torch]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_busy_argument, check_idle, machine, measure_conditions  # noqa: E402

from changedet import kernels  # noqa: E402

HALO_PX = 56  # models.halo_px(config.default()[0])
FEATURES = (16, 32, 64, 128)
NUM_BANDS = 13

# Winograd F(2x2, 3x3) matrices (Lavin & Gray 2016)
_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float32)
_G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], np.float32)
_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float32)


def layers(tile: int) -> list[tuple[str, int, int, int, int]]:
    """(name, batch, side px, in channels, out channels) of every 3x3 conv of the network."""
    side = tile + 2 * HALO_PX
    out, cin = [], NUM_BANDS
    for level, f in enumerate(FEATURES):
        s = side >> level
        out += [(f"enc{level}a", 2, s, cin, f), (f"enc{level}b", 2, s, f, f)]
        cin = f
    for level in range(len(FEATURES) - 2, -1, -1):
        f, s = FEATURES[level], side >> level
        out += [(f"dec{level}a", 1, s, 2 * f, f), (f"dec{level}b", 1, s, f, f)]
    return out


def conv_xla(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    preferred_element_type=jnp.float32)


def conv_im2col3(x, w):
    n, h, wd, c = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    taps = jnp.concatenate([xp[:, :, j:j + wd] for j in range(3)], axis=-1)  # (n, h+2, wd, 3c)
    w3 = w.reshape(3, 3 * c, -1)
    dims = (((3,), (0,)), ((), ()))
    return sum(lax.dot_general(taps[:, i:i + h], w3[i], dims,
                               preferred_element_type=jnp.float32) for i in range(3))


def conv_winograd(x, w):
    n, h, wd, c = x.shape
    th, tw = h // 2, wd // 2
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    rows = [xp[:, i:i + 2 * th:2] for i in range(4)]
    mixed = [sum(_BT[a, i] * rows[i] for i in range(4) if _BT[a, i]) for a in range(4)]
    tiles = []
    for a in range(4):
        cols = [mixed[a][:, :, j:j + 2 * tw:2] for j in range(4)]
        tiles += [sum(_BT[b, j] * cols[j] for j in range(4) if _BT[b, j]) for b in range(4)]
    v = jnp.stack(tiles).reshape(16, n * th * tw, c)
    u = jnp.einsum("ai,bj,ijco->abco", _G, _G, w).reshape(16, c, -1)
    m = lax.dot_general(v, u, (((2,), (1,)), ((0,), (0,)))).reshape(4, 4, n, th, tw, -1)
    return jnp.einsum("pa,qb,abnhwo->nhpwqo", _AT, _AT, m).reshape(n, h, wd, -1)


def conv_onednn(x, w):
    return kernels.conv2d(x, w, jnp.zeros(w.shape[-1]), relu=False, out_dtype=jnp.float32)


def jax_routes(onednn: bool) -> dict:
    def cast(fn, dtype):
        return jax.jit(lambda x, w: fn(x.astype(dtype), w.astype(dtype)))

    routes = {"xla f32": cast(conv_xla, jnp.float32), "xla bf16": cast(conv_xla, jnp.bfloat16),
              "im2col3 f32": cast(conv_im2col3, jnp.float32),
              "im2col3 bf16": cast(conv_im2col3, jnp.bfloat16),
              "winograd f32": cast(conv_winograd, jnp.float32)}
    if onednn:
        routes["onednn bf16"] = jax.jit(conv_onednn)
    return routes


def torch_routes(x, w) -> dict:
    try:
        import torch
    except ImportError:
        return {}
    xt = torch.from_numpy(np.array(x)).permute(0, 3, 1, 2).contiguous(
        memory_format=torch.channels_last)
    wt = torch.from_numpy(np.array(w)).permute(3, 2, 0, 1).contiguous(
        memory_format=torch.channels_last)
    xb, wb = xt.to(torch.bfloat16), wt.to(torch.bfloat16)

    def run(a, b):
        with torch.inference_mode():
            return torch.nn.functional.conv2d(a, b, padding=1).float().permute(0, 2, 3, 1)

    return {"torch f32 cl": lambda: run(xt, wt), "torch bf16 cl": lambda: run(xb, wb)}


def timed(fn, repeats: int) -> float:
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tile", type=int, default=512, help="tile px, without the halo")
    parser.add_argument("--repeats", type=int, default=5)
    add_busy_argument(parser)
    args = parser.parse_args()
    check_idle(args.allow_busy)
    print(machine())
    print(measure_conditions("start"))
    onednn, why = kernels.onednn_status()
    print(f"oneDNN route: {why}")
    rng = np.random.default_rng(0)
    totals: dict[str, float] = {}
    names: list[str] = []
    for name, batch, side, cin, cout in layers(args.tile):
        x = jnp.asarray(rng.standard_normal((batch, side, side, cin), np.float32))
        w = jnp.asarray(rng.standard_normal((3, 3, cin, cout), np.float32) / np.sqrt(9 * cin))
        gflop = 2 * batch * side * side * 9 * cin * cout / 1e9
        routes = {k: (lambda f=f, x=x, w=w: f(x, w)) for k, f in jax_routes(onednn).items()}
        routes |= torch_routes(x, w)
        names = names or list(routes)
        ref = np.asarray(routes["xla f32"]())
        cells = []
        base = None
        for route, fn in routes.items():
            err = float(np.abs(np.asarray(fn()) - ref).max() / np.abs(ref).max())
            seconds = timed(fn, args.repeats)
            base = base or seconds
            totals[route] = totals.get(route, 0.0) + seconds
            cells.append(f"{route} {1e3 * seconds:7.1f} ms {base / seconds:4.2f}x (err {err:.0e})")
        print(f"{name:6} {batch}x{side}^2 {cin:3d}->{cout:3d} {gflop:5.2f} GFLOP | "
              + " | ".join(cells), flush=True)
    base = totals["xla f32"]
    pixels = args.tile**2 / 1e6
    print(f"all 3x3 convs of one {args.tile} px tile (Mpix/s of the convs alone, "
          "ratio to xla f32):")
    for route in names:
        print(f"  {route:14} {1e3 * totals[route]:8.1f} ms  {pixels / totals[route]:5.2f} Mpix/s  "
              f"{base / totals[route]:4.2f}x")
    print(measure_conditions("end"), "(other load shows as a difference from the start)")


if __name__ == "__main__":
    main()
