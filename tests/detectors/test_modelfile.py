"""Model files: round trip, atomic writes, every failure mode, packaged-model registry."""

from __future__ import annotations

import json
import pickle

import jax
import msgpack
import numpy as np
import pytest
from flax import serialization

from changedet.config import ModelConfig
from changedet.detectors.learned import LearnedDetector, as_detector, load_model, random_init_model
from changedet.detectors.modelfile import check_bands, read_model, register_model, save_model
from changedet.errors import BandMismatchError, ModelFileError
from changedet.models import ChangeModel

BANDS = ("B04", "B03", "B02")


@pytest.fixture(scope="module")
def model() -> LearnedDetector:
    cfg = ModelConfig(num_bands=3, features=(4, 8), embed_dim=4, head="distance",
                      distance="cosine")
    base = random_init_model(cfg, BANDS, seed=2, name="tiny-rgb")
    return LearnedDetector(
        config=cfg, state=base.state, band_ids=BANDS, norm_mean=(10.0, 20.0, 30.0),
        norm_std=(2.0, 3.0, 4.0), threshold=0.3, margin=1.5, name="tiny-rgb",
        training={"epochs": 2, "seed": 2, "data": ["oscd/paris"], "val_f1": 0.5})


def test_the_record_is_plain_data_and_the_detector_scores_it(tmp_path, model):
    """read_model gives the plain record (no compiled state; pickles as data); as_detector and
    load_model give the detector, which scores exactly as the model it came from."""
    path = save_model(tmp_path / "m.msgpack", model)
    record = read_model(path)
    assert type(record) is ChangeModel and record.source_sha256 is not None
    assert not hasattr(record, "score_block") and not hasattr(record, "_predictors")
    copy = pickle.loads(pickle.dumps(record))
    assert type(copy) is ChangeModel and copy.name == record.name
    jax.tree.map(np.testing.assert_array_equal, copy.state, record.state)
    detector = as_detector(record)
    assert isinstance(detector, LearnedDetector) and as_detector(detector) is detector
    assert detector.source_sha256 == record.source_sha256
    rng = np.random.default_rng(3)
    before, after = (rng.normal(20, 5, size=(3, 16, 16)).astype(np.float32) for _ in range(2))
    np.testing.assert_array_equal(detector.score_block(before, after),
                                  model.score_block(before, after))


def test_round_trip_keeps_everything_and_scores(tmp_path, model):
    path = save_model(tmp_path / "m.msgpack", model)
    assert [p.name for p in tmp_path.iterdir()] == ["m.msgpack"]  # no temp file left behind
    loaded = load_model(path)
    for field in ("config", "band_ids", "norm_mean", "norm_std", "threshold", "margin", "name",
                  "training", "normalization", "required_bands"):
        assert getattr(loaded, field) == getattr(model, field), field
    jax.tree.map(np.testing.assert_array_equal, loaded.state, model.state)
    rng = np.random.default_rng(0)
    before = rng.normal(20, 5, size=(3, 21, 19)).astype(np.float32)
    after = rng.normal(20, 5, size=(3, 21, 19)).astype(np.float32)
    np.testing.assert_array_equal(loaded.score_block(before, after),
                                  model.score_block(before, after))
    # The detector protocol.
    assert loaded.halo_px > 0 and loaded.align_px == 2
    prepared = loaded.prepare_scene(_scene(before, after))  # a global-statistics model
    assert prepared.model is loaded and prepared.halo_px == loaded.halo_px
    np.testing.assert_allclose(prepared.score_block(before, after),
                               loaded.score_block(before, after), atol=1e-6)
    assert loaded.predictor() is loaded.predictor()  # cached


def test_the_file_is_plain_msgpack_with_format_and_json_metadata(tmp_path, model):
    path = save_model(tmp_path / "m.msgpack", model)
    raw = serialization.msgpack_restore(path.read_bytes())
    assert raw["format"] == "changedet-model" and raw["format_version"] == 1
    meta = json.loads(raw["metadata"])
    assert meta["band_ids"] == list(BANDS) and meta["config"]["distance"] == "cosine"


def _write(path, payload):
    path.write_bytes(serialization.msgpack_serialize(payload))
    return path


def test_load_errors_are_one_line_model_file_errors(tmp_path, model):
    good = save_model(tmp_path / "good.msgpack", model)
    data = good.read_bytes()
    raw = serialization.msgpack_restore(data)
    cases = {
        "does not exist": tmp_path / "missing.msgpack",
        "truncated or corrupt": tmp_path / "cut.msgpack",
        "not a changedet model": tmp_path / "other.msgpack",
        "newer changedet; upgrade": tmp_path / "newer.msgpack",
        "do not match its config": tmp_path / "shapes.msgpack",
        "invalid metadata": tmp_path / "meta.msgpack",
    }
    cases["truncated or corrupt"].write_bytes(data[: len(data) // 2])
    cases["not a changedet model"].write_bytes(msgpack.packb({"weights": [1, 2, 3]}))
    _write(cases["newer changedet; upgrade"], {**raw, "format_version": 99})
    bad_params = jax.tree.map(lambda x: x, raw["params"])
    bad_params["encoder"]["out"]["kernel"] = np.zeros((1, 1, 4, 7), np.float32)
    _write(cases["do not match its config"], {**raw, "params": bad_params})
    _write(cases["invalid metadata"], {**raw, "metadata": "{not json"})
    for message, path in cases.items():
        with pytest.raises(ModelFileError, match=message) as info:
            load_model(path)
        assert "\n" not in str(info.value) and str(path) in str(info.value)


def _scene(before, after, band_ids=BANDS):
    from changedet.data import Scene

    shape = before.shape[1:]
    return Scene("s", before, after, np.zeros(shape, np.uint8), np.ones(shape, bool),
                 tuple(band_ids))


def test_check_bands_names_expected_and_found(model):
    check_bands(model, list(BANDS))
    check_bands(model, ("B02", "B03", "B04"))  # matched by id, whatever the order
    check_bands(model, ("blue", "green", "red"))  # common names are the same bands
    with pytest.raises(BandMismatchError) as info:
        check_bands(model, ("B02", "B03", "B08"))
    text = str(info.value)
    assert "B04,B03,B02" in text and "B02,B03,B08" in text and "missing B04" in text
    assert "with bands" in text and "with model" in text and "--" not in text  # Python words


def test_bands_in_another_order_or_names_score_the_same(model):
    rng = np.random.default_rng(1)
    before = rng.normal(20, 5, size=(3, 24, 20)).astype(np.float32)
    after = rng.normal(20, 5, size=(3, 24, 20)).astype(np.float32)
    reference = model.prepare_scene(_scene(before, after)).score_block(before, after)
    flipped = model.prepare_scene(_scene(before[::-1], after[::-1], ("blue", "green", "red")))
    np.testing.assert_array_equal(flipped.score_block(before[::-1], after[::-1]), reference)


def test_packaged_models_resolve_by_name_and_check_the_hash(tmp_path, monkeypatch, model):
    weights = tmp_path / "weights"
    weights.mkdir()
    path = save_model(weights / "rgb.msgpack", model)
    register_model(path, "rgb", weights)
    registry = json.loads((weights / "registry.json").read_text())
    assert registry["rgb"]["file"] == "rgb.msgpack" and len(registry["rgb"]["sha256"]) == 64
    assert load_model("rgb", weights_folder=weights).name == "tiny-rgb"
    monkeypatch.setenv("CHANGEDET_WEIGHTS_DIR", str(weights))
    assert load_model("rgb").band_ids == BANDS
    with pytest.raises(ModelFileError, match="no packaged model named 'sentinel2'.*rgb"):
        load_model("sentinel2")
    # A file that no longer matches its registered hash is refused.
    path.write_bytes(path.read_bytes()[:-1] + b"\x00")
    with pytest.raises(ModelFileError, match="corrupt \\(sha256"):
        load_model("rgb")


def test_model_validation(model):
    with pytest.raises(ModelFileError, match="3 bands"):
        ChangeModel(config=model.config, state=model.state, band_ids=("B04",),
                    norm_mean=(0.0,), norm_std=(1.0,))
    with pytest.raises(ModelFileError, match="norm_std"):
        ChangeModel(config=model.config, state=model.state, band_ids=BANDS,
                    norm_mean=(0.0,) * 3, norm_std=(1.0, 0.0, 1.0))


def test_positional_models_take_any_bands_of_the_right_count():
    from changedet.config import ModelConfig
    from changedet.detectors.learned import random_init_model
    from changedet.detectors.modelfile import check_bands
    from changedet.errors import BandMismatchError

    rgb = random_init_model(ModelConfig(num_bands=3, features=(8, 16)), ("1", "2", "3"))
    check_bands(rgb, ("B04", "B03", "B02"))  # Sentinel-2 true colour feeds an RGB model
    with pytest.raises(BandMismatchError, match="with bands"):
        check_bands(rgb, ("B04", "B03"))
    named = random_init_model(ModelConfig(num_bands=3, features=(8, 16)), ("B04", "B03", "B02"))
    with pytest.raises(BandMismatchError, match="expects bands B04,B03,B02"):
        check_bands(named, ("1", "2", "3"))


def test_saved_model_file_is_readable_by_others(tmp_path):
    import os
    import stat

    from changedet.config import ModelConfig
    from changedet.detectors.learned import random_init_model
    from changedet.detectors.modelfile import save_model

    old = os.umask(0o022)
    try:
        path = save_model(tmp_path / "m.msgpack",
                          random_init_model(ModelConfig(num_bands=3, features=(8, 16)),
                                            ("1", "2", "3")))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


@pytest.mark.parametrize("version", [True, 0, -1, "1"])
def test_invalid_format_versions_are_refused(tmp_path, version):
    from flax import serialization

    from changedet.config import ModelConfig
    from changedet.detectors.learned import load_model, random_init_model
    from changedet.detectors.modelfile import save_model
    from changedet.errors import ModelFileError

    path = save_model(tmp_path / "m.msgpack",
                      random_init_model(ModelConfig(num_bands=3, features=(8, 16)),
                                        ("1", "2", "3")))
    payload = serialization.msgpack_restore(path.read_bytes())
    payload["format_version"] = version
    path.write_bytes(serialization.msgpack_serialize(payload))
    with pytest.raises(ModelFileError, match="format_version"):
        load_model(path)


def test_with_weights_scores_the_new_weights_without_compiling_again():
    cfg = ModelConfig(num_bands=3, features=(4, 8), embed_dim=4, head="diff")
    first = random_init_model(cfg, BANDS, seed=0)
    other = random_init_model(cfg, BANDS, seed=1)
    rng = np.random.default_rng(0)
    b, a = rng.normal(size=(2, 3, 40, 56)).astype(np.float32)
    first.score_block(b, a)  # compiles the step for this tile shape
    step = first.predictor().step
    traces = step.num_traces
    swapped = first.with_weights(other.state)
    np.testing.assert_array_equal(swapped.score_block(b, a), other.score_block(b, a))
    assert swapped.predictor().step is step and step.num_traces == traces  # no new compile
    assert not np.array_equal(first.score_block(b, a), swapped.score_block(b, a))


def test_run_takes_a_plain_record_and_scores_as_its_detector(sample_data):
    """``detect(model=record)`` wraps a plain ``ChangeModel`` (e.g. one built by hand or read
    with ``read_model``) as a detector: the same score map as the ``LearnedDetector``."""
    import dataclasses

    import changedet

    city = sample_data / "oscd_paris"
    cfg = ModelConfig(num_bands=13, features=(4, 8), embed_dim=4, head="diff")
    detector = dataclasses.replace(
        random_init_model(cfg, changedet.open_pair(city / "imgs_1", city / "imgs_2").band_ids,
                          seed=4), norm_mean=(1000.0,) * 13, norm_std=(500.0,) * 13)
    fields = {f.name: getattr(detector, f.name) for f in dataclasses.fields(ChangeModel)
              if f.init}
    record = ChangeModel(**fields)
    assert not isinstance(record, LearnedDetector)
    maps = [changedet.detect(city / "imgs_1", city / "imgs_2", model=m, cloud_mask="none")
            for m in (record, detector)]
    assert float(maps[0].score.std()) > 1e-4
    np.testing.assert_array_equal(maps[0].score.values, maps[1].score.values)
    np.testing.assert_array_equal(maps[0].mask.values, maps[1].mask.values)


def test_a_per_image_scalar_model_round_trips_and_needs_its_reference_bands(tmp_path):
    """The normalisation mode survives the file; the reloaded model scales a date by one mean
    and std over blue, green and red (a common gain and offset cancel exactly), and an input
    without those bands is one clear error, not NaN scores."""
    import dataclasses

    ids = ("B02", "B03", "B04", "B08")
    cfg = ModelConfig(num_bands=4, features=(4, 8), embed_dim=4, head="msdiff", head_convs=0)
    model = dataclasses.replace(random_init_model(cfg, ids, seed=5, name="scalar"),
                                normalization="per_image_scalar", required_bands=ids[:3])
    loaded = load_model(save_model(tmp_path / "s.msgpack", model))
    assert loaded.normalization == "per_image_scalar" and loaded.required_bands == ids[:3]
    rng = np.random.default_rng(3)
    before = rng.normal(1000, 200, size=(4, 24, 20)).astype(np.float32)
    after = rng.normal(1100, 250, size=(4, 24, 20)).astype(np.float32)
    prepared = loaded.prepare_scene(_scene(before, after, ids))
    visible = before[:3].astype(np.float64)
    np.testing.assert_allclose(prepared.before_mean, visible.mean(), rtol=1e-9)
    np.testing.assert_allclose(prepared.before_std, visible.std(), rtol=1e-9)
    scaled = loaded.prepare_scene(_scene(3 * before + 500, after, ids))
    np.testing.assert_allclose(scaled.score_block(3 * before + 500, after),
                               prepared.score_block(before, after), atol=1e-5)
    # a hand-made file whose required bands leave out blue, green and red
    broken = dataclasses.replace(loaded, required_bands=("B08",))
    with pytest.raises(BandMismatchError, match="scales each image by its bands B02,B03,B04"):
        broken.prepare_scene(_scene(before[3:], after[3:], ("B08",)))
