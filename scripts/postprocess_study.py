"""Does a local post-processing of the score map help on scenes the model never saw?

Reads a cross-validation's out-of-fold score maps (``oof.npz`` and ``cv.json`` written by
``changedet.training.crossval.cross_validate``) and, for each post-processing family, estimates
its effect **leave-one-fold-out**: for every fold, the family's parameters *and* the threshold
are chosen on the other folds' scenes (pooled F1), then applied to this fold's scenes; the
counts of all folds are pooled. The plain threshold goes through the same nested choice, so the
rows compare like with like. The "all folds" column is the same family tuned on every scene
at once (optimistic: what the best setting could give, not an estimate).

Every family is local (its result at a pixel depends on a bounded neighbourhood), so ``run``
could apply it block by block with a halo and keep tiled == whole-image output.

    python scripts/postprocess_study.py runs/ms0/sentinel2/cv --json runs/postprocess.json

The NDVI-change veto is per pixel as well, but reads red and NIR (Sentinel-2 B04, B08): it
asks whether the false positives that vegetation change causes can be removed without the
true changes (construction on fields) going with them.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from changedet.io import datasets
from changedet.training import crossval

log = logging.getLogger("postprocess_study")

HERE = Path(__file__).resolve().parents[1]
THRESHOLDS = np.linspace(0.05, 0.95, 46)

#: A family: parameter grid and ``f(score, threshold, param, scene) -> bool mask``.
Family = tuple[list, Callable[[np.ndarray, float, object, object], np.ndarray]]


def _plain(score, t, _, _scene=None):
    return score > t


def _smooth(score, t, sigma, _scene=None):
    return ndimage.gaussian_filter(score, sigma, mode="mirror") > t


def _open(score, t, size, _scene=None):
    return ndimage.binary_opening(score > t, structure=np.ones((size, size), bool))


def _majority(score, t, size, _scene=None):
    m = (score > t).astype(np.float32)
    return ndimage.uniform_filter(m, size, mode="mirror") > 0.5


def _hysteresis(score, t, param, _scene=None):
    """Seeds above ``t``, grown ``steps`` pixels (8-connected) into pixels above ``t * low``."""
    low, steps = param
    seeds = score > t
    grow = score > t * low
    return ndimage.binary_dilation(seeds, structure=np.ones((3, 3), bool), iterations=steps,
                                   mask=grow) | seeds


def _min_area(score, t, area, _scene=None):
    """Drops 8-connected components smaller than ``area`` px (not local: a reference only)."""
    mask = score > t
    lab, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if n == 0:
        return mask
    sizes = np.bincount(lab.ravel())
    keep = sizes >= area
    keep[0] = False
    return keep[lab]


def _ndvi_pair(scene) -> tuple[np.ndarray, np.ndarray]:
    """NDVI of (before, after) from the scene's B04 (red) and B08 (NIR), cached per scene."""
    if scene.name not in _NDVI:
        red, nir = (scene.band_ids.index(b) for b in ("B04", "B08"))

        def ndvi(x):
            x = x.astype(np.float32)
            return (x[nir] - x[red]) / np.maximum(x[nir] + x[red], 1e-6)

        _NDVI[scene.name] = (ndvi(scene.before), ndvi(scene.after))
    return _NDVI[scene.name]


_NDVI: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def _vegetation_veto(vetoed: Callable[[np.ndarray, np.ndarray, float], np.ndarray]):
    """A family: no change where ``vetoed(ndvi_before, ndvi_after, param)``; param None = off.
    Local (per pixel); needs red and NIR."""

    def family(score, t, param, scene):
        mask = score > t
        if param is None:
            return mask
        return mask & ~vetoed(*_ndvi_pair(scene), param)

    return family


#: The vegetation index changed by more than the cut (season, fields, parks: OSCD labels urban
#: change only).
_ndvi_veto = _vegetation_veto(lambda before, after, cut: np.abs(after - before) > cut)
#: NDVI *rose* by more than the cut (building rarely greens a pixel).
_greening_veto = _vegetation_veto(lambda before, after, cut: after - before > cut)
#: Both dates vegetated (NDVI above the level in each): crops, season.
_vegetated_veto = _vegetation_veto(
    lambda before, after, level: (before > level) & (after > level))


FAMILIES: dict[str, Family] = {
    "threshold only": ([None], _plain),
    "gaussian smoothing (sigma px)": ([0.5, 1.0, 1.5, 2.0], _smooth),
    "opening (square px)": ([2, 3], _open),
    "majority filter (square px)": ([3, 5], _majority),
    "hysteresis (low fraction, grow px)": (list(itertools.product([0.5, 0.7, 0.85], [2, 4, 8])),
                                           _hysteresis),
    "min component area (px; non-local reference)": ([2, 3, 5, 8, 12], _min_area),
    "NDVI-change veto (|dNDVI| cut; None = off)": ([None, 0.15, 0.2, 0.25, 0.3, 0.4],
                                                   _ndvi_veto),
    "NDVI greening veto (dNDVI cut; None = off)": ([None, 0.1, 0.15, 0.2, 0.3], _greening_veto),
    "both-dates-vegetated veto (NDVI level; None = off)": ([None, 0.3, 0.4, 0.5, 0.6],
                                                          _vegetated_veto),
}


def counts_grid(fn, param, scores: dict, scenes: dict) -> dict[str, np.ndarray]:
    """Scene -> ``[len(THRESHOLDS), 3]`` int64 (tp, fp, fn) of ``fn`` at every threshold."""
    out = {}
    for name, score in scores.items():
        s = scenes[name]
        label = s.label.astype(bool)
        valid = s.valid & np.isfinite(score)
        filled = np.where(np.isfinite(score), score, 0.0).astype(np.float32)
        rows = []
        for t in THRESHOLDS:
            m = fn(filled, float(t), param, s)
            rows.append((np.count_nonzero(m & label & valid), np.count_nonzero(m & ~label & valid),
                         np.count_nonzero(~m & label & valid)))
        out[name] = np.array(rows, np.int64)
    return out


def f1(c: np.ndarray) -> np.ndarray:
    tp, fp, fn = c[..., 0], c[..., 1], c[..., 2]
    return np.where(tp > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)


def study(scores: dict, scenes: dict, folds: Sequence[Sequence[str]]) -> dict:
    report = {}
    for family, (grid, fn) in FAMILIES.items():
        per_param = {i: counts_grid(fn, p, scores, scenes) for i, p in enumerate(grid)}
        pooled = np.zeros(3, np.int64)
        chosen = []
        for k, held_out in enumerate(folds):
            others = [n for i, f in enumerate(folds) if i != k for n in f]
            best = max(((f1(sum(per_param[i][n] for n in others)).max(), i,
                         int(f1(sum(per_param[i][n] for n in others)).argmax()))
                        for i in per_param), key=lambda x: x[0])
            _, i, ti = best
            chosen.append({"param": grid[i], "threshold": float(THRESHOLDS[ti])})
            pooled += sum(per_param[i][n][ti] for n in held_out)
        every = {i: f1(sum(per_param[i][n] for fold in folds for n in fold)) for i in per_param}
        i_all = max(every, key=lambda i: every[i].max())
        tp, fp, fnn = (int(v) for v in pooled)
        report[family] = {
            "nested_f1": float(f1(pooled)),
            "nested_precision": tp / max(tp + fp, 1),
            "nested_recall": tp / max(tp + fnn, 1),
            "chosen_per_fold": chosen,
            "all_folds_f1": float(every[i_all].max()),
            "all_folds_param": grid[i_all],
            "all_folds_threshold": float(THRESHOLDS[int(every[i_all].argmax())]),
        }
        log.info("%-48s nested F1 %.3f (P %.3f R %.3f) | all folds %.3f with %s", family,
                 report[family]["nested_f1"], report[family]["nested_precision"],
                 report[family]["nested_recall"], report[family]["all_folds_f1"],
                 grid[i_all])
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("cv_dir", nargs="+", help="cross-validation workdirs (cv.json, oof.npz); "
                   "several (e.g. runs of single folds) are merged, their folds kept apart")
    p.add_argument("--data", default=str(HERE.parent / "shared" / "data"))
    p.add_argument("--json", help="write the report here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    folds, scores = [], {}
    for cv_dir in map(Path, args.cv_dir):
        cv = json.loads((cv_dir / "cv.json").read_text())
        these = crossval.load_oof_scores(cv_dir)
        scores |= these
        folds += [f for f in cv["folds"] if all(n in these for n in f) and f not in folds]
    cities = [n.split("/", 1)[1] for fold in folds for n in fold]
    scenes = {s.name: s for s in datasets.load_oscd(Path(args.data) / "oscd", cities=cities,
                                                        bands=["B04", "B08"])}
    report = study(scores, scenes, folds)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=list))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
