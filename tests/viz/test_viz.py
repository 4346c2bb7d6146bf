"""Tests for changedet.viz: figures, true colour, overlays and the quicklook PNG."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

pytest.importorskip("matplotlib")

from changedet import io, viz  # noqa: E402
from changedet.errors import ConfigError, InputNotFoundError, OutputError  # noqa: E402
from changedet.testing import write_synthetic_pair  # noqa: E402

S2 = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")


def _s2_scene(height: int = 6, width: int = 5) -> xr.DataArray:
    """13 constant-ish bands where band k holds values around 100 * k (k = 1..13)."""
    rng = np.random.default_rng(0)
    data = np.stack([100.0 * (k + 1) + rng.random((height, width)) for k in range(13)])
    return xr.DataArray(data.astype(np.float32), dims=("band", "y", "x"), coords={"band": list(S2)})


def _num_image_axes(fig) -> int:
    return sum(1 for ax in fig.axes if ax.images)


# ----------------------------------------------------------------------------- true colour


def test_true_colour_picks_sentinel2_red_green_blue():
    scene = _s2_scene()
    limits = viz.stretch_limits(scene, percentiles=(0, 100))
    # rows are red (B04 = 4th band, ~400), green (B03, ~300), blue (B02, ~200)
    np.testing.assert_allclose(limits[:, 0], [400, 300, 200], atol=1.0)
    rgb = viz.true_colour(scene)
    assert rgb.shape == (6, 5, 3) and rgb.dtype == np.float32
    assert 0.0 <= rgb.min() and rgb.max() <= 1.0
    # with red's limits applied to all channels, red is mid-range and blue saturates black
    low, high = limits[0]
    shared = viz.true_colour(scene, limits=np.array([[low, high]] * 3))
    assert shared[..., 0].mean() > 0.1 and shared[..., 2].max() == 0.0


def test_true_colour_explicit_bands_first_three_and_grey():
    data = np.stack([np.full((4, 4), v, np.float32) for v in (1, 2, 3, 4)])
    data[:, 0, 0] = 0  # a darker pixel so each band has a range
    limits = np.array([[0, 4]] * 3, dtype=float)
    first_three = viz.true_colour(data, limits=limits)
    np.testing.assert_allclose(first_three[1, 1], [0.25, 0.5, 0.75])
    chosen = viz.true_colour(data, bands=[4, "3", 1], limits=limits)
    np.testing.assert_allclose(chosen[1, 1], [1.0, 0.75, 0.25])
    grey = viz.true_colour(data[:1], percentiles=(0, 100))
    assert np.all(grey[..., 0] == grey[..., 1]) and np.all(grey[..., 1] == grey[..., 2])
    with pytest.raises(ConfigError, match="not in the scene"):
        viz.true_colour(data, bands=["B04", "B03", "B02"])
    with pytest.raises(ConfigError, match="band, height, width"):
        viz.true_colour(np.zeros((4, 4)))


def test_pair_stretch_keeps_brightness_difference():
    rng = np.random.default_rng(1)
    before = rng.uniform(100, 200, size=(3, 8, 8)).astype(np.float32)
    after = before * 1.5
    separate = viz.true_colour(before), viz.true_colour(after)
    np.testing.assert_allclose(separate[0], separate[1], atol=1e-5)  # the bias we avoid
    before_rgb, after_rgb = viz.true_colour_pair(before, after)
    assert after_rgb.mean() > before_rgb.mean() + 0.2
    limits = viz.stretch_limits(before, after)
    np.testing.assert_allclose(viz.true_colour(after, limits=limits), after_rgb)


def test_nodata_is_black_and_out_of_the_stretch():
    data = np.full((3, 5, 5), 10.0, np.float32)
    data[:, 2, 2] = 20.0
    data[:, 0, 0] = -9999.0
    scene = xr.DataArray(data, dims=("band", "y", "x"), attrs={"nodata": -9999.0})
    limits = viz.stretch_limits(scene, percentiles=(0, 100))
    np.testing.assert_allclose(limits, [[10, 20]] * 3)
    rgb = viz.true_colour(scene, percentiles=(0, 100))
    assert np.all(rgb[0, 0] == 0) and np.all(rgb[2, 2] == 1)
    nan_scene = data.copy()
    nan_scene[:, 4, 4] = np.nan
    valid = np.ones((5, 5), bool)
    valid[1, 1] = False
    out = viz.true_colour(nan_scene, valid=valid, percentiles=(0, 100))
    assert np.isfinite(out).all() and np.all(out[4, 4] == 0) and np.all(out[1, 1] == 0)


def test_overlay_paints_change_and_nodata_only():
    rgb = np.full((3, 3, 3), 0.5, np.float32)
    mask = np.array([[0, 1, 255], [0, 0, 0], [1, 0, 0]], np.uint8)
    out = viz.overlay(rgb, mask, colour=(1, 0, 0), alpha=1.0, nodata_colour=(0, 0, 1))
    np.testing.assert_allclose(out[0, 1], [1, 0, 0])
    np.testing.assert_allclose(out[0, 2], [0, 0, 1])
    np.testing.assert_allclose(out[1, 1], [0.5, 0.5, 0.5])
    half = viz.overlay((rgb * 255).astype(np.uint8), mask == 1, colour="white", alpha=0.5)
    assert half.dtype == np.float32 and half[2, 0, 0] > 0.7 and abs(half[0, 2, 0] - 0.5) < 0.01
    with pytest.raises(ConfigError, match="alpha"):
        viz.overlay(rgb, mask, alpha=2.0)
    with pytest.raises(ConfigError, match="mask"):
        viz.overlay(rgb, mask[:2])


# ------------------------------------------------------------------------------- figures


def test_quicklook_panels():
    from matplotlib.figure import Figure

    before = _s2_scene(20, 30)
    after = before + 50
    score = np.random.default_rng(0).random((20, 30)).astype(np.float32)
    score[0, :] = np.nan
    mask = (score > 0.8).astype(np.uint8)
    mask[0, :] = 255
    fig = viz.quicklook(before, after, score, mask, title="t", threshold=0.8)
    assert isinstance(fig, Figure)
    assert _num_image_axes(fig) == 4 and len(fig.axes) == 5  # + the score colour bar
    assert [ax.get_title() for ax in fig.axes[:4]] == [
        "before", "after", "change score", "change over after"
    ]
    assert fig.get_suptitle() == "t"
    legend = [t.get_text() for t in fig.axes[3].get_legend().get_texts()]
    assert legend == ["change", "nodata"]
    fig3 = viz.quicklook(before, after, None, mask)
    assert _num_image_axes(fig3) == 3 and len(fig3.axes) == 3


def test_loss_curve_from_file_and_records(tmp_path: Path):
    records = [
        {"epoch": 1, "loss": 0.9, "train_f1": 0.2, "val_f1": 0.1},
        {"epoch": 2, "loss": 0.5, "train_f1": 0.5, "val_f1": 0.45},
        {"epoch": 3, "loss": 0.4, "train_f1": 0.6, "val_f1": 0.40},
    ]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    for source in (path, tmp_path, records):
        fig = viz.plot_loss_curve(source)
        assert len(fig.axes) == 2
        loss_ax, f1_ax = fig.axes
        np.testing.assert_allclose(loss_ax.get_lines()[0].get_ydata(), [0.9, 0.5, 0.4])
        assert f1_ax.get_ylim() == (0.0, 1.0)
        assert any("best 0.450" in t.get_text() for t in f1_ax.texts)
    with pytest.raises(InputNotFoundError):
        viz.plot_loss_curve(tmp_path / "missing.jsonl")
    with pytest.raises(ConfigError):
        viz.plot_loss_curve([{"epoch": 1}])
    (tmp_path / "bad.jsonl").write_text('{"epoch": 1, "loss": 1}\n{oops\n')
    with pytest.raises(ConfigError, match="bad.jsonl:2"):
        viz.plot_loss_curve(tmp_path / "bad.jsonl")


def test_pr_curve_marks_best_f1():
    from changedet import metrics

    rng = np.random.default_rng(0)
    label = rng.random((40, 40)) < 0.2
    score = label * 1.0 + rng.normal(0, 0.4, size=label.shape)
    curve = metrics.pr_curve(score, label.astype(np.uint8), np.ones_like(label), 64)
    fig = viz.plot_pr_curve(curve.precision, curve.recall, curve.thresholds)
    assert len(fig.axes) == 2
    k = int(np.argmax(curve.f1))
    legend = fig.axes[0].get_legend().get_texts()[0].get_text()
    assert f"threshold {curve.thresholds[k]:.3g}" in legend
    fig = viz.plot_pr_curve(curve.precision, curve.recall, curve.thresholds, best=0.0)
    marked = fig.axes[1].lines[-1].get_xdata()[0]
    assert abs(marked) <= (curve.thresholds[1] - curve.thresholds[0])
    with pytest.raises(ConfigError):
        viz.plot_pr_curve([0.5], [0.5, 0.6], [0.1])


def test_pair_grid_shape():
    before = _s2_scene(10, 12)
    target = np.zeros((10, 12), np.uint8)
    target[2:4, 2:5] = 1
    score = np.random.default_rng(0).random((10, 12))
    rows = [(before, before + 10, target, target, score), (before, before, None, target, score)]
    fig = viz.pair_grid(rows, names=["a", "b"])
    assert len(fig.axes) == 10
    titles = [ax.get_title() for ax in fig.axes[:5]]
    assert titles == ["before", "after", "target", "predicted", "score"]
    assert fig.axes[5].get_ylabel() == "b" and fig.axes[7].texts[0].get_text() == "no label"
    with pytest.raises(ConfigError):
        viz.pair_grid([])


def test_distance_histograms_split_by_label():
    rng = np.random.default_rng(0)
    label = np.zeros((30, 30), np.uint8)
    label[:10] = 1
    distance = np.where(label == 1, 2.0, 0.3) + rng.normal(0, 0.1, label.shape)
    valid = np.ones_like(label, bool)
    valid[-1] = False
    fig = viz.distance_histograms([distance], [label], [valid], threshold=1.0, margin=2.0)
    assert len(fig.axes) == 1
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels[:2] == ["unchanged (570 px)", "changed (300 px)"]
    assert any(t.startswith("threshold 1") for t in labels) and any("margin 2" in t for t in labels)
    with pytest.raises(ConfigError):
        viz.distance_histograms([distance], [label, label], [valid])


# ---------------------------------------------------------------------- area and quicklook


def _pixel_area_pyproj_m2(transform, row: int, col: int) -> float:
    pyproj = pytest.importorskip("pyproj")
    corners = [transform @ (col + dc, row + dr) for dc, dr in ((0, 0), (1, 0), (1, 1), (0, 1))]
    lons, lats = zip(*corners, strict=True)
    area, _ = pyproj.Geod(ellps="WGS84").polygon_area_perimeter(lons, lats)
    return abs(area)


@pytest.fixture(scope="module")
def paris_cva(sample_data: Path, tmp_path_factory) -> dict[str, Path]:
    """CVA run on the real OSCD Paris pair (mask + score), once for this module."""
    from changedet import pipeline

    out = tmp_path_factory.mktemp("paris")
    before, after = sample_data / "oscd_paris" / "imgs_1", sample_data / "oscd_paris" / "imgs_2"
    result = pipeline.run(
        before, after, out / "mask.tif", score_path=out / "score.tif", method="cva",
        progress=False, cloud_mask="none",  # CVA's Otsu cut lands on the clouds' change
    )
    return {"before": before, "after": after, "mask": result.outputs[0], "score": result.outputs[1],
            "dir": out}


def test_changed_area_geodesic_on_real_mask(paris_cva):
    mask = io.open_scene(paris_cva["mask"])
    changed_px, area_ha = viz.changed_area(mask)
    values = mask.values[0]
    assert changed_px == int((values == 1).sum()) > 0
    # independent check: pyproj geodesic area of a pixel at the mask's changed rows
    transform = mask.rio.transform()
    rows = np.nonzero(values == 1)[0]
    expected_m2 = sum(_pixel_area_pyproj_m2(transform, int(r), 0) for r in rows)
    assert area_ha == pytest.approx(expected_m2 / 1e4, rel=1e-4)
    assert 100 < expected_m2 / changed_px < 120  # ~8.5 m x 12.9 m pixels at 48.8 N


def test_changed_area_projected_and_ungeoreferenced(tmp_path: Path):
    georef = write_synthetic_pair(tmp_path, crs="EPSG:32633")  # 10 m pixels
    mask = io.open_scene(georef.before_path).isel(band=[0])
    mask = xr.where(mask > 1500, 1, 0).astype(np.uint8).rio.write_crs("EPSG:32633")
    mask = mask.rio.write_transform(io.open_scene(georef.before_path).rio.transform())
    changed_px, area_ha = viz.changed_area(mask)
    assert changed_px > 0 and area_ha == pytest.approx(changed_px * 100 / 1e4)
    plain = xr.DataArray(np.array([[1, 0], [1, 255]], np.uint8), dims=("y", "x"))
    assert viz.changed_area(plain) == (2, None)


def test_write_quicklook_on_real_pair(paris_cva, caplog):
    import matplotlib.image

    png = paris_cva["dir"] / "quicklook.png"
    with caplog.at_level(logging.INFO, logger="changedet.viz"):
        written = viz.write_quicklook(
            png, paris_cva["before"], paris_cva["after"], paris_cva["mask"],
            score_path=paris_cva["score"],
        )
    assert written == png.resolve()
    image = matplotlib.image.imread(png)
    height, width = image.shape[:2]
    assert 300 < height < 900 and 1200 < width < 2200  # 4 panels of ~400 px
    assert 50_000 < png.stat().st_size < 5_000_000
    assert not list(png.parent.glob(".*partial*"))
    assert "ha changed" in caplog.text and "cva" in caplog.text
    # the overlay panel (right quarter) shows magenta change pixels
    right = image[:, 3 * width // 4 :, :3]
    magenta = (right[..., 0] > 0.8) & (right[..., 1] < 0.35) & (right[..., 2] > 0.8)
    assert magenta.sum() > 200
    with pytest.raises(OutputError, match="exists"):
        viz.write_quicklook(png, paris_cva["before"], paris_cva["after"], paris_cva["mask"])
    small = viz.write_quicklook(
        png, paris_cva["before"], paris_cva["after"], paris_cva["mask"], overwrite=True, max_px=100
    )
    assert matplotlib.image.imread(small).shape[1] < width  # 3 panels, no score


def test_write_quicklook_ungeoreferenced_pixels(tmp_path: Path, caplog):
    from changedet import pipeline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", io.UngeoreferencedWarning)
        pair = write_synthetic_pair(tmp_path, crs=None, shape=(40, 48), num_bands=3)
        mask = pipeline.run(pair.before_path, pair.after_path, tmp_path / "m.tif", method="cva",
                            progress=False).outputs[0]
        with caplog.at_level(logging.INFO, logger="changedet.viz"):
            viz.write_quicklook(tmp_path / "q.png", pair.before_path, pair.after_path, mask)
    assert (tmp_path / "q.png").stat().st_size > 1000
    assert "px changed" in caplog.text and "no CRS" in caplog.text


def test_decimated_mask_keeps_small_changes():
    from changedet.viz.quicklook import _decimate_mask

    data = np.zeros((10, 13), np.uint8)
    data[4, 7] = 1  # one changed pixel
    data[:, 12] = 255  # nodata column (the partial last cell column)
    data[0:3, 0:3] = 255  # a fully nodata cell
    small = _decimate_mask(xr.DataArray(data, dims=("y", "x")).chunk(4), 3)
    assert small.shape == (4, 5)
    assert small[1, 2] == 1 and small[0, 0] == 255 and small[:, 4].tolist() == [255] * 4
    assert (small == 1).sum() == 1


def test_cli_run_writes_quicklook(tmp_path: Path):
    from changedet import cli

    pair = write_synthetic_pair(tmp_path, shape=(48, 64), num_bands=3)
    png = tmp_path / "look.png"
    code = cli.main([
        "run", str(pair.before_path), str(pair.after_path), "-o", str(tmp_path / "mask.tif"),
        "--method", "cva", "--quicklook", str(png), "-q",
    ])
    assert code == 0 and png.stat().st_size > 1000


def test_import_is_light_and_headless(tmp_path: Path):
    code = (
        "import sys, os\n"
        "import changedet.viz as viz\n"
        "assert 'matplotlib' not in sys.modules, 'viz must import matplotlib lazily'\n"
        "import numpy as np\n"
        "ones = np.ones((3, 8, 8))\n"
        "fig = viz.quicklook(ones, ones, None, np.zeros((8, 8), np.uint8))\n"
        f"fig.savefig({str(tmp_path / 'x.png')!r})\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("DISPLAY", "MPLBACKEND")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
    assert (tmp_path / "x.png").stat().st_size > 0
