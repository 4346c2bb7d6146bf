"""Write change masks and score maps, streamed block by block, atomically.

The format follows the extension (:func:`raster_format`): ``.tif``/``.tiff`` a tiled DEFLATE
GeoTIFF; ``.png`` (masks only) an 8-bit palette PNG with its grid in sidecar files (a ``.wld``
world file for the transform, ``.png.aux.xml`` for the CRS and tags), as GDAL writes them and
QGIS reads them. Outputs go to a hidden temporary name in the destination folder and are renamed
at the end; on any error or interrupt the temporaries are removed and nothing is left behind.
Must not import jax or flax.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from itertools import accumulate
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import rasterio
import rasterio.errors
import rasterio.shutil
from rasterio.crs import CRS
from rasterio.windows import Window

from changedet.errors import ConfigError, GridMismatchError, OutputError, option
from changedet.io.atomic import temporary_path
from changedet.types import MASK_NODATA, Grid

logger = logging.getLogger(__name__)

__all__ = [
    "MASK_NODATA",
    "RASTER_FORMATS",
    "check_output_path",
    "check_raster_path",
    "mask_from_score",
    "raster_format",
    "remove_output",
    "sidecar_paths",
    "temporary_path",
    "write_outputs",
]

_TILE_PX = 256
#: GDAL driver of each raster output extension (lower case).
RASTER_FORMATS = {".tif": "GTiff", ".tiff": "GTiff", ".png": "PNG"}
#: Colours of a PNG mask: no change black, change white, nodata transparent.
PNG_MASK_COLOURS = {0: (0, 0, 0, 255), 1: (255, 255, 255, 255), MASK_NODATA: (0, 0, 0, 0)}


def _resolve(path: str | Path) -> Path:
    return Path(path).expanduser().resolve()


def check_output_path(
    path: str | Path, *, inputs: Iterable[str | Path] = (), overwrite: bool = False
) -> Path:
    """Validates an output path before any computation starts.

    Args:
      path: Output file to be written.
      inputs: Input scenes (files or band folders) that must not be overwritten.
      overwrite: Allow replacing an existing file.

    Returns:
      The absolute output path.

    Raises:
      OutputError: The file exists (and not ``overwrite``), is a folder, its folder is missing or
        not writable, or it is one of the inputs or inside an input folder.
    """
    out = _resolve(path)
    for given in inputs:
        source = _resolve(given)
        if out == source or (source.is_dir() and source in out.parents):
            raise OutputError(
                f"{out}: output would overwrite the input {source}; choose another output path."
            )
    if out.is_dir():
        raise OutputError(f"{out}: is a folder; give a file name such as {out / 'change.tif'}.")
    if out.exists() and not overwrite:
        raise OutputError(f"{out} exists; pass {option('overwrite', True)} to replace it.")
    if out.parent.exists() and not out.parent.is_dir():
        raise OutputError(
            f"{out}: {out.parent} is a file, not a folder; choose an output inside a folder."
        )
    if not out.parent.is_dir():
        raise OutputError(f"{out}: folder {out.parent} does not exist; create it first.")
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise OutputError(f"{out}: folder {out.parent} is not writable; choose another folder.")
    return out


def raster_format(path: str | Path, *, what: str = "mask") -> str:
    """The GDAL driver for a raster output, from its extension.

    Args:
      path: Output path.
      what: ``"mask"`` (GeoTIFF or PNG), or ``"score"`` / ``"uncertainty"`` (GeoTIFF only: PNG
        holds no float32).

    Returns:
      ``"GTiff"`` or ``"PNG"``.

    Raises:
      OutputError: Any other extension, or a PNG for the score.

    Example:
      >>> raster_format("change.png"), raster_format("score.TIF", what="score")
      ('PNG', 'GTiff')
    """
    suffix = Path(path).suffix.lower()
    driver = RASTER_FORMATS.get(suffix)
    if driver is None or (driver == "PNG" and what != "mask"):
        allowed = ".tif or .tiff (GeoTIFF) or .png (8-bit PNG)" if what == "mask" else (
            f".tif or .tiff (GeoTIFF; the float32 {what} does not fit a PNG)")
        raise OutputError(
            f"{path}: cannot write the {what} as {suffix or 'a file without extension'!r}; "
            f"name it with {allowed}.")
    return driver


def sidecar_paths(path: str | Path) -> tuple[Path, ...]:
    """Files GDAL writes beside a raster output: for a PNG its ``.png.aux.xml`` (CRS, tags)
    and ``.wld`` world file (transform); none for a GeoTIFF (it holds its grid)."""
    path = Path(path)
    if RASTER_FORMATS.get(path.suffix.lower()) != "PNG":
        return ()
    return (path.with_name(path.name + ".aux.xml"), path.with_suffix(".wld"))


def check_raster_path(
    path: str | Path,
    *,
    inputs: Iterable[str | Path] = (),
    overwrite: bool = False,
    what: str = "mask",
) -> Path:
    """:func:`check_output_path` for a raster output, plus its format (:func:`raster_format`)
    and its sidecar files (which must not exist either, unless ``overwrite``).

    Raises:
      OutputError: As :func:`check_output_path` and :func:`raster_format`.
    """
    raster_format(path, what=what)
    out = check_output_path(path, inputs=inputs, overwrite=overwrite)
    for sidecar in sidecar_paths(out):
        check_output_path(sidecar, inputs=inputs, overwrite=overwrite)
    return out


def remove_output(path: str | Path) -> None:
    """Deletes an output and its sidecar files (missing ones are fine)."""
    for p in (Path(path), *sidecar_paths(path)):
        p.unlink(missing_ok=True)


def hidden_path(beside: str | Path, kind: str) -> Path:
    """A hidden scratch GeoTIFF beside an output, unique to this process
    (``.<stem>.<kind>-<pid>.tif``): a run's intermediate files, removed when it ends."""
    beside = Path(beside).expanduser().resolve()
    return beside.with_name(f".{beside.stem}.{kind}-{os.getpid()}.tif")


def read_score(path: str | Path, chunks: tuple[tuple[int, ...], ...]) -> da.Array:
    """A score GeoTIFF written by :func:`write_outputs`, lazily, as float32 in ``chunks``."""
    import rioxarray

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        arr = rioxarray.open_rasterio(path, chunks={"band": 1, "y": 1024, "x": 1024},
                                      lock=False, cache=False)
    assert not isinstance(arr, list)  # one single-band GeoTIFF
    return arr.data[0].astype(np.float32).rechunk(chunks)


def mask_from_score(score: np.ndarray, threshold: float) -> np.ndarray:
    """Binary change mask from a score block.

    Args:
      score: ``(h, w)`` float score, NaN where invalid.
      threshold: Pixels with ``score > threshold`` are change.

    Returns:
      ``(h, w)`` uint8: 0 no change, 1 change, :data:`MASK_NODATA` where ``score`` is NaN.

    Example:
      >>> mask_from_score(np.array([[0.1, 0.9, np.nan]]), 0.5).tolist()
      [[0, 1, 255]]
    """
    finite = np.isfinite(score)
    with np.errstate(invalid="ignore"):
        mask = (score > threshold).astype(np.uint8)
    mask[~finite] = MASK_NODATA
    return mask


def _profile(grid: Grid, dtype: str, nodata: float) -> dict:
    profile: dict = {
        "driver": "GTiff",
        "height": grid.height,
        "width": grid.width,
        "count": 1,
        "dtype": dtype,
        "nodata": nodata,
        "transform": grid.transform,
        "tiled": True,
        "blockxsize": _TILE_PX,
        "blockysize": _TILE_PX,
        "compress": "DEFLATE",
        "predictor": 2 if dtype == "uint8" else 3,
        "num_threads": "ALL_CPUS",
        "bigtiff": "IF_SAFER",
    }
    if grid.crs is not None:
        profile["crs"] = CRS.from_user_input(grid.crs)
    return profile


def _is_georeferenced(grid: Grid) -> bool:
    return grid.crs is not None or grid.transform != rasterio.Affine.identity()


def _png_from_geotiff(source: Path, dest: Path, grid: Grid) -> None:
    """Copies a finished uint8 mask GeoTIFF (with its colour table) to an 8-bit palette PNG;
    a georeferenced grid goes to a ``.wld`` world file and the ``.png.aux.xml`` (CRS, tags)."""
    options = {"WORLDFILE": "YES"} if _is_georeferenced(grid) else {}
    with warnings.catch_warnings():
        # an ungeoreferenced grid gets no sidecar grid; its input already warned of that
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        rasterio.shutil.copy(source, dest, driver="PNG", **options)


def _replace_sidecars(temp: Path, final: Path) -> None:
    """Moves the sidecars GDAL wrote beside ``temp`` to ``final``'s names, and removes stale
    ones of a replaced output that this write does not have (an old world file would place
    the new image)."""
    for temp_side, final_side in zip(sidecar_paths(temp), sidecar_paths(final), strict=True):
        if temp_side.exists():
            os.replace(temp_side, final_side)
        else:
            final_side.unlink(missing_ok=True)


def _num_workers() -> int:
    """Worker threads of the active scheduler (a distributed Client's, else local cores)."""
    try:
        from distributed import get_client

        client = get_client()
    except (ImportError, ValueError):
        return int(dask.config.get("num_workers", None) or os.cpu_count() or 1)
    return max(sum(client.nthreads().values()), 1)


def _block_windows(chunks: tuple[tuple[int, ...], tuple[int, ...]]
                   ) -> Iterator[tuple[tuple[int, int], Window]]:
    row_starts = [0, *accumulate(chunks[0])]
    col_starts = [0, *accumulate(chunks[1])]
    for i, height in enumerate(chunks[0]):
        for j, width in enumerate(chunks[1]):
            yield (i, j), Window(col_starts[j], row_starts[i], width, height)


class _TileRowStrips:
    """Reassembles computed score blocks into full-width strips of whole GeoTIFF tile rows.

    GDAL lays out a tiled GeoTIFF differently when a tile is filled by several partial writes
    than by one write covering it (the pixels are the same, the bytes are not). Writing every
    tile row in one call, top to bottom, makes the output file byte-identical whatever the dask
    block size. Memory: the blocks of one compute batch plus under one tile row of full width.
    """

    def __init__(self, chunks: tuple[tuple[int, ...], tuple[int, ...]], width: int) -> None:
        self._row_heights = chunks[0]
        self._num_cols = len(chunks[1])
        self._height = sum(chunks[0])
        self._width = width
        self._done: dict[tuple[int, int], np.ndarray] = {}
        self._next_block_row = 0
        self._rows: list[np.ndarray] = []  # assembled block rows not yet written
        self._row0 = 0  # global row of the first row in self._rows

    def add(self, key: tuple[int, int], block: np.ndarray) -> None:
        """Stores the computed block ``key = (block_row, block_col)``."""
        self._done[key] = block

    def ready(self) -> Iterator[tuple[int, np.ndarray]]:
        """Yields ``(first_row, strip)`` for each run of complete tile rows now available."""
        cols = range(self._num_cols)
        while self._next_block_row < len(self._row_heights) and all(
            (self._next_block_row, j) in self._done for j in cols
        ):
            parts = [self._done.pop((self._next_block_row, j)) for j in cols]
            self._rows.append(np.concatenate(parts, axis=1))
            self._next_block_row += 1
        available = self._row0 + sum(r.shape[0] for r in self._rows)
        end = available if available == self._height else available - available % _TILE_PX
        if end <= self._row0:
            return
        rows = np.concatenate(self._rows, axis=0) if len(self._rows) > 1 else self._rows[0]
        strip, rest = rows[: end - self._row0], rows[end - self._row0 :]
        self._rows = [rest] if rest.shape[0] else []
        row0, self._row0 = self._row0, end
        yield row0, strip


def _write_strip(dataset, window: Window, strip: np.ndarray) -> None:
    dataset.write(strip, 1, window=window)


def _batched(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def write_outputs(
    score: da.Array,
    grid: Grid,
    *,
    mask_path: str | Path,
    threshold: float,
    score_path: str | Path | None = None,
    tags: Mapping[str, str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    block_batch: int | None = None,
    uncertainty: da.Array | None = None,
    uncertainty_path: str | Path | None = None,
) -> list[Path]:
    """Streams a lazy score map to a change-mask GeoTIFF (and optionally the score), atomically.

    Each score block is computed once (by the active dask scheduler, a few blocks per worker at
    a time) and written into both outputs as whole tile rows, top to bottom, so the files are
    byte-identical for any block size; memory holds a batch of blocks and less than one
    256-pixel tile row of the full width, never the scene.

    Args:
      score: ``(y, x)`` float32 dask array of change scores on ``grid``, NaN where invalid.
      grid: Pixel grid of the outputs (CRS, transform, size); no CRS is written when None.
      mask_path: uint8 mask: 0 no change, 1 change (``score > threshold``), 255 nodata; a
        GeoTIFF, or a palette PNG with its grid in sidecars (see :func:`raster_format`).
      threshold: Score threshold (same units as ``score``).
      score_path: Optional float32 score GeoTIFF, nodata NaN.
      tags: GDAL metadata tags written to both files (``threshold`` is always added).
      overwrite: Replace existing outputs.
      progress: Show a tqdm progress bar over blocks.
      block_batch: Blocks computed per ``dask.compute`` call (default: 2 per worker thread).
      uncertainty: Optional ``(y, x)`` float32 dask array on ``grid`` (NaN nodata), written
        to ``uncertainty_path`` in the same pass: its blocks are computed in the same
        ``dask.compute`` calls as the score's, so a graph they share runs once.
      uncertainty_path: The uncertainty GeoTIFF (float32, nodata NaN).

    Returns:
      The written paths, mask first (then score, then uncertainty).

    Raises:
      OutputError: An output exists (and not ``overwrite``) or cannot be written.
      ValueError: ``score`` is not 2-D or does not match ``grid``.
    """
    if isinstance(score, np.ndarray):
        score = da.from_array(score, chunks=1024)
    if not isinstance(score, da.Array):
        score = getattr(score, "data", score)  # an xarray DataArray
    if score.ndim != 2 or tuple(score.shape) != grid.shape:
        raise GridMismatchError(f"score shape {score.shape} does not match the grid {grid.shape}")
    mask_out = check_raster_path(mask_path, overwrite=overwrite)
    outputs = [mask_out]
    score_out = None
    if score_path is not None:
        score_out = check_raster_path(score_path, overwrite=overwrite, what="score")
        if score_out == mask_out:
            raise OutputError(f"{score_out}: mask and score paths are the same; give two names.")
        outputs.append(score_out)
    if (uncertainty is None) != (uncertainty_path is None):
        raise ConfigError("pass both uncertainty and uncertainty_path, or neither")
    if uncertainty is not None and uncertainty_path is not None:
        if tuple(uncertainty.shape) != grid.shape or uncertainty.chunks != score.chunks:
            raise GridMismatchError(f"uncertainty {uncertainty.shape} must match the score's "
                                    f"shape {score.shape} and chunks")
        unc_out = check_raster_path(uncertainty_path, overwrite=overwrite, what="uncertainty")
        if unc_out in outputs:
            raise OutputError(f"{unc_out}: the uncertainty needs its own file name.")
        outputs.append(unc_out)
    score = score.astype(np.float32)
    all_tags = {**(tags or {}), "threshold": repr(float(threshold))}
    windows = list(_block_windows(score.chunks))
    batch = block_batch or 2 * _num_workers()
    blocks = score.to_delayed()
    temps = [temporary_path(p) for p in outputs]
    png_out = mask_out if raster_format(mask_out) == "PNG" else None
    if png_out is not None:  # streamed to a GeoTIFF first: GDAL writes PNGs in one go
        png_temp, temps[0] = temps[0], temporary_path(mask_out).with_suffix(".tif")
    scratch = [*temps, *(() if png_out is None else (png_temp, *sidecar_paths(png_temp)))]

    from tqdm.auto import tqdm

    try:
        with ExitStack() as stack:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
                mask_ds = stack.enter_context(
                    rasterio.open(temps[0], "w", **_profile(grid, "uint8", MASK_NODATA))
                )
                score_ds = unc_ds = None
                if score_out is not None:
                    score_ds = stack.enter_context(
                        rasterio.open(temps[1], "w", **_profile(grid, "float32", np.nan))
                    )
                if uncertainty is not None:
                    unc_ds = stack.enter_context(
                        rasterio.open(temps[-1], "w", **_profile(grid, "float32", np.nan))
                    )
            bar = stack.enter_context(
                tqdm(total=len(windows), desc="writing", unit="block", disable=not progress)
            )
            def write_mask_and_score(window: Window, strip: np.ndarray) -> None:
                mask_ds.write(mask_from_score(strip, threshold), 1, window=window)
                if score_ds is not None:
                    score_ds.write(strip, 1, window=window)

            # One stream per computed map: its blocks, its strip assembler, its writer. All
            # streams' blocks of a group go to one dask.compute, so shared graph parts run once.
            streams = [(blocks, _TileRowStrips(score.chunks, grid.width), write_mask_and_score)]
            if uncertainty is not None and unc_ds is not None:
                streams.append((uncertainty.to_delayed(), _TileRowStrips(score.chunks, grid.width),
                                functools.partial(_write_strip, unc_ds)))
            for group in _batched(windows, batch):
                values = iter(dask.compute(*[delayed[i, j] for delayed, _, _ in streams
                                             for (i, j), _ in group]))
                for _, strips, write in streams:
                    for key, _ in group:
                        strips.add(key, np.asarray(next(values), dtype=np.float32))
                    for row0, strip in strips.ready():
                        write(Window(0, row0, grid.width, strip.shape[0]), strip)
                bar.update(len(group))
            for ds in (mask_ds, score_ds, unc_ds):
                if ds is not None:
                    ds.update_tags(**all_tags)
            if png_out is not None:
                mask_ds.write_colormap(1, PNG_MASK_COLOURS)
        if png_out is not None:
            _png_from_geotiff(temps[0], png_temp, grid)
            temps[0].unlink()
            _replace_sidecars(png_temp, png_out)
            temps[0] = png_temp
        for temp, final in zip(temps, outputs, strict=True):
            os.replace(temp, final)
    except BaseException:
        for temp in scratch:
            temp.unlink(missing_ok=True)
        raise
    sidecars = [p.name for p in sidecar_paths(mask_out) if p.exists()]
    logger.info("wrote %s%s", ", ".join(str(p) for p in outputs),
                f" (the PNG's grid is in {' and '.join(sidecars)}: keep them beside it)"
                if sidecars else "")
    return outputs
