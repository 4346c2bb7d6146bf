"""Out-of-fold accuracy of the fold models on each convolution route (XLA float32 vs oneDNN
bf16, see ``changedet.kernels``): the check that the fast route leaves the masks as they were.

Every held-out scene is scored by its fold's model through ``run``'s scoring path, once per
route (``CHANGEDET_CPU_CONV``), and the figures are pooled at the threshold of ``cv.json``.
Prints the pooled and per-scene F1 per route, the F1 change, and the score differences;
writes the same as JSON (``--out``).

Run::

    python scripts/compare_conv_routes.py --cv runs/rad3/sentinel2/cv --out routes.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_default_models import load_sentinel2  # noqa: E402

from changedet import metrics  # noqa: E402
from changedet.detectors.learned import load_model  # noqa: E402
from changedet.training import crossval  # noqa: E402

ROUTES = ("xla", "onednn")


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parents[1]
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cv", required=True, help="a cross-validation folder (cv.json, fold_*/)")
    p.add_argument("--data", default=str(here.parent / "shared" / "data"))
    p.add_argument("--threshold", type=float,
                   help="decision threshold (default: the one in cv.json)")
    p.add_argument("--out", help="write the figures here as JSON")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    cv_dir = Path(args.cv)
    cv = json.loads((cv_dir / "cv.json").read_text())
    scenes, _ = load_sentinel2(Path(args.data))
    by_name = {s.name: s for s in scenes}
    folds = crossval.make_folds([s.name for s in scenes], len(list(cv_dir.glob("fold_*"))))
    models = [load_model(cv_dir / f"fold_{i}" / "sentinel2.msgpack") for i in range(len(folds))]
    threshold = float(cv["threshold"] if args.threshold is None else args.threshold)
    scores, report = {}, {}
    for route in ROUTES:
        os.environ["CHANGEDET_CPU_CONV"] = route
        scores[route] = crossval._held_out_scores(models, folds, by_name)
        per_scene = {}
        for name, s in scores[route].items():
            scene = by_name[name]
            counts = metrics.confusion_counts_np(s > threshold, scene.label, scene.valid)
            per_scene[name] = metrics.scores_from_counts(*counts).f1
        report[route] = crossval._pooled_figures(scores[route], by_name, folds, threshold) | {
            "per_scene_f1": per_scene}
    diffs = [np.abs(scores["onednn"][n] - scores["xla"][n])[by_name[n].valid]
             for n in scores["xla"]]
    report["score_difference"] = {"max": float(max(d.max() for d in diffs)),
                                  "mean": float(np.concatenate(diffs).mean())}
    report["threshold"] = threshold
    print(f"threshold {threshold:.4f}")
    print(f"{'scene':22} {'F1 xla':>8} {'F1 onednn':>10} {'change':>8}")
    for name in scores["xla"]:
        a, b = report["xla"]["per_scene_f1"][name], report["onednn"]["per_scene_f1"][name]
        print(f"{name:22} {a:8.4f} {b:10.4f} {b - a:+8.4f}")
    for key in ("precision", "recall", "f1", "average_precision"):
        a, b = report["xla"][key], report["onednn"][key]
        print(f"pooled {key:16} {a:8.4f} {b:10.4f} {b - a:+8.4f}")
    print(f"|score difference| over valid pixels: max {report['score_difference']['max']:.4f}, "
          f"mean {report['score_difference']['mean']:.2e}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
