"""Tests for changedet.evaluate: per-scene/pooled metrics, CVA baseline, invalid pixels ignored."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from changedet import config, evaluate, metrics, training
from changedet.data import Scene
from changedet.errors import BandMismatchError
from changedet.io import datasets


@dataclasses.dataclass
class OracleDetector:
    """Scores |after - before| of band 0: a transparent detector with known output."""

    name: str = "oracle"
    halo_px: int = 3
    threshold: float | None = 25.0
    band_ids: tuple[str, ...] | None = None

    def score_block(self, before: np.ndarray, after: np.ndarray, *,
                    context_px: int = 0) -> np.ndarray:
        score = np.abs(after[0] - before[0]).astype(np.float32)
        h, w = score.shape
        return score[context_px:h - context_px, context_px:w - context_px]


def _scene(name: str, seed: int) -> Scene:
    rng = np.random.default_rng(seed)
    before = rng.normal(100, 5, (2, 30, 40)).astype(np.float32)
    after = before + rng.normal(0, 1, before.shape).astype(np.float32)
    label = np.zeros((30, 40), np.uint8)
    label[10:20, 5:15] = 1
    after[:, label == 1] += 50
    valid = np.ones((30, 40), bool)
    return Scene(name, before, after, label, valid, ("1", "2"))


def test_per_scene_and_pooled_counts_with_invalid_pixels_ignored():
    a, b = _scene("a", 0), _scene("b", 1)
    # A false alarm in b, and a wrong label hidden by valid=False in a.
    b.after[0, 0, 0] += 100
    a.label[0, :5] = 1
    a.valid[0, :5] = False
    report = evaluate.evaluate(OracleDetector(), [a, b], baseline=True)
    ra = [r for r in report.results if r.scene == "a" and r.method == "oracle"][0]
    rb = [r for r in report.results if r.scene == "b" and r.method == "oracle"][0]
    assert tuple(ra.counts) == (100, 0, 0, 1200 - 100 - 5)
    assert tuple(rb.counts) == (100, 1, 0, 1200 - 101)
    pooled = report.pooled["oracle"]
    assert pooled.f1 == pytest.approx(2 * 200 / (2 * 200 + 1))
    assert pooled == metrics.scores_from_counts(200, 1, 0, 1095 + 1099)
    # CVA (Otsu per scene) finds this planted change too, on the same pixels.
    assert report.pooled["cva"].f1 > 0.9
    assert report.methods == ("oracle", "cva")
    text = report.to_table()
    assert "POOLED" in text and "cva" in text and "oracle" in text
    data = json.loads(report.to_json())
    assert data["pooled"]["oracle"]["f1"] == pytest.approx(pooled.f1)
    assert len(data["scenes"]) == 4


def test_band_mismatch_is_refused():
    det = OracleDetector(band_ids=("B04",))
    with pytest.raises(BandMismatchError, match="B04"):
        evaluate.evaluate(det, [_scene("a", 0)])


#: DSIFN samples held aside from the short training below (the other 8 train it).
HELD_ASIDE = ("samples_DSIFN/0_2", "samples_DSIFN/3_4")


def _untrained_best_f1(model_cfg, train_cfg, scenes) -> float:
    """F1 of the untrained network (the training's initial weights), at the threshold best in
    hindsight on ``scenes``: an oracle threshold the trained model does not get. Scored through
    run's scoring path, as the trained model is."""
    import numpy as np
    from flax import nnx

    from changedet.models.siamese import SiameseNet

    net = SiameseNet(model_cfg, rngs=nnx.Rngs(train_cfg.seed))
    n = model_cfg.num_bands
    untrained = training.to_change_model(training.TrainedModel(
        net=net, model_cfg=model_cfg, train_cfg=train_cfg, band_ids=scenes[0].band_ids,
        mean=np.zeros(n), std=np.ones(n), threshold=0.5, margin=None), "untrained")
    scores = [evaluate.score_scene(untrained, s) for s in scenes]
    return metrics.best_threshold(scores, [s.label for s in scenes], [s.valid for s in scenes],
                                  128)[1]


def test_short_training_beats_random_init_and_cva_on_held_aside_scenes(shared_data, tmp_path):
    """80 steps of the tiny preset on 8 real DSIFN pairs, scored on 2 pairs it never saw: the
    trained model, at its own threshold, must beat the same network untrained even with the
    untrained net's threshold chosen in hindsight on the held-aside pixels, and CVA + Otsu on
    the same pixels."""
    scenes = datasets.load_levir(shared_data / "levir_dsifn_samples" / "samples_DSIFN")
    held = [s for s in scenes if s.name in HELD_ASIDE]
    train = [s for s in scenes if s.name not in HELD_ASIDE]
    assert len(held) == 2 and len(train) == 8
    mc, tc = config.tiny()
    tc = dataclasses.replace(tc, num_epochs=1, steps_per_epoch=80, normalization="per_image",
                             pos_weight=0.0, pos_weight_power=0.5)
    # No validation scenes: the threshold is Otsu's on the training scores, so nothing about
    # the held-aside scenes steers the model, its epoch or its threshold.
    model = training.fit(train, [], mc, tc, tmp_path, progress=False)
    report = evaluate.evaluate(model, held)
    r = report.results[0]
    assert r.method == model.name and r.threshold == model.threshold
    # The evaluation counts every valid pixel once per method.
    assert sum(r.counts) == sum(report.results[1].counts) == int(held[0].valid.sum())
    trained_f1, cva_f1 = report.pooled[model.name].f1, report.pooled["cva"].f1
    untrained_f1 = _untrained_best_f1(mc, tc, held)
    summary = f"trained F1 {trained_f1:.3f}; untrained {untrained_f1:.3f}; CVA {cva_f1:.3f}"
    assert trained_f1 > 1.2 * untrained_f1, summary
    assert trained_f1 > 1.2 * cva_f1, summary
