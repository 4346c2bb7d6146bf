"""Effect of the default cloud masking on out-of-fold accuracy over the OSCD cities.

For each city: the share of pixels ``--cloud-mask auto`` masks, and the pooled out-of-fold F1
of a cross-validated setting (``runs/cv/<setting>/oof.npz``) with masked pixels (a) excluded
(nodata, as ``run`` writes them) or (b) counted as "no change" (a scorer that reads 255 as 0).

    python scripts/cloud_effect.py --setting s2_new
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from changedet import clouds, io, metrics
from changedet.io import datasets
from changedet.training import crossval

HERE = Path(__file__).resolve().parents[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--setting", default="s2_new")
    p.add_argument("--data", default=str(HERE.parent / "shared" / "data"))
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    root = Path(args.data) / "oscd"
    cv = json.loads((HERE / "runs" / "cv" / args.setting / "cv.json").read_text())
    oof = crossval.load_oof_scores(HERE / "runs" / "cv" / args.setting)
    thr = cv["threshold"]
    totals = {"none": [], "excluded": [], "as_no_change": []}
    rows = []
    for city in datasets.oscd_cities(root):
        scene = datasets.load_oscd(root, cities=[city])[0]
        pair = io.open_pair(root / "images" / city / "imgs_1", root / "images" / city / "imgs_2",
                            align=True)
        masks = clouds.auto_masks(pair)
        cloudy = np.asarray((masks.before | masks.after).compute())
        score = oof[scene.name]
        pred = score > thr
        none = metrics.confusion_counts_np(pred, scene.label, scene.valid)
        excl = metrics.confusion_counts_np(pred, scene.label, scene.valid & ~cloudy)
        as0 = metrics.confusion_counts_np(pred & ~cloudy, scene.label, scene.valid)
        for k, c in (("none", none), ("excluded", excl), ("as_no_change", as0)):
            totals[k].append(c)
        f1 = [metrics.scores_from_counts(*c).f1 for c in (none, excl, as0)]
        rows.append((city, masks.before_fraction, masks.after_fraction, *f1))
        print(f"{city:12s} clouds {masks.before_fraction:6.1%} / {masks.after_fraction:6.1%}  "
              f"F1 unmasked {f1[0]:.3f}  masked-excluded {f1[1]:.3f}  masked-as-0 {f1[2]:.3f}",
              flush=True)
    for k, cs in totals.items():
        m = metrics.scores_from_counts(*metrics.sum_counts(*cs))
        print(f"POOLED {k:14s} P {m.precision:.3f} R {m.recall:.3f} F1 {m.f1:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
