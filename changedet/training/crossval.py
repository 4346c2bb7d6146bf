"""Leave-scenes-out cross-validation: the honest estimate of accuracy on scenes never seen.

The training scenes are split into ``K`` folds **by scene**; one model is trained per fold on
the other folds, and predicts its held-out scenes through the exact scoring path of
``changedet.run`` (:func:`changedet.evaluate.score_scene` on the prepared detector: same
per-image statistics, mirroring, halo and tiling). The out-of-fold (OOF) scores of all scenes
are pooled: the decision threshold is the one maximising pooled OOF F1, so it is never chosen on
a scene the model that scored it trained on, and the pooled OOF precision / recall / F1 /
average precision, per scene and per fold, are the figures of merit.

Every fold trains in its own ``workdir/fold_<i>`` with checkpoints, so a stopped run resumes.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from changedet import evaluate, metrics, training
from changedet.config import INFERENCE_ONLY, ModelConfig, TrainConfig, to_dict
from changedet.data import Scene
from changedet.errors import ConfigError
from changedet.training.capping import change_cap_for, change_cap_report
from changedet.uncertainty import ScoreCalibration, error_probability, fit_calibration

log = logging.getLogger(__name__)

__all__ = ["CVResult", "average_precision", "change_cap_for", "change_cap_report",
           "cross_validate", "folds_by_source", "make_folds", "oof_report"]


def make_folds(names: Sequence[str], k: int, seed: int = 0) -> list[list[str]]:
    """``k`` folds of scene names, as even as possible, deterministic for ``(names, k, seed)``.

    Example:
      >>> make_folds(["a", "b", "c", "d", "e"], 2, seed=0)
      [['a', 'c', 'e'], ['b', 'd']]
    """
    names = sorted(names)
    if not 2 <= k <= len(names):
        raise ConfigError(f"cross-validation needs 2 <= K <= {len(names)} scenes; got K={k}.")
    order = list(names) if seed == 0 else list(np.random.default_rng(seed).permutation(names))
    return [sorted(order[i::k]) for i in range(k)]


def folds_by_source(names: Sequence[str], k: int, prefixes: Sequence[str]) -> list[list[str]]:
    """``k`` folds where each source (scene names starting with one of ``prefixes``) is dealt
    round-robin over the folds, in sorted order: every fold model sees every kind of imagery
    and every fold holds out some of each.

    Example:
      >>> folds_by_source(["a/1", "a/2", "b/1", "b/2"], 2, ["a", "b"])
      [['a/1', 'b/1'], ['a/2', 'b/2']]
    """
    folds: list[list[str]] = [[] for _ in range(k)]
    for prefix in prefixes:
        for i, n in enumerate(sorted(n for n in names if n.startswith(prefix))):
            folds[i % k].append(n)
    return folds


def average_precision(curve: metrics.PRCurve) -> float:
    """Area under the precision–recall curve (step integration over recall), in [0, 1]."""
    recall = np.concatenate([[0.0], curve.recall[::-1], [1.0]])
    precision = np.concatenate([[1.0], curve.precision[::-1], [0.0]])
    order = np.argsort(recall, kind="stable")
    recall, precision = recall[order], precision[order]
    return float(np.sum(np.diff(recall) * precision[1:]))


@dataclasses.dataclass(frozen=True)
class CVResult:
    """Out-of-fold figures of one cross-validated setting.

    Attributes:
      threshold: Pooled-OOF-F1-best threshold on the score.
      pooled: Pooled OOF metrics at ``threshold``.
      average_precision: Pooled OOF average precision (threshold-free ranking quality).
      per_scene: Scene name -> metrics at ``threshold``.
      per_fold: Pooled F1 of each fold's held-out scenes at ``threshold``.
      folds: Scene names per fold.
      cva: Pooled metrics of CVA + Otsu on the same pixels.
      seconds: Training + scoring wall time.
      model_paths: The fold models.
      calibration: ``P(change | score)`` over every out-of-fold pixel
        (:func:`changedet.uncertainty.fit_calibration`); the final model carries it.
      change_cap: The scene change cap's out-of-fold figures (:func:`change_cap_report`):
        the final model keeps the cap when ``change_cap["kept"]``.
    """

    threshold: float
    pooled: metrics.Metrics
    average_precision: float
    per_scene: dict[str, metrics.Metrics]
    per_fold: list[float]
    folds: list[list[str]]
    cva: metrics.Metrics | None
    seconds: float
    model_paths: list[str]
    calibration: ScoreCalibration | None = None
    change_cap: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "threshold": self.threshold,
            "pooled": self.pooled._asdict(),
            "average_precision": self.average_precision,
            "per_scene": {k: m._asdict() for k, m in self.per_scene.items()},
            "per_fold_f1": self.per_fold,
            "fold_f1_mean": float(np.mean(self.per_fold)),
            "fold_f1_std": float(np.std(self.per_fold)),
            "folds": self.folds,
            "cva": None if self.cva is None else self.cva._asdict(),
            "seconds": self.seconds,
            "model_paths": self.model_paths,
            "calibration": None if self.calibration is None else self.calibration.to_dict(),
            "change_cap": self.change_cap,
        }


def oof_report(scores: dict[str, np.ndarray], scenes: Sequence[Scene],
               folds: Sequence[Sequence[str]], *, num_thresholds: int = 512
               ) -> tuple[float, metrics.Metrics, float, dict[str, metrics.Metrics], list[float]]:
    """Pooled OOF threshold, metrics, AP, per-scene metrics and per-fold F1 from OOF scores."""
    by_name = {s.name: s for s in scenes}
    names = [n for fold in folds for n in fold]
    curve = metrics.pr_curve([scores[n] for n in names], [by_name[n].label for n in names],
                             [by_name[n].valid for n in names], num_thresholds)
    k = metrics.best_f1_index(curve)
    thr = float(curve.thresholds[k])
    pooled = metrics.scores_from_counts(curve.tp[k], curve.fp[k], curve.fn[k], curve.tn[k])
    per_scene, counts = {}, {}
    for n in names:
        s = by_name[n]
        c = metrics.confusion_counts_np(scores[n] > thr, s.label, s.valid)
        counts[n] = c
        per_scene[n] = metrics.scores_from_counts(*c)
    per_fold = [metrics.scores_from_counts(*metrics.sum_counts(*(counts[n] for n in fold))).f1
                for fold in folds]
    return thr, pooled, average_precision(curve), per_scene, per_fold


def cross_validate(
    scenes: Sequence[Scene],
    k: int,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    workdir: str | Path,
    *,
    name: str = "model",
    seed_folds: int = 0,
    progress: bool = False,
    baseline: bool = True,
    folds: Sequence[Sequence[str]] | None = None,
    only_folds: Sequence[int] | None = None,
) -> CVResult:
    """Trains one model per fold and pools the out-of-fold predictions (see module docs).

    Args:
      scenes: All labelled training scenes (raw values, the same bands).
      k: Number of folds (by scene).
      model_cfg, train_cfg: The setting to estimate (no early stopping: the schedule runs to
        its end, since no held-out scene may steer it).
      workdir: Folder for ``fold_<i>/`` checkpoints, fold models and ``cv.json``.
      name: Name of the fold models.
      seed_folds: Fold assignment seed (0: sorted names dealt round-robin).
      progress: Show progress bars.
      baseline: Also score CVA + Otsu on the same pixels.
      folds: Explicit folds (scene names), overriding ``k``/``seed_folds``.
      only_folds: Train and score only these folds (screening: compare settings on the same
        held-out scenes at a fraction of the cost); the figures pool those folds' scenes.

    Returns:
      A :class:`CVResult` (also written to ``workdir/cv.json``; OOF scores to ``oof.npz``).
    """
    from changedet.detectors.learned import load_model

    start = time.perf_counter()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    folds = [list(f) for f in folds] if folds is not None else make_folds(
        [s.name for s in scenes], k, seed_folds)
    num_folds = len(folds)
    if only_folds is not None:
        folds = [folds[i] for i in only_folds]
    by_name = {s.name: s for s in scenes}
    cfg = dataclasses.replace(train_cfg, patience=0)
    paths = []
    fold_ids = list(only_folds) if only_folds is not None else list(range(len(folds)))
    for i, held_out in zip(fold_ids, folds, strict=True):  # train every fold first ...
        fold_dir = workdir / f"fold_{i}"
        model_path = fold_dir / f"{name}.msgpack"
        train = [s for s in scenes if s.name not in held_out]
        if not model_path.is_file():
            log.info("fold %d/%d: training on %d scenes, holding out %s", i + 1, num_folds,
                     len(train), ", ".join(held_out))
            # fit writes the model to fold_dir / f"{name}.msgpack", i.e. model_path
            training.fit(train, [], model_cfg, cfg, fold_dir, name=name, progress=progress)
        else:
            _adopt_inference_settings(model_path, model_cfg)
        paths.append(str(model_path))
    scores = _held_out_scores([load_model(p) for p in paths], folds, by_name)  # ... then score
    arrays = {n.replace("/", "__"): s for n, s in scores.items()}  # load_oof_scores reverses it
    np.savez_compressed(workdir / "oof.npz", **arrays)  # type: ignore[arg-type]  # numpy stubs
    thr, pooled, ap, per_scene, per_fold = oof_report(scores, scenes, folds)
    cva = None
    if baseline:
        counts = []
        for n in scores:
            scene = by_name[n]
            res = evaluate._result(scene, "cva",
                                   evaluate.score_scene(evaluate.cva_for_scene(scene), scene), None)
            counts.append(res.counts)
        cva = metrics.scores_from_counts(*metrics.sum_counts(*counts))
    names = [n for fold in folds for n in fold]
    calibration = fit_calibration([scores[n] for n in names], [by_name[n].label for n in names],
                                  [by_name[n].valid for n in names])
    cap = change_cap_report(scores, scenes, folds, thr)
    result = CVResult(thr, pooled, ap, per_scene, per_fold, [list(f) for f in folds], cva,
                      time.perf_counter() - start, paths, calibration, cap)
    record = result.to_dict() | {"model": to_dict(model_cfg), "train": to_dict(cfg)}
    (workdir / "cv.json").write_text(json.dumps(record, indent=2))
    log.info("CV %s: pooled OOF P %.3f R %.3f F1 %.3f AP %.3f at threshold %.3f (folds F1 %s)",
             workdir.name, pooled.precision, pooled.recall, pooled.f1, ap, thr,
             ", ".join(f"{f:.3f}" for f in per_fold))
    log.info("CV %s: with a change cap of %.3g %% of each scene, pooled OOF P %.3f R %.3f F1 "
             "%.3f (%s)", workdir.name, 100 * cap["max_fraction"], cap["pooled"]["precision"],
             cap["pooled"]["recall"], cap["pooled"]["f1"], "kept" if cap["kept"] else "dropped")
    return result


def _adopt_inference_settings(path: Path, model_cfg: ModelConfig) -> None:
    """A fold model trained earlier whose config differs from ``model_cfg`` only in inference
    settings (``config.INFERENCE_ONLY``, e.g. ``norm_adapt``) is rewritten with ``model_cfg``'s:
    the same training, scored (and reported on) as the setting being estimated."""
    from changedet.detectors import modelfile

    model = modelfile.read_model(path)
    if model.config == model_cfg:
        return
    trained, wanted = (
        {k: v for k, v in to_dict(c).items() if k not in INFERENCE_ONLY}
        for c in (model.config, model_cfg))
    if trained != wanted:
        return  # another architecture: scored as it is (the caller's recipe check decides)
    log.info("%s: trained as this recipe; scored with its inference settings %s", path,
             ", ".join(f"{f}={getattr(model_cfg, f)!r}" for f in INFERENCE_ONLY))
    modelfile.save_model(path, dataclasses.replace(model, config=model_cfg))


def train_with_cv(
    scenes: Sequence[Scene],
    k: int,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    workdir: str | Path,
    *,
    name: str = "model",
    progress: bool = True,
    folds: Sequence[Sequence[str]] | None = None,
    only_folds: Sequence[int] | None = None,
):
    """Cross-validates the setting, then trains the final model on **all** scenes with the
    same setting and gives it the pooled-OOF threshold (never chosen on a scene it scored
    after training on) and, when it raised the pooled out-of-fold F1, the scene change cap
    (:func:`change_cap_report`) with the threshold chosen under it where that wins
    leave-one-fold-out (:func:`with_cv_decision`). The CV figures go into the model's
    ``training["cv"]``.

    ``only_folds`` runs only some folds (a cheaper, partial estimate: the threshold and the
    figures then come from those folds' held-out scenes alone).

    Returns:
      ``(LearnedDetector, CVResult)``; the fold runs are in ``workdir/cv``, the final run in
      ``workdir/final``.
    """
    workdir = Path(workdir)
    result = cross_validate(scenes, k, model_cfg, train_cfg, workdir / "cv", name=name,
                            progress=progress, folds=folds, only_folds=only_folds)
    cfg = dataclasses.replace(train_cfg, patience=0)
    model = training.fit(scenes, [], model_cfg, cfg, workdir / "final", name=name,
                         progress=progress)
    return with_cv_decision(model, result), result


def with_cv_decision(model: Any, result: CVResult) -> Any:
    """``model`` with the decision its cross-validation chose: the scene change cap when it
    raised the pooled out-of-fold F1, with the threshold chosen under it where that won
    leave-one-fold-out (:func:`change_cap_report`), else the pooled-OOF threshold; the score
    calibration; and the CV figures in ``training["cv"]`` (the rest of ``training`` kept)."""
    cap = result.change_cap or {}
    kept = bool(cap.get("kept"))
    under_cap = kept and bool(cap.get("rechosen"))
    cv = result.to_dict()
    summary = dict(model.training)
    summary["threshold_source"] = "cv_oof_f1_under_cap" if under_cap else "cv_oof_f1"
    summary["cv"] = {key: cv[key] for key in ("threshold", "pooled", "average_precision",
                                              "per_scene", "per_fold_f1", "fold_f1_mean",
                                              "fold_f1_std", "folds", "cva",
                                              "change_cap")}
    summary["val_scenes"] = []
    return dataclasses.replace(
        model, threshold=cap.get("threshold", result.threshold) if kept else result.threshold,
        training=summary,
        calibration=result.calibration, max_change_fraction=cap["max_fraction"] if kept else None)


__all__ += ["train_with_cv", "with_cv_decision"]


def load_oof_scores(workdir: str | Path) -> dict[str, np.ndarray]:
    """The out-of-fold score maps :func:`cross_validate` wrote to ``workdir/oof.npz``, by scene
    name."""
    with np.load(Path(workdir) / "oof.npz") as z:
        return {k.replace("__", "/"): z[k] for k in z.files}


__all__ += ["load_oof_scores"]


def _held_out_scores(models: Sequence[Any], folds: Sequence[Sequence[str]],
                     by_name: dict[str, Scene], *, quality: str = "fast",
                     bands: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Scene name -> score map of every held-out scene, scored by its fold's model through
    ``run``'s scoring path (at ``quality``; reduced to ``bands`` first, as a user's file with
    only those bands would be)."""
    from changedet.detectors.prepare import with_quality

    scores = {}
    for model, held_out in zip(models, folds, strict=True):
        for n in held_out:
            scene = by_name[n]
            if bands is not None:
                idx = [scene.band_ids.index(b) for b in bands]
                scene = scene._replace(before=scene.before[idx], after=scene.after[idx],
                                       band_ids=tuple(bands))
            prepared = with_quality(model.prepare_scene(scene), quality)
            scores[n] = evaluate.score_scene(prepared, scene)
        log.info("scored %s with model %r", ", ".join(held_out), model.name)
    return scores


def _pooled_figures(scores: dict[str, np.ndarray], scenes: dict[str, Scene],
                    folds: Sequence[Sequence[str]], threshold: float) -> dict[str, float]:
    """Pooled figures of OOF ``scores`` at ``threshold`` and at their own best threshold."""
    names = [n for fold in folds for n in fold]
    curve = metrics.pr_curve([scores[n] for n in names], [scenes[n].label for n in names],
                             [scenes[n].valid for n in names], 512)
    counts = metrics.sum_counts(*(
        metrics.confusion_counts_np(scores[n] > threshold, scenes[n].label, scenes[n].valid)
        for n in names))
    m = metrics.scores_from_counts(*counts)
    best = metrics.best_f1_index(curve)
    return {"precision": m.precision, "recall": m.recall, "f1": m.f1,
            "average_precision": average_precision(curve), "best_f1": float(curve.f1[best]),
            "best_threshold": float(curve.thresholds[best])}


def _variant_report(
    model_paths: Sequence[str | Path],
    scenes: Sequence[Scene],
    folds: Sequence[Sequence[str]],
    threshold: float,
    variants: dict[str, dict[str, Any]],
    what: str,
) -> dict[str, dict[str, float]]:
    """Pooled out-of-fold figures of the fold models, once per way of presenting their held-out
    scenes: ``variants`` maps a row label to ``_held_out_scores`` keywords plus an optional
    ``"prepare"`` (scene -> the scene as presented); ``seconds`` is each row's scoring time."""
    from changedet.detectors.learned import load_model

    models = [load_model(p) for p in model_paths]
    report = {}
    for label, variant in variants.items():
        options = dict(variant)
        prepare = options.pop("prepare", None)
        by_name = {s.name: prepare(s) if prepare else s for s in scenes}
        start = time.perf_counter()
        scores = _held_out_scores(models, folds, by_name, **options)
        report[label] = _pooled_figures(scores, by_name, folds, threshold) | {
            "seconds": time.perf_counter() - start}
        r = report[label]
        log.info("%s %s: OOF F1 %.3f (best %.3f at %.3f), AP %.3f", what, label, r["f1"],
                 r["best_f1"], r["best_threshold"], r["average_precision"])
    return report


def band_set_report(
    model_paths: Sequence[str | Path],
    scenes: Sequence[Scene],
    folds: Sequence[Sequence[str]],
    band_sets: dict[str, Sequence[str]],
    threshold: float,
) -> dict[str, dict[str, float]]:
    """Out-of-fold accuracy of band-dropout fold models on each band set.

    Every held-out scene keeps only the bands of a set (the others are absent, as in a user's
    file) and is scored by its fold's model; figures are pooled over all scenes, at the shipped
    ``threshold`` and at the best pooled threshold.

    Returns:
      Band-set label -> ``{"precision", "recall", "f1", "average_precision", "best_f1",
      "best_threshold", "seconds"}``.
    """
    return _variant_report(model_paths, scenes, folds, threshold,
                           {label: {"bands": members} for label, members in band_sets.items()},
                           "band set")


def quality_report(
    model_paths: Sequence[str | Path],
    scenes: Sequence[Scene],
    folds: Sequence[Sequence[str]],
    threshold: float,
    qualities: Sequence[str] = ("fast", "best"),
) -> dict[str, dict[str, float]]:
    """Out-of-fold accuracy of the fold models at each ``run --quality`` (test-time
    augmentation), pooled over all held-out scenes, at the shipped ``threshold`` and at the
    best pooled threshold; ``seconds`` is the scoring time of all held-out scenes.

    Returns:
      Quality -> ``{"precision", "recall", "f1", "average_precision", "best_f1",
      "best_threshold", "seconds"}``.
    """
    return _variant_report(model_paths, scenes, folds, threshold,
                           {q: {"quality": q} for q in qualities}, "quality")


def resolution_report(
    model_paths: Sequence[str | Path],
    scenes: Sequence[Scene],
    folds: Sequence[Sequence[str]],
    threshold: float,
    zooms: Sequence[float] = (0.5, 1.0, 2.0),
) -> dict[str, dict[str, float]]:
    """Out-of-fold accuracy of the fold models on their held-out scenes resampled to other
    ground resolutions (``sampling.resample_scene``: 0.5 = pixels twice as large, as a coarser
    sensor would see the ground), pooled over all scenes at the shipped ``threshold`` and at
    the best pooled threshold: how far a model carries to imagery finer or coarser than its
    training scenes.

    Returns:
      ``"x{zoom:g}"`` -> ``{"precision", "recall", "f1", "average_precision", "best_f1",
      "best_threshold", "seconds"}``.
    """
    from changedet.training.sampling import resample_scene

    return _variant_report(
        model_paths, scenes, folds, threshold,
        {f"x{z:g}": {} if z == 1 else {"prepare": functools.partial(resample_scene, zoom=z)}
         for z in zooms}, "resolution")


__all__ += ["band_set_report", "quality_report", "resolution_report"]


def uncertainty_report(
    scores: dict[str, np.ndarray],
    scenes: Sequence[Scene],
    folds: Sequence[Sequence[str]],
    threshold: float,
) -> dict[str, Any]:
    """How well ``run --uncertainty`` finds the wrong pixels of scenes it has not seen.

    ``scores`` are out-of-fold (each scene scored by the model of the fold that held it out,
    as ``cross_validate`` writes them to ``oof.npz``). For each fold, the calibration table is
    fitted on the *other* folds' scenes only and applied to this fold's, so neither the model
    nor the table has seen the pixels it is judged on. A labelled pixel is *wrong* where
    ``score > threshold`` disagrees with its label.

    Returns:
      ``{"auroc", "auroc_per_fold", "auroc_margin", "predicted_error_rate",
      "error_rate", "top10_error_rate", "rest_error_rate", "reliability", "pixels"}``:
      the AUROC of the uncertainty for the wrong pixels (pooled, per fold, and that of the
      bare margin ``-|score - threshold|`` for comparison), the mean uncertainty against the
      real error rate per fold, the error rate among the most uncertain 10 % of pixels and
      the rest, and a reliability table (uncertainty bins: mean uncertainty, error rate,
      pixels).
    """
    by_name = {s.name: s for s in scenes}

    def pixels(names):
        ok = [by_name[n].valid & np.isfinite(scores[n]) for n in names]
        return (np.concatenate([scores[n][o] for n, o in zip(names, ok, strict=True)]),
                np.concatenate([by_name[n].label[o] for n, o in zip(names, ok, strict=True)]))

    u_all, wrong_all, margin_all, per_fold, predicted = [], [], [], [], []
    for k, held_out in enumerate(folds):
        others = [n for i, f in enumerate(folds) if i != k for n in f]
        table = fit_calibration([scores[n] for n in others], [by_name[n].label for n in others],
                                [by_name[n].valid for n in others])
        score, label = pixels(held_out)
        wrong = (score > threshold) != label.astype(bool)
        u = error_probability(score, threshold, table)
        u_all.append(u)
        wrong_all.append(wrong)
        margin_all.append(-np.abs(score - threshold))
        per_fold.append(metrics.auroc(u, wrong))
        predicted.append({"predicted": float(u.mean()), "actual": float(wrong.mean())})
    u, wrong, margin = (np.concatenate(x) for x in (u_all, wrong_all, margin_all))
    top = u >= np.quantile(u, 0.9)
    edges = [0.0, 0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0001]
    reliability = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        sel = (u >= lo) & (u < hi)
        if sel.any():
            reliability.append({"bin": [lo, min(hi, 1.0)], "mean_uncertainty": float(u[sel].mean()),
                                "error_rate": float(wrong[sel].mean()), "pixels": int(sel.sum())})
    report = {
        "auroc": metrics.auroc(u, wrong),
        "auroc_per_fold": per_fold,
        "auroc_margin": metrics.auroc(margin, wrong),
        "predicted_error_rate": predicted,
        "error_rate": float(wrong.mean()),
        "top10_error_rate": float(wrong[top].mean()),
        "rest_error_rate": float(wrong[~top].mean()),
        "reliability": reliability,
        "pixels": int(wrong.size),
        "threshold": float(threshold),
    }
    log.info("uncertainty: AUROC for the wrong pixels %.3f (folds %s; the bare margin %.3f); "
             "error rate %.3f among the top 10 %% vs %.3f", report["auroc"],
             ", ".join(f"{a:.3f}" for a in per_fold), report["auroc_margin"],
             report["top10_error_rate"], report["rest_error_rate"])
    return report


__all__ += ["uncertainty_report"]
