"""The same dask graph on a ``dask.distributed`` cluster of 2 worker processes: byte-identical
outputs to the threaded run, reads inside the tasks, a small graph, models sent by path and
compiled once per worker, and the CLI's ``--workers``."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import cloudpickle
import dask
import pytest

from changedet import io, pipeline
from changedet.config import ModelConfig
from changedet.detectors import learned, modelfile
from changedet.detectors.cva import CVADetector

distributed = pytest.importorskip("distributed")

BLOCK_PX = 128  # the 408 x 390 Paris pair -> 4 x 4 blocks


@pytest.fixture(scope="module")
def paris(sample_data: Path) -> tuple[Path, Path]:
    root = sample_data / "oscd_paris"
    return root / "imgs_1", root / "imgs_2"


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = ModelConfig(num_bands=13, features=(8, 16), embed_dim=8, head_convs=1)
    model = learned.random_init_model(cfg, pipeline.SENTINEL2_BANDS, seed=3, name="tiny")
    return modelfile.save_model(tmp_path_factory.mktemp("model") / "tiny.msgpack", model)


@pytest.fixture(scope="module")
def threaded(paris, model_path, tmp_path_factory) -> dict[str, tuple[bytes, bytes]]:
    """Mask and score bytes of the threaded runs (no cluster exists yet)."""
    out = tmp_path_factory.mktemp("threaded")
    results = {}
    with dask.config.set(scheduler="threads"):
        for name, kwargs in (("cva", {"method": "cva"}),
                             ("model", {"model": learned.load_model(model_path)})):
            mask, score = out / f"{name}.tif", out / f"{name}-score.tif"
            pipeline.run(*paris, mask, score_path=score, block_px=BLOCK_PX, progress=False,
                         **kwargs)
            results[name] = (mask.read_bytes(), score.read_bytes())
    return results


@pytest.fixture(scope="module")
def client(threaded):
    """2 single-threaded worker processes (created after the threaded reference runs)."""
    cluster = distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                       dashboard_address=None)
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


def test_model_pickles_without_lock_or_compiled_predictors(model_path):
    model = learned.load_model(model_path)
    model.predictor()  # holds jitted functions bound to devices: must not travel
    data = pickle.dumps(model)
    assert len(data) < 2_000, "a model loaded from a file must travel as its path, not its weights"
    again = pickle.loads(data)
    assert again.config == model.config and again.band_ids == model.band_ids
    assert pickle.loads(data) is again, "one instance per process: tasks share its compiled steps"
    # a model built in memory travels by value, and its round trip scores the same
    cfg = ModelConfig(num_bands=3, features=(4, 8), embed_dim=4, head_convs=1)
    fresh = learned.random_init_model(cfg, ("1", "2", "3"), seed=5)
    copy = pickle.loads(cloudpickle.dumps(fresh))
    import numpy as np

    rng = np.random.default_rng(0)
    before, after = rng.normal(size=(2, 3, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(copy.score_block(before, after), fresh.score_block(before, after))


def test_graph_is_small_and_reads_happen_in_tasks(paris, model_path):
    pair = io.open_pair(*paris)
    model = learned.load_model(model_path)
    scene_bytes = 2 * pair.before.nbytes
    for detector in (CVADetector().prepare(pair), model):
        score = pipeline.score_graph(pair, detector, block_px=BLOCK_PX)
        graph = dict(score.__dask_graph__())
        size = len(cloudpickle.dumps(graph))
        # no pixel array is embedded: the tasks open the band files by path
        assert size < 1_000_000 and size < scene_bytes / 4, (detector.name, size, scene_bytes)
        names = {k[0] if isinstance(k, tuple) else k for k in graph}
        assert any(str(n).startswith("original-read") or "open_rasterio" in str(n)
                   for n in names), sorted(map(str, names))[:10]
        biggest = max(len(cloudpickle.dumps(v)) for v in graph.values())
        assert biggest < 50_000, (detector.name, biggest)


@pytest.mark.parametrize("name", ["cva", "model"])
def test_cluster_outputs_equal_threaded_bytes(name, paris, model_path, threaded, client,
                                              tmp_path):
    kwargs = {"method": "cva"} if name == "cva" else {"model": learned.load_model(model_path)}
    mask, score = tmp_path / "mask.tif", tmp_path / "score.tif"
    result = pipeline.run(*paris, mask, score_path=score, block_px=BLOCK_PX, progress=False,
                          client=client, **kwargs)
    assert result.outputs == (mask, score)
    assert mask.read_bytes() == threaded[name][0]
    assert score.read_bytes() == threaded[name][1]
    if name == "model":
        # each worker rebuilt the model once (from its file) and compiled once per tile shape
        def compiled() -> list[int]:
            from changedet.detectors import learned as shared

            return [p.step.num_traces for m in shared._SHARED.values()
                    for p in m._predictors.values()]

        per_worker = client.run(compiled)
        assert len(per_worker) == 2
        traces = [t for counts in per_worker.values() for t in counts]
        assert traces, per_worker
        # 408 x 390 at 128 px blocks: core tiles of 128 and of the short edge blocks (<= 3 shapes)
        assert all(1 <= t <= 3 for t in traces), per_worker


def test_cli_workers(paris, threaded, tmp_path):
    mask = tmp_path / "cli.tif"
    proc = subprocess.run(
        [sys.executable, "-m", "changedet", "run", str(paris[0]), str(paris[1]), "-o", str(mask),
         "--method", "cva", "--workers", "2", "--block-px", str(BLOCK_PX), "--quiet"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert mask.read_bytes() == threaded["cva"][0]
