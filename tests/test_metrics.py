"""Tests for changedet.metrics: counts vs hand-computed values, scores, PR curve, threshold."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from changedet import metrics
from changedet.errors import EmptySceneError

# A 3x4 case counted by hand.
PRED = np.array([[1, 1, 0, 0], [1, 0, 0, 1], [0, 0, 1, 1]], dtype=bool)
LABEL = np.array([[1, 0, 0, 1], [1, 0, 1, 1], [0, 0, 0, 0]], dtype=np.uint8)
VALID = np.array([[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 1]], dtype=bool)
# valid pixels: tp = (0,0),(1,0),(1,3) = 3; fp = (0,1),(2,3) = 2 ((2,2) invalid);
# fn = (0,3),(1,2) = 2; tn = (0,2),(1,1),(2,0),(2,1) = 4.
HAND = (3, 2, 2, 4)


def test_counts_match_hand_computed_numpy_and_jax():
    assert tuple(metrics.confusion_counts_np(PRED, LABEL, VALID)) == HAND
    jc = jax.jit(metrics.confusion_counts)(PRED, LABEL, VALID)
    assert tuple(int(v) for v in jc) == HAND


def test_scores_from_hand_counts():
    m = metrics.scores_from_counts(*HAND)
    assert m.precision == pytest.approx(3 / 5)
    assert m.recall == pytest.approx(3 / 5)
    assert m.f1 == pytest.approx(2 * 3 / (2 * 3 + 2 + 2))
    assert m.iou == pytest.approx(3 / 7)
    assert m.overall_accuracy == pytest.approx(7 / 11)
    po, pe = 7 / 11, (5 * 5 + 6 * 6) / 121
    assert m.kappa == pytest.approx((po - pe) / (1 - pe))


def test_empty_classes_have_defined_values():
    # No change anywhere and none predicted: perfect, not NaN.
    m = metrics.scores_from_counts(0, 0, 0, 50)
    assert m == metrics.Metrics(1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    # Missed every changed pixel.
    m = metrics.scores_from_counts(0, 0, 5, 50)
    assert (m.precision, m.recall, m.f1, m.iou) == (0.0, 0.0, 0.0, 0.0)
    assert m.kappa == 0.0
    # Nothing valid: nothing was scored, so no score; a number (1 = "perfect") would let an
    # all-nodata change map pass every "F1 > floor" check.
    m = metrics.scores_from_counts(0, 0, 0, 0)
    assert all(np.isnan(v) for v in m)
    assert not m.f1 > 0.0


def test_no_valid_pixel_gives_nan_curves_and_no_best_threshold():
    score = np.array([0.1, 0.9, np.nan])
    label = np.array([0, 1, 1])
    curve = metrics.pr_curve(score, label, np.zeros(3, bool), num_thresholds=5)
    assert np.isnan(curve.f1).all() and np.isnan(curve.precision).all()
    with pytest.raises(EmptySceneError, match="no valid labelled pixel"):
        metrics.best_threshold(score, label, np.zeros(3, bool), num_thresholds=5)
    # All-NaN scores (a diverged model) are invalid too: an error, not F1 = 1.
    with pytest.raises(EmptySceneError, match="NaN"):
        metrics.best_threshold(np.full(3, np.nan), label, np.ones(3, bool), num_thresholds=5)
    # Valid pixels with finite scores give numbers again.
    valid = np.array([True, True, False])
    assert metrics.best_threshold(score, label, valid, num_thresholds=5)[1] == 1.0


@settings(deadline=None, max_examples=30)
@given(
    h=st.integers(2, 12),
    w=st.integers(1, 12),
    seed=st.integers(0, 2**16),
    split=st.floats(0.0, 1.0),
)
def test_counts_of_two_halves_sum_to_whole(h, w, seed, split):
    rng = np.random.default_rng(seed)
    pred, label = rng.random((h, w)) > 0.5, rng.random((h, w)) > 0.7
    valid = rng.random((h, w)) > 0.2
    cut = int(round(split * h))
    whole = metrics.confusion_counts_np(pred, label, valid)
    top = metrics.confusion_counts_np(pred[:cut], label[:cut], valid[:cut])
    bottom = metrics.confusion_counts_np(pred[cut:], label[cut:], valid[cut:])
    assert metrics.sum_counts(top, bottom) == whole
    assert sum(whole) == int(valid.sum())
    jwhole = metrics.confusion_counts(jnp.asarray(pred), jnp.asarray(label), jnp.asarray(valid))
    assert tuple(int(v) for v in jwhole) == tuple(whole)


@settings(deadline=None, max_examples=30)
@given(h=st.integers(1, 10), w=st.integers(1, 10), seed=st.integers(0, 2**16))
def test_perfect_prediction_scores_one(h, w, seed):
    rng = np.random.default_rng(seed)
    label = rng.random((h, w)) > 0.6
    valid = rng.random((h, w)) > 0.1
    m = metrics.scores_from_counts(*metrics.confusion_counts_np(label, label, valid))
    if not valid.any():  # nothing to score: NaN, not "perfect"
        assert all(np.isnan(v) for v in m)
        return
    assert m.f1 == 1.0 and m.iou == 1.0 and m.overall_accuracy == 1.0 and m.kappa == 1.0


def test_pr_curve_matches_direct_counts_at_every_threshold():
    rng = np.random.default_rng(0)
    scores = [rng.random((20, 30)), rng.random((7, 11)) * 2]
    labels = [rng.random((20, 30)) > 0.8, rng.random((7, 11)) > 0.5]
    valids = [rng.random((20, 30)) > 0.1, np.ones((7, 11), bool)]
    curve = metrics.pr_curve(scores, labels, valids, num_thresholds=17)
    for k, t in enumerate(curve.thresholds):
        direct = metrics.sum_counts(
            *(metrics.confusion_counts_np(s > t, y, v)
              for s, y, v in zip(scores, labels, valids, strict=True))
        )
        assert (curve.tp[k], curve.fp[k], curve.fn[k], curve.tn[k]) == tuple(direct)
        assert curve.f1[k] == pytest.approx(metrics.scores_from_counts(*direct).f1)


def test_best_threshold_on_constructed_case():
    # Changed pixels score in [0.6, 1.0], unchanged in [0, 0.5] except two at 0.7 (false alarms).
    score = np.concatenate([np.linspace(0.6, 1.0, 20), np.linspace(0.0, 0.5, 78), [0.7, 0.7]])
    label = np.concatenate([np.ones(20), np.zeros(80)]).astype(np.uint8)
    valid = np.ones(100, bool)
    t, f1 = metrics.best_threshold(score, label, valid, num_thresholds=101, score_range=(0, 1))
    # Any threshold in [0.5, 0.6) separates all but the two 0.7 false alarms: F1 = 40/42.
    assert 0.5 <= t < 0.6
    assert f1 == pytest.approx(40 / 42)
    # Invalid pixels are ignored: hide the false alarms and F1 becomes 1.
    valid[-2:] = False
    t2, f1b = metrics.best_threshold(score, label, valid, num_thresholds=101, score_range=(0, 1))
    assert f1b == 1.0 and 0.5 <= t2 < 0.6
