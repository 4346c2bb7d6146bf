"""Tests for changedet.cva: CVA finds planted and real change; Otsu is right on known histograms."""

from __future__ import annotations

from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import rasterio
from hypothesis import given, settings
from hypothesis import strategies as st

from changedet.cva import BandStats, CVADetector, otsu_threshold, otsu_threshold_dask
from changedet.errors import EmptySceneError
from changedet.io import RasterPair, open_pair
from changedet.testing import write_synthetic_pair

OSCD_CITIES = (
    "abudhabi", "aguasclaras", "beihai", "bercy", "bordeaux",
    "cupertino", "paris", "pisa", "rennes", "saclay_e",
)  # fmt: skip
OSCD_NEEDS_ALIGN = {"abudhabi", "saclay_e"}


def _cva_score(pair: RasterPair) -> tuple[np.ndarray, float]:
    """The pipeline's graph in miniature: blockwise score, NaN where invalid, Otsu threshold."""
    detector = CVADetector().prepare(pair)

    def block(before: np.ndarray, after: np.ndarray) -> np.ndarray:
        return detector.score_block(before.astype(np.float32), after.astype(np.float32))

    score = da.map_blocks(block, pair.before.data, pair.after.data, drop_axis=0, dtype=np.float32)
    score = da.where(pair.valid.data, score, np.nan)
    threshold = otsu_threshold_dask(score)
    return score.compute(), threshold


def _f1(prediction: np.ndarray, truth: np.ndarray) -> float:
    tp = np.sum(prediction & truth)
    fp = np.sum(prediction & ~truth)
    fn = np.sum(~prediction & truth)
    return float(2 * tp / max(2 * tp + fp + fn, 1))


def _oscd_f1(images: Path, label_path: Path, align: bool) -> tuple[float, float]:
    pair = open_pair(images / "imgs_1", images / "imgs_2", align=align, chunks_px=256)
    score, threshold = _cva_score(pair)
    with rasterio.open(label_path) as ds:
        truth = ds.read(1) == 2  # OSCD: 1 = no change, 2 = change
    valid = np.isfinite(score)
    return _f1((score > threshold)[valid], truth[valid]), float(truth[valid].mean())


def test_cva_finds_the_planted_box(tmp_path: Path) -> None:
    synthetic = write_synthetic_pair(tmp_path, shape=(45, 61), seed=0)
    pair = open_pair(synthetic.before_path, synthetic.after_path, chunks_px=32)
    score, threshold = _cva_score(pair)
    assert score.dtype == np.float32 and score.shape == (45, 61)
    np.testing.assert_array_equal(np.isnan(score), ~synthetic.valid)
    prediction = score > threshold
    truth = synthetic.label == 1
    assert _f1(prediction[synthetic.valid], truth[synthetic.valid]) > 0.9


def test_prepare_is_one_pass_and_uses_only_valid_pixels(tmp_path: Path) -> None:
    synthetic = write_synthetic_pair(tmp_path, num_bands=3)
    pair = open_pair(synthetic.before_path, synthetic.after_path, chunks_px=16)
    calls = []

    def counting_get(dsk, keys, **kwargs):
        calls.append(1)
        return dask.get(dsk, keys, **kwargs)

    with dask.config.set(scheduler=counting_get):
        detector = CVADetector().prepare(pair)
    assert len(calls) == 1
    with rasterio.open(synthetic.before_path) as ds:
        before = ds.read().astype(np.float64)[:, synthetic.valid]
    np.testing.assert_allclose(detector.before_stats.mean, before.mean(axis=1), rtol=1e-9)
    np.testing.assert_allclose(detector.before_stats.std, before.std(axis=1), rtol=1e-6)
    assert detector.name == "cva" and detector.halo_px == 0 and detector.threshold is None


def test_score_block_is_standardised_distance() -> None:
    rng = np.random.default_rng(1)
    before = rng.normal(100, 10, size=(2, 8, 8)).astype(np.float32)
    after = before.copy()
    stats = BandStats(mean=np.array([100.0, 100.0]), std=np.array([10.0, 10.0]))
    cva = CVADetector(before_stats=stats, after_stats=stats)
    np.testing.assert_array_equal(cva.score_block(before, after), 0.0)
    after[:, 2, 3] += np.array([30.0, 40.0], dtype=np.float32)  # 3 and 4 std -> distance 5
    score = cva.score_block(before, after)
    assert score.dtype == np.float32
    np.testing.assert_allclose(score[2, 3], 5.0, rtol=1e-5)
    with pytest.raises(RuntimeError, match="prepare"):
        CVADetector().score_block(before, after)


def test_all_nodata_raises_empty_scene(tmp_path: Path) -> None:
    synthetic = write_synthetic_pair(tmp_path)
    with rasterio.open(synthetic.after_path, "r+") as ds:
        ds.write(np.zeros((ds.count, ds.height, ds.width), dtype=ds.dtypes[0]))
    pair = open_pair(synthetic.before_path, synthetic.after_path)
    with pytest.raises(EmptySceneError):
        CVADetector().prepare(pair)
    with pytest.raises(EmptySceneError):
        otsu_threshold_dask(da.full((4, 4), np.nan, chunks=2))


def test_otsu_separates_two_modes_and_ignores_nan() -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(1.0, 0.2, 5000), rng.normal(5.0, 0.3, 500)])
    image = np.full(6000, np.nan)
    image[:5500] = values
    image = da.from_array(image.reshape(60, 100), chunks=25)
    threshold = otsu_threshold_dask(image)
    assert 2.0 < threshold < 4.0
    assert otsu_threshold_dask(da.full((3, 3), 2.5, chunks=2)) == 2.5


@settings(deadline=None, max_examples=50)
@given(
    low=st.floats(-1e3, 1e3),
    gap=st.floats(1.0, 1e3),
    n_low=st.integers(1, 50),
    n_high=st.integers(1, 50),
)
def test_otsu_threshold_splits_two_separated_clusters(
    low: float, gap: float, n_low: int, n_high: int
) -> None:
    values = np.array([low] * n_low + [low + gap] * n_high)
    counts, edges = np.histogram(values, bins=64)
    threshold = otsu_threshold(counts, edges)
    assert low <= threshold <= low + gap
    assert np.all(values[:n_low] <= threshold) and np.all(values[n_low:] > threshold - 1e-9)


def test_cva_beats_chance_on_real_oscd_paris(sample_data: Path) -> None:
    root = sample_data / "oscd_paris"
    f1, prevalence = _oscd_f1(root, root / "paris-cm.tif", align=False)
    assert f1 > prevalence


@pytest.mark.slow
@pytest.mark.shared
def test_cva_f1_on_every_oscd_city(shared_data: Path, capsys: pytest.CaptureFixture) -> None:
    """Reference numbers for the README (run with ``-m slow -s``)."""
    rows = []
    for city in OSCD_CITIES:
        images = shared_data / "oscd" / "images" / city
        label = shared_data / "oscd" / "train_labels" / city / "cm" / f"{city}-cm.tif"
        f1, prevalence = _oscd_f1(images, label, align=city in OSCD_NEEDS_ALIGN)
        rows.append((city, f1, prevalence))
    with capsys.disabled():
        print("\ncity         CVA+Otsu F1   change prevalence")
        for city, f1, prevalence in rows:
            print(f"{city:12s} {f1:10.3f} {prevalence:14.3f}")
        print(f"{'mean':12s} {np.mean([r[1] for r in rows]):10.3f}")
    assert all(np.isfinite(f1) for _, f1, _ in rows)
