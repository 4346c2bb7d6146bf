"""Shared helpers of the benchmark scripts: machine description, generated Sentinel-2-like
scenes (written block by block, so the generator stays small) and the benchmark model.

Not part of the library; run the scripts from the repository root, e.g.
``python benchmarks/bench_end_to_end.py``.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

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


def benchmark_model(num_bands: int = 13):
    """The packaged ``sentinel2`` model if installed, else a random-init default model."""
    from changedet import modelfile
    from changedet.config import ModelConfig

    if num_bands == 13 and "sentinel2" in modelfile.packaged_models():
        return modelfile.load_model("sentinel2"), "packaged sentinel2"
    cfg = ModelConfig(num_bands=num_bands)
    bands = S2_BANDS if num_bands == 13 else tuple(str(i + 1) for i in range(num_bands))
    return modelfile.random_init_model(cfg, bands, seed=0), f"random-init ModelConfig({num_bands})"
