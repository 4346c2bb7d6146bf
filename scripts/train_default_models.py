"""Trains the packaged changedet models, reproducibly, and writes weights, model cards, registry.

Models:
  sentinel2  13 Sentinel-2 bands (B01..B12, B8A), OSCD cities; validation cities: paris, rennes
             (paris is also the README demo pair in data/, so the demo is never trained on).
  rgb        3 bands (red, green, blue, 8-bit): SZTAKI AirChange, LEVIR-CD and DSIFN samples,
             and OSCD B04/B03/B02 scaled to 8 bit (DN * 255 / 3000, clipped); validation:
             OSCD paris + rennes, AirChange Szada/7, LEVIR val_27_0000_0256, DSIFN 9_3.

Normalisation statistics are computed per band over the training scenes of each model and stored
in the model file. The decision threshold maximises F1 on the validation scenes.

The full run (CPU, a few hours)::

    python scripts/train_default_models.py --data ../shared/data --out changedet/weights

A smoke run (a minute; writes nowhere near the packaged weights)::

    python scripts/train_default_models.py --epochs 1 --steps 5 --out /tmp/cd-smoke \
        --workdir /tmp/cd-smoke/runs --preset tiny
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import sys
from pathlib import Path

import numpy as np

from changedet import __version__, config, datasets, evaluate, modelfile, training
from changedet.data import Scene

log = logging.getLogger("train_default_models")

SENTINEL2_VAL = ("paris", "rennes")
RGB_VAL = ("oscd/paris", "oscd/rennes", "airchange/Szada/7",
           "samples_LEVIR/val_27_0000_0256", "samples_DSIFN/9_3")
OSCD_RGB = ("B04", "B03", "B02")
#: Sentinel-2 L1C digital numbers -> 8-bit-like range for the RGB model.
OSCD_TO_8BIT = 255.0 / 3000.0

SOURCES = {
    "oscd": "Onera Satellite Change Detection (Daudt et al., IGARSS 2018); imagery: modified "
            "Copernicus Sentinel data; change maps CC BY-NC-SA",
    "airchange": "SZTAKI AirChange benchmark (Benedek & Sziranyi 2008/2009), scientific use",
    "levir": "LEVIR-CD samples (academic use only)",
    "dsifn": "DSIFN samples (Google Earth imagery)",
}


def _to_8bit(scene: Scene) -> Scene:
    def f(x: np.ndarray) -> np.ndarray:
        return np.clip(x * OSCD_TO_8BIT, 0, 255).astype(np.float32)

    return scene._replace(before=f(scene.before), after=f(scene.after), band_ids=("1", "2", "3"))


def load_sentinel2(data: Path) -> tuple[list[Scene], list[Scene]]:
    scenes = datasets.load_oscd(data / "oscd")
    return datasets.split_by_scene(scenes, SENTINEL2_VAL)


def load_rgb(data: Path) -> tuple[list[Scene], list[Scene]]:
    oscd = [_to_8bit(s) for s in datasets.load_oscd(data / "oscd", bands=OSCD_RGB)]
    scenes = (
        oscd
        + datasets.load_airchange(data / "airchange")
        + datasets.load_levir(data / "levir_dsifn_samples/samples_LEVIR")
        + datasets.load_levir(data / "levir_dsifn_samples/samples_DSIFN")
    )
    return datasets.split_by_scene(scenes, RGB_VAL)


def model_card(name: str, model, train: list[Scene], val: list[Scene],
               report: evaluate.EvalReport, args: argparse.Namespace, sha256: str) -> str:
    t = model.training
    tc = t["train_config"]
    rows = "\n".join(
        f"| {m} | {report.pooled[m].precision:.3f} | {report.pooled[m].recall:.3f} | "
        f"{report.pooled[m].f1:.3f} | {report.pooled[m].iou:.3f} | {report.pooled[m].kappa:.3f} |"
        for m in report.methods
    )
    sources = sorted({s.name.split("/")[0] for s in train + val})
    return f"""# changedet model `{name}`

- changedet {__version__}, trained {datetime.date.today().isoformat()} with
  `python scripts/train_default_models.py {" ".join(sys.argv[1:])}`
- file: `{name}.msgpack`, sha256 `{sha256}`
- bands (in order): {", ".join(model.band_ids)}
- normalisation (raw units, training scenes): mean {[round(v, 2) for v in model.norm_mean]},
  std {[round(v, 2) for v in model.norm_std]}
- architecture: {json.dumps(config.to_dict(model.config))}
- training: {t["epochs_run"]} epochs x {tc["steps_per_epoch"]} steps, batch {tc["batch_size"]} x
  {tc["patch_px"]} px patches, loss {tc["loss"]}, lr {tc["learning_rate"]} (warmup + cosine),
  seed {tc["seed"]}; best epoch {t["best_epoch"]}
- decision threshold: {model.threshold:.4f} on the score ({t["threshold_source"]})

## Data

Sources ({", ".join(sources)}): {"; ".join(SOURCES.get(s.replace("samples_", "").lower(), s)
                                            for s in sources)}.

- training scenes ({len(train)}): {", ".join(s.name for s in train)}
- validation scenes ({len(val)}): {", ".join(s.name for s in val)}
{"- OSCD RGB scaled to 8 bit: DN * 255 / 3000, clipped to [0, 255]" if name == "rgb" else ""}

## Validation (pooled over the validation scenes, valid labelled pixels only)

| method | precision | recall | F1 | IoU | kappa |
|---|---|---|---|---|---|
{rows}

CVA: change vector analysis on per-date standardised bands, Otsu threshold per scene.
The validation scenes also chose the threshold and the epoch, so these figures are optimistic;
evaluate on held-out data before relying on them.

## Per scene

```
{report.to_table()}
```
"""


def train_one(name: str, args: argparse.Namespace) -> None:
    data = Path(args.data)
    train, val = load_sentinel2(data) if name == "sentinel2" else load_rgb(data)
    band_ids = train[0].band_ids
    model_cfg, train_cfg = config.tiny(len(band_ids)) if args.preset == "tiny" else config.default()
    model_cfg = dataclasses.replace(model_cfg, num_bands=len(band_ids))
    train_cfg = dataclasses.replace(
        train_cfg, seed=args.seed,
        **({"num_epochs": args.epochs} if args.epochs else {}),
        **({"steps_per_epoch": args.steps} if args.steps else {}),
    )
    log.info("%s: %d training, %d validation scenes, bands %s", name, len(train), len(val),
             band_ids)
    model = training.fit(train, val, model_cfg, train_cfg, Path(args.workdir) / name,
                         band_ids=band_ids, name=name, progress=not args.quiet,
                         resume=not args.restart)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = modelfile.save_model(out / f"{name}.msgpack", model)
    modelfile.register_model(path, name, folder=out)
    report = evaluate.evaluate(model, val)
    log.info("%s validation:\n%s", name, report.to_table())
    card = model_card(name, model, train, val, report, args, modelfile.sha256_file(path))
    (out / f"{name}.md").write_text(card)
    (out / f"{name}.eval.json").write_text(report.to_json())
    print(f"{name}: wrote {path} (val F1 {report.pooled[model.name].f1:.3f}, "
          f"CVA {report.pooled['cva'].f1:.3f})")


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
    p.add_argument("--epochs", type=int, default=None, help="override num_epochs")
    p.add_argument("--steps", type=int, default=None, help="override steps_per_epoch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--restart", action="store_true", help="ignore existing checkpoints")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for name in args.models:
        train_one(name, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
