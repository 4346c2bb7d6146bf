"""Mistakes a new user makes get a one-line error before any computation, not a wrong map."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

from changedet import pipeline
from changedet.cli import main
from changedet.config import ModelConfig
from changedet.detectors.learned import random_init_model
from changedet.detectors.modelfile import save_model
from changedet.errors import BandMismatchError, GridMismatchError, OutputError
from changedet.testing import write_synthetic_pair, write_variant


@pytest.fixture
def paris(sample_data):
    city = sample_data / "oscd_paris"
    return str(city / "imgs_1"), str(city / "imgs_2")


@pytest.mark.parametrize("value, expected", [("2", "outside (0, 1)"), ("0", "outside (0, 1)"),
                                             ("nan", "finite")])
def test_a_threshold_outside_a_probability_is_refused(capsys, paris, tmp_path, value, expected):
    out = tmp_path / "change.tif"
    assert main(["run", *paris, "-o", str(out), "--threshold", value, "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err
    assert not out.exists()


def test_cva_thresholds_must_be_positive(capsys, paris, tmp_path):
    out = tmp_path / "change.tif"
    assert main(["run", *paris, "-o", str(out), "--method", "cva", "--threshold", "-1",
                 "-q"]) == 2
    assert "> 0" in capsys.readouterr().err


@pytest.mark.parametrize("option, module, extra", [("--vector", "pyogrio", "vector"),
                                                   ("--quicklook", "matplotlib", "viz")])
def test_missing_optional_packages_are_named_before_any_compute(
        capsys, paris, tmp_path, monkeypatch, option, module, extra):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == module else real(name, *a))
    computed = []
    monkeypatch.setattr(pipeline, "score_graph", lambda *a, **k: computed.append(1))
    suffix = ".gpkg" if option == "--vector" else ".png"
    out = tmp_path / "change.tif"
    assert main(["run", *paris, "-o", str(out), option, str(tmp_path / f"x{suffix}"), "-q"]) == 2
    err = capsys.readouterr().err
    assert f"changedet[{extra}]" in err and module in err
    assert not computed and not out.exists()


# --------------------------------------------------------------------------------------------
# Issue 14, "Tried as a new user would": through the command line, as a user runs it.

REPO = Path(__file__).resolve().parents[1]
TINY = ModelConfig(num_bands=3, features=(4, 8), embed_dim=4, convs_per_level=1, head_convs=1)
SIZE = re.compile(r"(\d+) x (\d+) px")


def _cli(*argv, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m changedet ARGV`` in a fresh process (this checkout's code: PYTHONPATH and
    the test environment are inherited)."""
    return subprocess.run([sys.executable, "-m", "changedet", *map(str, argv)],
                          capture_output=True, text=True, timeout=600, env=env, cwd=cwd)


def _error_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("changedet: error:")]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def pair3(tmp_path_factory):
    """A 3-band 61 x 45 px (W x H) synthetic pair with a nodata border and a planted change."""
    return write_synthetic_pair(tmp_path_factory.mktemp("pair3"), shape=(45, 61), num_bands=3)


@pytest.fixture(scope="module")
def tiny_model_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny.msgpack"
    return save_model(path, random_init_model(TINY, ("1", "2", "3"), seed=0, name="tiny"))


@pytest.fixture(scope="module")
def png_vector_run(pair3, tmp_path_factory):
    """``run -o change.png --vector change.gpkg`` (CVA, no --score), as a user types it."""
    out = tmp_path_factory.mktemp("png_run")
    result = _cli("run", pair3.before_path, pair3.after_path, "-o", out / "change.png",
                  "--vector", out / "change.gpkg", "--method", "cva", "-q")
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def model_run(pair3, tiny_model_path, tmp_path_factory):
    """``run --model tiny.msgpack`` with the default (info) log."""
    out = tmp_path_factory.mktemp("model_run")
    result = _cli("run", pair3.before_path, pair3.after_path, "-o", out / "change.tif",
                  "--model", tiny_model_path, "--cloud-mask", "none")
    assert result.returncode == 0, result.stderr
    return out, result.stderr


# 2. The mask's format follows the extension.

def test_png_output_is_a_palette_png_that_gis_places_on_the_input_grid(pair3, png_vector_run):
    png = png_vector_run / "change.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # a real PNG, not a GeoTIFF renamed
    assert (png_vector_run / "change.wld").is_file()
    assert (png_vector_run / "change.png.aux.xml").is_file()
    with rasterio.open(png) as src, rasterio.open(pair3.before_path) as ref:
        assert src.driver == "PNG" and src.dtypes == ("uint8",) and src.count == 1
        assert src.crs == ref.crs and src.transform.almost_equals(ref.transform)
        assert src.nodata == 255 and src.colormap(1)[255][3] == 0  # nodata transparent
        mask = src.read(1)
        assert src.tags()["method"] == "cva"
    np.testing.assert_array_equal(mask == 255, ~pair3.valid)
    assert set(np.unique(mask[pair3.valid])) <= {0, 1}
    assert (mask[pair3.label == 1] == 1).mean() > 0.9  # the planted change is found


@pytest.mark.parametrize("option, name", [("-o", "change.jpg"), ("--score", "score.png")])
def test_other_extensions_are_refused_before_any_compute(pair3, tmp_path, option, name):
    argv = ["run", pair3.before_path, pair3.after_path, "--method", "cva", "-q"]
    argv += ["-o", tmp_path / "change.tif"] if option == "--score" else []
    line = _error_line(_cli(*argv, option, tmp_path / name))
    assert ".tif" in line and name.rpartition(".")[2] in line
    assert list(tmp_path.iterdir()) == []


def test_run_help_says_which_format_each_extension_gives():
    result = _cli("run", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert ".tif/.tiff a tiled GeoTIFF" in text and ".png an 8-bit palette PNG" in text
    assert "other extensions are refused" in text


# 4. --vector without --score: mean_score from the run's own score, never NaN.

def test_vector_without_score_has_the_runs_mean_score(png_vector_run):
    import pyogrio.raw

    _, _, _, (_, _, mean_score) = pyogrio.raw.read(png_vector_run / "change.gpkg")
    with rasterio.open(png_vector_run / "change.png") as src:
        threshold = float(src.tags()["threshold"])
    assert len(mean_score) > 0 and np.isfinite(mean_score).all()
    assert (mean_score > threshold).all()  # changed pixels score above the threshold
    names = sorted(p.name for p in png_vector_run.iterdir())
    assert names == ["change.gpkg", "change.png", "change.png.aux.xml", "change.wld"]


# 8. The dask dashboard address only when the dashboard can run.

def test_workers_print_no_dashboard_address_without_bokeh(pair3, tmp_path):
    pytest.importorskip("distributed")
    blocker = tmp_path / "no_bokeh" / "bokeh"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('bokeh is not installed')\n")
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(blocker.parent), os.environ.get("PYTHONPATH", "")])}
    result = _cli("run", pair3.before_path, pair3.after_path, "-o", tmp_path / "change.tif",
                  "--method", "cva", "--workers", "1", env=env)
    assert result.returncode == 0, result.stderr
    assert "dask dashboard: http" not in result.stderr
    assert "no dask dashboard" in result.stderr and "bokeh" in result.stderr


# 9. Wording.

def test_every_size_is_width_x_height(model_run):
    _, stderr = model_run
    sizes = SIZE.findall(stderr)
    assert sizes and set(sizes) == {("61", "45")}, stderr


def test_the_model_is_loaded_and_logged_once(model_run):
    _, stderr = model_run
    assert stderr.count("loaded model") == 1, stderr


def test_method_is_siamese_and_the_model_is_named_apart(pair3, tiny_model_path, tmp_path):
    import changedet

    model = changedet.load_model(tiny_model_path)
    ds = changedet.detect(pair3.before_path, pair3.after_path, model=model, cloud_mask="none")
    assert ds.attrs["method"] == "siamese" and ds.attrs["model"] == "tiny"
    result = changedet.run(pair3.before_path, pair3.after_path, tmp_path / "m.tif", model=model,
                           cloud_mask="none", progress=False)
    assert (result.method, result.model) == ("siamese", "tiny")
    with rasterio.open(result.outputs[0]) as src:
        assert (src.tags()["method"], src.tags()["model"]) == ("siamese", "tiny")
    # 11, from Python: the figure excludes the one-off compile, which is reported apart
    assert result.compile_seconds > 0
    mpix = 45 * 61 / 1e6
    assert result.megapixels_per_second == pytest.approx(
        mpix / (result.seconds - result.compile_seconds))
    cva = changedet.run(pair3.before_path, pair3.after_path, tmp_path / "c.tif", method="cva",
                        progress=False)
    assert (cva.method, cva.model, cva.compile_seconds) == ("cva", None, 0.0)


@pytest.fixture
def shifted(pair3, tmp_path):
    return write_variant(pair3.after_path, tmp_path / "shifted.tif", shift_px=(0.5, 0))


def test_cli_errors_name_flags_not_python_keywords(pair3, shifted, tmp_path):
    line = _error_line(_cli("run", pair3.before_path, shifted, "-o", tmp_path / "c.tif",
                            "--method", "cva", "-q"))
    assert "--align" in line and "align=" not in line
    existing = tmp_path / "exists.tif"
    existing.write_bytes(b"keep")
    line = _error_line(_cli("run", pair3.before_path, pair3.after_path, "-o", existing,
                            "--method", "cva", "-q"))
    assert "--overwrite" in line and "overwrite=" not in line


def test_python_errors_name_keywords_not_flags(pair3, shifted, tmp_path):
    import changedet

    with pytest.raises(GridMismatchError) as err:
        changedet.open_pair(pair3.before_path, shifted)
    assert "align=True" in str(err.value) and "--" not in str(err.value)
    assert err.value.options == ("align",)
    existing = tmp_path / "exists.tif"
    existing.write_bytes(b"keep")
    with pytest.raises(OutputError) as err:
        changedet.run(pair3.before_path, pair3.after_path, existing, method="cva")
    assert "overwrite=True" in str(err.value) and "--overwrite" not in str(err.value)
    pair = changedet.open_pair(pair3.before_path, pair3.after_path)
    with pytest.raises(BandMismatchError) as err:
        pipeline.select_bands(pair, ["B04"])
    assert "Pass bands" in str(err.value) and "--bands" not in str(err.value)
    assert err.value.options == ("bands",)


def test_block_size_has_one_name(pair3, tmp_path):
    help_text = _cli("run", "--help").stdout
    assert "--block-px" in help_text and "--tile-size" not in help_text
    result = _cli("run", pair3.before_path, pair3.after_path, "-o", tmp_path / "c.tif",
                  "--method", "cva", "--tile-size", "32", "-q")
    assert result.returncode == 0 and "--tile-size is deprecated" in result.stderr
    assert "--block-px" in result.stderr


def test_info_help_has_a_description_and_examples_that_run():
    result = _cli("info", "--help")
    assert result.returncode == 0
    description, _, examples = result.stdout.partition("examples:")
    assert "width x height" in description and "no pixel is read" in description
    commands = [line.split("python -m changedet ", 1)[1].split()
                for line in examples.splitlines() if "python -m changedet" in line]
    assert commands
    for argv in commands:  # as written, from a clone
        assert _cli(*argv, cwd=REPO).returncode == 0, argv


def test_single_band_error_does_not_suggest_picking_three_bands(tmp_path):
    one = write_synthetic_pair(tmp_path, num_bands=1)
    line = _error_line(_cli("run", one.before_path, one.after_path, "-o", tmp_path / "c.tif",
                            "--cloud-mask", "none", "-q"))
    assert "1 band (" in line and "--method cva" in line
    assert "pick 3" not in line and "--bands" not in line


# 10. The quick start writes into outputs/, which git ignores.

def test_readme_quick_start_writes_under_outputs():
    readme = (REPO / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    run = quick_start.split("python -m changedet run", 1)[1]
    paths = re.findall(r"(?:-o|--score|--vector|--quicklook) (\S+)", run)
    assert paths and all(p.startswith("outputs/") for p in paths), paths
    assert "mkdir -p outputs &&" in quick_start.split("python -m changedet run", 1)[0]
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout: cannot ask git what it ignores")
    ignored = subprocess.run(["git", "check-ignore", "-q", "outputs/change.tif"], cwd=REPO)
    assert ignored.returncode == 0, "outputs/ is not git-ignored"


# 11. Throughput excludes the one-off compile, which is timed and logged apart.

def test_run_logs_compile_time_apart_from_throughput(model_run):
    _, stderr = model_run
    summary = re.search(r"61 x 45 px \(([\d.e-]+) Mpix\) in ([\d.]+) s: .*?([\d.]+) s compiling "
                        r"the model.*?; ([\d.e-]+) Mpix/s end to end excluding the compile",
                        stderr)
    assert summary, stderr
    mpix, seconds, compile_s, rate = (float(g) for g in summary.groups())
    assert compile_s > 0
    # both times are logged to 0.1 s, so their difference is known to +-0.1 s (a tiny scene
    # runs in well under a second once compiled)
    net = seconds - compile_s
    assert mpix / (net + 0.1) * 0.99 <= rate <= mpix / max(net - 0.1, 1e-3) * 1.01


def test_a_block_thinner_than_the_models_halo_is_refused_with_a_size_that_works(
        capsys, paris, tmp_path):
    """The packaged model needs 56 px of context; 48 px blocks were a dask overlap traceback
    ("internal error") before. Now one line, the smallest size that works, no output file."""
    out = tmp_path / "change.tif"
    assert main(["run", *paris, "-o", str(out), "--block-px", "48", "--cloud-mask", "none",
                 "-q"]) == 2
    err = capsys.readouterr().err
    assert "smaller than this model's 56 px halo; try --block-px 56 or more" in err
    assert not out.exists()
    assert main(["run", *paris, "-o", str(out), "--block-px", "56", "--cloud-mask", "none",
                 "-q"]) == 0
    assert out.exists()
