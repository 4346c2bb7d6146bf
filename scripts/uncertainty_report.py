"""How well ``run --uncertainty`` finds the wrong pixels, on scenes no model or table has seen.

Uses the out-of-fold scores a cross-validation wrote (``<workdir>/<model>/cv/oof.npz`` and
``cv.json`` from ``scripts/train_default_models.py``); the calibration table of each fold is
fitted on the other folds only (``changedet.training.crossval.uncertainty_report``)::

    python scripts/uncertainty_report.py runs/ms/sentinel2/cv --out docs/img

writes ``uncertainty.json`` (figures) and ``uncertainty_<city>.png`` (the held-out city's
after image, the mask's errors against its labels, the uncertainty) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from changedet.io import datasets
from changedet.training import crossval
from changedet.uncertainty import error_probability, fit_calibration


def panel(scores, scenes, folds, threshold, name, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from changedet import viz

    by_name = {s.name: s for s in scenes}
    others = [n for f in folds if name not in f for n in f]
    table = fit_calibration([scores[n] for n in others], [by_name[n].label for n in others],
                            [by_name[n].valid for n in others])
    scene, score = by_name[name], scores[name]
    u = np.where(scene.valid, error_probability(score, threshold, table), np.nan)
    pred, label = score > threshold, scene.label.astype(bool)
    errors = np.zeros(score.shape + (3,), np.float32)
    errors[pred & label] = (1, 1, 1)       # found change: white
    errors[pred & ~label] = (1, 0.2, 0.2)  # false alarm: red
    errors[~pred & label] = (0.2, 0.6, 1)  # missed change: blue
    ids = scene.band_ids
    display = ([ids.index(b) + 1 for b in ("B04", "B03", "B02")] if "B04" in ids else [1, 2, 3])
    rgb = viz.true_colour(scene.after, display)
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4), constrained_layout=True)
    axes[0].imshow(rgb)
    axes[0].set_title(f"{name} (held out): after")
    axes[1].imshow(errors)
    axes[1].set_title("mask: found (white), false (red), missed (blue)")
    im = axes[2].imshow(u, cmap="magma", vmin=0, vmax=1)
    axes[2].set_title("uncertainty: P(mask wrong)")
    fig.colorbar(im, ax=axes[2], shrink=0.8)
    for ax in axes:
        ax.set_axis_off()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("cv", type=Path, help="the cv/ folder of a training workdir (cv.json, oof.npz)")
    p.add_argument("--data", type=Path, default=Path("../shared/data"),
                   help="folder with oscd/, airchange/, levir_dsifn_samples/")
    p.add_argument("--out", type=Path, default=Path("docs/img"))
    p.add_argument("--panel", default=None,
                   help="scene of the picture (default: oscd/beirut, or the first RGB scene)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cv = json.loads((args.cv / "cv.json").read_text())
    scores = crossval.load_oof_scores(args.cv)
    names = [n for fold in cv["folds"] for n in fold]
    if all(n.startswith("oscd/") for n in names):
        scenes, panel_scene = datasets.load_oscd(args.data / "oscd"), "oscd/beirut"
    else:  # the rgb model's sources (scripts/train_default_models.py)
        scenes = (datasets.load_airchange(args.data / "airchange")
                  + datasets.load_levir(args.data / "levir_dsifn_samples/samples_LEVIR")
                  + datasets.load_levir(args.data / "levir_dsifn_samples/samples_DSIFN"))
        panel_scene = names[0]
    args.panel = args.panel or panel_scene
    report = crossval.uncertainty_report(scores, scenes, cv["folds"], cv["threshold"])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "uncertainty.json").write_text(json.dumps(report, indent=1))
    panel(scores, scenes, cv["folds"], cv["threshold"], args.panel,
          args.out / f"uncertainty_{args.panel.replace('/', '_')}.png")
    print(json.dumps({k: report[k] for k in ("auroc", "auroc_per_fold", "auroc_margin",
                                             "top10_error_rate", "rest_error_rate")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
