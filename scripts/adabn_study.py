"""Does re-estimating BatchNorm statistics on each scene (AdaBN) carry the model to new scenes?

The screening behind ``ModelConfig.norm_adapt`` (``docs/models.md``). For every held-out scene
of a cross-validation, its fold's model gets BatchNorm statistics measured on that scene (one
training-mode forward pass over the whole scene, up to 1024 px a side, dropout off), kept for
some layers only (``--variants``: all, the encoder's, the layers after the difference, half
way, with the variance floored at the trained one), then scores it through ``run``'s scoring
path; figures pooled over all scenes against the plain fold models::

    python scripts/adabn_study.py runs/s2re/sentinel2/cv --json runs/adabn_s2.json

``--null`` instead scores up to three 160 px windows per city with no labelled change (and
each city against itself) and prints the share of pixels each variant marks at the given
thresholds (``--null plain=0.511 decoder_floor=0.446``): what adaptation does to unchanged
ground. The shipped implementation (``changedet.models.adapt``: encoder in inference mode, a
window sample) is measured by ``train_default_models.py --stage recalibrate``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from train_default_models import load_rgb, load_sentinel2

from changedet import evaluate
from changedet.data import normalize_per_image
from changedet.detectors.learned import load_model
from changedet.models.layers import ConvBlock
from changedet.training import crossval

HERE = Path(__file__).resolve().parents[1]
log = logging.getLogger("adabn")


def scene_statistics(model, scene, max_px: int = 1024) -> dict:
    """The model's state with every BatchNorm's running mean and variance replaced by the
    statistics of ``scene`` (both dates, per-image standardised, cropped to a multiple of 16)."""
    net = model.module()
    nnx.update(net, jax.tree.map(jax.numpy.array, nnx.state(net)))  # writable copies
    for _, node in nnx.iter_graph(net):
        if isinstance(node, nnx.BatchNorm):
            node.momentum = 0.0
        elif isinstance(node, ConvBlock):
            node.dropout = 0.0
    z = normalize_per_image(scene)
    h, w = (min(d, max_px) // 16 * 16 for d in z.before.shape[1:])
    before = np.moveaxis(z.before[:, :h, :w], 0, -1)[None]
    after = np.moveaxis(z.after[:, :h, :w], 0, -1)[None]
    net(jax.numpy.asarray(before), jax.numpy.asarray(after), key=jax.random.key(0))
    return nnx.to_pure_dict(nnx.state(net))


def blend(old: dict, new: dict, share: float, only: tuple[str, ...] | None, path: tuple = (),
          floor: bool = False) -> dict:
    """``old`` with BatchNorm means and variances moved ``share`` of the way to ``new`` (only
    those under the top-level keys ``only``, if given; ``floor``: no variance below ``old``'s)."""
    out = {}
    for k, v in old.items():
        p = path + (k,)
        if isinstance(v, dict):
            out[k] = blend(v, new[k], share, only, p, floor)
        elif k in ("mean", "var") and (only is None or p[0] in only):
            out[k] = (1 - share) * np.asarray(v) + share * np.asarray(new[k])
            if floor and k == "var":
                out[k] = np.maximum(out[k], v)
        else:
            out[k] = v
    return out


VARIANTS = {"plain": (0.0, None), "all": (1.0, None), "all_half": (0.5, None),
            "encoder": (1.0, ("encoder",)), "decoder": (1.0, ("decoder", "head")),
            "decoder_half": (0.5, ("decoder", "head")), "decoder_only": (1.0, ("decoder",)),
            "head_only": (1.0, ("head",)), "decoder_floor": (1.0, ("decoder", "head"), True)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("cv", type=Path)
    p.add_argument("--data", type=Path, default=HERE.parent / "shared" / "data")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS))
    p.add_argument("--json", type=Path)
    p.add_argument("--null", nargs="+", metavar="VARIANT=THRESHOLD")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cv = json.loads((args.cv / "cv.json").read_text())
    load = load_sentinel2 if cv["model"]["num_bands"] == 13 else load_rgb
    scenes, _ = load(args.data)
    by_name = {s.name: s for s in scenes}
    paths = [args.cv / Path(q).parent.name / Path(q).name for q in cv["model_paths"]]
    models = [load_model(q) for q in paths]
    if args.null:
        return null_windows(models, cv["folds"], by_name,
                            {k: float(v) for k, v in (x.split("=") for x in args.null)})
    scores: dict[str, dict[str, np.ndarray]] = {v: {} for v in args.variants}
    for model, held_out in zip(models, cv["folds"], strict=True):
        for n in held_out:
            scene = by_name[n]
            adapted = scene_statistics(model, scene)
            for v in args.variants:
                share, only, *floor = VARIANTS[v]
                m = model.with_weights(blend(model.state, adapted, share, only, floor=bool(floor)))
                scores[v][n] = evaluate.score_scene(m.prepare_scene(scene), scene)
            log.info("scored %s", n)
    report = {}
    for v in args.variants:
        r = crossval._pooled_figures(scores[v], by_name, cv["folds"], cv["threshold"])
        per_fold = []
        for fold in cv["folds"]:
            f = crossval._pooled_figures(scores[v], by_name, [fold], cv["threshold"])
            per_fold.append((round(f["best_f1"], 3), round(f["average_precision"], 3)))
        report[v] = r | {"per_fold_best_f1_ap": per_fold}
        print(f"{v:>10s} P {r['precision']:.3f} R {r['recall']:.3f} F1 {r['f1']:.3f} "
              f"AP {r['average_precision']:.3f} best {r['best_f1']:.3f} "
              f"({r['best_threshold']:.3f}) folds {per_fold}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"cv": str(args.cv), "report": report}, indent=2))
        np.savez_compressed(args.json.with_suffix(".npz"), **{
            f"{v}:{n.replace('/', '__')}": s for v in scores for n, s in scores[v].items()})
    return 0


def unchanged_windows(s, size: int = 160) -> list:
    """Up to three ``size`` px windows of scene ``s`` (first, middle and last of those at half
    a window's stride) that are all valid and hold no labelled change, as scenes, then ``s``
    paired with itself (named ``…@same``): the calm ground of the ``--null`` checks."""
    h, w = s.label.shape
    wins = [(y, x) for y in range(0, h - size + 1, size // 2)
            for x in range(0, w - size + 1, size // 2)
            if s.valid[y:y + size, x:x + size].all()
            and not s.label[y:y + size, x:x + size].any()]
    pick = [wins[0], wins[len(wins) // 2], wins[-1]] if len(wins) >= 3 else wins
    subs = [s._replace(name=f"{s.name}@{y},{x}", before=s.before[:, y:y + size, x:x + size],
                       after=s.after[:, y:y + size, x:x + size],
                       label=s.label[y:y + size, x:x + size],
                       valid=s.valid[y:y + size, x:x + size], image_valid=None)
            for y, x in pick]
    return subs + [s._replace(name=f"{s.name}@same", after=s.before.copy())]


def null_windows(models, folds, by_name, thresholds: dict[str, float], size: int = 160) -> int:
    """Share of pixels marked on unchanged windows (no labelled change, all valid) and on each
    city paired with itself, per variant at its threshold."""
    rows = []
    for model, held_out in zip(models, folds, strict=True):
        for n in held_out:
            for sub in unchanged_windows(by_name[n], size):
                adapted = scene_statistics(model, sub)
                row = {"scene": sub.name}
                for v, thr in thresholds.items():
                    share, only, *floor = VARIANTS[v]
                    m = model.with_weights(blend(model.state, adapted, share, only,
                                                 floor=bool(floor)))
                    sc = evaluate.score_scene(m.prepare_scene(sub), sub)
                    row[v] = float((sc[np.isfinite(sc)] > thr).mean())
                rows.append(row)
                log.info("%s", row)
    for v in thresholds:
        win = np.array([r[v] for r in rows if not r["scene"].endswith("@same")])
        same = np.array([r[v] for r in rows if r["scene"].endswith("@same")])
        print(f"{v}: {win.size} unchanged windows, marked mean {win.mean():.4f} median "
              f"{np.median(win):.4f} max {win.max():.4f}, over 4 %: {(win > 0.04).sum()}; "
              f"cities against themselves: max {same.max():.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
