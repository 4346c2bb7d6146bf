"""Leave-scenes-out cross-validation: folds by scene, out-of-fold scores from run's own path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio

from changedet import config, evaluate, metrics
from changedet.cli import main
from changedet.detectors.learned import load_model
from changedet.errors import ConfigError
from changedet.io import datasets
from changedet.training import crossval


def test_folds_partition_the_scenes_deterministically():
    names = [f"s{i}" for i in range(7)]
    folds = crossval.make_folds(names, 3)
    assert sorted(n for f in folds for n in f) == sorted(names)
    assert [len(f) for f in folds] == [3, 2, 2]
    assert crossval.make_folds(names, 3, seed=4) == crossval.make_folds(names, 3, seed=4)
    assert crossval.make_folds(names, 3, seed=4) != folds
    with pytest.raises(ConfigError):
        crossval.make_folds(names, 8)


def test_average_precision_of_a_perfect_and_a_useless_ranking():
    label = np.array([0, 0, 1, 1, 0, 1], np.uint8)
    valid = np.ones(6, bool)
    perfect = metrics.pr_curve(label.astype(float), label, valid, 64)
    assert crossval.average_precision(perfect) == pytest.approx(1.0)
    inverted = metrics.pr_curve(1.0 - label, label, valid, 64)
    assert crossval.average_precision(inverted) < 0.6


@pytest.fixture(scope="module")
def levir(shared_data):
    return datasets.load_levir(shared_data / "levir_dsifn_samples" / "samples_LEVIR")


def test_out_of_fold_scores_are_run_scores_of_the_fold_model(levir, shared_data, tmp_path):
    model_cfg, train_cfg = config.tiny(3)
    result = crossval.cross_validate(levir, 2, model_cfg, train_cfg, tmp_path / "cv",
                                     name="tiny")
    assert sorted(n for f in result.folds for n in f) == sorted(s.name for s in levir)
    assert set(result.per_scene) == {s.name for s in levir}
    assert 0.0 < result.threshold < 1.0 and 0.0 <= result.pooled.f1 <= 1.0
    record = json.loads((tmp_path / "cv" / "cv.json").read_text())
    assert record["threshold"] == result.threshold and len(record["per_fold_f1"]) == 2
    # Pooled counts at the OOF threshold reproduce the pooled F1.
    oof = np.load(tmp_path / "cv" / "oof.npz")
    by_name = {s.name: s for s in levir}
    counts = metrics.sum_counts(*(
        metrics.confusion_counts_np(oof[n.replace("/", "__")] > result.threshold,
                                    by_name[n].label, by_name[n].valid) for n in by_name))
    assert metrics.scores_from_counts(*counts).f1 == pytest.approx(result.pooled.f1)
    # The held-out scene's OOF score is what `changedet run` writes with that fold's model.
    name = result.folds[0][0]
    fold_model = result.model_paths[0]
    sample = name.split("/")[1]
    root = shared_data / "levir_dsifn_samples" / "samples_LEVIR"
    before = next((root / "A").glob(f"{sample}.*"))
    after = next((root / "B").glob(f"{sample}.*"))
    score_path = tmp_path / "score.tif"
    assert main(["run", str(before), str(after), "-o", str(tmp_path / "m.tif"), "--score",
                 str(score_path), "--model", fold_model, "-q"]) == 0
    with rasterio.open(score_path) as src:
        written = src.read(1)
    np.testing.assert_allclose(written, oof[name.replace("/", "__")], atol=1e-6)
    scene = by_name[name]
    again = evaluate.score_scene(load_model(fold_model).prepare_scene(scene), scene)
    np.testing.assert_array_equal(again, oof[name.replace("/", "__")])
    # The per-quality report: "fast" is the OOF result itself; "best" (test-time
    # augmentation) scores the same held-out scenes differently.
    report = crossval.quality_report(result.model_paths, levir, result.folds, result.threshold)
    assert report["fast"]["f1"] == pytest.approx(result.pooled.f1)
    assert report["fast"]["average_precision"] == pytest.approx(result.average_precision)
    assert report["best"]["average_precision"] != pytest.approx(result.average_precision)
    assert 0.0 <= report["best"]["best_f1"] <= 1.0 and report["best"]["seconds"] > 0
    # The resolution report: at zoom 1 the OOF result itself; at half the pixel density the
    # same fold models score other (resampled) scenes.
    report = crossval.resolution_report(result.model_paths, levir, result.folds,
                                        result.threshold, zooms=(1.0, 0.5))
    assert report["x1"]["f1"] == pytest.approx(result.pooled.f1)
    assert report["x0.5"]["average_precision"] != pytest.approx(result.average_precision)
    assert 0.0 <= report["x0.5"]["f1"] <= 1.0


def test_train_cv_cli_ships_a_model_with_the_out_of_fold_threshold(shared_data, tmp_path):
    out = tmp_path / "m.msgpack"
    root = shared_data / "levir_dsifn_samples" / "samples_LEVIR"
    assert main(["train", "--dataset", "levir", str(root), "--cv", "2", "--preset", "tiny",
                 "-o", str(out), "-q"]) == 0
    model = load_model(out)
    cv = model.training["cv"]
    if model.training["threshold_source"] == "cv_oof_f1_under_cap":  # chosen under the cap
        assert model.threshold == cv["change_cap"]["threshold"] != cv["threshold"]
        assert model.max_change_fraction == cv["change_cap"]["max_fraction"]
        assert cv["change_cap"]["nested"]["cap_rechosen"] > cv["change_cap"]["nested"]["cap"]
    else:
        assert model.training["threshold_source"] == "cv_oof_f1"
        assert model.threshold == cv["threshold"]
    assert len(cv["folds"]) == 2 and len(model.training["train_scenes"]) == 11
    assert main(["train", "--dataset", "levir", str(root), "--cv", "2", "--val",
                 "val_27_0000_0256", "-o", str(tmp_path / "x.msgpack"), "-q"]) == 2
