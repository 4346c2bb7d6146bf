"""Model-only throughput vs end-to-end ``pipeline.run`` throughput on the same scene.

Generates a 13-band uint16 Sentinel-2-like pair (tiled DEFLATE GeoTIFFs) in a temporary folder,
then times, interleaved in this one process (the machine is shared; medians):

* model only: ``model.score_block`` (the cached ``BlockPredictor``) on in-memory blocks of the
  scene, each carrying the model halo as context, one block after the other;
* end to end: ``pipeline.run`` file to file (lazy reads, dask overlap, model, mask + score
  GeoTIFF writes) on dask's threads, for each ``--tile-size`` (dask block edge);
* optionally (``--distributed``) the same run on a ``LocalCluster`` of 1 and 2 worker processes.

The model is ``common.benchmark_model(13)``: the packaged ``sentinel2`` model (msdiff) when it
is installed. The 1-minute load average and the f32 matmul peak are printed at the start and at
the end; on a busy machine (load > 0.5 at start) the script exits with status 3 unless
``--allow-busy`` is given.

Run::

    python benchmarks/bench_end_to_end.py [--size 2048] [--blocks 512,1024,2048] [--distributed]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    add_busy_argument,
    benchmark_model,
    check_idle,
    machine,
    measure_conditions,
    peak_rss_mib,
    write_s2_scene,
)


def model_only(model, before: np.ndarray, after: np.ndarray, block_px: int) -> float:
    """Seconds to score the whole in-memory scene block by block (halo as real context)."""
    halo = model.halo_px
    pads = ((0, 0), (halo, halo), (halo, halo))
    before_p = np.pad(before, pads, mode="symmetric")
    after_p = np.pad(after, pads, mode="symmetric")
    height, width = before.shape[1:]
    start = time.perf_counter()
    for row in range(0, height, block_px):
        for col in range(0, width, block_px):
            h = min(block_px, height - row)
            w = min(block_px, width - col)
            window = (slice(None), slice(row, row + h + 2 * halo), slice(col, col + w + 2 * halo))
            score = model.score_block(before_p[window].astype(np.float32),
                                      after_p[window].astype(np.float32), context_px=halo)
            assert score.shape == (h, w)
    return time.perf_counter() - start


def end_to_end(paths: tuple[Path, Path], out: Path, model, block_px: int, client=None) -> float:
    """Seconds of one ``pipeline.run`` writing the mask and the score."""
    from changedet import pipeline

    start = time.perf_counter()
    pipeline.run(*paths, out / "mask.tif", score_path=out / "score.tif", model=model,
                 block_px=block_px, overwrite=True, progress=False, client=client)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048, help="scene edge in pixels")
    parser.add_argument("--blocks", default="512,1024,2048", help="dask block edges (--tile-size)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--distributed", action="store_true",
                        help="also time LocalCluster(1 and 2 worker processes) vs threads")
    add_busy_argument(parser)
    args = parser.parse_args()
    check_idle(args.allow_busy)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("distributed").setLevel(logging.ERROR)

    import rasterio

    from changedet import __version__

    model, model_name = benchmark_model(13)
    print(machine())
    print(measure_conditions("start"))
    print(f"changedet {__version__}; model: {model_name}, halo {model.halo_px} px; scene "
          f"{args.size}x{args.size} px x 13 bands uint16")
    blocks = [int(b) for b in args.blocks.split(",")]
    mpix = args.size**2 / 1e6
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="changedet-bench-") as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        paths = (write_s2_scene(tmp / "before.tif", args.size, date=0),
                 write_s2_scene(tmp / "after.tif", args.size, date=1))
        print(f"generated the pair in {time.perf_counter() - start:.1f} s "
              f"({sum(p.stat().st_size for p in paths) / 2**20:.0f} MiB on disk)")
        with rasterio.open(paths[0]) as ds:
            before = ds.read()
        with rasterio.open(paths[1]) as ds:
            after = ds.read()

        # warm-up: compile every tile shape both paths will use
        for block in blocks:
            model_only(model, before, after, block)
            end_to_end(paths, tmp, model, block)
        times: dict[str, list[float]] = {}
        for _ in range(args.repeats):  # interleaved
            for block in blocks:
                times.setdefault(f"model {block}", []).append(
                    model_only(model, before, after, block))
                times.setdefault(f"run {block}", []).append(end_to_end(paths, tmp, model, block))
        print(f"\n{'what':22} {'block px':>8} {'median s':>9} {'Mpix/s':>7} {'run/model':>9}")
        for block in blocks:
            m = float(np.median(times[f"model {block}"]))
            r = float(np.median(times[f"run {block}"]))
            print(f"{'model only (memory)':22} {block:8d} {m:9.2f} {mpix / m:7.3f}")
            print(f"{'end to end (files)':22} {block:8d} {r:9.2f} {mpix / r:7.3f} {m / r:9.2f}")
        print(f"all runs (s): { {k: [round(v, 2) for v in vs] for k, vs in times.items()} }")

        if args.distributed:
            from dask.distributed import Client, LocalCluster

            block = 1024 if 1024 in blocks else blocks[0]
            rows = {"threads": []}
            clusters = {}
            for n in (1, 2):
                cluster = LocalCluster(n_workers=n, processes=True, threads_per_worker=1,
                                       dashboard_address=":0")
                clusters[n] = (cluster, Client(cluster, set_as_default=False))
                rows[f"{n} worker process(es)"] = []
                end_to_end(paths, tmp, model, block, client=clusters[n][1])  # warm-up
            for _ in range(args.repeats):
                rows["threads"].append(end_to_end(paths, tmp, model, block))
                for n, (_, client) in clusters.items():
                    rows[f"{n} worker process(es)"].append(
                        end_to_end(paths, tmp, model, block, client=client))
            base = float(np.median(rows["threads"]))
            print(f"\nend to end, block {block} px: scheduler, median s, Mpix/s, speed-up vs "
                  "threads")
            for name, values in rows.items():
                t = float(np.median(values))
                print(f"  {name:24} {t:7.2f} {mpix / t:7.3f} {base / t:6.2f}x")
            for cluster, client in clusters.values():
                client.close()
                cluster.close()
    print(f"peak RSS of this process: {peak_rss_mib():.0f} MiB")
    print(measure_conditions("end"))


if __name__ == "__main__":
    main()
