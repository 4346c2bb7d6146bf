"""Shared helpers of the benchmark scripts: machine description, the busy-machine rule, the
f32 matmul peak, generated Sentinel-2-like scenes (written block by block, so the generator
stays small) and the benchmark model.

Not part of the library; run the scripts from the repository root, e.g.
``python benchmarks/bench_end_to_end.py``.

Busy-machine rule: every script calls :func:`check_idle` first. A 1-minute load average above
:data:`BUSY_LOAD` at start means other work shares the cores, so the figures are not comparable
with anyone else's: the script says so in one prominent line and exits with status
:data:`BUSY_EXIT_CODE`, unless ``--allow-busy`` is given (then the line stays in the output).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np

S2_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11",
            "B12")


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


#: 1-minute load average above which the machine counts as busy (see the module docstring).
BUSY_LOAD = 0.5
#: Exit status of a benchmark refused on a busy machine.
BUSY_EXIT_CODE = 3


def add_busy_argument(parser: argparse.ArgumentParser) -> None:
    """Adds ``--allow-busy`` (run even if :func:`check_idle` finds the machine busy)."""
    parser.add_argument("--allow-busy", action="store_true",
                        help=f"run even if the 1-minute load average exceeds {BUSY_LOAD} at "
                        "start (the output is then flagged BUSY MACHINE)")


def load_average_1min() -> float:
    """The 1-minute load average (runnable processes, all cores together)."""
    return os.getloadavg()[0]


def check_idle(allow_busy: bool) -> float:
    """Applies the busy-machine rule; call it before the benchmark's own work.

    Args:
      allow_busy: Go on (after printing the BUSY MACHINE line) instead of exiting.

    Returns:
      The 1-minute load average at start.

    Raises:
      SystemExit: With status :data:`BUSY_EXIT_CODE` if the machine is busy and not
        ``allow_busy``.
    """
    load = load_average_1min()
    print(f"load average (1 min) at start: {load:.2f}", flush=True)
    if load > BUSY_LOAD:
        print(f"BUSY MACHINE: load average {load:.2f} — figures are not comparable "
              f"(threshold {BUSY_LOAD}; rerun on an idle machine)", flush=True)
        if not allow_busy:
            print("refusing to run; pass --allow-busy to run anyway", flush=True)
            raise SystemExit(BUSY_EXIT_CODE)
    return load


def matmul_peak_gflops(n: int = 2048, repeats: int = 7) -> float:
    """Best (not median) f32 ``jnp.dot`` rate of two ``n x n`` matrices, GFLOP/s: the
    machine's peak, least disturbed by other load."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    jax.block_until_ready(dot(a, b))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(dot(a, b))
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


class Conditions(NamedTuple):
    """What else the machine was doing, measured at one moment of a run."""

    when: str  # "start", "end", ...
    load_1min: float  # 1-minute load average
    matmul_peak_gflops: float  # best f32 2048^2 jnp.dot rate, GFLOP/s

    def __str__(self) -> str:
        flag = f"  [BUSY: load > {BUSY_LOAD}]" if self.load_1min > BUSY_LOAD else ""
        return (f"{self.when}: load average (1 min) {self.load_1min:.2f}; f32 matmul peak "
                f"(2048^2 jnp.dot, best of 7) {self.matmul_peak_gflops:.0f} GFLOP/s{flag}")


def measure_conditions(when: str) -> Conditions:
    """The 1-minute load average and the f32 matmul peak, now (a second or so of matmuls).

    Every script prints these at its start and at its end: a peak well below the idle
    machine's, or a difference between the two, shows other load during the run.
    """
    return Conditions(when, load_average_1min(), matmul_peak_gflops())


def machine() -> str:
    """One paragraph: CPU, cores, memory, library versions, JAX devices, load, XLA flags."""
    import dask
    import flax
    import jax
    import rasterio

    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return (f"cpu: {cpu_name()}; cores: {os.cpu_count()}; memory: {mem_gib:.0f} GiB; "
            f"load avg: {load}\n"
            f"jax {jax.__version__}, flax {flax.__version__}, dask {dask.__version__}, "
            f"rasterio {rasterio.__version__} (GDAL {rasterio.__gdal_version__}); "
            f"devices: {jax.devices()}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def median_time(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time (s) of ``fn()`` over ``repeats`` calls (no warm-up)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _field(rng: np.random.Generator, rows: np.ndarray, cols: np.ndarray, seed: int) -> np.ndarray:
    """A smooth, deterministic land-cover-like pattern of global pixel coordinates."""
    phase = np.random.default_rng(seed).uniform(0, 2 * np.pi, 4)
    r = rows[:, None].astype(np.float32)
    c = cols[None, :].astype(np.float32)
    return (np.sin(r / 37.0 + phase[0]) * np.cos(c / 53.0 + phase[1])
            + 0.5 * np.sin((r + c) / 91.0 + phase[2]) + 0.3 * np.cos(r / 13.0 - c / 17.0
                                                                      + phase[3]))


def write_s2_scene(path: Path, size_px: int, *, date: int, block_px: int = 512,
                   seed: int = 0) -> Path:
    """Writes a 13-band uint16 Sentinel-2-like GeoTIFF (tiled 512, DEFLATE), block by block.

    Date 1 differs from date 0 in square patches (changed land cover) and by sensor noise.

    Args:
      path: Output file.
      size_px: Edge of the square scene in pixels (10 m, UTM 31N).
      date: 0 or 1.
      block_px: Rows written per step (memory: ``13 * block_px * size_px * 4`` bytes).
      seed: Noise seed.

    Returns:
      ``path``.
    """
    import rasterio
    from rasterio.transform import from_origin

    profile = {
        "driver": "GTiff", "height": size_px, "width": size_px, "count": 13, "dtype": "uint16",
        "crs": "EPSG:32631", "transform": from_origin(399960.0, 5400000.0, 10.0, 10.0),
        "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "DEFLATE",
        "predictor": 2, "interleave": "pixel", "nodata": 0, "num_threads": "ALL_CPUS",
        "bigtiff": "IF_SAFER",
    }
    levels = np.linspace(800, 3500, 13, dtype=np.float32)
    rng = np.random.default_rng(seed + 17 * date)
    cols = np.arange(size_px)
    with rasterio.open(path, "w", **profile) as ds:
        ds.descriptions = S2_BANDS
        for row0 in range(0, size_px, block_px):
            rows = np.arange(row0, min(row0 + block_px, size_px))
            base = _field(rng, rows, cols, seed)
            if date:  # changed squares: 64 px on a 256 px lattice, every third one
                changed = (((rows[:, None] // 256) * 7 + (cols[None, :] // 256)) % 3 == 0) & (
                    (rows[:, None] % 256 < 64) & (cols[None, :] % 256 < 64))
                base = np.where(changed, -base + 1.0, base)
            block = np.empty((13, rows.size, size_px), np.uint16)
            for b in range(13):
                noise = rng.normal(0, 20, (rows.size, size_px)).astype(np.float32)
                value = levels[b] * (1 + 0.25 * base * (1 if b % 2 else -1)) + noise
                block[b] = np.clip(value, 1, 65535).astype(np.uint16)
            ds.write(block, window=((row0, row0 + rows.size), (0, size_px)))
    return path


#: Networks :func:`benchmark_model` builds: ``packaged`` (the packaged models' architecture,
#: ``config.default()``: msdiff 16/32/64/128, no head convs) and ``diff`` (the earlier default,
#: ``ModelConfig(num_bands=B)``: U-Net 16/32/64, embed 16, diff head; the network of the
#: figures measured before the packaged models changed to msdiff).
NETWORKS = ("packaged", "diff")


def benchmark_model(num_bands: int = 13, network: str = "packaged"):
    """The benchmark network and its description.

    Args:
      num_bands: Input bands.
      network: One of :data:`NETWORKS`. ``packaged`` with 13 bands is the packaged
        ``sentinel2`` model itself when it is installed; otherwise the same architecture with
        ``num_bands`` bands, randomly initialised (weights do not change the speed).

    Returns:
      ``(ChangeModel, description)``.
    """
    from changedet.config import ModelConfig, default
    from changedet.detectors import learned, modelfile

    bands = S2_BANDS if num_bands == 13 else tuple(str(i + 1) for i in range(num_bands))
    match network:
        case "packaged":
            if num_bands == 13 and "sentinel2" in modelfile.packaged_models():
                model = learned.load_model("sentinel2")
                return model, f"packaged sentinel2 ({_describe(model.config)})"
            cfg = default(bands)[0]
        case "diff":
            cfg = ModelConfig(num_bands=num_bands)
        case _:
            raise ValueError(f"network must be one of {NETWORKS}; got {network!r}")
    model = learned.random_init_model(cfg, bands, seed=0)
    return model, f"random-init {_describe(cfg)}"


def _describe(cfg) -> str:
    features = "/".join(str(f) for f in cfg.features)
    return (f"{cfg.head} head, U-Net {features}, {cfg.num_bands} bands, head_convs "
            f"{cfg.head_convs}, {cfg.upsample} upsampling")
