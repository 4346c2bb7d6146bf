"""Peak memory (RSS) of end-to-end runs on generated scenes of growing size.

For each size, a 13-band uint16 Sentinel-2-like pair (tiled 512, DEFLATE) is generated block by
block in a temporary folder under /tmp, then ``pipeline.run`` (mask + score GeoTIFFs, default
1024 px blocks, dask threads) runs in a FRESH subprocess that reports its wall time and
``getrusage`` peak RSS; the files are deleted afterwards. Memory should stay flat with size.

The 1-minute load average and the f32 matmul peak are printed at the start and at the end (in
this process, before and after the children); on a busy machine (load > 0.5 at start) the script
exits with status 3 unless ``--allow-busy`` is given. Memory figures hold on a busy machine;
the wall times and Mpix/s do not.

Run (the 10980^2 model run takes many minutes on 2 cores)::

    python benchmarks/bench_memory.py [--sizes 1024,4096,10980] [--methods model,cva]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    S2_BANDS,
    add_busy_argument,
    check_idle,
    machine,
    measure_conditions,
    peak_rss_mib,
    write_s2_scene,
)


def child(before: str, after: str, out: str, method: str, block_px: int) -> None:
    """Runs one end-to-end detection in this (fresh) process; prints one JSON line."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    from changedet import pipeline
    from changedet.config import ModelConfig
    from changedet.detectors import learned, modelfile

    start = time.perf_counter()
    if method == "cva":
        kwargs = {"method": "cva"}
    elif "sentinel2" in modelfile.packaged_models():
        kwargs = {"model": "sentinel2"}
    else:
        kwargs = {"model": learned.random_init_model(ModelConfig(num_bands=13), S2_BANDS)}
    result = pipeline.run(before, after, Path(out) / "mask.tif", score_path=Path(out) / "score.tif",
                          block_px=block_px, progress=False, overwrite=True, **kwargs)
    print(json.dumps({"seconds": time.perf_counter() - start, "peak_rss_mib": peak_rss_mib(),
                      "mpix_per_s": result.megapixels_per_second}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1024,4096,10980")
    parser.add_argument("--methods", default="model,cva")
    parser.add_argument("--block", type=int, default=1024)
    parser.add_argument("--child", nargs=4, metavar=("BEFORE", "AFTER", "OUT", "METHOD"),
                        help=argparse.SUPPRESS)
    add_busy_argument(parser)
    args = parser.parse_args()
    if args.child:
        child(*args.child, block_px=args.block)
        return
    check_idle(args.allow_busy)
    print(machine())
    print(measure_conditions("start"))
    print(f"GDAL_CACHEMAX={os.environ.get('GDAL_CACHEMAX', '(changedet default: 64)')}; block "
          f"{args.block} px")
    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        tmp = Path(tempfile.mkdtemp(dir="/tmp", prefix=f"changedet-mem-{size}-"))
        try:
            start = time.perf_counter()
            before = write_s2_scene(tmp / "before.tif", size, date=0)
            after = write_s2_scene(tmp / "after.tif", size, date=1)
            disk = (before.stat().st_size + after.stat().st_size) / 2**20
            print(f"{size}^2: generated in {time.perf_counter() - start:.0f} s, {disk:.0f} MiB",
                  flush=True)
            for method in args.methods.split(","):
                proc = subprocess.run(
                    [sys.executable, __file__, "--block", str(args.block), "--child",
                     str(before), str(after), str(tmp), method],
                    capture_output=True, text=True, check=False)
                if proc.returncode:
                    print(f"  {method}: FAILED\n{proc.stderr[-3000:]}", flush=True)
                    continue
                row = json.loads(proc.stdout.strip().splitlines()[-1])
                results.append((size, method, row))
                print(f"  {method:5}: {row['seconds']:8.1f} s  {row['mpix_per_s']:6.2f} Mpix/s  "
                      f"peak RSS {row['peak_rss_mib']:6.0f} MiB", flush=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    for method in args.methods.split(","):
        rss = [(s, r["peak_rss_mib"]) for s, m, r in results if m == method]
        if len(rss) > 1:
            print(f"{method}: peak RSS largest/smallest scene = {rss[-1][1] / rss[0][1]:.2f}x "
                  f"({rss[0][0]}^2 -> {rss[-1][0]}^2)")
    print(measure_conditions("end"))


if __name__ == "__main__":
    main()
