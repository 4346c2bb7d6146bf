"""Tests for changedet.evaluate: per-scene/pooled metrics, CVA baseline, invalid pixels ignored."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from changedet import config, datasets, evaluate, metrics, training
from changedet.data import Scene
from changedet.errors import BandMismatchError


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


def test_trained_model_on_real_scene_vs_cva(sample_data, tmp_path):
    root = sample_data / "oscd_paris"
    s = datasets.load_pair(root / "imgs_1", root / "imgs_2", root / "paris-cm.tif",
                           change_values=[2], name="paris", bands=("B04", "B03", "B02"))
    crop = s._replace(before=s.before[:, :96, :96], after=s.after[:, :96, :96],
                      label=s.label[:96, :96], valid=s.valid[:96, :96])
    mc, tc = config.tiny()
    tc = dataclasses.replace(tc, num_epochs=1, steps_per_epoch=2)
    model = training.fit([crop], [crop], mc, tc, tmp_path, progress=False)
    report = evaluate.evaluate(model, [crop])
    r = report.results[0]
    assert r.method == model.name and r.threshold == model.threshold
    # The evaluation counts every valid pixel once per method.
    assert sum(r.counts) == sum(report.results[1].counts) == int(crop.valid.sum())
