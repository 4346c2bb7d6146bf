"""How far does a model carry to imagery finer or coarser than its training scenes?

Scores every held-out scene of a cross-validation with its fold's model (``run``'s scoring
path) after resampling it to other ground resolutions (``--zooms``: 0.5 = pixels twice as
large, bands, label and valid mask resampled together, anti-aliased when shrinking), and pools
the figures over all scenes at the cross-validation's threshold
(``changedet.training.crossval.resolution_report``)::

    python scripts/resolution_study.py runs/rgbbn/rgb/cv --json runs/resolution_rgbbn.json

A user's aerial pair can come at any ground resolution (0.3 m to 3 m); the training scenes sit
at 0.5 m (LEVIR), about 1.5 m (AirChange) and about 2 m (DSIFN).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from train_default_models import load_rgb, load_sentinel2

from changedet.training import crossval

HERE = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("cv", type=Path, help="a cross-validation's directory (cv.json, fold models)")
    p.add_argument("--data", type=Path, default=HERE.parent / "shared" / "data")
    p.add_argument("--zooms", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    p.add_argument("--json", type=Path, help="write the figures here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cv = json.loads((args.cv / "cv.json").read_text())
    load = load_sentinel2 if cv["model"]["num_bands"] == 13 else load_rgb
    scenes, _ = load(args.data)
    # the fold models beside cv.json (cv.json's paths are relative to where training ran)
    paths = [args.cv / Path(p).parent.name / Path(p).name for p in cv["model_paths"]]
    report = crossval.resolution_report(paths, scenes, cv["folds"],
                                        cv["threshold"], args.zooms)
    print(f"{'zoom':>6s} {'P':>6s} {'R':>6s} {'F1':>6s} {'AP':>6s}  best F1 (threshold)")
    for key, m in report.items():
        print(f"{key:>6s} {m['precision']:6.3f} {m['recall']:6.3f} {m['f1']:6.3f} "
              f"{m['average_precision']:6.3f}  {m['best_f1']:.3f} ({m['best_threshold']:.3f})")
    if args.json:
        args.json.write_text(json.dumps({"cv": str(args.cv), "threshold": cv["threshold"],
                                         "report": report}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
