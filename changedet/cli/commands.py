"""Command line: ``python -m changedet {run,info,coregister,train,evaluate}``.

Parses arguments, sets up logging, calls one library function. A ``ChangedetError`` becomes one
line on stderr and exit status 2 (``-v`` adds the traceback); any other error exits with 1.
"""

from __future__ import annotations

import _thread
import argparse
import gc
import logging
import signal
import sys
import threading
from collections.abc import Sequence

from changedet import __version__
from changedet.errors import ChangedetError, command_line_words

__all__ = [
    "CLI_FLAGS", "RUN_EXAMPLES", "INFO_EXAMPLES", "COREGISTER_EXAMPLES", "build_parser",
    "main", "COMMANDS",
]

log = logging.getLogger("changedet")

EXIT_OK, EXIT_INTERNAL, EXIT_USER, EXIT_INTERRUPTED = 0, 1, 2, 130

#: The flag of each Python option a library message may name, where it is not ``--`` + the
#: name with dashes (``block_px`` is ``--block-px``): errors say options in the CLI's words.
CLI_FLAGS = {
    "out": "--output",
    "score_path": "--score",
    "vector_path": "--vector",
    "quicklook_path": "--quicklook",
    "uncertainty_path": "--uncertainty",
}

RUN_EXAMPLES = """examples: (from the repository root, on the sample pair in data/)
  python -m changedet run data/oscd_paris/imgs_1 data/oscd_paris/imgs_2 -o change.tif
  python -m changedet run data/oscd_paris/imgs_1 data/oscd_paris/imgs_2 -o change.tif \\
      --score score.tif --vector change.gpkg --quicklook change.png --overwrite
  python -m changedet run data/oscd_paris/imgs_1 data/oscd_paris/imgs_2 -o cva.tif --method cva
  python -m changedet run data/oscd_paris/imgs_1 data/oscd_paris/imgs_2 -o four.tif \\
      --bands B02,B03,B04,B08                               # a 4-band (10 m) export
  python -m changedet run data/oscd_paris/imgs_1 data/oscd_paris/imgs_2 -o rgb.tif \\
      --bands B04,B03,B02 --model rgb                       # true colour: the rgb model
  python -m changedet run data/oscd_paris/imgs_1 data/oscd_paris/imgs_2 -o best.tif \\
      --quality best                                        # 8x the model time
  python -m changedet run data/oscd_paris/imgs_1 data/oscd_paris/imgs_2 -o change.tif \\
      --uncertainty doubt.tif --overwrite           # where the map is likely wrong
  python -m changedet run data/oscd_paris/imgs_1 data/oscd_paris/imgs_2 -o fixed.tif \\
      --coregister                              # resample AFTER by its measured shift first
  python -m changedet run data/oscd_paris/imgs_1 data/oscd_paris/imgs_2 -o mine.tif \\
      --model tiny.msgpack                      # a model file from the first `train` example

Bands are known by Sentinel-2 id (B02), Earth Engine id (B2) or STAC common name (blue, nir,
swir16, ...): the sentinel2 model takes any subset holding blue, green and red (L1C, L2A,
4-band exports, Landsat), and says which bands it used. Files without band descriptions
(Landsat exports) name theirs with --band-names, e.g. blue,green,red,nir,swir16,swir22 for
TM bands 1-5 and 7 (docs/inputs.md). A 3-band photo pair (PNG, JPEG, GeoTIFF) runs the rgb model.

On CPUs with native bf16 (AVX512-BF16 or AMX) the network's convolutions run in bf16 through
oneDNN, about 3x faster than float32 (scores differ by ~3e-4 on average, F1 is unchanged);
CHANGEDET_CPU_CONV=xla forces float32 XLA convolutions, =onednn the oneDNN route.
"""

INFO_EXAMPLES = """examples:
  python -m changedet info data/oscd_paris/imgs_1 data/oscd_paris/imgs_2
"""

COREGISTER_EXAMPLES = """examples:
  python -m changedet coregister data/oscd_paris/imgs_1 data/oscd_paris/imgs_2
  python -m changedet coregister data/oscd_paris/imgs_1 data/oscd_paris/imgs_2 \\
      --json --bands B04,B08
"""


def _bands(text: str) -> list[str]:
    return [b for b in text.replace(" ", "").split(",") if b]


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks")
    parser.add_argument("-q", "--quiet", action="store_true", 
                        help="no progress bars, warnings only")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (public so docs and tests can introspect it)."""
    parser = argparse.ArgumentParser(
        prog="changedet",
        description="Satellite change detection: two co-registered scenes in, a georeferenced "
        "change mask out.",
    )
    parser.add_argument("--version", action="version", version=f"changedet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="detect change between two scenes and write the mask",
        description="Detect change between BEFORE and AFTER and write a georeferenced mask "
        "(uint8: 0 no change, 1 change, 255 nodata) on the grid of BEFORE.",
        epilog=RUN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("before", help="earlier scene: raster file, or folder of single-band rasters")
    run.add_argument("after", help="later scene, same grid as BEFORE (or use --align)")
    run.add_argument(
        "-o", "--output", required=True,
        help="change mask to write, format from the extension: .tif/.tiff a tiled GeoTIFF; "
        ".png an 8-bit palette PNG (0 black, 1 white, 255 nodata transparent) placed in GIS by "
        "its .wld world file and .png.aux.xml (CRS); other extensions are refused",
    )
    run.add_argument("--score", help="also write the float32 change score here (.tif/.tiff)")
    run.add_argument("--vector", help="also write change polygons (.gpkg or .geojson) here")
    run.add_argument("--quicklook", help="also write an overlay PNG here (needs matplotlib)")
    run.add_argument(
        "--uncertainty", metavar="U.tif",
        help="also write the per-pixel uncertainty here (float32 .tif): the probability that "
        "the mask is wrong at each pixel, from the model's out-of-fold calibration of its "
        "score; no extra model time (docs/uncertainty.md)",
    )
    run.add_argument("--align", action="store_true", help="resample AFTER onto BEFORE's grid")
    run.add_argument(
        "--coregister", action="store_true",
        help="measure AFTER's sub-pixel misregistration (as the coregister command does) and "
        "resample it by that shift before detection; the applied and residual shifts go in "
        "the output tags",
    )
    run.add_argument(
        "--method", choices=("auto", "siamese", "cva"), default="auto",
        help="auto: packaged Siamese model chosen from the bands (default); cva: change "
        "vector analysis baseline with Otsu's threshold",
    )
    run.add_argument("--model", help="packaged model name (sentinel2, rgb) or model file path")
    run.add_argument(
        "--bands", type=_bands,
        help="comma-separated band ids or 1-based indices to use, in the model's order",
    )
    run.add_argument(
        "--band-names", metavar="NAME,...",
        help="the files' bands in order, for files without band descriptions (e.g. Landsat: "
        "blue,green,red,nir,swir16,swir22); ids or common names, see docs/inputs.md",
    )
    run.add_argument(
        "--cloud-mask", default="auto", metavar="auto|none|BEFORE_MASK,AFTER_MASK",
        help="auto (default): mask clouds and shadows of Sentinel-2 L1C input with s2cloudless "
        "(needs the clouds extra); none; or one mask raster per date (L2A SCL, Landsat "
        "QA_PIXEL, or 0/1). Masked pixels are nodata in the outputs",
    )
    run.add_argument(
        "--offset", type=float, default=0.0,
        help="digital-number offset of the input, removed before cloud detection (1000 for "
        "Sentinel-2 processing baseline 04.00+, i.e. since 25 Jan 2022)",
    )
    run.add_argument("--threshold", type=float, help="decision threshold on the score")
    run.add_argument(
        "--max-change", type=float, metavar="FRACTION",
        help="mark at most this fraction of the valid pixels: where more score above the "
        "threshold, the scene's threshold is raised until no more do (default: the model's "
        "stored cap, 0.04 for sentinel2, applied with its own threshold only; 1 turns it off; "
        "no extra model time)",
    )
    run.add_argument(
        "--calibrate", metavar="POINTS",
        help="vector file (.gpkg, .geojson; any CRS) of points or small polygons labelled "
        "changed (1) / unchanged (0): the threshold is re-chosen on them for this scene "
        "(needs the vector extra; docs/calibrate.md)",
    )
    run.add_argument("--calibrate-property", default="change", metavar="NAME",
                     help="the label property of --calibrate's features (default: change)")
    run.add_argument(
        "--block-px", type=int, default=None, metavar="PX",
        help="processing block edge in pixels (default 1024; block_px in Python); does not "
        "change the result",
    )
    run.add_argument("--tile-size", type=int, help=argparse.SUPPRESS)  # deprecated: --block-px
    run.add_argument(
        "--quality", choices=("fast", "best"), default="fast",
        help="fast (default): one pass of the model; best: average over the 8 rotations and "
        "mirror images of every tile, 8x the model time for a small gain (docs/models.md)",
    )
    run.add_argument("--workers", type=int, help="start a local dask cluster with N workers")
    run.add_argument("--scheduler", help="address of a dask.distributed scheduler (tcp://...)")
    run.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    _add_common(run)

    info = sub.add_parser(
        "info", help="print a scene's grid, CRS, bands, dtype and nodata",
        description="Print what changedet reads from each scene's headers (no pixel is read): "
        "size in pixels (width x height), CRS, pixel size, bounds, band ids, dtype and nodata. "
        "Use it to check that two dates share a grid before `run`.",
        epilog=INFO_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    info.add_argument("scene", nargs="+", help="raster file or band folder")
    _add_common(info)

    coreg = sub.add_parser(
        "coregister", help="measure the misregistration of AFTER relative to BEFORE",
        description="Measure where BEFORE's content appears in AFTER, in pixels of BEFORE's "
        "grid (dx to the right, dy down), by sub-pixel phase correlation on a grid of blocks; "
        "see docs/coregister.md. Nothing is written.",
        epilog=COREGISTER_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    coreg.add_argument("before", help="earlier scene: raster file or folder of band rasters")
    coreg.add_argument("after", help="later scene on the same grid (or use --align)")
    coreg.add_argument("--align", action="store_true",
                       help="resample AFTER onto BEFORE's grid first")
    coreg.add_argument(
        "--bands", type=_bands,
        help="comma-separated band ids or 1-based indices to correlate (default: B02,B03,B04,B08 "
        "when present, else all)",
    )
    coreg.add_argument(
        "--band-names", metavar="NAME,...",
        help="the files' bands in order, for files without band descriptions",
    )
    coreg.add_argument("--block-px", type=int, default=256, metavar="PX",
                       help="block edge in pixels (default 256)")
    coreg.add_argument("--json", action="store_true",
                       help="print one JSON object (dx_px, dy_px, quality, spread_px, num_blocks)")
    _add_common(coreg)
    _add_training_commands(sub)
    return parser


def _add_training_commands(sub: argparse._SubParsersAction) -> None:
    from changedet.cli import train as cli_train

    cli_train.add_commands(sub, _add_common)


def _setup_logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("changedet")
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)
    warn_logger = logging.getLogger("py.warnings")
    warn_logger.handlers[:] = [handler]
    warn_logger.setLevel(logging.ERROR if quiet else logging.WARNING)


def _client(args: argparse.Namespace):
    if args.scheduler and args.workers:
        raise ChangedetError("pass either --scheduler or --workers, not both.")
    if not (args.scheduler or args.workers):
        return None
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError as err:
        raise ChangedetError(
            "--workers/--scheduler need dask.distributed: pip install 'changedet[distributed]'."
        ) from err
    if args.scheduler:
        return Client(args.scheduler)
    cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True)
    if _has_dashboard():
        log.info("dask dashboard: %s", cluster.dashboard_link)
    else:
        log.info("no dask dashboard: it needs bokeh (pip install 'changedet[distributed]')")
    return Client(cluster)


def _has_dashboard() -> bool:
    """Whether dask's dashboard can run: the scheduler's own check (it needs bokeh)."""
    try:
        import distributed.dashboard.scheduler  # noqa: F401
    except ImportError:
        return False
    return True


def _block_px(args: argparse.Namespace) -> int | None:
    if args.tile_size is None:
        return args.block_px
    if args.block_px is not None:
        raise ChangedetError("--tile-size is the old name of --block-px; pass only --block-px.")
    log.warning("--tile-size is deprecated and will be removed in 0.3; use --block-px "
                "(the same setting, named like Python's block_px)")
    return args.tile_size


def _cmd_run(args: argparse.Namespace) -> int:
    from changedet import pipeline

    block_px = _block_px(args) or pipeline.DEFAULT_BLOCK_PX
    client = _client(args)
    try:
        result = pipeline.run(
            args.before,
            args.after,
            args.output,
            score_path=args.score,
            vector_path=args.vector,
            quicklook_path=args.quicklook,
            method=args.method,
            model=args.model,
            bands=args.bands,
            threshold=args.threshold,
            align=args.align,
            block_px=block_px,
            overwrite=args.overwrite,
            progress=not args.quiet,
            client=client,
            band_names=args.band_names,
            cloud_mask=args.cloud_mask,
            offset=args.offset,
            quality=args.quality,
            coregister=args.coregister,
            calibrate=args.calibrate,
            calibrate_property=args.calibrate_property,
            uncertainty_path=args.uncertainty,
            max_change=args.max_change,
        )
    finally:
        if client is not None:
            cluster = client.cluster
            client.close()
            if cluster is not None and args.workers:
                cluster.close()
    from changedet.types import size_px

    model = f" (model {result.model!r})" if result.model else ""
    log.info("%s%s: threshold %.4g, %s, wrote %d file(s)", result.method, model,
             result.threshold, size_px(*result.grid.shape), len(result.outputs))
    for path in result.outputs:
        print(path)
    return EXIT_OK


def _cmd_info(args: argparse.Namespace) -> int:
    from changedet import io

    for scene in args.scene:
        print(io.describe_scene(scene))
    return EXIT_OK


def _cmd_coregister(args: argparse.Namespace) -> int:
    import json

    from changedet import coregister, io

    pair = io.open_pair(args.before, args.after, align=args.align, band_names=args.band_names)
    shift = coregister.estimate_shift(pair, bands=args.bands, block_px=args.block_px)
    if args.json:
        print(json.dumps(shift.to_dict()))
    else:
        print(f"dx {shift.dx_px:+.3f} px, dy {shift.dy_px:+.3f} px (where BEFORE's content is "
              f"in AFTER; x right, y down), peak ratio {shift.quality:.2f}, spread "
              f"{shift.spread_px:.3f} px over {shift.num_blocks} blocks")
    return EXIT_OK


#: Clear while a command runs; set once ``main`` caught the KeyboardInterrupt (or returned), so
#: a repeated interrupt (below) stops.
_INTERRUPT_HANDLED = threading.Event()
_INTERRUPT_HANDLED.set()
#: Seconds between repeats of an interrupt that has not reached ``main`` yet.
_REPEAT_S = 0.05
#: Which ``main`` call is running: a repeat belongs to the call it was started in, so one still
#: pending when that call ends cannot interrupt the next command in the same process.
_RUN = [0]


def _raise_keyboard_interrupt(signum, frame):
    """SIGINT and SIGTERM: raise KeyboardInterrupt, so the command cleans up and exits 130.

    Python drops an exception raised while it runs a garbage-collector callback or a
    ``__del__`` (it prints "Exception ignored in ..."; JAX registers such a callback), and the
    command would then run to its end as if never interrupted. So a signal that lands there
    raises nothing yet, and until ``main`` has caught the KeyboardInterrupt it is raised again
    every ``_REPEAT_S`` seconds.
    """
    if _INTERRUPT_HANDLED.is_set():
        return
    timer = threading.Timer(_REPEAT_S, _repeat_interrupt,
                            args=(signal.Signals(signum), _RUN[0]))
    timer.daemon = True
    timer.start()
    if not _in_finalizer(frame):
        raise KeyboardInterrupt


def _in_finalizer(frame) -> bool:
    """True while ``frame`` (or a caller) is a gc callback or a ``__del__``, where an exception
    would be printed and dropped."""
    callbacks = {getattr(cb, "__code__", None) for cb in gc.callbacks}
    while frame is not None:
        if frame.f_code in callbacks or frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False


def _repeat_interrupt(signum: signal.Signals, run: int) -> None:
    if run == _RUN[0] and not _INTERRUPT_HANDLED.is_set():
        _thread.interrupt_main(signum)  # runs _raise_keyboard_interrupt in the main thread


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m changedet``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose, args.quiet)
    _RUN[0] += 1
    _INTERRUPT_HANDLED.clear()
    previous = {sig: signal.signal(sig, _raise_keyboard_interrupt)
                for sig in (signal.SIGINT, signal.SIGTERM)}
    # Library messages name options as this command line's flags (--align, not align=True).
    with command_line_words(CLI_FLAGS):
        try:
            return args.func(args) if hasattr(args, "func") else COMMANDS[args.command](args)
        except ChangedetError as err:
            if args.verbose:
                log.exception("changedet failed")
            message = " ".join(str(err).split())
            print(f"changedet: error: {message}", file=sys.stderr)
            return EXIT_USER
        except KeyboardInterrupt:
            _INTERRUPT_HANDLED.set()
            print("changedet: interrupted; no partial output was kept.", file=sys.stderr)
            return EXIT_INTERRUPTED
        except Exception as err:  # internal error: say so, point at -v
            if args.verbose:
                log.exception("internal error")
            print(
                f"changedet: internal error: {type(err).__name__}: {err} (run with -v for the "
                "traceback and report it)",
                file=sys.stderr,
            )
            return EXIT_INTERNAL
        finally:
            _INTERRUPT_HANDLED.set()
            for sig, handler in previous.items():
                signal.signal(sig, handler)


COMMANDS = {"run": _cmd_run, "info": _cmd_info, "coregister": _cmd_coregister}
