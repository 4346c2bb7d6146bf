"""``scripts/train_default_models.py``'s guards and records around ``--stage recalibrate``: a
packaged model takes a decision only from fold models of its own recipe, and its card says
where the decision came from."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import pytest

from changedet.detectors import learned, modelfile

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "train_default_models.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("train_default_models", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_recalibration_takes_a_decision_only_from_fold_models_of_the_same_recipe(
        script, tmp_path):
    model = learned.load_model("sentinel2")
    weights = modelfile.weights_dir()
    # its own file stands in for a fold model of the same recipe (sentinel2's record predates
    # train.scale: the field reads at its default, so the recipes still compare equal)
    script._check_same_recipe(model, [weights / "sentinel2.msgpack"])
    with pytest.raises(SystemExit, match="another recipe"):
        script._check_same_recipe(model, [weights / "rgb.msgpack"])
    # the same network trained with other settings is another recipe as well
    record = dict(model.training, train_config=dict(model.training["train_config"],
                                                    num_epochs=15))
    other = modelfile.save_model(tmp_path / "fold.msgpack",
                                 dataclasses.replace(model, training=record))
    with pytest.raises(SystemExit, match="another recipe"):
        script._check_same_recipe(model, [other])


def test_a_recalibrated_card_names_both_the_weights_and_the_decision(script):
    recalibrated = {"date": "2026-12-07", "command": "--models sentinel2 --stage recalibrate",
                    "previous_threshold": 0.5127}
    line = script._provenance("sentinel2", {"recalibrated": recalibrated}, {"seed": 1})
    assert "--models sentinel2`), seed 1" in line and "0.5127 before" in line
    assert "--models sentinel2 --stage recalibrate" in line
    assert "trained" in script._provenance("rgb", {}, {"seed": 0})
