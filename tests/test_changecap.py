"""The scene change cap: at most a fraction of a scene marked, exactly; the run writes it on the
input grid, from the score it wrote (no leftovers); the model file stores it; cross-validation
sets it from the training scenes and reports it."""

from __future__ import annotations

import dataclasses

import dask.array as da
import numpy as np
import pytest
import rasterio

import changedet
from changedet import pipeline
from changedet.changecap import capped_threshold
from changedet.data import Scene
from changedet.detectors.learned import load_model
from changedet.detectors.modelfile import save_model
from changedet.errors import ConfigError, ModelFileError
from changedet.training import crossval


def _scores(seed=0, shape=(300, 410)):
    rng = np.random.default_rng(seed)
    score = rng.beta(0.5, 3.0, size=shape).astype(np.float32)
    score[:20] = np.nan  # invalid rows
    return score


@pytest.mark.parametrize("cap", [0.001, 0.02, 0.1, 0.5])
def test_capped_threshold_marks_at_most_the_cap_and_close_to_it(cap):
    score = _scores()
    valid = np.isfinite(score)
    result = capped_threshold(score, 0.05, cap)
    marked = (score > result.threshold).sum() / valid.sum()
    assert marked <= cap
    assert _order_statistic_holds(score, result, cap)  # exact: the (allowed + 1)-th largest
    assert result.raised and result.threshold > 0.05
    assert result.fraction <= cap and result.fraction >= marked
    assert result.uncapped_fraction == pytest.approx((score > 0.05).sum() / valid.sum())


def _order_statistic_holds(score, result, cap):
    valid = np.isfinite(score)
    allowed = int(np.floor(cap * valid.sum() + 1e-9))
    above, at_or_above = (score > result.threshold).sum(), (score >= result.threshold).sum()
    return above <= allowed < at_or_above and result.fraction == above / valid.sum()


def test_saturated_and_tightly_packed_scores_keep_their_most_confident_pixels():
    """A hot scene's probabilities pile up just below 1: the threshold still lands among them,
    so the scene keeps (almost) its full cap of the most confident pixels, not none."""
    rng = np.random.default_rng(5)
    score = rng.uniform(0.0, 0.5, size=(200, 200)).astype(np.float32)
    packed = np.float32(1) - rng.integers(1, 300, size=8000).astype(np.float32) * np.float32(6e-8)
    score.flat[:8000] = packed  # 20 % of the scene within 2e-5 of 1
    score.flat[8000:9000] = 1.0  # and 2.5 % saturated: ties
    result = capped_threshold(score, 0.5, 0.04)
    assert result.raised and _order_statistic_holds(score, result, 0.04)
    assert (score > result.threshold).mean() > 0.039
    # where the ties alone exceed the cap they cannot be split: none of them is marked
    tied = capped_threshold(score, 0.5, 0.01)
    assert tied.threshold == 1.0 and _order_statistic_holds(score, tied, 0.01)


def test_negative_and_infinite_scores():
    rng = np.random.default_rng(2)
    score = rng.normal(size=(120, 130)).astype(np.float32)  # a log-ratio-like score
    score[0, :5] = np.inf
    score[1, :5] = -np.inf
    score[2, :5] = np.nan
    for thr, cap in [(-1.0, 0.3), (0.2, 0.05), (-3.0, 0.9)]:
        result = capped_threshold(score, thr, cap)
        finite = np.where(np.isfinite(score), score, np.nan)
        assert np.isfinite(result.threshold) and _order_statistic_holds(finite, result, cap)


def test_under_the_cap_the_threshold_is_the_models():
    score = _scores()
    result = capped_threshold(score, 0.6, 0.5)
    assert not result.raised and result.threshold == 0.6
    assert result.tags().keys() == {"max_change_fraction", "model_threshold"}


def test_capped_threshold_does_not_depend_on_chunks_or_array_type():
    score = _scores(seed=3)
    whole = capped_threshold(score, 0.1, 0.03)
    for chunks in [(64, 64), (300, 37), (17, 410)]:
        assert capped_threshold(da.from_array(score, chunks=chunks), 0.1, 0.03) == whole


@pytest.mark.parametrize("cap", [0, -0.1, 1.5, float("nan")])
def test_a_cap_outside_0_1_is_refused(cap):
    with pytest.raises(ConfigError, match="max_change"):
        capped_threshold(_scores(), 0.1, cap)


def test_run_with_a_cap_writes_at_most_that_share_on_the_input_grid(synthetic_pair, tmp_path):
    out, score_path = tmp_path / "change.tif", tmp_path / "score.tif"
    plain = changedet.run(synthetic_pair.before_path, synthetic_pair.after_path,
                          tmp_path / "plain.tif", method="cva", progress=False)
    result = changedet.run(synthetic_pair.before_path, synthetic_pair.after_path, out,
                           score_path=score_path, method="cva", progress=False,
                           max_change=0.05, block_px=16)
    with rasterio.open(out) as src, rasterio.open(synthetic_pair.before_path) as ref:
        mask, tags = src.read(1), src.tags()
        assert (src.crs, src.transform, src.shape, src.nodata) == (
            ref.crs, ref.transform, ref.shape, 255)
    with rasterio.open(score_path) as src:
        score = src.read(1)
        assert src.nodata is None or np.isnan(src.nodata)
    valid = synthetic_pair.valid
    np.testing.assert_array_equal(mask == 255, ~valid)
    assert (mask[valid] == 1).mean() <= 0.05
    np.testing.assert_array_equal(mask[valid], score[valid] > result.threshold)
    assert result.threshold > plain.threshold  # Otsu marks the planted box: more than 5 %
    assert float(tags["threshold"]) == result.threshold
    assert float(tags["model_threshold"]) == pytest.approx(plain.threshold)
    assert "raised" in tags["change_cap"]
    # the cap does not depend on the block size, and the first pass leaves nothing behind
    again = changedet.run(synthetic_pair.before_path, synthetic_pair.after_path,
                          tmp_path / "again.tif", method="cva", progress=False, max_change=0.05)
    assert again.threshold == result.threshold
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["before.tif", "after.tif", "plain.tif", "change.tif", "score.tif", "again.tif"])


def test_failure_after_the_first_pass_leaves_no_file(synthetic_pair, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "capped_threshold", fail)
    with pytest.raises(KeyboardInterrupt):
        changedet.run(synthetic_pair.before_path, synthetic_pair.after_path,
                      tmp_path / "change.tif", score_path=tmp_path / "score.tif",
                      method="cva", progress=False, max_change=0.05)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["after.tif", "before.tif"]


def test_failure_in_the_second_write_leaves_no_file(synthetic_pair, tmp_path, monkeypatch):
    """The outputs are written from the first pass's hidden files: a failure part way through
    that write (a disk filling up at the last block) leaves neither outputs nor hidden files."""
    real, calls = pipeline.io.write_outputs, []

    def flaky(score, *args, **kwargs):
        calls.append(kwargs["mask_path"])
        if len(calls) == 2:
            last = tuple(n - 1 for n in score.numblocks)

            def boom(block, block_info=None):
                if block_info[0]["chunk-location"] == last:
                    raise OSError("No space left on device")
                return block

            score = score.map_blocks(boom, dtype=score.dtype)
        return real(score, *args, **kwargs)

    monkeypatch.setattr(pipeline.io, "write_outputs", flaky)
    with pytest.raises(OSError, match="No space left"):
        changedet.run(synthetic_pair.before_path, synthetic_pair.after_path,
                      tmp_path / "change.tif", score_path=tmp_path / "score.tif",
                      method="cva", progress=False, max_change=0.05, block_px=16)
    assert len(calls) == 2 and calls[1] == tmp_path / "change.tif"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["after.tif", "before.tif"]


@pytest.fixture(scope="module")
def capped_model(tmp_path_factory):
    """The packaged sentinel2 model with a tight stored cap (0.2 % of a scene)."""
    model = load_model("sentinel2")
    path = tmp_path_factory.mktemp("model") / "capped.msgpack"
    save_model(path, dataclasses.replace(model, max_change_fraction=0.002))
    return path


def test_a_stored_cap_applies_to_the_models_own_threshold_only(sample_data, capped_model,
                                                               tmp_path):
    paris = sample_data / "oscd_paris"
    args = (paris / "imgs_1", paris / "imgs_2")
    kw = {"model": capped_model, "progress": False, "cloud_mask": "none"}
    capped = changedet.run(*args, tmp_path / "capped.tif", **kw)
    off = changedet.run(*args, tmp_path / "off.tif", max_change=1, **kw)
    own = changedet.run(*args, tmp_path / "own.tif", threshold=off.threshold, **kw)
    model_threshold = load_model(capped_model).threshold
    assert off.threshold == own.threshold == model_threshold
    assert capped.threshold > model_threshold
    with rasterio.open(tmp_path / "capped.tif") as c, rasterio.open(tmp_path / "off.tif") as o:
        cm, om = c.read(1), o.read(1)
        assert c.tags()["max_change_fraction"] == "0.002"
    valid = cm != 255
    assert (cm[valid] == 1).mean() <= 0.002 < (om[valid] == 1).mean()
    assert not np.any((cm == 1) & (om != 1))  # the cap only removes marks
    # detect applies the same cap
    ds = changedet.detect(*args, model=capped_model, cloud_mask="none")
    assert ds.attrs["threshold"] == capped.threshold
    assert ds.attrs["max_change_fraction"] == 0.002


def test_model_files_keep_the_cap_and_older_files_have_none(tmp_path):
    model = load_model("rgb")  # written before the cap existed
    assert model.max_change_fraction is None
    path = save_model(tmp_path / "m.msgpack", dataclasses.replace(model, max_change_fraction=0.04))
    assert load_model(path).max_change_fraction == 0.04
    with pytest.raises(ModelFileError, match="max_change_fraction"):
        dataclasses.replace(model, max_change_fraction=1.5)


def _scene(name, changed_fraction, seed):
    rng = np.random.default_rng(seed)
    label = np.zeros(2000, np.uint8)
    label[rng.permutation(2000)[:round(changed_fraction * 2000)]] = 1
    label = label.reshape(40, 50)
    ones = np.ones((1, 40, 50), np.float32)
    return Scene(name, ones, ones, label, np.ones((40, 50), bool), ("1",))


def test_cv_sets_the_cap_from_the_training_scenes_and_keeps_it_only_if_it_helps():
    scenes = [_scene("a", 0.01, 0), _scene("b", 0.023, 1), _scene("c", 0.005, 2)]
    assert crossval.change_cap_for(scenes) == 0.03  # 2.3 % rounded up
    rng = np.random.default_rng(5)
    # scene "c" is "hot": most of it scores above the threshold (a score-scale failure)
    # float32, as the out-of-fold maps are
    scores = {s.name: np.where(s.label == 1, 0.9, rng.uniform(0, 0.4, s.label.shape)
                               ).astype(np.float32) for s in scenes}
    scores["c"] = np.where(scenes[2].label == 1, 0.95, rng.uniform(0.3, 0.9, (40, 50))
                           ).astype(np.float32)
    report = crossval.change_cap_report(scores, scenes, [["a"], ["b", "c"]], 0.5)
    assert report["kept"] and list(report["raised"]) == ["c"]
    assert report["pooled"]["f1"] > report["f1_without"]
    assert report["per_scene"]["a"]["f1"] == 1.0
    # where no scene is hot, the cap changes nothing, and a cap that never binds is not kept
    calm = dict(scores, c=np.where(scenes[2].label == 1, 0.9, 0.1))
    report = crossval.change_cap_report(calm, scenes, [["a"], ["b", "c"]], 0.5)
    assert report["raised"] == {} and report["pooled"]["f1"] == report["f1_without"] == 1.0
    assert not report["kept"]


def _scored(name, seed, hot):
    """A 40 x 50 scene with 2 % change: a calm one whose change scores only 0.3-0.6 (the rest
    below 0.35), or a hot one whose change scores 0.95 and whose rest floods 0.2-0.9."""
    rng = np.random.default_rng(seed)
    scene = _scene(name, 0.02, seed)
    changed = scene.label == 1
    if hot:
        score = np.where(changed, 0.95, rng.uniform(0.2, 0.9, changed.shape))
    else:
        score = np.where(changed, rng.uniform(0.3, 0.6, changed.shape),
                         rng.uniform(0.0, 0.35, changed.shape))
    return scene, score.astype(np.float32)


@pytest.mark.parametrize("cap", [0.01, 0.03])  # 0.01: the cap falls among tied scores (0.95)
def test_cap_counts_at_every_threshold_are_those_of_the_run_rule(cap):
    """The report's fast counts (effective threshold max(t, the cap's)) equal what ``run`` does:
    capped_threshold at t, then score > it, over the labelled pixels."""
    from changedet import metrics
    from changedet.training import capping

    scene, score = _scored("hot", 3, hot=True)
    score[:5] = np.nan  # nodata rows: outside the cap's valid pixels and the counts
    scene = scene._replace(valid=np.isfinite(score))
    table = capping._table(score, scene, cap)
    for t in (0.0, 0.25, 0.5, 0.89, 0.94, 0.96):
        eff = capped_threshold(score, t, cap).threshold
        expected = metrics.confusion_counts_np(score > eff, scene.label, scene.valid)
        assert tuple(table.counts(np.array([t]), True)[0]) == tuple(expected), t
        expected = metrics.confusion_counts_np(score > t, scene.label, scene.valid)
        assert tuple(table.counts(np.array([t]), False)[0]) == tuple(expected), t


def test_cv_rechooses_the_threshold_under_the_cap_only_when_it_wins_nested():
    """With a cap, hot scenes no longer force a high threshold: chosen under the cap, the
    threshold drops to where the calm scenes' weak change is found; every fold's choice on
    the other folds beats the cap at the uncapped threshold, so the lower one is kept."""
    pairs = [_scored(f"s{i}", i, hot=i % 2 == 1) for i in range(8)]
    scenes = [p[0] for p in pairs]
    scores = {s.name: sc for s, sc in pairs}
    folds = [[f"s{2 * k}", f"s{2 * k + 1}"] for k in range(4)]
    thr, pooled, ap, per_scene, per_fold = crossval.oof_report(scores, scenes, folds)
    report = crossval.change_cap_report(scores, scenes, folds, thr)
    assert thr > 0.6  # without the cap, the hot scenes' flood keeps the threshold high
    assert report["rechosen"] and 0.3 < report["threshold"] < 0.4
    nested = report["nested"]
    assert nested["cap_rechosen"] > nested["cap"] >= nested["threshold_only"]
    # the cap ships because the rule that ships (cap + re-chosen threshold) wins nested
    assert report["kept"] and report["pooled"]["f1"] > 0.9 > report["f1_without"]
    assert sorted(report["raised"]) == ["s1", "s3", "s5", "s7"]
    # what train_with_cv stores: the cap and the threshold chosen under it
    result = crossval.CVResult(thr, pooled, ap, per_scene, per_fold, folds, None, 0.0, [], None,
                               report)
    model = crossval.with_cv_decision(load_model("rgb"), result)
    assert model.threshold == report["threshold"] and model.max_change_fraction == 0.02
    assert model.training["threshold_source"] == "cv_oof_f1_under_cap"
    assert model.training["cv"]["change_cap"]["nested"] == nested
    # where the cap does not help, the model keeps the pooled-OOF threshold and no cap
    calm = {s.name: _scored(s.name, i, hot=False)[1] for i, s in enumerate(scenes)}
    thr, *_ = crossval.oof_report(calm, scenes, folds)
    report = crossval.change_cap_report(calm, scenes, folds, thr)
    assert not report["rechosen"] and report["threshold"] == thr and not report["kept"]
    model = crossval.with_cv_decision(
        load_model("rgb"), dataclasses.replace(result, threshold=thr, change_cap=report))
    assert model.threshold == thr and model.max_change_fraction is None
    assert model.training["threshold_source"] == "cv_oof_f1"


def test_a_single_fold_keeps_the_threshold_and_judges_the_cap_in_sample():
    """A screening run of one fold has nothing to nest: the model's threshold stays, and the
    cap is kept on the pooled comparison alone."""
    pairs = [_scored(f"s{i}", i, hot=i % 2 == 1) for i in range(4)]
    scenes = [p[0] for p in pairs]
    scores = {s.name: sc for s, sc in pairs}
    report = crossval.change_cap_report(scores, scenes, [[s.name for s in scenes]], 0.5)
    assert report["nested"] is None and not report["rechosen"] and report["threshold"] == 0.5
    assert report["kept"] == (report["pooled"]["f1"] > report["f1_without"])
