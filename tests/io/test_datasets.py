"""Tests for changedet.io.datasets on the real benchmark layouts (skipped without shared data)."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from changedet.errors import BandMismatchError, DatasetError
from changedet.io import datasets


def _read(path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


def test_oscd_city_labels_are_1_no_change_2_change(shared_data):
    root = shared_data / "oscd"
    (scene,) = datasets.load_oscd(root, cities=["paris"])
    raw = _read(root / "train_labels/paris/cm/paris-cm.tif")
    assert scene.name == "oscd/paris"
    assert scene.before.shape == (13, *raw.shape) and scene.after.shape == scene.before.shape
    assert scene.before.dtype == np.float32 and scene.label.dtype == np.uint8
    assert scene.band_ids[:4] == ("B01", "B02", "B03", "B04") and len(scene.band_ids) == 13
    np.testing.assert_array_equal(scene.label, (raw == 2).astype(np.uint8))
    assert int(scene.label.sum()) == int((raw == 2).sum()) == 458
    assert scene.valid.all()
    # Sentinel-2 L1C reflectances (uint16 digital numbers), not zeros or NaN.
    assert 100 < float(scene.before[1].mean()) < 10_000 and np.isfinite(scene.after).all()


def test_oscd_resamples_mismatched_second_date_and_selects_bands(shared_data):
    (scene,) = datasets.load_oscd(shared_data / "oscd", cities=["saclay_e"],
                                  bands=("B04", "B03", "B02"))
    assert scene.band_ids == ("B04", "B03", "B02")
    assert scene.before.shape == scene.after.shape == (3, 639, 688)
    assert int(scene.label.sum()) == 4346
    # The resampled second date is real imagery on the whole grid.
    assert float(scene.after[:, scene.valid].std()) > 10
    # 1-based indices select the same bands, as run's --bands does (train --bands 4,3,2)
    (by_index,) = datasets.load_oscd(shared_data / "oscd", cities=["saclay_e"],
                                     bands=("4", "3", "2"))
    assert by_index.band_ids == scene.band_ids
    np.testing.assert_array_equal(by_index.before, scene.before)


def test_oscd_errors(shared_data, tmp_path):
    with pytest.raises(BandMismatchError, match="B99"):
        datasets.load_oscd(shared_data / "oscd", cities=["paris"], bands=("B99",))
    with pytest.raises(DatasetError, match="atlantis"):
        datasets.load_oscd(shared_data / "oscd", cities=["atlantis"])


def test_levir_sample_binarised_and_unlabelled_skipped(shared_data):
    root = shared_data / "levir_dsifn_samples/samples_LEVIR"
    scenes = datasets.load_levir(root)
    names = [s.name for s in scenes]
    assert len(scenes) == 11 and "samples_LEVIR/test_113_0256" not in names  # no label
    s = scenes[names.index("samples_LEVIR/test_2_0000_0000")]
    raw = _read(root / "label/test_2_0000_0000.png")
    np.testing.assert_array_equal(s.label, (raw > 127).astype(np.uint8))
    assert s.before.shape == (3, 256, 256) and s.band_ids == ("1", "2", "3")
    assert s.label.max() == 1 and s.valid.all()


def test_airchange_pairs_case_insensitive_and_grey_values(shared_data):
    root = shared_data / "airchange"
    scenes = datasets.load_airchange(root)
    names = [s.name for s in scenes]
    assert len(scenes) == 11
    assert "airchange/Archieve" in names and "airchange/Szada/5" in names  # im2.BMP
    s = scenes[names.index("airchange/Szada/6")]  # gt.BMP with stray grey values
    raw = _read(root / "Szada/6/gt.BMP")
    assert set(np.unique(raw)) - {0, 255}  # the quirk is really there
    np.testing.assert_array_equal(s.label, (raw > 127).astype(np.uint8))
    assert s.before.shape == (3, 640, 952)
    arch = scenes[names.index("airchange/Archieve")]
    assert arch.before.shape == (3, 724, 1048)


def test_taizhou_sparse_labels_only_marked_pixels_valid(shared_data):
    root = shared_data / "landsat/Taizhou"
    s = datasets.load_sparse(root / "2000TM", root / "2003TM", root / "change.bmp",
                             root / "unchanged.bmp")
    changed = _read(root / "change.bmp") > 127
    unchanged = _read(root / "unchanged.bmp") > 127
    assert s.before.shape == (6, 400, 400)
    assert int(s.valid.sum()) == int(changed.sum() + unchanged.sum()) == 4227 + 17163
    assert int(s.label[s.valid].sum()) == int(changed.sum())
    assert not s.valid[~(changed | unchanged)].any()  # unlabelled pixels are invalid


def test_load_pair_generic_with_ignore_value(sample_data):
    root = sample_data / "oscd_paris"
    s = datasets.load_pair(root / "imgs_1", root / "imgs_2", root / "paris-cm.tif",
                           change_values=[2], ignore_values=[], name="paris",
                           bands=("B04", "B03", "B02"))
    raw = _read(root / "paris-cm.tif")
    np.testing.assert_array_equal(s.label, (raw == 2).astype(np.uint8))
    s2 = datasets.load_pair(root / "imgs_1", root / "imgs_2", root / "paris-cm.tif",
                            change_values=[2], ignore_values=[1], bands=("B04",))
    assert int(s2.valid.sum()) == int((raw == 2).sum())


def test_split_by_scene(sample_data):
    root = sample_data / "oscd_paris"
    a = datasets.load_pair(root / "imgs_1", root / "imgs_2", root / "paris-cm.tif",
                           change_values=[2], name="oscd/paris", bands=("B02",))
    b = a._replace(name="oscd/rennes")
    c = a._replace(name="oscd/pisa")
    train, val = datasets.split_by_scene([a, b, c], ["rennes"])
    assert [s.name for s in train] == ["oscd/paris", "oscd/pisa"]
    assert [s.name for s in val] == ["oscd/rennes"]
    with pytest.raises(DatasetError, match="lyon"):
        datasets.split_by_scene([a, b], ["lyon"])
    with pytest.raises(DatasetError, match="unique"):
        datasets.split_by_scene([a, a], ["paris"])
