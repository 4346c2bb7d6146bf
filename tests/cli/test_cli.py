"""The command line: exit codes, one-line errors, no output file on failure."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import rasterio

from changedet import __version__
from changedet.cli import main
from changedet.testing import write_variant


def _run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("changedet: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_run_cva_writes_outputs(capsys, synthetic_pair, tmp_path):
    out = tmp_path / "change.tif"
    code, stdout, _ = _run(capsys, "run", str(synthetic_pair.before_path),
                           str(synthetic_pair.after_path), "-o", str(out), "--method", "cva",
                           "--score", str(tmp_path / "s.tif"), "--quiet")
    assert code == 0
    assert str(out) in stdout
    with rasterio.open(out) as src, rasterio.open(synthetic_pair.before_path) as ref:
        assert src.transform == ref.transform and src.crs == ref.crs


def test_info_prints_grid_and_bands(capsys, sample_data):
    code, stdout, _ = _run(capsys, "info", str(sample_data / "oscd_paris" / "imgs_1"))
    assert code == 0
    assert "B8A" in stdout and "EPSG:4326" in stdout and "390" in stdout


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing", "no such file"),
        ("not_raster", "cannot read"),
        ("crs", "CRS"),
        ("disjoint", "overlap"),
        ("bands", "band"),
        ("exists", "--overwrite"),
        ("no_folder", "does not exist"),
        ("same_as_input", "input"),
    ],
)
def test_bad_inputs_give_one_line_exit_2_and_no_output(capsys, synthetic_pair, tmp_path, case,
                                                        expected):
    before, after = str(synthetic_pair.before_path), str(synthetic_pair.after_path)
    out = tmp_path / "change.tif"
    if case == "missing":
        after = str(tmp_path / "nope.tif")
    elif case == "not_raster":
        bad = tmp_path / "text.tif"
        bad.write_text("this is not a raster\n")
        after = str(bad)
    elif case == "crs":
        after = str(write_variant(synthetic_pair.after_path, tmp_path / "other_crs.tif",
                                  crs="EPSG:32634"))
    elif case == "disjoint":
        after = str(write_variant(synthetic_pair.after_path, tmp_path / "far.tif",
                                  shift_px=(1e6, 0)))
    elif case == "bands":
        after = str(write_variant(synthetic_pair.after_path, tmp_path / "three.tif",
                                  bands=[1, 2, 3]))
    elif case == "exists":
        out.write_bytes(b"keep me")
    elif case == "no_folder":
        out = tmp_path / "missing_dir" / "change.tif"
    elif case == "same_as_input":
        out = synthetic_pair.before_path
    before_bytes = synthetic_pair.before_path.read_bytes()
    code, _, err = _run(capsys, "run", before, after, "-o", str(out), "--method", "cva", "-q")
    assert code == 2
    line = _one_line_error(err)
    assert expected.lower() in line.lower(), line
    if case == "exists":
        assert out.read_bytes() == b"keep me"
    elif case == "same_as_input":
        assert synthetic_pair.before_path.read_bytes() == before_bytes
    else:
        assert not out.exists()
    leftovers = [p.name for p in tmp_path.rglob("*partial*")]
    assert leftovers == []


def test_overwrite_replaces_output(capsys, synthetic_pair, tmp_path):
    out = tmp_path / "change.tif"
    out.write_bytes(b"old")
    code, _, _ = _run(capsys, "run", str(synthetic_pair.before_path),
                      str(synthetic_pair.after_path), "-o", str(out), "--method", "cva",
                      "--overwrite", "-q")
    assert code == 0
    with rasterio.open(out) as src:
        assert set(np.unique(src.read(1))) <= {0, 1, 255}


def test_module_entry_point_help_and_version():
    out = subprocess.run([sys.executable, "-m", "changedet", "--help"], capture_output=True,
                         text=True, check=True)
    assert "run" in out.stdout and "info" in out.stdout
    out = subprocess.run([sys.executable, "-m", "changedet", "--version"], capture_output=True,
                         text=True, check=True)
    assert __version__ in out.stdout


def test_run_help_has_examples(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "--help"])
    assert exc.value.code == 0
    assert "examples:" in capsys.readouterr().out


def test_an_interrupt_landing_in_a_finalizer_is_raised_again_not_lost():
    """Python prints and drops an exception raised in a ``__del__`` or a gc callback (JAX has
    one), so a SIGTERM landing there used to let the command run to its end and exit 0. The
    handler defers it and raises it again moments later."""
    import signal
    import time

    from changedet.cli import commands

    previous = signal.signal(signal.SIGTERM, commands._raise_keyboard_interrupt)
    commands._INTERRUPT_HANDLED.clear()

    class Finalised:
        def __del__(self):
            commands._raise_keyboard_interrupt(signal.SIGTERM, sys._getframe())

    try:
        with pytest.raises(KeyboardInterrupt):
            Finalised()  # dropped at once: __del__ runs, the handler must not raise there
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:  # the repeated interrupt arrives here
                time.sleep(0.01)
    finally:
        commands._INTERRUPT_HANDLED.set()
        signal.signal(signal.SIGTERM, previous)


def test_run_max_change_caps_the_mask_and_says_so(capsys, synthetic_pair, tmp_path):
    out = tmp_path / "change.tif"
    code, _, _ = _run(capsys, "run", str(synthetic_pair.before_path),
                      str(synthetic_pair.after_path), "-o", str(out), "--method", "cva",
                      "--max-change", "0.05", "--quiet")
    assert code == 0
    with rasterio.open(out) as src:
        mask, tags = src.read(1), src.tags()
    assert (mask[synthetic_pair.valid] == 1).mean() <= 0.05
    assert float(tags["max_change_fraction"]) == 0.05 and "raised" in tags["change_cap"]


@pytest.mark.parametrize("value", ["0", "1.5", "nan"])
def test_run_bad_max_change_is_one_line_and_writes_nothing(capsys, synthetic_pair, tmp_path,
                                                           value):
    code, _, err = _run(capsys, "run", str(synthetic_pair.before_path),
                        str(synthetic_pair.after_path), "-o", str(tmp_path / "c.tif"),
                        "--method", "cva", "--max-change", value, "--quiet")
    assert code != 0 and "max" in _one_line_error(err) and "change" in _one_line_error(err)
    assert not (tmp_path / "c.tif").exists()


def test_a_pending_repeat_of_an_earlier_interrupt_does_not_stop_the_next_command(
        capsys, synthetic_pair, tmp_path):
    """An interrupt's repeat (``_REPEAT_S`` later) belongs to the command it was raised in: one
    still pending when that command ended must not interrupt the next ``main`` call."""
    import signal

    from changedet.cli import commands

    commands._INTERRUPT_HANDLED.clear()

    class Finalised:
        def __del__(self):
            commands._raise_keyboard_interrupt(signal.SIGTERM, sys._getframe())

    Finalised()  # a repeat is now pending
    commands._INTERRUPT_HANDLED.set()  # ... and the command it belonged to has ended
    code, _, err = _run(capsys, "run", str(synthetic_pair.before_path),
                        str(synthetic_pair.after_path), "-o", str(tmp_path / "c.tif"),
                        "--method", "cva", "--quiet")
    assert code == 0, err
