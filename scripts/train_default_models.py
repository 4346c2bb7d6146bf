"""Trains the packaged changedet models, reproducibly, and writes weights, model cards, registry.

Each model is cross-validated by scene first (``changedet.training.crossval.train_with_cv``: one
model per fold predicts its held-out scenes through ``run``'s scoring path; the pooled out-of-fold
F1 picks the threshold), then trained on all its scenes with the same recipe
(``changedet.config.default``). The model card reports the out-of-fold figures.

Models:
  sentinel2  the 13 Sentinel-2 band slots, trained with band dropout so that any subset holding
             blue, green, red works (L1C, L2A, 10 m + 20 m, 4-band, Landsat TM/OLI); all 14 OSCD
             cities of ../shared/data/oscd; 4 folds of cities. 4500 steps, BatchNorm and
             spatial dropout 0.2, seed 1 (``PACKAGED``).
  rgb        3 positional bands (red, green, blue photos): SZTAKI AirChange, LEVIR-CD and DSIFN
             samples; 3 folds, each holding a third of every source. 4500 steps, BatchNorm
             and spatial dropout 0.2, scale augmentation over one octave (objects at half to
             double their size), seed 0 (``PACKAGED``).

Both standardise each date by its own statistics, so input units do not matter.

The full run (CPU; the fold runs checkpoint and resume)::

    XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce \\
        python scripts/train_default_models.py --data ../shared/data --out changedet/weights

A smoke run (a minute; writes nowhere near the packaged weights)::

    python scripts/train_default_models.py --preset tiny --out /tmp/cd-smoke \\
        --workdir /tmp/cd-smoke/runs --models rgb
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

from changedet import __version__, bands, config, evaluate, training
from changedet.detectors import learned, modelfile
from changedet.io import datasets
from changedet.training import crossval

log = logging.getLogger("train_default_models")

SOURCES = {
    "oscd": "Onera Satellite Change Detection (Daudt et al., IGARSS 2018); imagery: modified "
            "Copernicus Sentinel data; change maps CC BY-NC-SA",
    "airchange": "SZTAKI AirChange benchmark (Benedek & Sziranyi 2008/2009), scientific use",
    "samples_LEVIR": "LEVIR-CD samples (academic use only)",
    "samples_DSIFN": "DSIFN samples (Google Earth imagery)",
}
FOLDS = {"sentinel2": 4, "rgb": 3}


#: What the defaults of this script train: ``config.packaged(name)`` (docs/models.md says why):
#: ``sentinel2`` 4500 steps of the msdiff network with BatchNorm and spatial dropout 0.2 (the
#: regularised longer recipe, ``s2_ms_bn_do2_long``), seed 1; ``rgb`` the same recipe at seed 0
#: plus scale augmentation over one octave (since the evening of 2026-12-07; before it, ``--set
#: train.scale=0``; before that day, 1500 steps of the plain network: ``--epochs 15 --set
#: model.norm=none --set model.dropout=0.0 --set train.scale=0``).
PACKAGED = config.PACKAGED_RECIPES


def _recipe_note(name: str) -> str:
    r = PACKAGED[name]
    return " ".join(f"{part}.{k}={v}" for part in ("model", "train") for k, v in r[part].items())


def load_sentinel2(data: Path):
    return datasets.load_oscd(data / "oscd"), None


#: The RGB sources, each dealt over the folds (``crossval.folds_by_source``).
RGB_SOURCES = ("airchange", "samples_LEVIR", "samples_DSIFN")


def load_rgb(data: Path):
    scenes = (datasets.load_airchange(data / "airchange")
              + datasets.load_levir(data / "levir_dsifn_samples/samples_LEVIR")
              + datasets.load_levir(data / "levir_dsifn_samples/samples_DSIFN"))
    return scenes, crossval.folds_by_source([s.name for s in scenes], FOLDS["rgb"], RGB_SOURCES)


def seconds_per_megapixel(model, scenes) -> tuple[float, float]:
    """Model time per megapixel on the largest scene (warm: the compile is excluded), and the
    seconds binding the model to that scene take (statistics; the ``norm_adapt`` pass)."""
    scene = max(scenes, key=lambda s: s.valid.size)
    prepared = model.prepare_scene(scene)
    start = time.perf_counter()
    prepared = model.prepare_scene(scene)
    bind = time.perf_counter() - start
    evaluate.score_scene(prepared, scene)  # compile
    start = time.perf_counter()
    evaluate.score_scene(prepared, scene)
    return (time.perf_counter() - start) / (scene.valid.size / 1e6), bind


def uncertainty_note(result: crossval.CVResult, scenes, cv_dir: Path, threshold: float) -> str:
    """The card's line on ``run --uncertainty``: how well the calibration finds the wrong pixels
    of held-out scenes at the model's ``threshold`` (``crossval.uncertainty_report`` on the
    out-of-fold scores)."""
    r = crossval.uncertainty_report(crossval.load_oof_scores(cv_dir), scenes, result.folds,
                                    threshold)
    return (f"uncertainty (`run --uncertainty`): P(change | score) in 64 bins, measured on the "
            f"{r['pixels'] / 1e6:.1f} M\n  out-of-fold pixels of this model's own "
            f"{len(result.folds)} fold models; across folds it ranks the wrong pixels\n  with "
            f"AUROC {r['auroc']:.3f} (per fold "
            + " / ".join(f"{a:.3f}" for a in r["auroc_per_fold"])
            + f"; the bare distance to the threshold {r['auroc_margin']:.3f})\n  "
            "(docs/uncertainty.md, `scripts/uncertainty_report.py`; at the model's threshold,\n"
            "  before any change cap)")


def model_card(name: str, model, scenes, result: crossval.CVResult, args, sha256: str,
               s_per_mpix: tuple[float, float], band_sets: dict | None,
               qualities: dict | None = None,
               uncertainty: str = "", resolutions: dict | None = None) -> str:
    t = model.training
    tc = t["train_config"]
    cv = t["cv"]
    cap = result.change_cap if model.max_change_fraction is not None else None
    capped = cap["per_scene"] if cap else {}
    rows = "\n".join(
        f"| {n} | {m.precision:.3f} | {m.recall:.3f} | {m.f1:.3f} |"
        + (f" {capped[n]['f1']:.3f} |" if cap else "")
        for n, m in sorted(result.per_scene.items()))
    sources = sorted({s.name.split("/")[0] for s in scenes})
    p, c = result.pooled, result.cva
    ap = result.average_precision
    return f"""# changedet model `{name}`

- {_provenance(name, t, tc)}
- file: `{name}.msgpack`, sha256 `{sha256}`
- band slots (in order): {", ".join(model.band_ids)}; required:
  {", ".join(model.required_bands) if model.required_bands else "all"}
{f"- {uncertainty}" + chr(10) if uncertainty else ""}- input: {_input_note(model)}
- architecture: {json.dumps(config.to_dict(model.config))}
- training: {tc["num_epochs"] * tc["steps_per_epoch"]} AdamW steps (lr {tc["learning_rate"]},
  warmup + cosine), batch {tc["batch_size"]} x {tc["patch_px"]} px uniform patches, BCE with an
  automatic change weight (inverse frequency ^ {tc["pos_weight_power"]}), flips, rotations, date
  swaps, radiometric jitter {tc["radiometric"]}, band dropout {tc["band_drop"]}, scale
  augmentation {tc.get("scale", 0.0)} octaves
- decision threshold: {_threshold_note(model, result)}
- {_cap_note(model, result)}
- cost: {s_per_mpix[0]:.2f} s of model time per megapixel on this machine (2-core CPU, 1-minute load
  average {os.getloadavg()[0]:.1f} when measured: figures taken under load are upper bounds){
  _adapt_note(model, s_per_mpix[1])}

## Data

Sources ({", ".join(sources)}): {"; ".join(SOURCES.get(s, s) for s in sources)}.
All {len(scenes)} scenes train the shipped model: {", ".join(s.name for s in scenes)}.

## Leave-scenes-out cross-validation ({_folds_note(name, result)})

Each fold's model was trained on the other folds with the same recipe and scored its held-out
scenes through `changedet run`'s scoring path. Pooled over all scenes (valid labelled pixels):

| method | precision | recall | F1 | average precision |
|---|---|---|---|---|
| {name} (out-of-fold) | {p.precision:.3f} | {p.recall:.3f} | {p.f1:.3f} | {ap:.3f} |
{_cap_row(name, cap)}| CVA + Otsu | {c.precision:.3f} | {c.recall:.3f} | {c.f1:.3f} | |

F1 per fold: {", ".join(f"{f:.3f}" for f in result.per_fold)} (mean {cv["fold_f1_mean"]:.3f},
std {cv["fold_f1_std"]:.3f}). Folds: {"; ".join(", ".join(f) for f in result.folds)}.

{_band_set_table(band_sets) + _quality_table(qualities) + _resolution_table(resolutions)}\
Per scene, out-of-fold, at the pooled-OOF threshold {result.threshold:.4f}\
{f" (and F1 with the change cap at the shipped threshold {model.threshold:.4f})" if cap else ""}:

| scene | precision | recall | F1 |{" F1 capped |" if cap else ""}
|---|---|---|---|{"---|" if cap else ""}
{rows}
"""


def _adapt_note(model, seconds: float) -> str:
    if model.config.norm_adapt == "none":
        return ""
    return (f"; plus {seconds:.1f} s per scene to bind the\n  model to it, most of it the "
            "scene-adapted difference statistics (`norm_adapt: difference`: one pass over up\n"
            "  to 4 x 4 windows of 256 px, whatever the scene's size; docs/models.md)")


def _check_same_recipe(model, fold_paths) -> None:
    """Recalibration takes a decision from fold models: they must be the packaged model's recipe
    (architecture and training settings), or the decision belongs to another model."""
    def recipe(m):  # fields added since a file was written read at their defaults
        return config.train_config_from_dict(m.training.get("train_config", {}))

    for p in fold_paths:
        fold = learned.load_model(p)
        if (fold.config != model.config or fold.band_ids != model.band_ids
                or recipe(fold) != recipe(model)):
            raise SystemExit(f"{p} was trained with another recipe than the packaged model; "
                             "recalibrate from fold models of the same recipe.")


def _provenance(name: str, t: dict, tc: dict) -> str:
    recal = t.get("recalibrated")
    if not recal:
        return (f"changedet {__version__}, trained {datetime.date.today().isoformat()} with\n"
                f"  `python scripts/train_default_models.py {_command()}`, seed {tc['seed']}")
    return (f"changedet {__version__}; weights trained with the packaged recipe (`python "
            f"scripts/train_default_models.py\n  --models {name}`), seed {tc['seed']}; threshold, "
            f"change cap and score calibration re-chosen\n  {recal['date']} (threshold "
            f"{recal['previous_threshold']:.4f} before) from a second cross-validation of the "
            f"same recipe{_settings_note(recal)}:\n  `python scripts/train_default_models.py "
            f"{recal['command']}` (the figures below are its fold models')")


def _settings_note(recal: dict) -> str:
    """The inference settings a recalibration changed (e.g. ``norm_adapt``), if any."""
    changed = recal.get("settings") or {}
    return "".join(f",\n  scored with the new setting model.{k}={v!r}" for k, v in changed.items())


def _threshold_note(model, result) -> str:
    cap = result.change_cap
    if model.max_change_fraction is None or not cap or not cap.get("rechosen"):
        return (f"{model.threshold:.4f} on the change probability, chosen on the pooled\n"
                "  out-of-fold predictions of the cross-validation below (never on a scene the "
                "model that scored\n  it was trained on)")
    n = cap["nested"]
    return (f"{model.threshold:.4f} on the change probability, chosen under the scene "
            "change cap (below) on the\n  pooled out-of-fold predictions of the "
            "cross-validation below (never on a scene the model that\n  scored it was trained "
            f"on); without the cap the best is {result.threshold:.4f}. Leave-one-fold-out "
            f"(each\n  fold's threshold chosen on the other folds): F1 {n['threshold_only']:.3f} "
            f"with the threshold alone, {n['cap']:.3f} with\n  the cap at that threshold, "
            f"{n['cap_rechosen']:.3f} with the threshold chosen under the cap")


def _cap_note(model, result) -> str:
    cap = result.change_cap
    if cap is None:
        return "scene change cap: none"
    if model.max_change_fraction is None:
        return (f"scene change cap: none (a cap of {100 * cap['max_fraction']:.3g} % gave pooled "
                f"out-of-fold F1 {cap['pooled']['f1']:.3f} at {cap['threshold']:.4f} "
                f"against {cap['f1_without']:.3f} without it)")
    return (f"scene change cap: at most {100 * model.max_change_fraction:.3g} % of a scene's "
            "valid pixels are marked (`run` raises the threshold on a scene where more score "
            "above it; the largest change share among the training scenes, rounded up; "
            "`--max-change 1` turns it off): pooled out-of-fold F1 "
            f"{cap['pooled']['f1']:.3f} with it (at the shipped threshold), "
            f"{cap['f1_without']:.3f} without (at {result.threshold:.4f}); it raised the "
            f"threshold on {len(cap['raised'])} of {len(cap['per_scene'])} held-out scenes")


def _cap_row(name: str, cap: dict | None) -> str:
    if not cap:
        return ""
    m = cap["pooled"]
    return (f"| {name} (out-of-fold) with the change cap, as `run` applies it | "
            f"{m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | |\n")


def _command() -> str:
    """This run's arguments, less ``--stage report`` (which rewrites the card of a model that
    the same arguments trained)."""
    argv = " ".join(sys.argv[1:])
    return " ".join(argv.replace("--stage report", "").split())


def _folds_note(name: str, result) -> str:
    k = FOLDS[name]
    if len(result.folds) == k:
        return f"{k} folds"
    return (f"{len(result.folds)} of {k} folds, a partial estimate: only these folds' held-out "
            "scenes were scored")


def _input_note(model) -> str:
    if model.normalization == "per_image":
        return ("each date standardised by its own per-band mean and std over the pixels valid "
                "in\n  both dates (`normalization: per_image`): any units (DN, reflectance x "
                "10000,\n  8 bit, the +1000 offset of processing baseline 04.00) give the same "
                "result")
    if model.normalization == "per_image_scalar":
        return ("each date scaled by one mean and std pooled over its blue, green and red "
                "bands\n  (`normalization: per_image_scalar`, as FC-Siam-diff): any gain and "
                "offset common to all\n  bands cancels (DN, reflectance x 10000, the +1000 "
                "offset of processing baseline 04.00),\n  the ratios between bands stay")
    return ("standardised with the training statistics stored in the file (`normalization: "
            "global`):\n  input must be in the training units")


def _figures_table(caption: str, header: str, report: dict | None, label=str,
                   seconds: bool = False) -> str:
    """A card table of pooled out-of-fold figures, one row per entry of a ``crossval`` report
    (``label`` names the row; ``seconds`` adds the scoring time)."""
    if not report:
        return ""
    rows = "\n".join(
        f"| {label(key)} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | "
        f"{r['best_f1']:.3f} | {r['average_precision']:.3f} |"
        + (f" {r['seconds']:.0f} s |" if seconds else "") for key, r in report.items())
    columns = (f"| {header} | precision | recall | F1 | F1 at its best threshold | average "
               "precision |" + (" scoring time |" if seconds else ""))
    return f"""{caption}

{columns}
{"|---" * (7 if seconds else 6)}|
{rows}

"""


def _band_set_table(band_sets: dict | None) -> str:
    return _figures_table("Per band set (the same fold models, each held-out city reduced to the "
                          "set's bands;\nF1 at the pooled-OOF threshold, without the cap):",
                          "band set", band_sets)


def _quality_table(qualities: dict | None) -> str:
    return _figures_table(
        "Per `run --quality` (the same fold models; `best` averages the 8 rotations and mirror\n"
        "images of every tile; F1 at the pooled-OOF threshold, without the cap):", "quality",
        qualities, lambda q: f"`--quality {q}`", seconds=True)


def _resolution_table(resolutions: dict | None) -> str:
    return _figures_table(
        "Per ground resolution (the same fold models on their held-out scenes resampled to\n"
        "0.5x, 1x and 2x the pixel density: imagery twice as coarse or twice as fine as the "
        "training\nscenes'; `scripts/resolution_study.py`; F1 at the pooled-OOF threshold, "
        "without the cap):", "pixel density", resolutions)


def apply_overrides(model_cfg, train_cfg, assignments: list[str]):
    """``model.FIELD=VALUE`` / ``train.FIELD=VALUE`` (VALUE parsed as JSON, else a string)."""
    changes: dict[str, dict] = {"model": {}, "train": {}}
    for item in assignments:
        key, sep, raw = item.partition("=")
        part, _, field = key.partition(".")
        if not sep or part not in changes or not field:
            raise SystemExit(f"--set {item!r}: expected model.FIELD=VALUE or train.FIELD=VALUE")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        changes[part][field] = tuple(value) if isinstance(value, list) else value
    try:
        return (dataclasses.replace(model_cfg, **changes["model"]),
                dataclasses.replace(train_cfg, **changes["train"]))
    except TypeError as err:  # an unknown field
        raise SystemExit(f"--set: {err}") from None


def train_one(name: str, args: argparse.Namespace) -> None:
    data = Path(args.data)
    scenes, folds = load_sentinel2(data) if name == "sentinel2" else load_rgb(data)
    band_ids = scenes[0].band_ids
    if args.preset == "tiny":
        model_cfg, train_cfg = config.tiny(len(band_ids))
    else:
        model_cfg, train_cfg = config.packaged(name, band_ids)
    train_cfg = dataclasses.replace(
        train_cfg, seed=train_cfg.seed if args.seed is None else args.seed,
        num_epochs=args.epochs or train_cfg.num_epochs)
    model_cfg, train_cfg = apply_overrides(model_cfg, train_cfg, args.set)
    log.info("%s: %d scenes, bands %s, %d folds", name, len(scenes), band_ids, FOLDS[name])
    only = [int(i) for i in args.only_folds.split(",")] if args.only_folds else None
    workdir = Path(args.workdir) / name
    if args.stage == "cv":
        crossval.cross_validate(scenes, FOLDS[name], model_cfg, train_cfg, workdir / "cv",
                                name=name, progress=not args.quiet, folds=folds,
                                only_folds=only)
        return
    if args.stage == "final":
        training.fit(scenes, [], model_cfg, dataclasses.replace(train_cfg, patience=0),
                     workdir / "final", name=name, progress=not args.quiet)
        return
    out = Path(args.out)
    if args.stage in ("report", "recalibrate"):
        # the packaged model's weights as they are, and its fold models re-scored (trained if
        # missing)
        path = out / f"{name}.msgpack"
        model = learned.load_model(path)
        previous = model.config
        if args.stage == "recalibrate":  # the recipe's inference settings (norm_adapt) as well
            model = dataclasses.replace(model, config=dataclasses.replace(model.config, **{
                f: getattr(model_cfg, f) for f in config.INFERENCE_ONLY}))
        result = crossval.cross_validate(scenes, FOLDS[name], model_cfg, train_cfg,
                                         workdir / "cv", name=name, progress=not args.quiet,
                                         folds=folds, only_folds=only)
        decided = crossval.with_cv_decision(model, result)
        if args.stage == "recalibrate":
            _check_same_recipe(model, result.model_paths)
            record = dict(decided.training, recalibrated={
                "date": datetime.date.today().isoformat(), "command": _command(),
                "previous_threshold": model.threshold, "settings": {
                    f: getattr(model_cfg, f) for f in config.INFERENCE_ONLY
                    if getattr(model_cfg, f) != getattr(previous, f)}})
            model = dataclasses.replace(decided, training=record)
            path = modelfile.save_model(path, model)
            modelfile.register_model(path, name, folder=out)
        elif (abs(decided.threshold - model.threshold) > 1e-6
              or decided.max_change_fraction != model.max_change_fraction):
            raise SystemExit(
                f"the fold models in {workdir / 'cv'} decide threshold {decided.threshold:.6f}, "
                f"cap {decided.max_change_fraction}; {path} has {model.threshold:.6f}, cap "
                f"{model.max_change_fraction}: they come from different runs. Use --stage "
                "recalibrate to give the model their decision, or point --workdir at its own "
                "fold models.")
    else:
        model, result = crossval.train_with_cv(scenes, FOLDS[name], model_cfg, train_cfg,
                                               Path(args.workdir) / name, name=name,
                                               progress=not args.quiet, folds=folds,
                                               only_folds=only)
        out.mkdir(parents=True, exist_ok=True)
        path = modelfile.save_model(out / f"{name}.msgpack", model)
        modelfile.register_model(path, name, folder=out)
    cost = seconds_per_megapixel(model, scenes)
    sets = None
    if model.required_bands is not None:
        sets = crossval.band_set_report(result.model_paths, scenes, result.folds,
                                        bands.BAND_SETS, result.threshold)
    qualities = crossval.quality_report(result.model_paths, scenes, result.folds,
                                        result.threshold)
    resolutions = crossval.resolution_report(result.model_paths, scenes, result.folds,
                                             result.threshold)
    note = uncertainty_note(result, scenes, Path(args.workdir) / name / "cv", model.threshold)
    card = model_card(name, model, scenes, result, args, modelfile.sha256_file(path), cost, sets,
                      qualities, note, resolutions)
    (out / f"{name}.md").write_text(card)
    (out / f"{name}.eval.json").write_text(json.dumps(
        result.to_dict() | {"band_sets": sets, "qualities": qualities,
                            "resolutions": resolutions, "seconds_per_mpix": cost[0],
                            "seconds_to_bind": cost[1]}, indent=2))
    print(f"{name}: wrote {path} (out-of-fold F1 {result.pooled.f1:.3f}, AP "
          f"{result.average_precision:.3f}, CVA {result.cva.f1:.3f}; "
          f"{cost[0]:.2f} s/Mpix)", flush=True)


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parents[1]
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", choices=("sentinel2", "rgb"),
                   default=["sentinel2", "rgb"])
    p.add_argument("--data", default=str(here.parent / "shared" / "data"),
                   help="folder with oscd/, airchange/, levir_dsifn_samples/")
    p.add_argument("--out", default=str(here / "changedet" / "weights"),
                   help="weights folder (model files, cards, registry.json)")
    p.add_argument("--workdir", default=str(here / "runs"), help="checkpoints and logs")
    p.add_argument("--preset", choices=("default", "tiny"), default="default")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs of 100 steps (default with the default preset: the packaged "
                   "recipe's, " + ", ".join(f"{n} {r['train']['num_epochs']}"
                                            for n, r in PACKAGED.items())
                   + "; config.default() alone trains 600 steps)")
    p.add_argument("--seed", type=int, default=None,
                   help="training seed (default: the packaged recipe's, " + ", ".join(
                       f"{n} {r['train']['seed']}" for n, r in PACKAGED.items())
                   + "; 0 with --preset tiny)")
    p.add_argument("--set", action="append", default=[], metavar="PART.FIELD=VALUE",
                   help="override one field of the recipe, e.g. model.dropout=0.2 or "
                   "train.weight_decay=0.01 (repeatable; on top of the packaged recipe, "
                   "config.packaged(): " + "; ".join(f"{n} {_recipe_note(n)}" for n in PACKAGED)
                   + "; recorded in the card's configs)")
    p.add_argument("--only-folds", help="cross-validate on these folds only (e.g. 0): cheaper, "
                   "partial estimate; the threshold comes from their held-out scenes")
    p.add_argument("--stage", choices=("all", "cv", "final", "report", "recalibrate"),
                   default="all",
                   help="'cv' trains (and scores) only the fold models, 'final' only the "
                   "all-scenes model; run them side by side, then 'all' reuses both (every "
                   "training resumes from its checkpoint) and writes weights and cards; "
                   "'report' keeps the model file in --out and rewrites its card and eval.json "
                   "from the fold models in --workdir; 'recalibrate' also keeps its weights but "
                   "takes its threshold, change cap and score calibration from those fold "
                   "models (e.g. a retraining of the same recipe's folds)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    np.seterr(all="ignore")
    for name in args.models:
        train_one(name, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
