"""Change models as files: ``save_model``, ``read_model`` (a :class:`~changedet.models.ChangeModel`
record; ``changedet.detectors.learned.load_model`` returns it as a detector) and the
packaged-model registry (``changedet/weights/<name>.msgpack`` + sha256 in ``registry.json``).

A model file is ONE msgpack map (``flax.serialization``; no pickle)::

    {"format": "changedet-model", "format_version": 1,
     "metadata": "<JSON: config, band_ids, norm_mean, norm_std, threshold, margin, name, training,
                  normalization, required_bands, calibration, max_change_fraction>",
     "params": <nnx state as a nested dict of numpy arrays>}

An ensemble (``config.members > 1``) stores its members' states under ``params["nets"][i]``
and is written with ``format_version`` 2, so a changedet that predates ensembles says the file
needs a newer changedet instead of failing on the unknown config key; single networks are
still written as version 1.

``registry.json`` maps packaged names to files and hashes::

    {"sentinel2": {"file": "sentinel2.msgpack", "sha256": "<64 hex>"}, ...}
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import serialization

from changedet import bands
from changedet.config import model_config_from_dict, to_dict
from changedet.detectors import prepare
from changedet.errors import ModelFileError, option
from changedet.io import atomic
from changedet.models.record import ChangeModel
from changedet.uncertainty import ScoreCalibration

__all__ = [
    "FORMAT", "FORMAT_VERSION", "WEIGHTS_DIR_ENV", "DEFAULT_WEIGHTS_DIR", "is_positional",
    "check_bands", "save_model", "weights_dir", "sha256_file", "register_model",
    "packaged_models", "resolve_model_path", "read_model",
]

log = logging.getLogger(__name__)

FORMAT = "changedet-model"
#: The newest format this changedet reads and writes (2: ensembles; single networks are
#: written as version 1, readable by older releases).
FORMAT_VERSION = 2
#: Environment variable overriding the packaged-weights folder (tests, private model zoos).
WEIGHTS_DIR_ENV = "CHANGEDET_WEIGHTS_DIR"
DEFAULT_WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"  # changedet/weights


def is_positional(band_ids: tuple[str, ...] | list[str]) -> bool:
    """True for generic ids ``"1".."n"`` (see :func:`changedet.bands.is_positional`)."""
    return bands.is_positional(band_ids)


def check_bands(model: ChangeModel, band_ids: tuple[str, ...] | list[str]) -> None:
    """Raises :class:`BandMismatchError` unless ``band_ids`` fit the model.

    Bands are matched by canonical id (:mod:`changedet.bands`: ``B2``, ``blue``, ``B02`` are one
    band). A model trained with band dropout takes any subset of its bands that holds its
    ``required_bands``; other named models need all their bands. A positional model
    (``"1".."n"``, e.g. ``rgb``: red, green, blue) takes any ``n`` bands in that order.
    """
    prepare.match_bands(model, band_ids)


# ---------------------------------------------------------------------------- files
def _metadata(model: ChangeModel) -> str:
    return json.dumps({
        "config": to_dict(model.config),
        "band_ids": list(model.band_ids),
        "norm_mean": list(model.norm_mean),
        "norm_std": list(model.norm_std),
        "threshold": model.threshold,
        "margin": model.margin,
        "name": model.name,
        "training": model.training,
        "normalization": model.normalization,
        "required_bands": None if model.required_bands is None else list(model.required_bands),
        "calibration": None if model.calibration is None else model.calibration.to_dict(),
        "max_change_fraction": model.max_change_fraction,
    })


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_model(path: str | os.PathLike[str], model: ChangeModel) -> Path:
    """Writes ``model`` to one msgpack file, atomically (temp file in the folder, then rename).

    Returns:
      The path written.

    Raises:
      ModelFileError: If the folder does not exist or cannot be written.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise ModelFileError(f"cannot save model to {path}: folder {path.parent} does not exist; "
                             "create it first.")
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION if model.config.members > 1 else 1,
        "metadata": _metadata(model),
        "params": jax.tree.map(np.asarray, model.state),
    }
    data = serialization.msgpack_serialize(payload)
    try:  # readable by others, as any new file the umask allows: model files are for sharing
        atomic.write_bytes(path, data, mode=0o666 & ~_umask())
    except OSError as err:
        raise ModelFileError(f"cannot write model file {path}: {err}.") from err
    log.info("saved model %r to %s (%d bytes)", model.name, path, len(data))
    return path


def weights_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The packaged-weights folder: ``override``, else ``$CHANGEDET_WEIGHTS_DIR``, else
    ``changedet/weights``."""
    if override is not None:
        return Path(override)
    env = os.environ.get(WEIGHTS_DIR_ENV)
    return Path(env) if env else DEFAULT_WEIGHTS_DIR


def _read_registry(folder: Path) -> dict[str, Any]:
    reg_path = folder / "registry.json"
    if not reg_path.is_file():
        return {}
    try:
        registry = json.loads(reg_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ModelFileError(f"packaged model registry {reg_path} is unreadable ({err}); "
                             "reinstall changedet.") from err
    if not isinstance(registry, dict):
        raise ModelFileError(f"packaged model registry {reg_path} is not a JSON object; "
                             "reinstall changedet.")
    return registry


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def register_model(path: str | os.PathLike[str], name: str,
                   folder: str | os.PathLike[str] | None = None) -> Path:
    """Records a model file already in the weights folder in ``registry.json`` with its sha256.

    Returns:
      The registry path.
    """
    folder = weights_dir(folder)
    path = Path(path)
    if path.resolve().parent != folder.resolve():
        raise ModelFileError(f"packaged model {path} must lie in {folder}; copy it there first.")
    registry = _read_registry(folder)
    registry[name] = {"file": path.name, "sha256": sha256_file(path)}
    reg_path = folder / "registry.json"
    atomic.write_bytes(reg_path, (json.dumps(registry, indent=2, sort_keys=True) + "\n").encode())
    return reg_path


def packaged_models(folder: str | os.PathLike[str] | None = None) -> tuple[str, ...]:
    """Names of the packaged models listed in the registry."""
    return tuple(sorted(_read_registry(weights_dir(folder))))


def resolve_model_path(path_or_name: str | os.PathLike[str],
                       folder: str | os.PathLike[str] | None = None) -> tuple[Path, str | None]:
    """``(path, expected sha256 or None)`` for a file path or a packaged model name.

    A plain name without a suffix or separator (``"sentinel2"``) that is not an existing file
    is looked up in the registry.
    """
    text = os.fspath(path_or_name)
    candidate = Path(text)
    is_name = (os.sep not in text and "/" not in text and not candidate.suffix
               and not candidate.exists())
    if not is_name:
        return candidate, None
    folder_path = weights_dir(folder)
    registry = _read_registry(folder_path)
    if text not in registry:
        known = ", ".join(sorted(registry)) or "none installed"
        raise ModelFileError(f"no packaged model named {text!r} (packaged: {known}); pass a "
                             f"model file path with {option('model')}.")
    entry = registry[text]
    if not isinstance(entry, dict) or "sha256" not in entry:
        raise ModelFileError(f"registry entry for {text!r} in {folder_path} has no sha256; "
                             "reinstall changedet.")
    return folder_path / str(entry.get("file", f"{text}.msgpack")), str(entry["sha256"])


def read_model(path_or_name: str | os.PathLike[str], *,
               weights_folder: str | os.PathLike[str] | None = None) -> ChangeModel:
    """Reads a model file, or a packaged model by name (its sha256 checked), as the plain
    record (``changedet.detectors.learned.load_model`` returns it as a detector).

    Args:
      path_or_name: A ``.msgpack`` path, or a packaged name such as ``"sentinel2"``/``"rgb"``.
      weights_folder: Packaged-weights folder override (default ``$CHANGEDET_WEIGHTS_DIR`` or
        ``changedet/weights``).

    Raises:
      ModelFileError: Missing, truncated/corrupt, not a changedet model, made by a newer
        changedet, or a packaged file whose hash differs from the registry's.
    """
    path, sha256 = resolve_model_path(path_or_name, weights_folder)
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist; check the path, or train one "
                             "with `changedet train`.")
    if sha256 is not None:
        found = sha256_file(path)
        if found != sha256:
            raise ModelFileError(f"packaged model {path} is corrupt (sha256 {found[:12]}..., "
                                 f"registry expects {sha256[:12]}...); reinstall changedet.")
    data = path.read_bytes()
    try:
        payload = serialization.msgpack_restore(data)
    except Exception as err:  # msgpack raises several unrelated types on corrupt input
        raise ModelFileError(f"model file {path} is truncated or corrupt ({type(err).__name__});"
                             " re-save or re-download it.") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not a changedet model file (no format "
                             f"{FORMAT!r}); pass a file written by changedet.save_model.")
    version = payload.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ModelFileError(f"model file {path} has no valid format_version (an integer >= 1; "
                             f"found {version!r}); it is corrupt: re-save or re-download it.")
    if version > FORMAT_VERSION:
        raise ModelFileError(f"model file {path} has format_version {version} (this changedet "
                             f"reads <= {FORMAT_VERSION}): made by a newer changedet; upgrade.")
    try:
        meta = json.loads(payload["metadata"])
        model = ChangeModel(
            config=model_config_from_dict(meta["config"]),
            state=payload["params"],
            band_ids=tuple(meta["band_ids"]),
            norm_mean=tuple(meta["norm_mean"]),
            norm_std=tuple(meta["norm_std"]),
            threshold=meta["threshold"],
            margin=meta.get("margin"),
            name=meta.get("name", path.stem),
            training=meta.get("training", {}),
            normalization=meta.get("normalization", "global"),
            required_bands=meta.get("required_bands"),
            calibration=(None if meta.get("calibration") is None
                         else ScoreCalibration.from_dict(meta["calibration"])),
            max_change_fraction=meta.get("max_change_fraction"),
        )
    except ModelFileError as err:
        raise ModelFileError(f"model file {path}: {err}") from err
    except Exception as err:
        raise ModelFileError(f"model file {path} has invalid metadata ({type(err).__name__}: "
                             f"{err}); re-save it with changedet.save_model.") from err
    try:
        model.module()  # validates the parameters against the config now, not at first use
    except ModelFileError as err:
        raise ModelFileError(f"model file {path}: {err}") from err
    object.__setattr__(model, "_source", (str(path.resolve()), hashlib.sha256(data).hexdigest()))
    log.info("loaded model %r (%s head, bands %s) from %s", model.name, model.config.head,
             ",".join(model.band_ids), path)
    return model
