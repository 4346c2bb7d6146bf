"""Learned change models as files: :class:`ChangeModel`, ``save_model``, ``load_model``, and the
packaged-model registry (``changedet/weights/<name>.msgpack`` + sha256 in ``registry.json``).

A model file is ONE msgpack map (``flax.serialization``; no pickle)::

    {"format": "changedet-model", "format_version": 1,
     "metadata": "<JSON: config, band_ids, norm_mean, norm_std, threshold, margin, name, training,
                  normalization, required_bands, calibration>",
     "params": <nnx state as a nested dict of numpy arrays>}

``registry.json`` maps packaged names to files and hashes::

    {"sentinel2": {"file": "sentinel2.msgpack", "sha256": "<64 hex>"}, ...}
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from changedet import bands
from changedet.config import ModelConfig, model_config_from_dict, to_dict
from changedet.detectors import prepare as detector
from changedet.errors import ModelFileError, option
from changedet.io import atomic
from changedet.uncertainty import ScoreCalibration

if TYPE_CHECKING:
    from changedet.detectors.prepare import PreparedModel
    from changedet.inference import BlockPredictor
    from changedet.models.siamese import SiameseNet

log = logging.getLogger(__name__)

FORMAT = "changedet-model"
FORMAT_VERSION = 1
#: Environment variable overriding the packaged-weights folder (tests, private model zoos).
WEIGHTS_DIR_ENV = "CHANGEDET_WEIGHTS_DIR"
DEFAULT_WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"  # changedet/weights


@dataclasses.dataclass(frozen=True, eq=False)
class ChangeModel:
    """A trained (or randomly initialised) Siamese change model, and a pipeline detector.

    Attributes:
      config: The architecture.
      state: The ``nnx`` state of a :class:`~changedet.models.SiameseNet` as a nested dict of
        numpy arrays (``nnx.to_pure_dict(nnx.state(net))``).
      band_ids: Bands the model takes, in order (e.g. ``("B01", ..., "B12")``).
      norm_mean: Per-band mean of the raw values, ``len(band_ids)`` floats.
      norm_std: Per-band standard deviation (> 0), raw units.
      threshold: Decision threshold on the score (probability for diff/conc heads, distance for
        the distance head); ``None`` lets the pipeline use Otsu.
      margin: Contrastive/triplet margin the distance head was trained with (None otherwise).
      name: The model's name (e.g. ``"sentinel2"``); also its detector ``name``.
      training: JSON-friendly training summary (data, epochs, seed, validation figures).
      normalization: ``"global"`` (``norm_mean``/``norm_std`` of the training data) or
        ``"per_image"`` (each date standardised by its own per-band statistics at run time;
        ``norm_mean``/``norm_std`` are then 0/1 and unused).
      required_bands: Bands an input must have when the model accepts subsets of ``band_ids``
        (trained with band dropout; missing bands are filled with their mean). None: every
        band in ``band_ids`` is required.
      calibration: ``P(change | score)`` measured on out-of-fold scenes when the model was
        cross-validated (:class:`changedet.uncertainty.ScoreCalibration`); ``run
        --uncertainty`` needs it. None for models trained without cross-validation.

    Detector protocol: ``name``, ``halo_px``, ``threshold``, ``band_ids``, ``align_px``,
    ``norm_mean``, ``prepare(pair)``, ``score_block(before, after)``.
    """

    config: ModelConfig
    state: dict[str, Any]
    band_ids: tuple[str, ...]
    norm_mean: tuple[float, ...]
    norm_std: tuple[float, ...]
    threshold: float | None = 0.5
    margin: float | None = None
    name: str = "siamese"
    training: dict[str, Any] = dataclasses.field(default_factory=dict)
    normalization: str = "global"
    required_bands: tuple[str, ...] | None = None
    calibration: ScoreCalibration | None = None
    _predictors: dict[tuple[int, int | None, int], BlockPredictor] = dataclasses.field(
        default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, init=False,
                                              repr=False)
    #: ``(absolute path, sha256)`` of the file this model was loaded from, else None.
    _source: tuple[str, str] | None = dataclasses.field(default=None, init=False, repr=False)

    @property
    def source_sha256(self) -> str | None:
        """sha256 of the file this model was loaded from (None if built in memory)."""
        return None if self._source is None else self._source[1]

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickles for dask workers without the lock and the compiled, device-bound predictors.

        A model loaded from a file travels as its path and sha256 (the worker reads the file
        once); any other model as its fields. Either way each process rebuilds it once and
        reuses it (and its compiled predictors) for every task: see :func:`_shared_model`.
        """
        if self._source is not None:
            return _shared_model, (self._source, None)
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        return _shared_model, (None, fields)

    def __post_init__(self) -> None:
        object.__setattr__(self, "band_ids", tuple(str(b) for b in self.band_ids))
        object.__setattr__(self, "norm_mean", tuple(float(v) for v in self.norm_mean))
        object.__setattr__(self, "norm_std", tuple(float(v) for v in self.norm_std))
        n = self.config.num_bands
        if len(self.band_ids) != n or len(self.norm_mean) != n or len(self.norm_std) != n:
            raise ModelFileError(
                f"model {self.name!r}: config has {n} bands but band_ids/norm_mean/norm_std "
                f"have {len(self.band_ids)}/{len(self.norm_mean)}/{len(self.norm_std)}; "
                "rebuild it with one entry per band.")
        if self.normalization not in ("global", "per_image"):
            raise ModelFileError(f"model {self.name!r}: normalization must be 'global' or "
                                 f"'per_image'; got {self.normalization!r}.")
        if self.required_bands is not None:
            object.__setattr__(self, "required_bands", tuple(str(b) for b in self.required_bands))
            extra = set(self.required_bands) - set(self.band_ids)
            if extra:
                raise ModelFileError(f"model {self.name!r}: required bands {sorted(extra)} are "
                                     "not among its band_ids.")
        if any(not np.isfinite(s) or s <= 0 for s in self.norm_std):
            raise ModelFileError(f"model {self.name!r}: norm_std must be finite and > 0; got "
                                 f"{self.norm_std}.")

    # ------------------------------------------------------------------ network
    def module(self) -> SiameseNet:
        """A fresh :class:`~changedet.models.SiameseNet` holding this model's parameters.

        Raises:
          ModelFileError: If the state does not fit the config (e.g. a corrupt file).
        """
        from flax import nnx

        from changedet.models.siamese import SiameseNet

        abstract = nnx.eval_shape(lambda: SiameseNet(self.config, rngs=nnx.Rngs(0)))
        graphdef, state = nnx.split(abstract)
        try:
            _check_shapes(nnx.to_pure_dict(state), self.state)
            nnx.replace_by_pure_dict(state, self.state)
        except (KeyError, ValueError, TypeError) as err:
            raise ModelFileError(f"model {self.name!r}: parameters do not match its config "
                                 f"({err}); the file is corrupt or from another build.") from err
        return nnx.merge(graphdef, state)

    @property
    def halo_px(self) -> int:
        """Context pixels per side for exact tiled output (see ``models.halo_px``)."""
        from changedet.models.siamese import halo_px

        return halo_px(self.config)

    @property
    def align_px(self) -> int:
        """Block/tile origins must be multiples of this (``2**num_downsamplings``)."""
        return self.config.align_px

    # ------------------------------------------------------------------ detector protocol
    def prepare(self, pair: Any) -> PreparedModel:
        """The detector for ``pair``: its bands matched to the model's, and (``per_image``
        models) each date's per-band statistics computed in one dask pass.

        Raises:
          BandMismatchError: The pair's bands do not fit the model (one line, with the fix).
        """
        return detector.prepare(self, pair)

    def prepare_scene(self, scene: Any) -> PreparedModel:
        """:meth:`prepare` for an in-memory :class:`~changedet.data.Scene` (evaluation)."""
        return detector.prepare_scene(self, scene)

    def predictor(self, *, tile_px: int = 512, batch_size: int | None = None,
                  tta: int = 1) -> BlockPredictor:
        """The cached :class:`~changedet.inference.BlockPredictor` for these settings."""
        key = (tile_px, batch_size, tta)
        with self._lock:
            if key not in self._predictors:
                from changedet.inference import BlockPredictor

                self._predictors[key] = BlockPredictor(self, tile_px=tile_px,
                                                       batch_size=batch_size, tta=tta)
            return self._predictors[key]

    def with_weights(self, state: dict[str, Any]) -> ChangeModel:
        """This model with other weights (same architecture): its predictors' compiled steps
        are shared, so the new model scores without compiling again (``fit`` validates every
        epoch's weights this way)."""
        new = dataclasses.replace(self, state=state)
        with self._lock:
            for key, predictor in self._predictors.items():
                new._predictors[key] = predictor.rebind(new)
        return new

    @property
    def compile_seconds(self) -> float:
        """Seconds this process spent compiling this model's predictors so far (one-off:
        once per tile shape; see ``PredictStep.compile_seconds``)."""
        with self._lock:
            return sum(p.step.compile_seconds for p in self._predictors.values())

    def score_block(self, before: np.ndarray, after: np.ndarray, *,
                    context_px: int = 0) -> np.ndarray:
        """``(h, w)`` float32 change score of raw ``(band, h, w)`` blocks. Thread-safe.

        With ``context_px`` (>= ``halo_px``) the blocks carry that much real context on every
        side and the score of the core ``(h - 2*context_px, w - 2*context_px)`` is returned.
        """
        return self.predictor().predict(before, after, context_px=context_px)


#: Models rebuilt from pickles in this process, keyed by file+sha256 or content (a few at most).
_SHARED: dict[str, ChangeModel] = {}
_SHARED_LOCK = threading.Lock()
_SHARED_MAX = 4


def _content_key(fields: dict[str, Any]) -> str:
    import jax

    digest = hashlib.sha256(json.dumps(
        {k: v for k, v in fields.items() if k != "state"} | {"config": to_dict(fields["config"])},
        sort_keys=True, default=str).encode())
    for path, leaf in jax.tree_util.tree_flatten_with_path(fields["state"])[0]:
        arr = np.ascontiguousarray(leaf)
        digest.update(f"{jax.tree_util.keystr(path)}{arr.dtype}{arr.shape}".encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


def _shared_model(source: tuple[str, str] | None, fields: dict[str, Any] | None) -> ChangeModel:
    """Unpickles a :class:`ChangeModel`: one instance per process for the same model, so dask
    tasks share its compiled predictors instead of compiling per task.

    Raises:
      ModelFileError: If the model file changed since the model was pickled.
    """
    key = _file_key(source) if source is not None else _content_key(fields or {})
    with _SHARED_LOCK:
        model = _SHARED.get(key)
    if model is not None:
        return model
    if source is not None:
        model = load_model(source[0])  # shares itself (see _share)
        if model._source is None or model._source[1] != source[1]:
            raise ModelFileError(
                f"model file {source[0]} changed while in use (sha256 differs from the "
                "one loaded); do not overwrite a model file during a run.")
        return model
    return _share(key, ChangeModel(**(fields or {})))


def _file_key(source: tuple[str, str]) -> str:
    return f"file:{source[0]}:{source[1]}"


def _share(key: str, model: ChangeModel) -> ChangeModel:
    """Keeps ``model`` as this process's instance for ``key`` (a few models at most)."""
    with _SHARED_LOCK:
        if len(_SHARED) >= _SHARED_MAX and key not in _SHARED:
            _SHARED.pop(next(iter(_SHARED)))
        _SHARED[key] = model
    return model


def _check_shapes(state: Any, pure: dict[str, Any]) -> None:
    """Raises ValueError when a leaf of ``pure`` differs in shape from the built state."""
    import jax

    built = jax.tree.leaves_with_path(state)
    given = jax.tree.leaves_with_path(pure)
    if [p for p, _ in built] != [p for p, _ in given]:
        raise ValueError(f"{len(given)} arrays for {len(built)} parameters, or other names")
    for (where, b), (_, g) in zip(built, given, strict=True):
        if tuple(b.shape) != tuple(np.shape(g)):
            raise ValueError(f"{jax.tree_util.keystr(where)} has shape {np.shape(g)}, "
                             f"expected {tuple(b.shape)}")


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
    detector.match_bands(model, band_ids)


def random_init_model(cfg: ModelConfig, band_ids: tuple[str, ...] | list[str], seed: int = 0,
                      *, name: str = "random") -> ChangeModel:
    """An untrained model (identity normalisation) for tests and smoke runs.

    Threshold 0.5 (probability) for diff/conc heads; margin 1 and threshold 0.5 for the
    distance head.
    """
    import jax
    from flax import nnx

    from changedet.models.siamese import SiameseNet

    net = SiameseNet(cfg, rngs=nnx.Rngs(seed))
    state = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(net)))
    n = cfg.num_bands
    return ChangeModel(config=cfg, state=state, band_ids=tuple(band_ids), norm_mean=(0.0,) * n,
                       norm_std=(1.0,) * n, threshold=0.5,
                       margin=1.0 if cfg.head == "distance" else None, name=name,
                       training={"seed": seed, "epochs": 0})


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
    import jax
    from flax import serialization

    path = Path(path)
    if not path.parent.is_dir():
        raise ModelFileError(f"cannot save model to {path}: folder {path.parent} does not exist; "
                             "create it first.")
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
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


def load_model(path_or_name: str | os.PathLike[str], *,
               weights_folder: str | os.PathLike[str] | None = None) -> ChangeModel:
    """Reads a model file, or a packaged model by name (its sha256 checked).

    Args:
      path_or_name: A ``.msgpack`` path, or a packaged name such as ``"sentinel2"``/``"rgb"``.
      weights_folder: Packaged-weights folder override (default ``$CHANGEDET_WEIGHTS_DIR`` or
        ``changedet/weights``).

    Raises:
      ModelFileError: Missing, truncated/corrupt, not a changedet model, made by a newer
        changedet, or a packaged file whose hash differs from the registry's.
    """
    from flax import serialization

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
    # Unpickling this model in this process (dask tokenises a graph's functions by pickling
    # them) then returns this instance instead of reading and validating the file again.
    _share(_file_key(model._source), model)
    log.info("loaded model %r (%s head, bands %s) from %s", model.name, model.config.head,
             ",".join(model.band_ids), path)
    return model
