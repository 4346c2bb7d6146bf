"""Reliability: every bad input gives one clear line and exit 2, nothing is left behind.

The bad-input matrix runs ``changedet.cli.main([...])`` in-process and checks the one-line error
(what is wrong, what to do), the exit status, and that neither the output nor a ``*partial*``
temporary exists afterwards. Edge cases that must *work* (NaN/inf, 1 x 1 and sub-tile scenes,
mixed dtypes) check their outputs' grid and values. Interruption (SIGINT/SIGTERM) runs a real
``python -m changedet`` subprocess on a scene big enough to be caught mid-write. Safety: model
files never execute code on load, and inputs are only ever opened read-only.
"""

from __future__ import annotations

import os
import pickle
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import rasterio
from affine import Affine

from changedet import io
from changedet.cli import main
from changedet.config import ModelConfig
from changedet.detectors import modelfile
from changedet.errors import ModelFileError
from changedet.testing import write_synthetic_pair, write_variant

UTM = "EPSG:32633"
TRANSFORM = Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 5_000_000.0)
#: A tiny model: 2 levels, 4/8 channels; compiles in about a second on the CPU.
TINY = ModelConfig(num_bands=3, features=(4, 8), embed_dim=4, convs_per_level=1, head_convs=1)


# --------------------------------------------------------------------------- helpers


def _write(path: Path, data: np.ndarray, *, nodata=None, crs=UTM, transform=TRANSFORM,
           descriptions=None, **profile) -> Path:
    """Writes a ``(band, h, w)`` array as a GeoTIFF; returns the path."""
    with rasterio.open(path, "w", driver="GTiff", height=data.shape[1], width=data.shape[2],
                       count=data.shape[0], dtype=data.dtype.name, crs=crs, transform=transform,
                       nodata=nodata, **profile) as dst:
        dst.write(data)
        for i, text in enumerate(descriptions or [], start=1):
            dst.set_band_description(i, text)
    return path


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _error_line(err: str) -> str:
    """The single ``changedet: error:`` line of stderr (and no traceback, no internal error)."""
    lines = [line for line in err.splitlines() if line.startswith("changedet: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err and "internal error" not in err, err
    return lines[0]


def _no_partials(*folders: Path) -> None:
    for folder in folders:
        leftovers = [p.name for p in folder.rglob("*partial*")]
        assert leftovers == [], leftovers


def _expect_refused(capsys, argv, out: Path, *fragments: str) -> str:
    """Runs the CLI, expects exit 2, one line containing all ``fragments``, and no output."""
    code, stdout, err = _run(capsys, *argv)
    assert code == 2, err
    line = _error_line(err)
    for fragment in fragments:
        assert fragment.lower() in line.lower(), line
    assert stdout == ""
    assert not out.exists()
    _no_partials(out.parent if out.parent.is_dir() else out.parent.parent)
    return line


@pytest.fixture
def rgb_pair(tmp_path):
    """A 3-band pair (band ids "1", "2", "3") for the tiny model."""
    return write_synthetic_pair(tmp_path, shape=(40, 52), num_bands=3, seed=1)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    """A saved random-init tiny model for bands "1", "2", "3"."""
    from changedet.detectors.learned import random_init_model
    from changedet.detectors.modelfile import save_model

    path = tmp_path_factory.mktemp("model") / "tiny.msgpack"
    return save_model(path, random_init_model(TINY, ("1", "2", "3"), seed=0))


def _corrupt_tiled_pair(tmp_path: Path, how: str) -> tuple[Path, Path]:
    """A valid tiled DEFLATE GeoTIFF and a copy whose tile data is zeroed or truncated midway.

    The IFD (header, tile offsets) sits at the start of the file, so the copy opens fine and
    fails only when its middle tiles are decoded.
    """
    rng = np.random.default_rng(3)
    data = rng.integers(1, 5000, (3, 128, 128), dtype=np.uint16)
    profile = {"tiled": True, "blockxsize": 32, "blockysize": 32, "compress": "deflate"}
    good = _write(tmp_path / "good.tif", data, **profile)
    _write(tmp_path / "before_tiled.tif", data + 1, **profile)
    raw = bytearray(good.read_bytes())
    n = len(raw)
    bad = tmp_path / f"{how}.tif"
    if how == "zeroed":
        raw[n // 3 : 2 * n // 3] = bytes(2 * n // 3 - n // 3)
        bad.write_bytes(bytes(raw))
    else:
        bad.write_bytes(bytes(raw[: n // 2]))
    return tmp_path / "before_tiled.tif", bad


# --------------------------------------------------------------------------- bad-input matrix


def test_missing_file(capsys, synthetic_pair, tmp_path):
    out = tmp_path / "change.tif"
    line = _expect_refused(capsys, ["run", synthetic_pair.before_path, tmp_path / "nope.tif", "-o",
                                    out, "--method", "cva", "-q"], out, "nope.tif", "no such file")
    assert "check the path" in line


def test_folder_without_band_files(capsys, synthetic_pair, tmp_path):
    folder = tmp_path / "empty_scene"
    folder.mkdir()
    (folder / "readme.txt").write_text("no rasters here")
    out = tmp_path / "change.tif"
    _expect_refused(capsys, ["run", folder, synthetic_pair.after_path, "-o", out, "--method", "cva",
                             "-q"], out, str(folder), "no band files", "_B02")


def test_file_that_is_not_a_raster(capsys, synthetic_pair, tmp_path):
    bad = tmp_path / "notes.tif"
    bad.write_text("this is not a raster\n")
    out = tmp_path / "change.tif"
    _expect_refused(capsys, ["run", synthetic_pair.before_path, bad, "-o", out, "--method", "cva",
                             "-q"], out, "notes.tif", "cannot read", "GeoTIFF")


@pytest.mark.parametrize("how", ["zeroed", "truncated"])
def test_corrupt_tile_data_fails_mid_run_naming_the_file(capsys, tmp_path, how):
    before, bad = _corrupt_tiled_pair(tmp_path, how)
    io.open_pair(before, bad)  # the header reads: the failure can only surface mid-run
    out = tmp_path / "change.tif"
    line = _expect_refused(capsys, ["run", before, bad, "-o", out, "--score", tmp_path / "s.tif",
                                    "--method", "cva", "-q"], out, str(bad), "corrupt")
    assert "re-download" in line
    assert not (tmp_path / "s.tif").exists()


def test_crs_mismatch(capsys, synthetic_pair, tmp_path):
    other = write_variant(synthetic_pair.after_path, tmp_path / "other_crs.tif", crs="EPSG:32634")
    out = tmp_path / "change.tif"
    _expect_refused(capsys, ["run", synthetic_pair.before_path, other, "-o", out, "--method", "cva",
                             "-q"], out, "EPSG:32633", "EPSG:32634")


@pytest.mark.parametrize("align", [False, True])
def test_disjoint_extents(capsys, synthetic_pair, tmp_path, align):
    far = write_variant(synthetic_pair.after_path, tmp_path / "far.tif", shift_px=(1e6, 0))
    out = tmp_path / "change.tif"
    argv = ["run", synthetic_pair.before_path, far, "-o", out, "--method", "cva", "-q"]
    _expect_refused(capsys, argv + (["--align"] if align else []), out, "overlap by 0.00%",
                    "same place")


def test_barely_overlapping_extents(capsys, synthetic_pair, tmp_path):
    # shifted by 60.5 of 61 columns: half a pixel column (0.82 %) overlaps
    edge = write_variant(synthetic_pair.after_path, tmp_path / "edge.tif", shift_px=(60.5, 0))
    out = tmp_path / "change.tif"
    _expect_refused(capsys, ["run", synthetic_pair.before_path, edge, "-o", out, "--align",
                             "--method", "cva", "-q"], out, "overlap by 0.82%", "need >= 1%")


def test_align_run_maps_onto_before_with_nodata_outside_after(capsys, synthetic_pair, tmp_path):
    # after's grid starts 20 columns right of before's: --align resamples it onto before's grid
    shifted = write_variant(synthetic_pair.after_path, tmp_path / "shifted.tif", shift_px=(20, 0))
    out = tmp_path / "change.tif"
    code, _, err = _run(capsys, "run", synthetic_pair.before_path, shifted, "-o", out, "--align",
                        "--method", "cva", "-q")
    assert code == 0, err
    with rasterio.open(out) as dst, rasterio.open(synthetic_pair.before_path) as ref:
        assert (dst.crs, dst.transform, dst.shape) == (ref.crs, ref.transform, ref.shape)
        mask = dst.read(1)
    assert (mask[:, :20] == 255).all()  # outside after's footprint
    # 255 exactly where either date has no valid pixel on before's grid, 0/1 everywhere else
    valid = io.open_pair(synthetic_pair.before_path, shifted, align=True).valid.values
    np.testing.assert_array_equal(mask == 255, ~valid)
    assert not valid[:, :20].any() and valid[:, 21:].mean() > 0.7
    assert np.isin(mask[valid], (0, 1)).all() and (mask[valid] == 1).any()
    _no_partials(tmp_path)


def test_overlap_only_on_nodata_is_an_empty_scene(capsys, synthetic_pair, tmp_path):
    # one shared column, which is in before's nodata frame: nothing valid in both dates
    edge = write_variant(synthetic_pair.after_path, tmp_path / "edge.tif", shift_px=(60, 0))
    out = tmp_path / "change.tif"
    _expect_refused(capsys, ["run", synthetic_pair.before_path, edge, "-o", out, "--align",
                             "--method", "cva", "-q"], out, "no pixel is valid in both dates")


def test_different_band_counts(capsys, synthetic_pair, tmp_path):
    three = write_variant(synthetic_pair.after_path, tmp_path / "three.tif", bands=[1, 2, 3])
    out = tmp_path / "change.tif"
    _expect_refused(capsys, ["run", synthetic_pair.before_path, three, "-o", out, "--method", "cva",
                             "-q"], out, "4 bands", "3 bands", "missing in after: 4", "same bands")


def test_different_band_ids(capsys, synthetic_pair, tmp_path):
    named = write_variant(synthetic_pair.after_path, tmp_path / "named.tif",
                          band_descriptions=["B02", "B03", "B04", "B08"])
    out = tmp_path / "change.tif"
    # One date described, the other not, same count: the names apply to both (with a warning).
    assert main(["run", str(synthetic_pair.before_path), str(named), "-o", str(out), "--method",
                 "cva", "-q"]) == 0
    import rasterio

    with rasterio.open(out) as src:
        assert src.tags()["bands"] == "B02,B03,B04,B08"
    other = write_variant(synthetic_pair.before_path, tmp_path / "other.tif",
                          band_descriptions=["B02", "B03", "B04", "B11"])
    out.unlink()
    capsys.readouterr()
    _expect_refused(capsys, ["run", other, named, "-o", out, "--method", "cva", "-q"],
                    out, "missing in after: B11", "--band-names")


def test_bands_the_model_was_not_trained_on(capsys, tmp_path):
    from changedet.detectors.learned import random_init_model
    from changedet.detectors.modelfile import save_model

    model_path = save_model(tmp_path / "s2rgb.msgpack",
                            random_init_model(TINY, ("B04", "B03", "B02"), seed=0))
    rng = np.random.default_rng(0)
    data = rng.integers(1, 3000, (3, 20, 24), dtype=np.uint16)
    ids = ["B02", "B03", "B04"]
    before = _write(tmp_path / "b.tif", data, descriptions=ids)
    after = _write(tmp_path / "a.tif", data + 7, descriptions=ids)
    out = tmp_path / "change.tif"
    # bands are matched by id: the same bands in another order are reordered, not refused
    assert main(["run", str(before), str(after), "-o", str(out), "--model", str(model_path),
                 "-q"]) == 0
    out.unlink()
    capsys.readouterr()
    wrong = ["B02", "B03", "B08"]
    before_w = _write(tmp_path / "bw.tif", data, descriptions=wrong)
    after_w = _write(tmp_path / "aw.tif", data + 7, descriptions=wrong)
    _expect_refused(capsys, ["run", before_w, after_w, "-o", out, "--model", model_path, "-q"],
                    out, "expects bands B04,B03,B02", "B02,B03,B08", "missing B04", "--bands")
    # a positional (e.g. RGB) model takes any 3 bands, in the order given
    positional = save_model(tmp_path / "rgb.msgpack", random_init_model(TINY, ("1", "2", "3")))
    assert main(["run", str(before), str(after), "-o", str(out), "--model", str(positional),
                 "-q"]) == 0


def test_scene_entirely_nodata(capsys, tmp_path):
    zeros = np.zeros((2, 16, 20), dtype=np.uint16)
    before = _write(tmp_path / "b.tif", zeros, nodata=0)
    after = _write(tmp_path / "a.tif", zeros, nodata=0)
    out = tmp_path / "change.tif"
    _expect_refused(capsys, ["run", before, after, "-o", out, "--method", "cva", "-q"], out,
                    "no pixel is valid in both dates", "nodata")


def test_output_folder_missing(capsys, synthetic_pair, tmp_path):
    out = tmp_path / "missing_dir" / "change.tif"
    _expect_refused(capsys, ["run", synthetic_pair.before_path, synthetic_pair.after_path, "-o",
                             out, "--method", "cva", "-q"], out, "does not exist", "create it")


def test_output_under_a_regular_file(capsys, synthetic_pair, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    out = blocker / "change.tif"
    _expect_refused(capsys, ["run", synthetic_pair.before_path, synthetic_pair.after_path, "-o",
                             out, "--method", "cva", "-q"], out, "is a file, not a folder")
    assert blocker.read_text() == "x"


def test_output_folder_read_only(capsys, synthetic_pair, tmp_path, monkeypatch):
    folder = tmp_path / "locked"
    folder.mkdir()
    real_access = os.access

    def access(path, mode, *args, **kwargs):  # root (CI) ignores chmod: deny it here instead
        if Path(path).resolve() == folder.resolve() and mode & os.W_OK:
            return False
        return real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
    out = folder / "change.tif"
    _expect_refused(capsys, ["run", synthetic_pair.before_path, synthetic_pair.after_path, "-o",
                             out, "--method", "cva", "-q"], out, "not writable", str(folder))
    assert list(folder.iterdir()) == []


def test_output_exists_is_refused_and_untouched(capsys, synthetic_pair, tmp_path):
    out = tmp_path / "change.tif"
    out.write_bytes(b"keep me")
    before_mtime = out.stat().st_mtime_ns
    code, _, err = _run(capsys, "run", synthetic_pair.before_path, synthetic_pair.after_path, "-o",
                        out, "--method", "cva", "-q")
    assert code == 2
    assert "--overwrite" in _error_line(err)
    assert out.read_bytes() == b"keep me" and out.stat().st_mtime_ns == before_mtime
    _no_partials(tmp_path)


@pytest.mark.parametrize("which", ["mask", "score"])
def test_output_same_as_input(capsys, synthetic_pair, tmp_path, which):
    original = synthetic_pair.after_path.read_bytes()
    argv = ["run", synthetic_pair.before_path, synthetic_pair.after_path, "--method", "cva", "-q",
            "--overwrite"]
    if which == "mask":
        argv += ["-o", synthetic_pair.after_path]
    else:
        argv += ["-o", tmp_path / "change.tif", "--score", synthetic_pair.after_path]
    code, _, err = _run(capsys, *argv)
    assert code == 2
    assert "overwrite the input" in _error_line(err)
    assert synthetic_pair.after_path.read_bytes() == original
    assert not (tmp_path / "change.tif").exists()
    _no_partials(tmp_path)


def test_unknown_vector_format_leaves_no_mask(capsys, synthetic_pair, tmp_path):
    out = tmp_path / "change.tif"
    _expect_refused(capsys, ["run", synthetic_pair.before_path, synthetic_pair.after_path, "-o",
                             out, "--vector", tmp_path / "change.shp", "--method", "cva", "-q"],
                    out, "unknown vector format", ".gpkg")


def test_unwritable_quicklook_path_leaves_no_mask(capsys, synthetic_pair, tmp_path):
    out = tmp_path / "change.tif"
    _expect_refused(capsys, ["run", synthetic_pair.before_path, synthetic_pair.after_path, "-o",
                             out, "--quicklook", tmp_path / "missing_dir" / "q.png", "--method",
                             "cva", "-q"], out, "missing_dir", "does not exist")


@pytest.mark.parametrize("kind", ["truncated", "garbled", "newer", "not_a_model"])
def test_bad_model_files(capsys, rgb_pair, tmp_path, model_path, kind):
    from flax import serialization

    raw = model_path.read_bytes()
    bad = tmp_path / f"{kind}.msgpack"
    expected = {"truncated": "truncated or corrupt", "garbled": "corrupt",
                "newer": f"format_version {modelfile.FORMAT_VERSION + 1}",
                "not_a_model": "not a changedet model"}[kind]
    if kind == "truncated":
        bad.write_bytes(raw[: len(raw) // 2])
    elif kind == "garbled":
        garbled = bytearray(raw)
        garbled[64:512] = np.random.default_rng(0).integers(0, 256, 448, dtype=np.uint8).tobytes()
        bad.write_bytes(bytes(garbled))
    elif kind == "newer":
        payload = serialization.msgpack_restore(raw)
        payload["format_version"] = modelfile.FORMAT_VERSION + 1
        bad.write_bytes(serialization.msgpack_serialize(payload))
    else:
        bad.write_bytes(msgpack.packb({"weights": [1, 2, 3]}))
    out = tmp_path / "change.tif"
    line = _expect_refused(capsys, ["run", rgb_pair.before_path, rgb_pair.after_path, "-o", out,
                                    "--model", bad, "-q"], out, str(bad), expected)
    if kind == "newer":
        assert "upgrade" in line


# --------------------------------------------------------------------------- edge cases that work


def test_nan_and_inf_become_nodata_and_the_rest_is_scored(capsys, tmp_path):
    rng = np.random.default_rng(5)
    before = rng.random((3, 24, 30)).astype(np.float32)
    after = before + rng.normal(0, 0.01, before.shape).astype(np.float32)
    after[:, 8:16, 10:20] += 1.0  # a real change
    before[0, 1, 1] = np.nan
    after[1, 2, 2] = np.inf
    after[2, 3, 3] = -np.inf
    b = _write(tmp_path / "b.tif", before)
    a = _write(tmp_path / "a.tif", after)
    out, score = tmp_path / "change.tif", tmp_path / "score.tif"
    code, _, err = _run(capsys, "run", b, a, "-o", out, "--score", score, "--method", "cva", "-q")
    assert code == 0, err
    with rasterio.open(out) as mask_ds, rasterio.open(score) as score_ds:
        mask, values = mask_ds.read(1), score_ds.read(1)
        assert mask_ds.nodata == 255
    bad = np.zeros(mask.shape, bool)
    bad[1, 1] = bad[2, 2] = bad[3, 3] = True
    assert np.array_equal(mask == 255, bad)
    assert np.isnan(values[bad]).all() and np.isfinite(values[~bad]).all()
    assert mask[8:16, 10:20].all()  # the change is found
    assert (mask[~bad] == 1).sum() == 80


def _assert_on_grid(path: Path, reference: Path) -> np.ndarray:
    with rasterio.open(path) as out, rasterio.open(reference) as ref:
        assert (out.height, out.width) == (ref.height, ref.width)
        assert out.transform == ref.transform and out.crs == ref.crs
        return out.read(1)


@pytest.mark.parametrize("shape", [(1, 1), (7, 5)], ids=["1x1", "smaller_than_tile"])
@pytest.mark.parametrize("method", ["cva", "model"])
def test_tiny_scenes_work(capsys, tmp_path, model_path, shape, method):
    rng = np.random.default_rng(2)
    data = rng.integers(100, 3000, (3, *shape), dtype=np.uint16)
    before = _write(tmp_path / "b.tif", data)
    after = _write(tmp_path / "a.tif", data + rng.integers(0, 500, data.shape, dtype=np.uint16))
    out, score = tmp_path / "change.tif", tmp_path / "score.tif"
    detector = ["--method", "cva"] if method == "cva" else ["--model", model_path]
    code, stdout, err = _run(capsys, "run", before, after, "-o", out, "--score", score,
                             "--block-px", "32", *detector, "-q")
    assert code == 0, err
    assert str(out) in stdout
    mask = _assert_on_grid(out, before)
    values = _assert_on_grid(score, before)
    assert set(np.unique(mask)) <= {0, 1}  # every pixel valid: no 255
    assert np.isfinite(values).all()
    _no_partials(tmp_path)


def test_mixed_dtypes_between_dates_work(capsys, tmp_path):
    rng = np.random.default_rng(4)
    base = rng.integers(10, 200, (3, 30, 40))
    before = _write(tmp_path / "b.tif", base.astype(np.uint8))
    after_data = (base * 20).astype(np.uint16)
    after_data[:, 5:15, 5:15] = 60_000  # a change far outside the before range
    after = _write(tmp_path / "a.tif", after_data)
    out = tmp_path / "change.tif"
    code, _, err = _run(capsys, "run", before, after, "-o", out, "--method", "cva", "-q")
    assert code == 0, err
    mask = _assert_on_grid(out, before)
    assert set(np.unique(mask)) <= {0, 1}
    box = np.zeros(mask.shape, bool)
    box[5:15, 5:15] = True
    assert mask[box].mean() > 0.9 and mask[~box].mean() < 0.05


# --------------------------------------------------------------------------- interruption


@pytest.fixture(scope="module")
def big_pair(tmp_path_factory) -> tuple[Path, Path]:
    """3000 x 3000 x 4 uint16 (72 MB per date, uncompressed, tiled): seconds of CVA work."""
    folder = tmp_path_factory.mktemp("big")
    rng = np.random.default_rng(0)
    paths = []
    for name in ("before.tif", "after.tif"):
        data = rng.integers(1, 5000, (4, 3000, 3000), dtype=np.uint16)
        paths.append(_write(folder / name, data, tiled=True, blockxsize=256, blockysize=256))
    return paths[0], paths[1]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_while_writing_leaves_nothing(tmp_path, big_pair, sig):
    before, after = big_pair
    out, score = tmp_path / "change.tif", tmp_path / "score.tif"
    proc = subprocess.Popen(
        [sys.executable, "-m", "changedet", "run", str(before), str(after), "-o", str(out),
         "--score", str(score), "--method", "cva", "--block-px", "256", "-q"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob("*partial*")):  # wait until it writes
            assert proc.poll() is None, f"finished before it could be interrupted: {proc.stderr}"
            assert time.monotonic() < deadline, "never started writing"
            time.sleep(0.01)
        sent = time.monotonic()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
        elapsed = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert elapsed < 10, f"took {elapsed:.1f} s to stop"
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no output, no temporary


# --------------------------------------------------------------------------- safety


class _Exploit:
    """Pickling this runs ``touch <marker>`` on ``pickle.loads``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_model_file_is_rejected_without_running_code(tmp_path):
    from changedet.detectors.learned import load_model

    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.msgpack"
    path.write_bytes(pickle.dumps(_Exploit(marker)))
    with pytest.raises(ModelFileError, match="truncated or corrupt"):
        load_model(path)
    assert not marker.exists()


def test_unexpected_msgpack_types_are_rejected(tmp_path, model_path):
    from flax import serialization

    from changedet.detectors.learned import load_model

    payload = serialization.msgpack_restore(model_path.read_bytes())
    cases = {
        "ext_metadata": msgpack.packb({"format": "changedet-model", "format_version": 1,
                                       "metadata": msgpack.ExtType(42, b"x"), "params": {}}),
        "metadata_int": serialization.msgpack_serialize({**payload, "metadata": 12}),
        "metadata_not_json": serialization.msgpack_serialize({**payload, "metadata": "{no"}),
        "version_str": serialization.msgpack_serialize({**payload, "format_version": "1"}),
        "empty": b"",
        "deep_nesting": b"\x91" * 5000 + b"\x00",
        "huge_length": b"\xdb\xff\xff\xff\xff",
    }
    for name, data in cases.items():
        path = tmp_path / f"{name}.msgpack"
        path.write_bytes(data)
        with pytest.raises(ModelFileError):
            load_model(path)


def _first_leaf_path(tree: dict) -> tuple:
    key, value = next(iter(tree.items()))
    return (key, *_first_leaf_path(value)) if isinstance(value, dict) else (key,)


def _replace_leaf(tree: dict, path: tuple, value) -> dict:
    head, *rest = path
    return {**tree, head: _replace_leaf(tree[head], tuple(rest), value) if rest else value}


def test_pickle_bytes_as_params_are_rejected(tmp_path, model_path):
    from flax import serialization

    from changedet.detectors.learned import load_model

    marker = tmp_path / "PWNED"
    payload = serialization.msgpack_restore(model_path.read_bytes())
    path = tmp_path / "params_pickle.msgpack"
    path.write_bytes(serialization.msgpack_serialize(
        {**payload, "params": pickle.dumps(_Exploit(marker))}))
    try:
        with pytest.raises(ModelFileError):
            load_model(path)
    finally:
        assert not marker.exists()


def test_string_parameter_is_rejected(tmp_path, model_path):
    from flax import serialization

    from changedet.detectors.learned import load_model

    payload = serialization.msgpack_restore(model_path.read_bytes())
    params = _replace_leaf(payload["params"], _first_leaf_path(payload["params"]), "hello")
    path = tmp_path / "leaf_str.msgpack"
    path.write_bytes(serialization.msgpack_serialize({**payload, "params": params}))
    with pytest.raises(ModelFileError):
        load_model(path)


def test_wrong_shaped_parameter_is_rejected_at_load(tmp_path, model_path):
    from flax import serialization

    from changedet.detectors.learned import load_model

    payload = serialization.msgpack_restore(model_path.read_bytes())
    params = _replace_leaf(payload["params"], _first_leaf_path(payload["params"]),
                           np.zeros((2, 2), np.float32))
    path = tmp_path / "leaf_shape.msgpack"
    path.write_bytes(serialization.msgpack_serialize({**payload, "params": params}))
    with pytest.raises(ModelFileError, match="do not match"):
        load_model(path)


def test_inputs_are_opened_read_only_and_left_untouched(capsys, tmp_path, monkeypatch):
    pair = write_synthetic_pair(tmp_path, shape=(40, 50))
    inputs = (pair.before_path, pair.after_path)
    for path in inputs:
        path.chmod(0o444)
    snapshot = {p: (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_mode) for p in inputs}
    opened: list[tuple[str, str]] = []
    real_open = rasterio.open

    def recording_open(fp, mode="r", *args, **kwargs):
        opened.append((str(fp), mode))
        return real_open(fp, mode, *args, **kwargs)

    monkeypatch.setattr(rasterio, "open", recording_open)
    out = tmp_path / "out"
    out.mkdir()
    code, _, err = _run(capsys, "run", *inputs, "-o", out / "change.tif", "--score",
                        out / "score.tif", "--vector", out / "change.gpkg", "--method", "cva", "-q")
    assert code == 0, err
    modes = {}
    for name, mode in opened:
        if any(Path(name).resolve() == p.resolve() for p in inputs):
            modes.setdefault(Path(name).name, set()).add(mode)
    assert modes == {"before.tif": {"r"}, "after.tif": {"r"}}
    for path, (data, mtime, mode) in snapshot.items():
        assert path.read_bytes() == data
        assert path.stat().st_mtime_ns == mtime
        assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(mode) == 0o444
