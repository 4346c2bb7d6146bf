"""The models shipped in the package: load by name, hash-checked, used by default, and useful."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

import changedet
from changedet import metrics, modelfile
from changedet.cli import main

PARIS = "oscd_paris"


def _f1(mask: np.ndarray, label: np.ndarray) -> float:
    counts = metrics.confusion_counts_np(mask == 1, label, mask != 255)
    return metrics.scores_from_counts(*counts).f1


@pytest.mark.parametrize("name, num_bands", [("sentinel2", 13), ("rgb", 3)])
def test_packaged_model_loads_by_name_with_its_card(name, num_bands):
    model = modelfile.load_model(name)  # checks the sha256 in registry.json
    assert model.config.num_bands == num_bands
    assert model.threshold is not None and 0.0 < model.threshold < 1.0
    assert model.training.get("seed") is not None
    card = modelfile.weights_dir() / f"{name}.md"
    assert card.is_file() and "F1" in card.read_text()
    # Each date is standardised by its own statistics; the threshold and the figures come from
    # leave-scenes-out cross-validation, and the out-of-fold model beats CVA on the same pixels.
    assert model.normalization == "per_image"
    cv = model.training["cv"]
    assert model.threshold == cv["threshold"]
    assert model.training["threshold_source"] == "cv_oof_f1"
    assert cv["pooled"]["f1"] > cv["cva"]["f1"]
    assert f"{cv['pooled']['f1']:.3f}" in card.read_text()


def test_sentinel2_takes_band_subsets_holding_blue_green_red():
    model = modelfile.load_model("sentinel2")
    assert model.required_bands == ("B02", "B03", "B04")
    modelfile.check_bands(model, ("B02", "B03", "B04", "B08"))
    modelfile.check_bands(model, ("blue", "green", "red", "nir", "swir16", "swir22"))
    with pytest.raises(changedet.errors.BandMismatchError, match="missing B04"):
        modelfile.check_bands(model, ("B02", "B03", "B08"))


def test_run_uses_the_sentinel2_model_by_default_and_beats_cva(sample_data, tmp_path):
    city = sample_data / PARIS
    out, cva_out = tmp_path / "change.tif", tmp_path / "cva.tif"
    assert main(["run", str(city / "imgs_1"), str(city / "imgs_2"), "-o", str(out), "-q"]) == 0
    assert main(["run", str(city / "imgs_1"), str(city / "imgs_2"), "-o", str(cva_out),
                 "--method", "cva", "-q"]) == 0
    with rasterio.open(city / "paris-cm.tif") as src:
        label = src.read(1) == 2  # OSCD: 1 = no change, 2 = change
    with rasterio.open(out) as src, rasterio.open(city / "imgs_1" / next(
            p.name for p in (city / "imgs_1").iterdir() if p.name.endswith("_B02.tif"))) as ref:
        assert src.tags()["model"] == "sentinel2"
        assert src.crs == ref.crs and src.transform == ref.transform
        mask = src.read(1)
    with rasterio.open(cva_out) as src:
        cva_mask = src.read(1)
    # Paris is one of the 14 training cities (its out-of-fold figure is in the model card); here
    # the check is that the default run is sane: neither empty nor everything, and above CVA.
    assert 0.002 < (mask == 1).mean() < 0.2
    assert _f1(mask, label) > 1.5 * _f1(cva_mask, label)


def test_three_band_photos_use_the_rgb_model(shared_data, tmp_path):
    pair = shared_data / "airchange" / "Szada" / "7"  # a validation scene of the rgb model
    out = tmp_path / "change.tif"
    assert main(["run", str(pair / "im1.BMP"), str(pair / "im2.bmp"), "-o", str(out), "-q"]) == 0
    with rasterio.open(out) as src:
        assert src.tags()["model"] == "rgb"
        assert src.crs is None  # ungeoreferenced input, ungeoreferenced output
        mask = src.read(1)
    with rasterio.open(pair / "gt.bmp") as src:
        label = src.read(1) > 127
    assert mask.shape == label.shape
    assert _f1(mask, label) > label.mean()  # better than guessing at the change rate
