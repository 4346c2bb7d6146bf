"""The models shipped in the package: load by name, hash-checked, used by default, and useful.

"Useful" is checked with floors that any sane change model clears with margin on these real
scenes and that a broken one fails (:func:`assert_useful`): the packaged weights are replaced as
better models are trained, so the floors are relative to the scene (its change prevalence, CVA
on the same pixels), never to the current model's own figures.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import rasterio

import changedet
from changedet import clouds, config, io, metrics
from changedet.cli import main
from changedet.detectors import learned, modelfile

PARIS = "oscd_paris"
#: Two DSIFN samples (256 x 256 RGB, no georeference). The rgb model's out-of-fold
#: cross-validation (a model that never saw them) reached F1 0.63 / 0.62 on them, about twice
#: CVA's: a sane 3-band model clears the floors below with margin, at a few seconds each.
DSIFN_SCENES = ("0_2", "3_4")


def _scores(mask: np.ndarray, label: np.ndarray, valid: np.ndarray) -> metrics.Metrics:
    return metrics.scores_from_counts(*metrics.confusion_counts_np(mask == 1, label, valid))


def assert_useful(mask: np.ndarray, label: np.ndarray, valid: np.ndarray,
                  cva_mask: np.ndarray, cva_margin: float = 1.5) -> metrics.Metrics:
    """Floors for a change mask on scenes with real change, relative to the scene.

    ``valid`` marks the pixels whose inputs are valid: the mask must be 0/1 on every one of
    them (a NaN score shows up as 255 there). On those pixels, with ``prevalence`` the share of
    changed ones:

    * precision > 2 x prevalence: marking everything scores precision = prevalence;
    * recall > 0.1: marking (almost) nothing scores recall ~ 0;
    * F1 > ``cva_margin`` (1.5) x the F1 of CVA + Otsu, itself > 0.1 so the comparison means
      something.

    All maps (or several scenes) are pooled: pass them concatenated.
    """
    assert mask.shape == label.shape == valid.shape == cva_mask.shape
    assert valid.any()
    assert np.isin(mask[valid], (0, 1)).all(), (
        f"{int(np.sum(~np.isin(mask[valid], (0, 1))))} pixels with valid inputs are not 0/1 "
        f"(255: the score is NaN there)")
    found = _scores(mask, label, valid)
    cva = _scores(cva_mask, label, valid)
    prevalence = float(label[valid].mean())
    assert 0.0 < prevalence < 0.5
    assert cva.f1 > 0.1, f"the CVA baseline is degenerate here (F1 {cva.f1:.3f})"
    summary = (f"P {found.precision:.3f} R {found.recall:.3f} F1 {found.f1:.3f}; CVA F1 "
               f"{cva.f1:.3f}; prevalence {prevalence:.4f}")
    assert found.precision > 2 * prevalence, summary
    assert found.recall > 0.1, summary
    assert found.f1 > cva_margin * cva.f1, summary
    return found


@pytest.mark.parametrize("name, num_bands", [("sentinel2", 13), ("rgb", 3)])
def test_packaged_model_loads_by_name_with_its_card(name, num_bands):
    model = learned.load_model(name)  # checks the sha256 in registry.json
    assert model.config.num_bands == num_bands
    assert model.threshold is not None and 0.0 < model.threshold < 1.0
    assert model.training.get("seed") is not None
    card = modelfile.weights_dir() / f"{name}.md"
    assert card.is_file() and "F1" in card.read_text()
    # Each date is standardised by its own statistics; the threshold and the figures come from
    # leave-scenes-out cross-validation (for an ensemble: its members' paired out-of-fold
    # scores), and the out-of-fold model beats CVA on the same pixels.
    assert model.normalization == "per_image"
    # a threshold chosen under the model's change cap is the cap report's
    cv = model.training["cv"]
    under_cap = model.training["threshold_source"] == "cv_oof_f1_under_cap"
    assert model.threshold == (cv["change_cap"]["threshold"] if under_cap else cv["threshold"])
    expected = ({"cv_oof_f1", "cv_oof_f1_under_cap"} if model.config.members == 1
                else {"ensemble_paired_oof"})
    assert model.training["threshold_source"] in expected
    assert not under_cap or model.max_change_fraction == cv["change_cap"]["max_fraction"]
    assert cv["pooled"]["f1"] > cv["cva"]["f1"]
    assert f"{cv['pooled']['f1']:.3f}" in card.read_text()


def test_sentinel2_takes_band_subsets_holding_blue_green_red():
    model = learned.load_model("sentinel2")
    assert model.required_bands == ("B02", "B03", "B04")
    modelfile.check_bands(model, ("B02", "B03", "B04", "B08"))
    modelfile.check_bands(model, ("blue", "green", "red", "nir", "swir16", "swir22"))
    with pytest.raises(changedet.errors.BandMismatchError, match="missing B04"):
        modelfile.check_bands(model, ("B02", "B03", "B08"))


def test_run_uses_the_sentinel2_model_by_default_and_is_useful(sample_data, tmp_path):
    """The default run on the Paris pair: sentinel2 model, clouds masked (s2cloudless), and
    above the floors on the cloud-free pixels. Paris is one of the model's 14 training cities
    (its out-of-fold figure is in the model card): this checks that the shipped run is sane,
    not how well it generalises."""
    city = sample_data / PARIS
    before, after = city / "imgs_1", city / "imgs_2"
    out = tmp_path / "change.tif"
    assert main(["run", str(before), str(after), "-o", str(out), "-q"]) == 0
    with rasterio.open(city / "paris-cm.tif") as src:
        label = src.read(1) == 2  # OSCD: 1 = no change, 2 = change
    with rasterio.open(out) as src, rasterio.open(next(before.glob("*_B02.tif"))) as ref:
        assert src.tags()["model"] == "sentinel2"
        assert src.crs == ref.crs and src.transform == ref.transform
        mask = src.read(1)
    # The inputs have no nodata, so 255 must be exactly the clouds and shadows that run masks.
    masks = clouds.cloud_masks(io.open_pair(before, after), "auto")
    cloudy = (np.zeros(label.shape, bool) if masks.before is None
              else np.asarray((masks.before | masks.after).compute()))
    np.testing.assert_array_equal(mask == 255, cloudy)
    # CVA without cloud masking (with it, Otsu on the near-unimodal rest keeps almost nothing:
    # a baseline of F1 0 that anything beats), scored on the same cloud-free pixels.
    cva = changedet.detect(before, after, method="cva", cloud_mask="none").mask.values
    # Paris is the calmest training city (0.3 % change): since sentinel2 adapts its difference
    # statistics to each scene (which lifted out-of-fold F1 over the 14 cities from 0.371 to
    # 0.413) it marks more here than the weights memorised (F1 0.26 against 0.38 before; CVA
    # 0.19), so the floor is "beats CVA", not 1.5x.
    assert_useful(mask, label, ~cloudy, cva, cva_margin=1.0)


def test_three_band_photos_use_the_rgb_model_and_it_is_useful(shared_data, tmp_path):
    """The default run on 3-band photos picks the rgb model; on two real DSIFN samples (both
    among the rgb model's training scenes) its masks clear the floors, pooled."""
    root = shared_data / "levir_dsifn_samples" / "samples_DSIFN"
    masks, labels, cvas = [], [], []
    for scene in DSIFN_SCENES:
        before, after = root / "A" / f"{scene}.png", root / "B" / f"{scene}.png"
        out = tmp_path / f"{scene}.tif"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", io.UngeoreferencedWarning)
            assert main(["run", str(before), str(after), "-o", str(out), "-q"]) == 0
            cvas.append(changedet.detect(before, after, method="cva").mask.values)
        with rasterio.open(out) as src:
            assert src.tags()["model"] == "rgb"
            assert src.crs is None  # ungeoreferenced input, ungeoreferenced output
            masks.append(src.read(1))
        with rasterio.open(root / "label" / f"{scene}.png") as src:
            labels.append(src.read(1) > 127)
        assert masks[-1].shape == labels[-1].shape
    mask, label, cva = (np.concatenate(x) for x in (masks, labels, cvas))
    assert_useful(mask, label, np.ones(label.shape, bool), cva)  # PNGs: every pixel is valid


def test_the_floors_fail_broken_masks(shared_data):
    """What a broken model writes (everything, nothing, nodata, noise at the change rate, or
    no better than CVA) fails :func:`assert_useful` on the scenes the rgb check uses."""
    root = shared_data / "levir_dsifn_samples" / "samples_DSIFN"
    labels, cvas = [], []
    for scene in DSIFN_SCENES:
        with rasterio.open(root / "label" / f"{scene}.png") as src:
            labels.append(src.read(1) > 127)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", io.UngeoreferencedWarning)
            cvas.append(changedet.detect(root / "A" / f"{scene}.png", root / "B" / f"{scene}.png",
                                         method="cva").mask.values)
    label, cva = np.concatenate(labels), np.concatenate(cvas)
    valid = np.ones(label.shape, bool)
    noise = np.random.default_rng(0).random(label.shape) < label.mean()
    broken = {"everything": np.ones_like(cva), "nothing": np.zeros_like(cva),
              "nodata": np.full_like(cva, 255), "noise": noise.astype(np.uint8), "cva": cva}
    for what, mask in broken.items():
        with pytest.raises(AssertionError):
            assert_useful(mask, label, valid, cva)
            pytest.fail(f"a mask of {what} passed")  # pragma: no cover
    assert_useful(label.astype(np.uint8), label, valid, cva)  # the truth passes


@pytest.mark.parametrize("name", ["sentinel2", "rgb"])
def test_the_packaged_recipe_is_the_one_that_trained_the_packaged_model(name):
    """``config.packaged(name)`` (``train --preset NAME``, the training script's default) gives
    exactly the architecture and training settings recorded in the shipped model file."""
    model = learned.load_model(name)
    model_cfg, train_cfg = config.packaged(name, model.band_ids)
    assert config.to_dict(model_cfg) == config.to_dict(model.config)
    # files written before a field existed read it at its default (sentinel2 predates scale)
    assert train_cfg == config.train_config_from_dict(model.training["train_config"])
    with pytest.raises(changedet.errors.ConfigError, match="no packaged recipe"):
        config.packaged("landsat")
