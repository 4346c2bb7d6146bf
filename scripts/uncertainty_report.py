"""How well ``run --uncertainty`` finds the wrong pixels: AUROC on cross-validation scenes.

Uses the fold models of a ``scripts/train_default_models.py`` workdir (each scores only the
cities it did not train on) and their pooled out-of-fold threshold::

    python scripts/uncertainty_report.py runs/ms/sentinel2/cv --out docs/img

writes ``uncertainty.json`` (figures) and ``uncertainty_<city>.png`` (a panel: after, mask
errors, uncertainty) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from changedet import crossval, datasets, evaluate
from changedet.detector import with_spread
from changedet.modelfile import load_model
from changedet.uncertainty import flip_probability


def panel(model_path: Path, scene, threshold: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from changedet import viz

    mean, spread = evaluate.score_scene(with_spread(load_model(model_path).prepare_scene(scene)),
                                        scene)
    u = flip_probability(mean, spread, threshold)
    pred = mean > threshold
    label = scene.label.astype(bool)
    errors = np.zeros(mean.shape + (3,), np.float32)
    errors[pred & label] = (1, 1, 1)      # found change: white
    errors[pred & ~label] = (1, 0.2, 0.2)  # false alarm: red
    errors[~pred & label] = (0.2, 0.6, 1)  # missed change: blue
    rgb = viz.true_colour(scene.after, [scene.band_ids.index(b) + 1 for b in ("B04", "B03", "B02")])
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4), constrained_layout=True)
    axes[0].imshow(rgb)
    axes[0].set_title(f"{scene.name}: after")
    axes[1].imshow(errors)
    axes[1].set_title("mask vs labels: found (white), false (red), missed (blue)")
    im = axes[2].imshow(u, cmap="magma", vmin=0, vmax=0.5)
    axes[2].set_title("uncertainty (flip probability)")
    fig.colorbar(im, ax=axes[2], shrink=0.8)
    for ax in axes:
        ax.set_axis_off()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("cv", type=Path, help="the cv/ folder of a training workdir (cv.json, fold_*)")
    p.add_argument("--data", type=Path, default=Path("../shared/data/oscd"))
    p.add_argument("--out", type=Path, default=Path("docs/img"))
    p.add_argument("--panel", default="oscd/beirut", help="scene of the picture")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cv = json.loads((args.cv / "cv.json").read_text())
    scenes = datasets.load_oscd(args.data)
    model_paths = [args.cv / f"fold_{i}" / "sentinel2.msgpack" for i in range(len(cv["folds"]))]
    report = crossval.uncertainty_report(model_paths, scenes, cv["folds"], cv["threshold"])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "uncertainty.json").write_text(json.dumps(report, indent=1))
    fold = next(i for i, f in enumerate(cv["folds"]) if args.panel in f)
    scene = next(s for s in scenes if s.name == args.panel)
    panel(model_paths[fold], scene, cv["threshold"],
          args.out / f"uncertainty_{args.panel.split('/')[-1]}.png")
    print(json.dumps(report["auroc"] | report["error_rate"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
