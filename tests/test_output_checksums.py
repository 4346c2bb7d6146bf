"""Outputs stay the same across refactors: digests of what ``run`` writes, taken before the
package layout moved (``tests/data/output_checksums.json``), compared with what it writes now.

Each digest covers the written pixels (mask and score, as stored) and the georeferencing (CRS,
transform, nodata), not the file bytes: the tags carry the package version and model hash.
Float results depend on the CPU's vector units and the JAX/numpy versions, so the digests are
compared only on the machine kind and versions that recorded them (the test says so when it
skips). After an intended change of the outputs (a new packaged model, a new algorithm),
re-take them and say why in the commit::

    python tests/test_output_checksums.py --write
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

ROOT = Path(__file__).resolve().parents[1]
STORE = ROOT / "tests" / "data" / "output_checksums.json"
README_PAIR = (ROOT / "data/oscd_paris/imgs_1", ROOT / "data/oscd_paris/imgs_2")
SHARED_OSCD = ROOT.parent / "shared" / "data" / "oscd" / "images"


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, str]:
    """What the float digests depend on."""
    import jax

    return {"cpu": _cpu(), "jax": jax.__version__, "jaxlib": jax.lib.__version__
            if hasattr(jax.lib, "__version__") else "", "numpy": np.__version__}


def raster_digest(path: Path) -> str:
    """sha256 over the pixels as stored and the grid: CRS, transform, nodata, dtype, shape."""
    h = hashlib.sha256()
    with rasterio.open(path) as src:
        h.update(json.dumps([src.crs.to_wkt() if src.crs else None, list(src.transform),
                             src.nodata, src.dtypes, src.shape]).encode())
        h.update(np.ascontiguousarray(src.read()).tobytes())
    return h.hexdigest()


def _tiny_model():
    """A fixed random-initialised network (seed 0, 13 bands, the packaged architecture), so the
    learned path is pinned without depending on the packaged weights."""
    from changedet import bands, config
    from changedet.detectors.learned import random_init_model

    model_cfg, _ = config.default()
    model = random_init_model(model_cfg, bands.SENTINEL2_BANDS, seed=0)
    return dataclasses.replace(model, normalization="per_image")


def cases() -> dict[str, dict]:
    """Named ``changedet.run`` calls whose outputs are pinned."""
    out = {
        "readme_cva": dict(pair=README_PAIR, method="cva"),
        "readme_random_msdiff_tiled": dict(pair=README_PAIR, method="siamese", model="tiny",
                                           threshold=0.5, block_px=128),
        "readme_packaged_default": dict(pair=README_PAIR),
    }
    if SHARED_OSCD.is_dir():
        city = SHARED_OSCD / "bercy"
        out["oscd_bercy_cva"] = dict(pair=(city / "imgs_1", city / "imgs_2"),
                                     method="cva")
    return out


def run_case(spec: dict, workdir: Path) -> dict[str, str]:
    import changedet
    from changedet.detectors import modelfile

    kwargs = {k: v for k, v in spec.items() if k not in ("pair", "model")}
    info: dict[str, str] = {}
    if spec.get("model") == "tiny":
        kwargs["model"] = _tiny_model()
    elif kwargs.get("method", "auto") != "cva":
        # The packaged model the digests belong to: a re-shipped model changes them.
        info["model_sha256"] = modelfile.resolve_model_path("sentinel2")[1]
    mask, score = workdir / "mask.tif", workdir / "score.tif"
    changedet.run(*spec["pair"], mask, score_path=score, progress=False, overwrite=True,
                  **kwargs)
    info.update(mask=raster_digest(mask), score=raster_digest(score))
    return info


def _stored() -> dict:
    if not STORE.is_file():
        pytest.skip(f"no stored checksums ({STORE.name}); take them with "
                    "`python tests/test_output_checksums.py --write`")
    return json.loads(STORE.read_text())


@pytest.mark.parametrize("name", sorted(cases()))
def test_outputs_match_the_stored_checksums(name, tmp_path):
    stored = _stored()
    if stored["machine"] != machine():
        pytest.skip(f"checksums were taken on {stored['machine']}; this is {machine()} "
                    "(float results differ across CPUs and versions)")
    if name not in stored["cases"]:
        pytest.skip(f"no stored checksum for {name} (taken without ../shared?)")
    expected = stored["cases"][name]
    got = run_case(cases()[name], tmp_path)
    if expected.get("model_sha256") != got.get("model_sha256"):
        pytest.skip("the packaged model changed since the checksums were taken; re-take them")
    assert got == expected


def write() -> None:
    import tempfile

    results = {}
    for name, spec in sorted(cases().items()):
        with tempfile.TemporaryDirectory() as tmp:
            results[name] = run_case(spec, Path(tmp))
        print(name, results[name])
    STORE.parent.mkdir(parents=True, exist_ok=True)
    STORE.write_text(json.dumps({"machine": machine(), "cases": results}, indent=1) + "\n")
    print("wrote", STORE)


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/test_output_checksums.py --write")
    write()
