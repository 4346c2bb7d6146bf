"""The ``train`` and ``evaluate`` commands (kept apart from ``cli`` so ``run`` stays light).

``--dataset KIND PATH...`` reads one of the supported layouts:

- ``oscd ROOT`` — ``ROOT/images/<city>/imgs_1|imgs_2`` and ``ROOT/train_labels/<city>/cm/``;
- ``levir ROOT`` — LEVIR-CD/DSIFN style ``ROOT/A``, ``ROOT/B``, ``ROOT/label`` (PNG, 0/255);
- ``airchange ROOT`` — ``ROOT/<site>/<n>/im1.bmp, im2.bmp, gt.bmp``;
- ``pair BEFORE AFTER LABEL`` — two scenes and a label raster (change = values > 0);
- ``sparse BEFORE AFTER CHANGED UNCHANGED`` — sparse labels (only marked pixels count).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from changedet.errors import ConfigError, DatasetError

__all__ = [
    "DATASET_ARITY", "TRAIN_EXAMPLES", "EVALUATE_EXAMPLES", "add_commands", "load_dataset",
    "apply_overrides",
]

log = logging.getLogger(__name__)

DATASET_ARITY = {"oscd": 1, "levir": 1, "airchange": 1, "pair": 3, "sparse": 4}

TRAIN_EXAMPLES = """examples: (from the repository root; ../shared/data holds the labelled datasets
beside this project's checkout: point them at your own OSCD or LEVIR-CD download)
  python -m changedet train --dataset pair data/oscd_paris/imgs_1 data/oscd_paris/imgs_2 \\
      data/oscd_paris/paris-cm.tif --change-values 2 --preset tiny -o tiny.msgpack   # seconds
  python -m changedet train --dataset oscd ../shared/data/oscd --val paris,rennes -o my_s2.msgpack
  python -m changedet train --dataset oscd ../shared/data/oscd --cv 4 -o my_s2_cv.msgpack
  python -m changedet train --dataset levir ../shared/data/levir_dsifn_samples/samples_LEVIR \\
      --val test_2_0000_0000 -o my_rgb.msgpack --set train.num_epochs=10
"""
EVALUATE_EXAMPLES = """examples: (from the repository root; tiny.msgpack is the first `train`
example's)
  python -m changedet evaluate --dataset pair data/oscd_paris/imgs_1 data/oscd_paris/imgs_2 \\
      data/oscd_paris/paris-cm.tif --change-values 2 --json report.json
  python -m changedet evaluate --dataset pair data/oscd_paris/imgs_1 data/oscd_paris/imgs_2 \\
      data/oscd_paris/paris-cm.tif --change-values 2 --model tiny.msgpack
  python -m changedet evaluate --dataset oscd ../shared/data/oscd --scenes paris,rennes
"""


def add_commands(sub: argparse._SubParsersAction, add_common: Callable) -> None:
    """Adds ``train`` and ``evaluate`` to the CLI's subparsers."""
    train = sub.add_parser(
        "train", help="train a Siamese change model on labelled scenes",
        description="Train a Siamese change model, calibrate its threshold on validation "
        "scenes and save it as one model file (usable with `run --model PATH`).",
        epilog=TRAIN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_dataset_args(train)
    train.add_argument("--val", help="comma-separated scene names kept for validation")
    train.add_argument(
        "--cv", type=int, metavar="K",
        help="leave-scenes-out cross-validation over K folds of scenes: one model per fold "
        "predicts its held-out scenes (run's scoring path); the pooled out-of-fold F1 picks the "
        "threshold; then the final model trains on all scenes (K+1 trainings; excludes --val)",
    )
    train.add_argument("-o", "--output", required=True, help="model file to write (.msgpack)")
    train.add_argument("--workdir",
                       help="checkpoints and logs (default: OUTPUT without suffix + '.run')")
    train.add_argument(
        "--preset", choices=("default", "sentinel2", "rgb", "tiny"), default="default",
        help="'default': config.default() (600 steps, a quick start); 'sentinel2' / 'rgb': the "
        "recipes of the packaged models (config.packaged(): BatchNorm, dropout 0.2, 4500 steps; "
        "about 1.5 h on a 2-core CPU); 'tiny': seconds, for smoke tests")
    train.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override a config field, e.g. train.learning_rate=3e-4, model.head=distance",
    )
    train.add_argument("--name", help="model name stored in the file (default: file stem)")
    train.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    train.add_argument("--overwrite", action="store_true", help="replace an existing model file")
    add_common(train)
    train.set_defaults(func=_cmd_train)

    ev = sub.add_parser(
        "evaluate", help="precision/recall/F1/IoU/kappa of a model (and CVA) on labelled scenes",
        epilog=EVALUATE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_dataset_args(ev)
    ev.add_argument("--scenes", help="comma-separated scene names to evaluate (default: all)")
    ev.add_argument("--model", help="packaged model name or file (default: from the bands); "
                    "the CVA baseline is always reported beside it")
    ev.add_argument("--threshold", type=float, help="override the model's threshold")
    ev.add_argument("--max-change", type=float, metavar="FRACTION",
                    help="scene change cap as run applies it (default: the model's stored cap "
                    "with its own threshold; 1 turns it off)")
    ev.add_argument("--json", help="also write the report as JSON here")
    add_common(ev)
    ev.set_defaults(func=_cmd_evaluate)


def _add_dataset_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, nargs="+", metavar=("KIND", "PATH"),
                        help="KIND (oscd, levir, airchange, pair, sparse) and its path(s)")
    parser.add_argument("--bands", help="comma-separated band ids to use, in order")
    parser.add_argument("--align", action="store_true", help="resample date 2 onto date 1")
    parser.add_argument(
        "--change-values", help="for --dataset pair: label values meaning change, e.g. 2 for "
        "OSCD's 1/2 labels (default: > 127 for 0/255 masks, else 1)",
    )


def _split(text: str | None) -> list[str]:
    return [t for t in (text or "").replace(" ", "").split(",") if t]


def load_dataset(spec: Sequence[str], *, bands: Sequence[str] | None = None,
                 align: bool = False, change_values: Sequence[int] | None = None) -> list:
    """Scenes of a ``--dataset KIND PATH...`` specification."""
    from changedet.io import datasets

    kind, *paths = spec
    if kind not in DATASET_ARITY:
        raise DatasetError(f"unknown dataset kind {kind!r}; use one of {sorted(DATASET_ARITY)}.")
    if len(paths) != DATASET_ARITY[kind]:
        raise DatasetError(
            f"--dataset {kind} takes {DATASET_ARITY[kind]} path(s); got {len(paths)}: {paths}."
        )
    bands = list(bands) if bands else None
    match kind:
        case "oscd":
            return datasets.load_oscd(paths[0], bands=bands)
        case "levir":
            return _select_bands(datasets.load_levir(paths[0]), bands)
        case "airchange":
            return _select_bands(datasets.load_airchange(paths[0]), bands)
        case "pair":
            return [datasets.load_pair(*paths, align=align, bands=bands,
                                       change_values=change_values or None)]
        case "sparse":
            return [datasets.load_sparse(*paths, align=align, bands=bands)]
    raise AssertionError(kind)  # unreachable: kinds checked above


def _select_bands(scenes: list, bands: Sequence[str] | None) -> list:
    from changedet.bands import band_positions

    if not bands:
        return scenes
    out = []
    for scene in scenes:
        index = band_positions(scene.band_ids, bands, where=f"scene {scene.name}")
        out.append(scene._replace(before=scene.before[index], after=scene.after[index],
                                  band_ids=tuple(scene.band_ids[i] for i in index)))
    return out


def _parse_value(field: dataclasses.Field, text: str, owner: str) -> Any:
    hint = field.type if not isinstance(field.type, str) else _resolve_hint(owner, field.name)
    origin = typing.get_origin(hint)
    if origin is tuple:
        return tuple(int(v) for v in _split(text))
    if origin is typing.Literal:
        return text
    if hint is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{owner}.{field.name} takes true/false; got {text!r}.")
    for kind in (int, float):
        if hint is kind:
            return kind(text)
    return text


def _resolve_hint(owner: str, name: str) -> Any:
    from changedet import config

    cls = config.ModelConfig if owner == "model" else config.TrainConfig
    return typing.get_type_hints(cls)[name]


def apply_overrides(model_cfg: Any, train_cfg: Any, overrides: Sequence[str]) -> tuple[Any, Any]:
    """Applies ``section.field=value`` overrides (``model.*`` or ``train.*``), typed by field.

    Raises:
      ConfigError: Unknown section or field (with the closest field names), or a bad value.
    """
    import difflib

    configs = {"model": model_cfg, "train": train_cfg}
    for item in overrides:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or section not in configs:
            raise ConfigError(f"--set takes model.FIELD=VALUE or train.FIELD=VALUE; got {item!r}.")
        fields = {f.name: f for f in dataclasses.fields(configs[section])}
        if name not in fields:
            close = difflib.get_close_matches(name, fields, n=3)
            hint = f" Did you mean {', '.join(f'{section}.{c}' for c in close)}?" if close else ""
            raise ConfigError(f"{section} has no field {name!r}.{hint}")
        try:
            parsed = _parse_value(fields[name], value.strip(), section)
        except ValueError as err:
            raise ConfigError(f"bad value for {key}: {value!r} ({err}).") from err
        configs[section] = dataclasses.replace(configs[section], **{name: parsed})
    return configs["model"], configs["train"]


def _cmd_train(args: argparse.Namespace) -> int:
    from changedet import config, training
    from changedet.detectors import modelfile
    from changedet.io import check_output_path, datasets

    out = Path(args.output)
    check_output_path(out, overwrite=args.overwrite)
    scenes = load_dataset(args.dataset, bands=_split(args.bands), align=args.align,
                          change_values=[int(v) for v in _split(args.change_values)])
    band_ids = scenes[0].band_ids
    if args.preset == "tiny":
        model_cfg, train_cfg = config.tiny(len(band_ids))
    elif args.preset in config.PACKAGED_RECIPES:
        model_cfg, train_cfg = config.packaged(args.preset, band_ids)
    else:
        model_cfg, train_cfg = config.default(band_ids)
    model_cfg = dataclasses.replace(model_cfg, num_bands=len(band_ids))
    model_cfg, train_cfg = apply_overrides(model_cfg, train_cfg, args.set)
    val_names = _split(args.val)
    if args.cv:
        if val_names:
            raise ConfigError("--cv chooses the threshold on out-of-fold predictions; drop --val.")
        from changedet.training import crossval

        workdir = Path(args.workdir) if args.workdir else out.with_suffix(".run")
        model, result = crossval.train_with_cv(
            scenes, args.cv, model_cfg, train_cfg, workdir, name=args.name or out.stem,
            progress=not args.quiet)
        modelfile.save_model(out, model)
        log.info("cross-validation (%d folds): pooled out-of-fold P %.3f R %.3f F1 %.3f, AP "
                 "%.3f; fold F1 %s; threshold %.4g%s", len(result.folds), result.pooled.precision,
                 result.pooled.recall, result.pooled.f1, result.average_precision,
                 ", ".join(f"{f:.3f}" for f in result.per_fold), model.threshold,
                 "" if model.max_change_fraction is None else
                 f", change cap {100 * model.max_change_fraction:.3g} % (out-of-fold F1 with it "
                 f"{result.change_cap['pooled']['f1']:.3f})")
        print(out)
        return 0
    train_scenes, val_scenes = datasets.split_by_scene(scenes, val_names)
    if not train_scenes:
        raise DatasetError("every scene is in --val; keep at least one for training.")
    workdir = Path(args.workdir) if args.workdir else out.with_suffix(".run")
    log.info("training on %d scenes, validating on %d (%s)", len(train_scenes), len(val_scenes),
             ", ".join(s.name for s in val_scenes) or "none")
    model = training.fit(
        train_scenes, val_scenes, model_cfg, train_cfg, workdir,
        band_ids=band_ids, name=args.name or out.stem, progress=not args.quiet,
        resume=not args.restart,
    )
    modelfile.save_model(out, model)
    summary = model.training.get("val") or {}
    log.info("validation: %s", json.dumps(summary))
    print(out)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from changedet import evaluate, pipeline
    from changedet.detectors.learned import load_model

    scenes = load_dataset(args.dataset, bands=_split(args.bands), align=args.align,
                          change_values=[int(v) for v in _split(args.change_values)])
    wanted = _split(args.scenes)
    if wanted:
        from changedet.io import datasets

        _, scenes = datasets.split_by_scene(scenes, wanted)
    band_ids = scenes[0].band_ids
    model = args.model
    if model is None:
        model = "sentinel2" if tuple(band_ids) == pipeline.SENTINEL2_BANDS else "rgb"
    detector = load_model(model)
    report = evaluate.evaluate(detector, scenes, threshold=args.threshold,
                               max_change=args.max_change)
    print(report.to_table())
    if args.json:
        Path(args.json).write_text(report.to_json())
    return 0
