"""Assembles trained single networks of one recipe (e.g. other seeds) into one ensemble model file
whose score is the mean of theirs, with a threshold and calibration measured out of fold.

Each member comes with its out-of-fold score maps on the same scenes (``oof.npz`` files that
``crossval.cross_validate`` writes: one fold model per held-out scene, same folds for every
member). The ensemble's out-of-fold score is the mean of the members' (exactly what the ensemble
computes at run time, since its score is the mean of its members' scores), so the paired
comparison member vs ensemble on those scenes costs no extra training.

Threshold: the ensemble's mean score is less extreme than a member's, so its best threshold
differs. Unless ``--threshold`` is given, it is member 0's own threshold (chosen on its full
cross-validation) moved by the shift the paired out-of-fold scenes measure between member 0's
best threshold and the ensemble's. The calibration ``P(change | score)`` is fitted on the
ensemble's out-of-fold scores.

The two-seed ``sentinel2`` experiment (``docs/models.md``; measured, not shipped: the ensemble
did not beat its better member on folds 0-1): ``sentinel2_seed0.msgpack`` is the single network
packaged until 2026-12-07 (sha256 395a3861…, ``scripts/train_default_models.py --models sentinel2
--epochs 15 --seed 0 --set model.norm=none --set model.dropout=0.0``: the script's defaults have
since become the BatchNorm recipe), ``sentinel2_seed1.msgpack`` the same command with ``--seed 1
--stage final``. Their
out-of-fold maps come from ``--stage cv --only-folds 0,1 --epochs 15 --seed S --workdir runs/msS``
(``runs/msS/sentinel2/cv/oof.npz``)::

    python scripts/assemble_ensemble.py --name sentinel2 \\
        --member runs/ens/sentinel2_seed0.msgpack --oof runs/ms0/sentinel2/cv/oof.npz \\
        --member runs/ens/sentinel2_seed1.msgpack --oof runs/ms1/sentinel2/cv/oof.npz \\
        --out runs/ens --report runs/ens/report.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from changedet import evaluate, metrics
from changedet.detectors import modelfile
from changedet.io import datasets
from changedet.models import assemble_ensemble
from changedet.training import crossval
from changedet.uncertainty import fit_calibration

log = logging.getLogger("assemble_ensemble")


def read_oof(paths: list[str]) -> dict[str, np.ndarray]:
    """Scene name -> out-of-fold score map, merged over ``paths`` (``oof.npz`` keys use ``__``
    for ``/``)."""
    out: dict[str, np.ndarray] = {}
    for p in paths:
        with np.load(p) as f:
            for key in f.files:
                out[key.replace("__", "/")] = f[key]
    return out


def load_scenes(data: Path, names: list[str]):
    """The labelled scenes ``names`` (``source/scene``) from ``data``."""
    by_source: dict[str, list[str]] = {}
    for n in names:
        source, scene = n.split("/", 1)
        by_source.setdefault(source, []).append(scene)
    scenes = []
    for source, cities in by_source.items():
        if source != "oscd":
            raise SystemExit(f"only OSCD scenes are supported here; got {source!r}")
        scenes += datasets.load_oscd(data / "oscd", cities=cities)
    return {s.name: s for s in scenes}


def figures(scores: dict[str, np.ndarray], scenes: dict, threshold: float) -> dict:
    """Pooled P/R/F1 at ``threshold``, AP, best F1 and its threshold; F1 per scene."""
    names = sorted(scores)
    curve = metrics.pr_curve([scores[n] for n in names], [scenes[n].label for n in names],
                             [scenes[n].valid for n in names], 512)
    best = metrics.best_f1_index(curve)
    per = {n: metrics.confusion_counts_np(scores[n] > threshold, scenes[n].label, scenes[n].valid)
           for n in names}
    m = metrics.scores_from_counts(*metrics.sum_counts(*per.values()))
    return {"threshold": threshold, "precision": m.precision, "recall": m.recall, "f1": m.f1,
            "average_precision": crossval.average_precision(curve),
            "best_f1": float(curve.f1[best]), "best_threshold": float(curve.thresholds[best]),
            "per_scene_f1": {n: metrics.scores_from_counts(*c).f1 for n, c in per.items()}}


def card_section(name: str, report: dict, members: list[str], seconds_note: str) -> str:
    """Markdown for the top of the model card: what the ensemble is and its paired figures."""
    ens, cva = report["ensemble"], report["cva"]
    rows = [f"| member {label} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | "
            f"{r['average_precision']:.3f} | {r['best_f1']:.3f} |"
            for label, r in report["members"].items()]
    ens_row = (f"| **ensemble** | {ens['precision']:.3f} | {ens['recall']:.3f} | "
               f"**{ens['f1']:.3f}** | {ens['average_precision']:.3f} | {ens['best_f1']:.3f} |")
    per = ", ".join(f"{n.split('/')[-1]} {f:.3f}" for n, f in ens["per_scene_f1"].items())
    return f"""# changedet model `{name}`: an ensemble of {len(members)} networks

- file: `{name}.msgpack` (model file format 2), sha256 `{report["sha256"]}`
- members (same recipe and architecture, other seeds; score = the mean of their change
  probabilities): {", ".join(f"`{m}`" for m in members)}
- decision threshold: {ens["threshold"]:.4f} on the mean probability ({report["threshold_rule"]})
- calibration (`run --uncertainty`): P(change | score) fitted on the ensemble's out-of-fold
  scores of the {len(report["scenes"])} paired scenes below
- cost: {seconds_note}
- made with `python scripts/assemble_ensemble.py` (see its docstring for the command)

## Paired out-of-fold comparison ({len(report["scenes"])} scenes: {", ".join(report["scenes"])})

Each member's fold models (trained without these scenes) scored them through `run`'s scoring
path; the ensemble's out-of-fold score is the mean of the members'. Pooled over the valid
labelled pixels; members at member 0's threshold, the ensemble at its own:

| model | precision | recall | F1 | average precision | F1 at its best threshold |
|---|---|---|---|---|---|
{chr(10).join(rows)}
{ens_row}
| CVA + Otsu | {cva["precision"]:.3f} | {cva["recall"]:.3f} | {cva["f1"]:.3f} | | |

Ensemble F1 per scene: {per}.

"""


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parent.parent
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--member", action="append", required=True, help="a member's model file")
    p.add_argument("--oof", action="append", nargs="+", required=True,
                   help="that member's oof.npz files (give --oof after each --member)")
    p.add_argument("--name", required=True, help="the ensemble's model name")
    p.add_argument("--data", default=str(here.parent / "shared" / "data"))
    p.add_argument("--out", required=True, help="folder for NAME.msgpack (registered there)")
    p.add_argument("--threshold", type=float, help="decision threshold (default: see above)")
    p.add_argument("--report", help="write the paired figures here (JSON)")
    p.add_argument("--card", action="store_true", help="write OUT/NAME.md: the ensemble's "
                   "section, then the text of --card-rest (e.g. member 0's card)")
    p.add_argument("--card-rest", type=Path, help="markdown appended to the card")
    p.add_argument("--cost", default="about N x one network's model time per pixel",
                   help="the card's cost line")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if len(args.member) != len(args.oof):
        p.error("give one --oof after each --member")

    members = [modelfile.read_model(m) for m in args.member]
    oofs = [read_oof(paths) for paths in args.oof]
    names = sorted(oofs[0])
    if any(sorted(o) != names for o in oofs):
        p.error("every member's out-of-fold files must cover the same scenes")
    scenes = load_scenes(Path(args.data), names)
    mean = {n: np.mean([o[n] for o in oofs], axis=0) for n in names}

    ref = members[0].threshold
    if ref is None and args.threshold is None:
        p.error("member 0 has no threshold: give --threshold")
    report: dict = {"scenes": names, "members": {}}
    for i, o in enumerate(oofs):
        sha = modelfile.sha256_file(args.member[i])
        label = f"{i}: {Path(args.member[i]).name}, sha256 {sha[:12]}"
        report["members"][label] = figures(o, scenes, ref)
    ens_own = figures(mean, scenes, ref)
    shift = ens_own["best_threshold"] - next(iter(report["members"].values()))["best_threshold"]
    threshold = args.threshold if args.threshold is not None else ref + shift
    report["ensemble"] = figures(mean, scenes, threshold)
    report["ensemble_at_member0_threshold"] = ens_own
    report["threshold_rule"] = (
        "given" if args.threshold is not None else
        f"member 0's threshold {ref:.4f} + paired best-threshold shift {shift:+.4f}")
    cva = []
    for n in names:
        s = scenes[n]
        score = evaluate.score_scene(evaluate.cva_for_scene(s), s)
        cva.append(evaluate._result(s, "cva", score, None).counts)  # Otsu per scene, as CV
    report["cva"] = metrics.scores_from_counts(*metrics.sum_counts(*cva))._asdict()
    calibration = fit_calibration([mean[n] for n in names], [scenes[n].label for n in names],
                                  [scenes[n].valid for n in names])
    ens = report["ensemble"]
    training = {
        "seed": [m.training.get("seed") for m in members],
        "members": [m.training for m in members],
        "member_files": list(args.member),
        "threshold_source": "ensemble_paired_oof",
        # The ensemble's out-of-fold figures on the paired scenes, in the single models' "cv"
        # layout (threshold, pooled, average_precision, per_scene, cva).
        "cv": {"threshold": threshold,
               "pooled": {k: ens[k] for k in ("precision", "recall", "f1")},
               "average_precision": ens["average_precision"],
               "per_scene": {n: {"f1": f} for n, f in ens["per_scene_f1"].items()},
               "cva": report["cva"], "scenes": names,
               "threshold_rule": report["threshold_rule"],
               "members_at_member0_threshold": report["members"],
               "ensemble_at_member0_threshold": ens_own},
    }
    model = assemble_ensemble(members, threshold=threshold, name=args.name, training=training,
                              calibration=calibration)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = modelfile.save_model(out / f"{args.name}.msgpack", model)
    modelfile.register_model(path, args.name, out)
    report["sha256"] = modelfile.sha256_file(path)
    if args.card:
        card = out / f"{args.name}.md"
        section = card_section(args.name, report, list(args.member), args.cost)
        card.write_text(section + (args.card_rest.read_text() if args.card_rest else ""))
    text = json.dumps(report, indent=1)
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(text)
    log.info("wrote %s (threshold %.4f, %s)", path, threshold, report["threshold_rule"])
    for label, r in [*report["members"].items(), ("ensemble", report["ensemble"])]:
        log.info("%s: P %.3f R %.3f F1 %.3f AP %.3f (best F1 %.3f at %.3f)", label,
                 r["precision"], r["recall"], r["f1"], r["average_precision"], r["best_f1"],
                 r["best_threshold"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
