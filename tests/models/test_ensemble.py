"""Ensembles (``ModelConfig.members``): the score is the mean of the members', through ``run``
on the real README pair, tiled exactly, saved and read back; bad assemblies are refused."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import rasterio
from flax import nnx

import changedet
from changedet import bands
from changedet.config import ModelConfig, TrainConfig
from changedet.detectors.learned import load_model, random_init_model
from changedet.detectors.modelfile import read_model, save_model
from changedet.errors import ConfigError, ModelFileError
from changedet.models import SiameseNet, assemble_ensemble, build_network, member_states
from changedet.training import fit

CFG = ModelConfig(num_bands=13, features=(4, 8, 16), convs_per_level=1, head="msdiff",
                  head_convs=0)


def _member(seed: int):
    base = random_init_model(CFG, bands.SENTINEL2_BANDS, seed=seed, name=f"m{seed}")
    return dataclasses.replace(base, normalization="per_image", threshold=0.5)


def _run_score(sample_data, tmp_path, model_path, tag: str, block_px: int = 1024) -> np.ndarray:
    pair = sample_data / "oscd_paris"
    out = tmp_path / f"{tag}.tif"
    changedet.run(pair / "imgs_1", pair / "imgs_2", out, score_path=tmp_path / f"{tag}-s.tif",
                  model=str(model_path), cloud_mask="none", block_px=block_px, progress=False)
    with rasterio.open(tmp_path / f"{tag}-s.tif") as src:
        return src.read(1)


def test_run_scores_an_ensemble_as_the_mean_of_its_members(sample_data, tmp_path):
    """On the real Paris pair, an ensemble's score GeoTIFF is the mean of its members' (float
    tolerance), whatever the block size; the file says it is an ensemble and reads back."""
    a, b = _member(1), _member(2)
    ens = assemble_ensemble([a, b], threshold=0.5, name="pair")
    assert ens.config.members == 2 and ens.halo_px == a.halo_px
    paths = {}
    for tag, m in (("a", a), ("b", b), ("ens", ens)):
        paths[tag] = save_model(tmp_path / f"{tag}.msgpack", m)
    back = read_model(paths["ens"])
    assert back.config.members == 2 and back.name == "pair"
    assert back.training == {"members": [a.training, b.training]}
    score_a = _run_score(sample_data, tmp_path, paths["a"], "a")
    score_b = _run_score(sample_data, tmp_path, paths["b"], "b")
    score_ens = _run_score(sample_data, tmp_path, paths["ens"], "ens")
    valid = np.isfinite(score_ens)
    assert valid.mean() > 0.9
    assert np.array_equal(valid, np.isfinite(score_a))
    np.testing.assert_allclose(score_ens[valid], (score_a[valid] + score_b[valid]) / 2,
                               atol=2e-6)
    assert not np.allclose(score_a[valid], score_b[valid], atol=1e-3)  # members differ
    tiled = _run_score(sample_data, tmp_path, paths["ens"], "tiled", block_px=128)
    np.testing.assert_allclose(tiled, score_ens, atol=2e-6, equal_nan=True)


def test_an_ensemble_of_one_network_twice_is_that_network(sample_data, tmp_path):
    a = _member(3)
    twice = load_model(save_model(tmp_path / "twice.msgpack",
                                  assemble_ensemble([a, a], threshold=0.5)))
    one = load_model(save_model(tmp_path / "one.msgpack", a))
    x = np.random.default_rng(0).standard_normal((13, 40, 56)).astype(np.float32)
    y = x + np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    np.testing.assert_allclose(twice.score_block(x, y), one.score_block(x, y), atol=1e-6)
    assert [s.keys() for s in member_states(twice.config, twice.state)] == [a.state.keys()] * 2


def test_file_versions_single_networks_stay_readable_by_older_releases(tmp_path):
    import msgpack

    a, b = _member(4), _member(5)
    for name, model, version in (("one", a, 1), ("two", assemble_ensemble([a, b], threshold=0.4),
                                                     2)):
        raw = msgpack.unpackb((save_model(tmp_path / f"{name}.msgpack", model)).read_bytes(),
                              strict_map_key=False)
        assert raw["format_version"] == version


def test_bad_assemblies_are_refused_with_the_reason():
    a = _member(6)
    with pytest.raises(ConfigError, match="at least two"):
        assemble_ensemble([a], threshold=0.5)
    with pytest.raises(ConfigError, match="at least two"):
        assemble_ensemble([], threshold=0.5)
    wider = random_init_model(dataclasses.replace(CFG, features=(8, 16, 32)),
                              bands.SENTINEL2_BANDS, seed=1)
    wider = dataclasses.replace(wider, normalization="per_image")
    with pytest.raises(ConfigError, match="one architecture"):
        assemble_ensemble([a, wider], threshold=0.5)
    other_norm = dataclasses.replace(_member(7), normalization="global")
    with pytest.raises(ModelFileError, match="normalization"):
        assemble_ensemble([a, other_norm], threshold=0.5)
    nested = assemble_ensemble([a, a], threshold=0.5)
    with pytest.raises(ConfigError, match="already an ensemble"):
        assemble_ensemble([nested, a], threshold=0.5)


def test_networks_and_fit_are_single_and_say_how_to_build_an_ensemble(tmp_path):
    two = dataclasses.replace(CFG, members=2)
    with pytest.raises(ConfigError, match="build_network"):
        SiameseNet(two, rngs=nnx.Rngs(0))
    assert len(build_network(two, rngs=nnx.Rngs(0)).nets) == 2
    with pytest.raises(ConfigError, match="assemble_ensemble"):
        fit([], [], two, TrainConfig(), tmp_path)
    with pytest.raises(ConfigError, match="members"):
        ModelConfig(members=0)
