"""Outputs stay the same across refactors: digests of what ``run`` writes, taken before the
package layout moved (``tests/data/output_checksums.json``), compared with what it writes now.

Each digest covers the written pixels (mask and score, as stored) and the georeferencing (CRS,
transform, nodata), not the file bytes: the tags carry the package version and model hash.
The learned models' float scores depend on the CPU's vector units and the JAX/numpy versions,
so the store keeps one record per machine kind (CPU name *and* vector features: two "AMD EPYC"
machines, one with AVX-512 and one without, score differently), each taken with the code of
commit 2b8a26a
(before the move); the CVA cases are plain numpy and came out identical on every machine kind
recorded, so they are compared everywhere. On a machine kind without a record the learned cases
skip and say why. Add a record for a new machine kind from the pre-move code::

    git worktree add /tmp/premove 2b8a26a   # beside ../shared, e.g. ../premove, for bercy
    PYTHONPATH=../premove python ../premove/tests/test_output_checksums.py --write
    python tests/test_output_checksums.py --add ../premove/tests/data/output_checksums.json

After an intended change of the outputs (a new packaged model, a new algorithm), re-take the
records on every machine kind and say why in the commit (``--write`` replaces the store with
this machine's record).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
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


def _cpuinfo(field: str) -> str | None:
    """The first ``field`` line of /proc/cpuinfo (None off Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _cpu() -> str:
    return _cpuinfo("model name") or platform.processor() or "unknown"


#: CPU features XLA's CPU code generation depends on: two machines of one model name (cloud
#: CPUs are often just "AMD EPYC") with other vector units give other float scores.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")


def _isa() -> str:
    flags = _cpuinfo("flags")
    if flags is None:
        return platform.machine()
    present = set(flags.split())
    return " ".join(f for f in ISA_FLAGS if f in present)


def machine() -> dict[str, str]:
    """What the float digests depend on."""
    import jax

    return {"cpu": _cpu(), "isa": _isa(), "jax": jax.__version__, "jaxlib": jax.lib.__version__
            if hasattr(jax.lib, "__version__") else "", "numpy": np.__version__}


def same_machine(record: dict[str, str], here: dict[str, str]) -> bool:
    """``record`` was taken on this machine kind; a record without ``isa`` (taken before it
    was recorded) matches on the other fields."""
    return all(here.get(k) == v for k, v in record.items())


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


def _records() -> list[dict]:
    """The stored records, one per machine kind (the first format held a single record)."""
    records = _records_or_empty()
    if not records:
        pytest.skip(f"no stored checksums ({STORE.name}); take them with "
                    "`python tests/test_output_checksums.py --write`")
    return records


def _portable(name: str) -> bool:
    """CVA is numpy only: its digests are the same on every machine kind recorded (tested)."""
    return cases()[name].get("method") == "cva"


def test_portable_cases_agree_across_the_recorded_machines():
    records = _records()
    for name in cases():
        digests = {json.dumps(r["cases"][name], sort_keys=True) for r in records
                   if name in r["cases"]}
        assert len(digests) <= 1 or not _portable(name), (name, digests)


@pytest.mark.parametrize("name", sorted(cases()))
def test_outputs_match_the_stored_checksums(name, tmp_path):
    records = _records()
    here = machine()
    mine = [r for r in records if same_machine(r["machine"], here)]
    candidates = mine or ([r for r in records if name in r["cases"]] if _portable(name) else [])
    if not candidates:
        pytest.skip(f"learned-model digests were taken on {[r['machine'] for r in records]}; "
                    f"this is {here} (float results differ across CPUs and versions)")
    expected = next((r["cases"][name] for r in candidates if name in r["cases"]), None)
    if expected is None:
        pytest.skip(f"no stored checksum for {name} (taken without ../shared?)")
    got = run_case(cases()[name], tmp_path)
    if expected.get("model_sha256") != got.get("model_sha256"):
        pytest.skip("the packaged model changed since the checksums were taken; re-take them")
    assert got == expected


def _take() -> dict:
    import tempfile

    results = {}
    for name, spec in sorted(cases().items()):
        with tempfile.TemporaryDirectory() as tmp:
            results[name] = run_case(spec, Path(tmp))
        print(name, results[name])
    return {"machine": machine(), "cases": results}


def _save(records: list[dict]) -> None:
    STORE.parent.mkdir(parents=True, exist_ok=True)
    STORE.write_text(json.dumps({"records": records}, indent=1) + "\n")
    print("wrote", STORE, f"({len(records)} machine kinds)")


def add(other: Path) -> None:
    """Merges the records of another store (e.g. one written by the pre-move code, on this
    machine) into this one; a record for the same machine replaces the old one."""
    stored = json.loads(other.read_text())
    new = stored["records"] if "records" in stored else [stored]
    for record in new:  # the pre-move code did not record the vector features: this machine's
        record["machine"].setdefault("isa", _isa())
    old = [r for r in _records_or_empty() if all(r["machine"] != n["machine"] for n in new)]
    _save(old + new)


def _records_or_empty() -> list[dict]:
    if not STORE.is_file():
        return []
    stored = json.loads(STORE.read_text())
    return stored["records"] if "records" in stored else [stored]


if __name__ == "__main__":
    # the float32 XLA route and 4 host devices, like the test suite (conftest); the
    # scene-adapted statistics' pass (models.adapt) rounds differently with another device count
    os.environ.setdefault("CHANGEDET_CPU_CONV", "xla")
    os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
    if sys.argv[1:] == ["--write"]:
        _save([_take()])
    elif len(sys.argv) == 3 and sys.argv[1] == "--add":
        add(Path(sys.argv[2]))
    else:
        sys.exit("usage: python tests/test_output_checksums.py --write | --add OTHER_STORE.json")
