"""Paired comparison of fold models from cross-validations that may not be finished.

Two trainings of the same folds (two recipes, or one recipe with two seeds) are compared fold by
fold on the same held-out cities, each fold model scored through ``run``'s scoring path with
its own inference settings and, with ``--variants``, with other ones (``plain``: no scene
adaptation; ``all``: every BatchNorm re-estimated on the whole scene, as ``adabn_study.py``
does; ``adapt_all``: ``ModelConfig.norm_adapt="all"``, the library's own pass).
Prints, per workdir and variant, each fold's best F1 and AP and the figures pooled over the
folds present, at the pooled best threshold and with the scene change cap (4 %) at a threshold
re-chosen under it::

    python scripts/paired_folds.py runs/sb_base/sentinel2/cv runs/sb_scene/sentinel2/cv \\
        --variants as_trained plain --json runs/sb_pair.json

A fold counts once its ``fold_i/`` holds a finished model file; folds missing from either
workdir are left out of both, so the comparison stays paired. ``--null`` also scores up to three
unchanged 160 px windows per held-out city (all valid, no labelled change; each adapted to
itself) and each city against itself, and prints the share of pixels marked at the pooled best
threshold: what a setting does on calm ground.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
from adabn_study import scene_statistics, unchanged_windows
from train_default_models import FOLDS, load_rgb, load_sentinel2

from changedet import evaluate
from changedet.detectors import modelfile
from changedet.detectors.learned import as_detector
from changedet.training import capping, crossval

HERE = Path(__file__).resolve().parents[1]
log = logging.getLogger("paired_folds")


def fold_models(cv: Path) -> dict[int, Path]:
    """Fold index -> finished model file under ``cv``."""
    found = {}
    for d in sorted(cv.glob("fold_*")):
        files = sorted(f for f in d.glob("*.msgpack") if f.name != "checkpoint.msgpack")
        if files:
            found[int(d.name.split("_")[1])] = files[0]
    return found


def variant(model, name: str):
    """The fold model as scored under inference variant ``name``."""
    if name == "as_trained":
        return as_detector(model)
    plain = as_detector(dataclasses.replace(model, config=dataclasses.replace(
        model.config, norm_adapt="none")))
    if name == "plain":
        return plain
    if name == "adapt_all":  # the shipped code path with every BatchNorm adapted
        return as_detector(dataclasses.replace(model, config=dataclasses.replace(
            model.config, norm_adapt="all")))
    raise SystemExit(f"unknown variant {name!r}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("cvs", type=Path, nargs="+", help="cv folders (…/<model>/cv)")
    p.add_argument("--data", type=Path, default=HERE.parent / "shared" / "data")
    p.add_argument("--variants", nargs="+", default=["as_trained"],
                   choices=["as_trained", "plain", "all", "adapt_all"])
    p.add_argument("--json", type=Path)
    p.add_argument("--null", action="store_true", help="also score unchanged windows")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    found = {cv: fold_models(cv) for cv in args.cvs}
    common = sorted(set.intersection(*(set(f) for f in found.values())))
    if not common:
        raise SystemExit("no fold is finished in every workdir")
    first = modelfile.read_model(found[args.cvs[0]][common[0]])
    kind = "sentinel2" if first.config.num_bands == 13 else "rgb"
    scenes, folds = (load_sentinel2 if kind == "sentinel2" else load_rgb)(args.data)
    if folds is None:  # as train_default_models.py deals them
        folds = crossval.make_folds([s.name for s in scenes], FOLDS[kind])
    by_name = {s.name: s for s in scenes}
    folds = [folds[i] for i in common]
    report = {}
    for cv in args.cvs:
        for v in args.variants:
            scores = {}
            for i, held_out in zip(common, folds, strict=True):
                model = modelfile.read_model(found[cv][i])
                for n in held_out:
                    scene = by_name[n]
                    if v == "all":
                        plain = variant(model, "plain")
                        m = plain.with_weights(scene_statistics(plain, scene))
                    else:
                        m = variant(model, v)
                    scores[n] = evaluate.score_scene(m.prepare_scene(scene), scene)
                log.info("%s %s fold %d scored", cv, v, i)
            pooled = crossval._pooled_figures(scores, by_name, folds, 0.5)
            per_fold = [crossval._pooled_figures(scores, by_name, [f], 0.5) for f in folds]
            cap = capping.change_cap_report(scores, scenes, folds, pooled["best_threshold"])
            row = {"folds": common, "best_f1": pooled["best_f1"],
                   "ap": pooled["average_precision"], "threshold": pooled["best_threshold"],
                   "per_fold": [(round(f["best_f1"], 3), round(f["average_precision"], 3),
                                 round(f["best_threshold"], 3)) for f in per_fold],
                   "capped_f1": cap["pooled"]["f1"], "nested": cap["nested"]}
            if args.null:
                row["null"] = null_windows(cv, v, found[cv], common, folds, by_name,
                                           pooled["best_threshold"])
            report[f"{cv}:{v}"] = row
            print(f"{str(cv):>40s} {v:>10s} folds {common}: best F1 {row['best_f1']:.3f} "
                  f"(thr {row['threshold']:.3f}) AP {row['ap']:.3f} capped F1 "
                  f"{row['capped_f1']:.3f} nested {row['nested']} per fold (F1, AP, thr) "
                  f"{row['per_fold']}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=float))
    return 0


def null_windows(cv, name, paths, fold_ids, folds, by_name, threshold: float,
                 size: int = 160) -> dict[str, float]:
    """Share of pixels marked at ``threshold`` on unchanged windows and cities against
    themselves (as ``adabn_study.py --null``), printed and returned."""
    marks, same = [], []
    for i, held_out in zip(fold_ids, folds, strict=True):
        model = variant(modelfile.read_model(paths[i]), name)
        for n in held_out:
            for sub in unchanged_windows(by_name[n], size):
                score = evaluate.score_scene(model.prepare_scene(sub), sub)
                out = same if sub.name.endswith("@same") else marks
                out.append(float((score[np.isfinite(score)] > threshold).mean()))
    a = np.array(marks)
    row = {"windows": int(a.size), "mean": float(a.mean()), "max": float(a.max()),
           "over_4_percent": int((a > 0.04).sum()), "city_against_itself_max": max(same)}
    print(f"{str(cv):>40s} {name:>10s} unchanged windows at {threshold:.3f}: {row}", flush=True)
    return row


if __name__ == "__main__":
    raise SystemExit(main())
