"""From two scenes to a change map: the only module that knows both the files and the detector.

``detect`` builds one lazy dask graph (reads -> overlapping blocks -> detector -> score); ``run``
streams that graph to georeferenced files. The same graph runs on dask's threads or on a
``dask.distributed`` cluster (pass ``client=`` or have one active).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import dask
import dask.array as da
import numpy as np
import xarray as xr

from changedet import bands, clouds, io
from changedet.calibrate import calibrate_on_points
from changedet.changecap import cap_in_force, capped_threshold, check_max_change
from changedet.detectors.choice import (
    Method,
    check_threshold,
    describe_detector,
    method_name,
    model_name,
    resolve_detector,
    score_calibration_for,
)
from changedet.detectors.cva import otsu_threshold_dask
from changedet.detectors.prepare import PreparedModel, with_quality
from changedet.errors import ConfigError, EmptySceneError, option
from changedet.provenance import cloud_tags, coregistration_tags, provenance, uncertainty_tags
from changedet.types import MASK_NODATA, Detector, Grid
from changedet.uncertainty import error_probability

__all__ = [
    "SENTINEL2_BANDS", "Quality", "DEFAULT_BLOCK_PX", "RunResult", "select_bands",
    "score_graph", "open_for_detection", "detect", "run",
]

log = logging.getLogger(__name__)

#: Sentinel-2 MSI band ids in canonical order (as ``io.open_scene`` orders a band folder).
SENTINEL2_BANDS: tuple[str, ...] = bands.SENTINEL2_BANDS

Quality = Literal["fast", "best"]


DEFAULT_BLOCK_PX = 1024


@dataclasses.dataclass(frozen=True)
class RunResult:
    """What ``run`` wrote and how.

    Attributes:
      outputs: Paths written (mask first, then score, vector and quicklook if asked).
      threshold: Decision threshold applied to the score.
      method: ``"siamese"`` (a learned model) or ``"cva"``: the names ``method=`` takes, the
        ``method`` tag of the outputs and ``detect``'s ``ds.attrs["method"]``.
      grid: The output grid (identical to the input ``before`` grid).
      seconds: Wall time of the whole run (opening, cloud masks, statistics, model loading,
        compiling, scoring, writing every output).
      megapixels_per_second: Scene pixels divided by the wall time *excluding* the one-off
        compile (``seconds - compile_seconds``): what a second scene of this size takes in
        the same process. Everything else is included, so fixed costs (model loading, cloud
        detection, quicklook) dominate on small scenes.
      model: The learned model's name (``"sentinel2"``, ``"rgb"``, a file's model name), or
        None for CVA.
      compile_seconds: Time spent compiling the model in this run, in this process (0 for
        CVA, for a model already compiled for these tile shapes, and on a distributed
        cluster, where the workers compile).
    """

    outputs: tuple[Path, ...]
    threshold: float
    method: str
    grid: Grid
    seconds: float
    megapixels_per_second: float
    model: str | None = None
    compile_seconds: float = 0.0


#: Band selection lives with the pair (``io.select_bands``); kept here under its old name.
select_bands = io.select_bands


def _block_chunks(size: int, block_px: int, halo_px: int) -> tuple[int, ...]:
    """Chunk sizes along one axis: ``block_px`` each, a short last chunk merged into the one
    before it when it is thinner than the halo (dask's overlap needs chunks >= depth, and
    merging keeps every chunk origin a multiple of ``block_px``)."""
    num_full, rest = divmod(size, block_px)
    chunks = [block_px] * num_full
    if rest:
        if chunks and rest < halo_px:
            chunks[-1] += rest
        else:
            chunks.append(rest)
    return tuple(chunks)


def _score_fn(detector: Detector, halo_px: int, pad_self: bool,
              fill: tuple[np.ndarray, np.ndarray]):
    """The per-block function: invalid pixels take ``fill`` (per band), then the detector
    scores the core of the halo-extended block.

    The blocks arrive in their file dtype with their validity mask, and become float32 here,
    inside the task: the overlapped neighbours dask holds while a block waits for its halo stay
    small (uint16, not float32), which keeps memory flat as scenes grow.
    """
    fill_before, fill_after = (f[:, None, None] for f in fill)

    def score(before: np.ndarray, after: np.ndarray, valid: np.ndarray) -> np.ndarray:
        if pad_self and halo_px:
            pads = ((0, 0), (halo_px, halo_px), (halo_px, halo_px))
            before = np.pad(before, pads, mode="symmetric")
            after = np.pad(after, pads, mode="symmetric")
            valid = np.pad(valid, pads[1:], mode="symmetric")
        before = np.where(valid[None], before.astype(np.float32), fill_before)
        after = np.where(valid[None], after.astype(np.float32), fill_after)
        result = detector.score_block(before, after, context_px=halo_px)
        return np.asarray(result, dtype=np.float32)

    return score


def _fill_values(detector: Detector, num_bands: int) -> tuple[np.ndarray, np.ndarray]:
    """Raw values invalid pixels take in each date before scoring: the band means a learned
    model standardises with (zero after normalisation), so nodata never leaks into the scores
    of valid neighbours; zeros for CVA (which ignores them)."""
    fill = getattr(detector, "fill_values", None)
    if fill is not None:
        before, after = fill()
        return (np.asarray(before, np.float32).reshape(num_bands),
                np.asarray(after, np.float32).reshape(num_bands))
    zeros = np.zeros(num_bands, dtype=np.float32)
    return zeros, zeros


def score_graph(
    pair: io.RasterPair, detector: Detector, *, block_px: int = DEFAULT_BLOCK_PX
) -> da.Array:
    """The lazy change-score array ``(height, width)`` float32, NaN where invalid.

    Blocks of ``block_px`` (a multiple of the detector's alignment) are extended by the
    detector's halo (mirrored at the scene edge), scored, and cropped back, so the result does
    not depend on ``block_px``.
    """
    halo = int(detector.halo_px)
    align = int(getattr(detector, "align_px", 1))  # pooling alignment of learned models
    if block_px < 1 or block_px % align:
        raise ConfigError(
            f"block size {block_px} px must be a positive multiple of {align} for this model; "
            f"try {option('block_px', max(align, block_px - block_px % align))}."
        )
    height, width = pair.grid.shape
    fill = _fill_values(detector, len(pair.band_ids))
    valid = pair.valid.data
    dates = [pair.before.data, pair.after.data]  # file dtype; float32 inside the tasks

    small = halo and (height <= halo or width <= halo)
    if not small and block_px < halo:  # dask's overlap: blocks >= the halo
        raise ConfigError(
            f"block size {block_px} px is smaller than this model's {halo} px halo; "
            f"try {option('block_px', -(-halo // align) * align)} or more."
        )
    if small:  # one block, mirrored by numpy (dask cannot mirror wider than the array)
        before, after = (d.rechunk((-1, -1, -1)) for d in dates)
        valid_in = valid.rechunk((-1, -1))
        out_chunks: tuple[tuple[int, ...], tuple[int, ...]] = ((height,), (width,))
    else:
        chunks = (
            (len(pair.band_ids),),
            _block_chunks(height, block_px, halo),
            _block_chunks(width, block_px, halo),
        )
        before, after = (d.rechunk(chunks) for d in dates)
        valid_in = valid.rechunk(chunks[1:])
        out_chunks = chunks[1:]
        if halo:
            depth = {0: 0, 1: halo, 2: halo}
            boundary = {0: "none", 1: "reflect", 2: "reflect"}
            before = da.overlap.overlap(before, depth, boundary, allow_rechunk=False)
            after = da.overlap.overlap(after, depth, boundary, allow_rechunk=False)
            valid_in = da.overlap.overlap(valid_in, {0: halo, 1: halo},
                                          {0: "reflect", 1: "reflect"}, allow_rechunk=False)
    score = da.map_blocks(
        _score_fn(detector, halo, pad_self=bool(small), fill=fill),
        before,
        after,
        valid_in,
        drop_axis=0,
        chunks=out_chunks,
        dtype=np.float32,
        token=f"changedet-score-{detector.name}",  # a prefix; dask hashes the inputs
    )
    return da.where(valid.rechunk(score.chunks), score, np.float32(np.nan))


def _threshold_for(score: da.Array, detector: Detector, threshold: float | None) -> float:
    if threshold is not None:
        return float(threshold)
    if detector.threshold is not None:
        return float(detector.threshold)
    log.info("no threshold given or stored: computing Otsu's threshold on the score map")
    value = otsu_threshold_dask(score)
    if not math.isfinite(value):
        raise EmptySceneError("the change score has no valid pixel to threshold.")
    return float(value)


def _check_not_empty(pair: io.RasterPair) -> None:
    """Raises EmptySceneError when no pixel is valid in both dates (one cheap pass)."""
    if not bool(pair.valid.data.any().compute()):
        raise EmptySceneError(
            f"{pair.before_path} and {pair.after_path} have no pixel that is valid in both "
            "dates (all nodata, NaN, or outside the other date's footprint). Check the inputs' "
            "nodata values and extents."
        )


def open_for_detection(
    before: str | Path,
    after: str | Path,
    *,
    method: Method = "auto",
    model: Any = None,
    bands: Sequence[str] | None = None,
    align: bool = False,
    band_names: Sequence[str] | str | None = None,
    cloud_mask: str | Sequence[str] | None = "auto",
    offset: float = 0.0,
    quality: Quality = "fast",
    coregister: bool = False,
) -> tuple[io.RasterPair, Detector, clouds.CloudMasks]:
    """Opens the pair lazily, masks clouds, keeps the requested bands and returns the prepared
    detector and what was masked. The pair's ``valid`` excludes each date's clouds and shadows
    (see :mod:`changedet.clouds`)."""
    pair = io.open_pair(before, after, align=align, band_names=band_names)
    masks = clouds.cloud_masks(pair, cloud_mask, offset=offset)
    if masks.before is not None:
        coords = {"y": pair.valid.y, "x": pair.valid.x}
        clear = xr.DataArray(~(masks.before | masks.after), dims=("y", "x"), coords=coords)
        pair = dataclasses.replace(pair, valid=(pair.valid & clear).rename("valid"))
        log.info("clouds and shadows (%s): %.1f %% of before, %.1f %% of after masked as nodata",
                 masks.source, 100 * masks.before_fraction, 100 * masks.after_fraction)
    if coregister:
        from changedet.coregister import estimate_shift

        shift = estimate_shift(pair)
        pair = io.shift_after(pair, shift.dx_px, shift.dy_px)
    pair = select_bands(pair, bands)
    detector = resolve_detector(pair, method=method, model=model).prepare(pair)
    return pair, with_quality(detector, quality), masks


def detect(
    before: str | Path,
    after: str | Path,
    *,
    method: Method = "auto",
    model: Any = None,
    bands: Sequence[str] | None = None,
    threshold: float | None = None,
    align: bool = False,
    block_px: int = DEFAULT_BLOCK_PX,
    band_names: Sequence[str] | str | None = None,
    cloud_mask: str | Sequence[str] | None = "auto",
    offset: float = 0.0,
    quality: Quality = "fast",
    coregister: bool = False,
    uncertainty: bool = False,
    max_change: float | None = None,
) -> xr.Dataset:
    """Detects change between two co-registered scenes, lazily.

    Args:
      before: Earlier scene: a raster file or a folder of single-band rasters.
      after: Later scene, on the same grid (or pass ``align=True``).
      method: ``"auto"`` (learned model, chosen from the bands), ``"siamese"`` or ``"cva"``.
      model: A ``ChangeModel``, a packaged model name or a model file path.
      bands: Band ids (or 1-based indices) to use, in the order the model expects.
      threshold: Decision threshold on the score; default: the model's calibrated one, or
        Otsu's for CVA (which computes the score once to find it).
      align: Resample ``after`` onto the grid of ``before`` if the grids differ.
      block_px: Dask block edge in pixels; does not change the result.
      band_names: The files' bands in order (ids or common names, e.g.
        ``"blue,green,red,nir,swir16,swir22"`` for Landsat TM bands 1-5 and 7), for files
        without band descriptions; see :mod:`changedet.bands`.
      cloud_mask: ``"auto"`` (s2cloudless on Sentinel-2 L1C input when the ``clouds`` extra is
        installed; otherwise nothing, logged), ``"none"``, or two mask rasters (before, after:
        SCL, QA_PIXEL or 0/1). Masked pixels are nodata. See :mod:`changedet.clouds`.
      offset: Digital-number offset of the input (1000 for Sentinel-2 processing baseline
        04.00+, acquisitions since 25 January 2022), removed before cloud detection; the
        learned models standardise each date and do not need it.
      quality: ``"fast"`` (default): one pass of the model; ``"best"``: the mean score over
        the 8 rotations and mirror images of every tile (test-time augmentation), 8x the
        model time, a little more accurate (see ``docs/models.md``). CVA ignores it.
      coregister: Measure the misregistration of ``after`` (:func:`changedet.estimate_shift`)
        and resample it by that sub-pixel shift (cubic spline) before detection, so that a
        shifted date does not turn every edge into change. Pixels whose source falls outside
        ``after`` become nodata. Raises ``CoregistrationError`` when the shift cannot be
        measured (flat, tiny or nodata-only scenes).
      uncertainty: Also return ``uncertainty``: per pixel, the probability that the mask is
        wrong there, from the model's out-of-fold calibration of its score
        (:mod:`changedet.uncertainty`; no extra model time). Cross-validated models only.
      max_change: Mark at most this fraction of the valid pixels, raising the scene's
        threshold where more score above it (:mod:`changedet.changecap`); 1: no cap. Default:
        the model's stored cap, with its own threshold only. ``detect`` scores the scene up
        front to find its threshold, twice where the cap binds (``run`` reads back its file).

    Returns:
      Dataset on the grid of ``before`` with ``score`` (float32, NaN = invalid) and ``mask``
      (uint8: 0 no change, 1 change, 255 nodata), both dask-backed, with the CRS and
      transform written (``ds.rio.crs``) and attributes ``threshold``, ``method``
      (``"siamese"`` or ``"cva"``) and, for a learned model, ``model`` (its name); with
      ``uncertainty``, also ``uncertainty`` (float32 in [0, 1], NaN = invalid).

    Example:
      >>> import changedet
      >>> paris = "data/oscd_paris"  # from the repository root; runs the sentinel2 model:
      >>> ds = changedet.detect(f"{paris}/imgs_1", f"{paris}/imgs_2")  # doctest: +SKIP
      >>> int((ds.mask == 1).sum())  # changed pixels; computes the graph  # doctest: +SKIP
    """
    max_change = check_max_change(max_change)  # before any work
    pair, detector, _ = open_for_detection(
        before, after, method=method, model=model, bands=bands, align=align,
        band_names=band_names, cloud_mask=cloud_mask, offset=offset, quality=quality,
        coregister=coregister,
    )
    check_threshold(threshold, detector)
    cap = cap_in_force(max_change, getattr(detector, "max_change_fraction", None),
                       own_threshold=threshold is None)
    calibration = score_calibration_for(detector) if uncertainty else None
    score = score_graph(pair, detector, block_px=block_px)
    thr = _threshold_for(score, detector, threshold)
    cap_attrs = {}
    if cap is not None:
        with dask.config.set(**_scheduler_settings(detector, None)):
            capped = capped_threshold(score, thr, cap)
        thr = capped.threshold
        cap_attrs = {"max_change_fraction": cap, "model_threshold": capped.model_threshold}
    extra = {}
    if calibration is not None:
        extra["uncertainty"] = (("y", "x"), error_probability(score, thr, calibration))
    mask = da.where(da.isnan(score), np.uint8(MASK_NODATA), (score > thr).astype(np.uint8))
    coords = {"y": pair.before.coords["y"], "x": pair.before.coords["x"]}
    ds = xr.Dataset(
        {"score": (("y", "x"), score), "mask": (("y", "x"), mask)} | extra,
        coords=coords,
        attrs={"threshold": thr, "method": method_name(detector)}
        | ({"model": model_name(detector)} if model_name(detector) else {}) | cap_attrs,
    )
    ds["mask"].attrs["_FillValue"] = MASK_NODATA
    if pair.grid.crs is not None:
        ds = ds.rio.write_crs(pair.grid.crs)
    return ds.rio.write_transform(pair.grid.transform)


def _check_extras(*, vector: bool, quicklook: bool, vector_option: str = "vector_path") -> None:
    """Fails before any computation when an asked-for output needs a missing optional package
    (``vector_option``: the option that needs the vector extra)."""
    import importlib.util

    needs = []
    if vector:
        needs += [("shapely", "vector"), ("pyogrio", "vector")]
    if quicklook:
        needs += [("matplotlib", "viz")]
    for module, extra in needs:
        if importlib.util.find_spec(module) is None:
            what = option(vector_option if extra == "vector" else "quicklook_path")
            raise ConfigError(
                f"{what} needs {module}, which is not installed: pip install "
                f"'changedet[{extra}]' (or drop {what}).")


def _scheduler_settings(detector: Detector, client: Any) -> dict[str, Any]:
    """Dask settings for a run: the given client, else dask's threads.

    A learned model on the CPU gets one dask thread unless the user configured
    ``num_workers``: XLA already spreads each block over every core, so a second concurrent
    block adds memory, not speed (measured on 4096² x 13 bands: peak RSS 2.60 -> 1.96 GB, wall
    time 88 -> 68 s on 2 cores). On accelerators, threads keep reading while the device works.
    """
    if client is not None:
        return {"scheduler": client}
    if isinstance(detector, PreparedModel) and dask.config.get("num_workers", None) is None:
        import jax

        if jax.default_backend() == "cpu":
            return {"num_workers": 1}
    return {}


def run(
    before: str | Path,
    after: str | Path,
    out: str | Path,
    *,
    score_path: str | Path | None = None,
    vector_path: str | Path | None = None,
    quicklook_path: str | Path | None = None,
    method: Method = "auto",
    model: Any = None,
    bands: Sequence[str] | None = None,
    threshold: float | None = None,
    align: bool = False,
    block_px: int = DEFAULT_BLOCK_PX,
    overwrite: bool = False,
    progress: bool = True,
    client: Any = None,
    band_names: Sequence[str] | str | None = None,
    cloud_mask: str | Sequence[str] | None = "auto",
    offset: float = 0.0,
    quality: Quality = "fast",
    coregister: bool = False,
    calibrate: str | Path | None = None,
    calibrate_property: str = "change",
    uncertainty_path: str | Path | None = None,
    max_change: float | None = None,
) -> RunResult:
    """Detects change and writes the georeferenced mask (and optional score and vectors).

    Every output lies exactly on the grid of ``before`` and is written to a temporary name,
    then renamed: a failed or interrupted run leaves no output file.

    Args:
      before, after, method, model, bands, threshold, align, block_px, band_names, cloud_mask,
        offset, quality, coregister: As for :func:`detect`.
      out: Mask path (uint8, 0/1, nodata 255): ``.tif``/``.tiff`` a GeoTIFF, ``.png`` an
        8-bit palette PNG with ``.wld`` and ``.png.aux.xml`` sidecars holding its grid (see
        :func:`changedet.io.raster_format`); other extensions are refused before any compute.
      score_path: Optional float32 score GeoTIFF path (``.tif``/``.tiff``; nodata NaN).
      vector_path: Optional ``.gpkg``/``.geojson`` of changed regions.
      quicklook_path: Optional PNG overlay (before, after, score, mask) to glance at.
      overwrite: Replace existing outputs.
      progress: Show a progress bar.
      client: A ``dask.distributed.Client`` to run on (default: the active one, else threads).
      calibrate: A vector file (GeoPackage, GeoJSON, ...; any CRS) of points or small polygons
        labelled changed (1) / unchanged (0) in ``calibrate_property``: the scene's threshold
        is re-chosen on them (balanced accuracy, nearest the model's own among ties; see
        :mod:`changedet.calibrate`) and recorded in the tags. Not with ``threshold``.
      calibrate_property: The label property of ``calibrate``'s features.
      uncertainty_path: Optional float32 GeoTIFF (nodata NaN) of the per-pixel uncertainty:
        the probability that the mask is wrong there, from the model's out-of-fold
        calibration of its score (:mod:`changedet.uncertainty`, ``docs/uncertainty.md``);
        written in the same pass, at no extra model time. Cross-validated models only.
      max_change: As for :func:`detect` (the stored cap not with ``calibrate`` either): the
        score goes to a hidden file first, the outputs are written from it.

    Returns:
      A :class:`RunResult`.

    Raises:
      ChangedetError: On any bad input or output path (one-line message).
    """
    start = time.perf_counter()
    inputs = (Path(before), Path(after))
    extras = [Path(p) for p in (score_path, vector_path, quicklook_path, uncertainty_path)
              if p is not None]
    outputs = [Path(out), *extras]
    for path in outputs:  # fail before any computation
        if vector_path is not None and path == Path(vector_path):
            io.check_vector_path(path, inputs=inputs, overwrite=overwrite)
        elif path == outputs[0]:
            io.check_raster_path(path, inputs=inputs, overwrite=overwrite)
        elif score_path is not None and path == Path(score_path):
            io.check_raster_path(path, inputs=inputs, overwrite=overwrite, what="score")
        elif uncertainty_path is not None and path == Path(uncertainty_path):
            io.check_raster_path(path, inputs=inputs, overwrite=overwrite, what="uncertainty")
        else:
            io.check_output_path(path, inputs=inputs, overwrite=overwrite)
    if len({p.resolve() for p in outputs}) != len(outputs):
        raise ConfigError("the mask, score, uncertainty, vector and quicklook outputs must be "
                          "different files.")
    _check_extras(vector=vector_path is not None, quicklook=quicklook_path is not None)
    max_change = check_max_change(max_change)
    pair, detector, masks = open_for_detection(
        before, after, method=method, model=model, bands=bands, align=align,
        band_names=band_names, cloud_mask=cloud_mask, offset=offset, quality=quality,
        coregister=coregister,
    )
    log.info("%s: %s, %d bands, grid %s", describe_detector(detector), pair.grid.size_px,
             len(pair.band_ids), pair.grid.crs)
    check_threshold(threshold, detector)
    if calibrate is not None and threshold is not None:
        raise ConfigError(f"pass {option('threshold')} or {option('calibrate')}, not both: "
                          "calibration chooses the threshold.")
    if calibrate is not None:
        _check_extras(vector=True, quicklook=False, vector_option="calibrate")
    cap = cap_in_force(max_change, getattr(detector, "max_change_fraction", None),
                       own_threshold=threshold is None and calibrate is None)
    score_table = score_calibration_for(detector) if uncertainty_path is not None else None
    coreg_tags = coregistration_tags(pair)
    prepared_at = time.perf_counter()
    compiled_before = _compile_seconds(detector)
    with (dask.config.set(**_scheduler_settings(detector, client)),
          contextlib.ExitStack() as local):
        _check_not_empty(pair)
        score = score_graph(pair, detector, block_px=block_px)
        thr = _threshold_for(score, detector, threshold)
        calibration_tags = {}
        if calibrate is not None:
            calibration = calibrate_on_points(score, pair, calibrate, thr,
                                              prop=calibrate_property)
            thr, calibration_tags = calibration.threshold, calibration.tags()
        # With a cap, the model pass goes to hidden files and the outputs are written from them.
        stage = tuple(io.hidden_path(outputs[0], f"capped-{k}") for k in ("score", "mask")
                      if cap is not None)
        # The polygons' mean_score needs the score: without --score it goes to a hidden
        # scratch file beside the mask (written in the same pass), removed after polygonising.
        scratch = (io.hidden_path(outputs[0], "partial-score") if vector_path and not score_path
                   else None)
        try:
            if cap is not None:
                io.write_outputs(score, pair.grid, mask_path=stage[1], score_path=stage[0],
                                 threshold=thr, progress=progress, overwrite=True)
                # from here the graph reads that file: local threads (a cluster may not see it)
                local.enter_context(dask.config.set(scheduler="threads"))
                score = io.read_score(stage[0], score.chunks)
                capped = capped_threshold(score, thr, cap)
                thr, calibration_tags = capped.threshold, calibration_tags | capped.tags()
            written = io.write_outputs(
                score, pair.grid, mask_path=outputs[0], score_path=score_path or scratch,
                threshold=thr,
                tags=(provenance(detector, thr, pair) | cloud_tags(masks) | coreg_tags
                      | calibration_tags | uncertainty_tags(score_table)),
                overwrite=overwrite,
                progress=progress,
                uncertainty=(None if score_table is None
                             else error_probability(score, thr, score_table)),
                uncertainty_path=uncertainty_path,
            )
        finally:  # the capped run's first-pass files
            for path in stage:
                io.remove_output(path)
    written = [p for p in written if p != scratch]
    written_at = time.perf_counter()
    compile_s = _compile_seconds(detector) - compiled_before
    try:  # products derived from the written rasters; on failure, remove this run's outputs
        if vector_path is not None:
            written.append(
                io.write_vector_from_rasters(
                    vector_path, mask_path=outputs[0], score_path=score_path or scratch,
                    overwrite=overwrite,
                )
            )
        if quicklook_path is not None:
            from changedet import viz

            written.append(
                viz.write_quicklook(
                    quicklook_path, before, after, outputs[0], align=align, bands=bands,
                    overwrite=overwrite, score_path=score_path, band_names=band_names,
                )
            )
    except BaseException:
        for path in written:
            io.remove_output(path)
        raise
    finally:
        if scratch is not None:
            scratch.unlink(missing_ok=True)
    end = time.perf_counter()
    seconds = end - start
    mpix = pair.grid.height * pair.grid.width / 1e6
    rate = mpix / max(seconds - compile_s, 1e-9)
    scoring_s = max(written_at - prepared_at - compile_s, 1e-9)
    log.info(
        "%s (%.3g Mpix) in %.1f s: %.1f s opening and preparing (headers, cloud masks, band "
        "statistics, model file; importing JAX in a first run), %.1f s compiling the model "
        "(once per process and tile shape), %.1f s scoring and writing the rasters (%.3g "
        "Mpix/s), %.1f s vector and quicklook; %.3g Mpix/s end to end excluding the compile.",
        pair.grid.size_px, mpix, seconds, prepared_at - start, compile_s, scoring_s,
        mpix / scoring_s, end - written_at, rate,
    )
    return RunResult(
        outputs=tuple(written),
        threshold=thr,
        method=method_name(detector),
        grid=pair.grid,
        seconds=seconds,
        megapixels_per_second=rate,
        model=model_name(detector),
        compile_seconds=compile_s,
    )


def _compile_seconds(detector: Detector) -> float:
    """The detector's compile time so far in this process (0 for one that does not compile)."""
    return float(getattr(detector, "compile_seconds", 0.0))
