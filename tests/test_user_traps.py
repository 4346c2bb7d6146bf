"""Mistakes a new user makes get a one-line error before any computation, not a wrong map."""

from __future__ import annotations

import importlib.util

import pytest

from changedet import pipeline
from changedet.cli import main


@pytest.fixture
def paris(sample_data):
    city = sample_data / "oscd_paris"
    return str(city / "imgs_1"), str(city / "imgs_2")


@pytest.mark.parametrize("value, expected", [("2", "outside (0, 1)"), ("0", "outside (0, 1)"),
                                             ("nan", "finite")])
def test_a_threshold_outside_a_probability_is_refused(capsys, paris, tmp_path, value, expected):
    out = tmp_path / "change.tif"
    assert main(["run", *paris, "-o", str(out), "--threshold", value, "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err
    assert not out.exists()


def test_cva_thresholds_must_be_positive(capsys, paris, tmp_path):
    out = tmp_path / "change.tif"
    assert main(["run", *paris, "-o", str(out), "--method", "cva", "--threshold", "-1",
                 "-q"]) == 2
    assert "> 0" in capsys.readouterr().err


@pytest.mark.parametrize("option, module, extra", [("--vector", "pyogrio", "vector"),
                                                   ("--quicklook", "matplotlib", "viz")])
def test_missing_optional_packages_are_named_before_any_compute(
        capsys, paris, tmp_path, monkeypatch, option, module, extra):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == module else real(name, *a))
    computed = []
    monkeypatch.setattr(pipeline, "score_graph", lambda *a, **k: computed.append(1))
    suffix = ".gpkg" if option == "--vector" else ".png"
    out = tmp_path / "change.tif"
    assert main(["run", *paris, "-o", str(out), option, str(tmp_path / f"x{suffix}"), "-q"]) == 2
    err = capsys.readouterr().err
    assert f"changedet[{extra}]" in err and module in err
    assert not computed and not out.exists()
