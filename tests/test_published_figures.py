"""The accuracy figures the project publishes are the recorded evaluation's, and are re-checked.

``scripts/train_default_models.py`` records each packaged model's cross-validation in
``changedet/weights/<name>.eval.json`` and writes its card from it. Here: the card, the model
file and the README quote that record (no hand-edited or stale figure), and the part of it that
is cheap to recompute from the raw data — the CVA baseline on the same held-out scenes — is
recomputed and must match. The out-of-fold model figures themselves need the fold trainings
(about two hours on this CPU): re-run the script to refresh them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import changedet
from changedet import evaluate, metrics
from changedet.io import datasets

WEIGHTS = Path(changedet.__file__).parent / "weights"
README = Path(__file__).resolve().parents[1] / "README.md"
NAMES = ("sentinel2", "rgb")


def record(name: str) -> dict:
    return json.loads((WEIGHTS / f"{name}.eval.json").read_text())


def f3(x: float) -> str:
    return f"{x:.3f}"


@pytest.mark.parametrize("name", NAMES)
def test_model_card_and_file_quote_the_recorded_cross_validation(name):
    rec, card = record(name), (WEIGHTS / f"{name}.md").read_text()
    p, c = rec["pooled"], rec["cva"]
    assert (f"| {name} (out-of-fold) | {f3(p['precision'])} | {f3(p['recall'])} | "
            f"{f3(p['f1'])} | {f3(rec['average_precision'])} |") in card
    assert f"| CVA + Otsu | {f3(c['precision'])} | {f3(c['recall'])} | {f3(c['f1'])} |" in card
    for scene, m in rec["per_scene"].items():
        assert f"| {scene} | {f3(m['precision'])} | {f3(m['recall'])} | {f3(m['f1'])} |" in card
    assert "F1 per fold: " + ", ".join(f3(f) for f in rec["per_fold_f1"]) in card
    model = changedet.load_model(name)
    # a threshold chosen under the change cap is the cap report's
    under_cap = model.training["threshold_source"] == "cv_oof_f1_under_cap"
    shipped = rec["change_cap"]["threshold"] if under_cap else rec["threshold"]
    assert model.threshold == pytest.approx(shipped, abs=1e-9)
    assert f"decision threshold: {shipped:.4f}" in card
    assert model.training["cv"]["pooled"]["f1"] == pytest.approx(p["f1"], abs=1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_readme_quotes_the_recorded_cross_validation(name):
    rec = record(name)
    rows = [line for line in README.read_text().splitlines()
            if line.startswith(f"| `{name}` (shipped")]
    assert len(rows) == 1, f"README has no single cross-validation row for {name}"
    cells = [cell.strip().strip("*") for cell in rows[0].strip("|").split("|")]
    p = rec["pooled"]
    assert cells[1:] == [f3(p["precision"]), f3(p["recall"]), f3(p["f1"]), f3(rec["cva"]["f1"])]
    steps = re.search(r"(\d+) steps", cells[0])
    card = (WEIGHTS / f"{name}.md").read_text()
    assert steps and f"training: {steps.group(1)} AdamW steps" in card


def _scenes(name: str, data: Path):
    if name == "sentinel2":
        return datasets.load_oscd(data / "oscd")
    return (datasets.load_airchange(data / "airchange")
            + datasets.load_levir(data / "levir_dsifn_samples/samples_LEVIR")
            + datasets.load_levir(data / "levir_dsifn_samples/samples_DSIFN"))


@pytest.mark.parametrize("name", NAMES)
def test_recorded_cva_baseline_is_what_a_fresh_evaluation_gives(name, shared_data):
    """CVA + Otsu over the recorded held-out scenes, recomputed from the rasters."""
    rec = record(name)
    held_out = {n for fold in rec["folds"] for n in fold}
    scenes = [s for s in _scenes(name, shared_data) if s.name in held_out]
    assert {s.name for s in scenes} == held_out, "recorded scenes missing from the data"
    counts = [evaluate._result(s, "cva", evaluate.score_scene(evaluate.cva_for_scene(s), s),
                               None).counts for s in scenes]
    fresh = metrics.scores_from_counts(*metrics.sum_counts(*counts))
    for key in ("precision", "recall", "f1"):
        assert getattr(fresh, key) == pytest.approx(rec["cva"][key], abs=1e-3), key


@pytest.mark.parametrize("name", NAMES)
def test_a_stored_change_cap_is_the_recorded_one_and_its_figures_are_quoted(name):
    """A model that caps the share of a scene it marks says so with the figures of the cap
    as ``run`` applies it (card and README), from the same record."""
    rec, model = record(name), changedet.load_model(name)
    cap = rec.get("change_cap")
    if model.max_change_fraction is None:
        assert cap is None or not cap["kept"]
        return
    assert cap["kept"] and model.max_change_fraction == cap["max_fraction"]
    m = cap["pooled"]
    figures = f"{f3(m['precision'])} | {f3(m['recall'])} | {f3(m['f1'])}"
    card = (WEIGHTS / f"{name}.md").read_text()
    assert f"| {name} (out-of-fold) with the change cap, as `run` applies it | {figures} |" in card
    rows = [line for line in README.read_text().splitlines()
            if line.startswith(f"| `{name}` + scene change cap")]
    assert len(rows) == 1, f"README has no single change-cap row for {name}"
    cells = [cell.strip().strip("*") for cell in rows[0].strip("|").split("|")]
    assert cells[1:4] == figures.split(" | ")
