"""The learned detector: :class:`LearnedDetector`, a :class:`~changedet.models.ChangeModel`
record that scores blocks through compiled, cached predictors, and ``load_model``.

The record (``changedet.models.record``) is plain data; this subclass adds what running it
needs: one :class:`~changedet.inference.BlockPredictor` per tile setting, compiled once and
shared by the threads of a run (hence the lock), and pickling for dask workers that does not
copy them. A model loaded from a file travels as its path and sha256 and each process rebuilds
it once (:func:`_shared_model`), so the tasks of a run share one compilation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import threading
from typing import Any

import jax
import numpy as np
from flax import nnx

from changedet import kernels
from changedet.config import ModelConfig, to_dict
from changedet.detectors import modelfile, prepare
from changedet.detectors.prepare import PreparedModel
from changedet.errors import ModelFileError
from changedet.inference import BlockPredictor
from changedet.models.record import ChangeModel
from changedet.models.siamese import SiameseNet

__all__ = ["LearnedDetector", "as_detector", "load_model", "random_init_model"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, eq=False)
class LearnedDetector(ChangeModel):
    """A :class:`~changedet.models.ChangeModel` as a pipeline detector (what ``load_model``
    returns; build one from a record with :func:`as_detector`).

    Detector protocol: ``name``, ``halo_px``, ``threshold``, ``band_ids``, ``align_px``,
    ``norm_mean``, ``prepare(pair)``, ``score_block(before, after)``. Thread-safe.
    """

    _predictors: dict[tuple[int, int | None, int, str], BlockPredictor] = dataclasses.field(
        default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, init=False,
                                              repr=False)
    #: The model whose compiled predictors this one's rebind (set by :meth:`with_weights`).
    _base: LearnedDetector | None = dataclasses.field(default=None, init=False, repr=False)

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

    def prepare(self, pair: Any) -> PreparedModel:
        """The detector for ``pair``: its bands matched to the model's, and (``per_image``
        models) each date's per-band statistics computed in one dask pass.

        Raises:
          BandMismatchError: The pair's bands do not fit the model (one line, with the fix).
        """
        return prepare.prepare(self, pair)

    def prepare_scene(self, scene: Any) -> PreparedModel:
        """:meth:`prepare` for an in-memory :class:`~changedet.data.Scene` (evaluation)."""
        return prepare.prepare_scene(self, scene)

    def predictor(self, *, tile_px: int = 512, batch_size: int | None = None,
                  tta: int = 1, conv: str | None = None) -> BlockPredictor:
        """The cached :class:`~changedet.inference.BlockPredictor` for these settings
        (``conv``: the convolution route, see :func:`changedet.kernels.resolve_route`; None
        reads ``CHANGEDET_CPU_CONV`` now, so changing it takes effect on the next call)."""
        route = kernels.resolve_route(conv)
        key = (tile_px, batch_size, tta, route)
        if self._base is not None:  # other weights of one architecture: its compiled step
            with self._lock:
                if key in self._predictors:
                    return self._predictors[key]
            base = self._base.predictor(tile_px=tile_px, batch_size=batch_size, tta=tta,
                                        conv=route)
            with self._lock:
                return self._predictors.setdefault(key, base.rebind(self))
        with self._lock:
            if key not in self._predictors:
                self._predictors[key] = BlockPredictor(self, tile_px=tile_px,
                                                       batch_size=batch_size, tta=tta,
                                                       conv=route)
            return self._predictors[key]

    def with_weights(self, state: dict[str, Any]) -> LearnedDetector:
        """This model with other weights (same architecture): its predictors' compiled steps
        are shared, so the new model scores without compiling again (``fit`` validates every
        epoch's weights this way)."""
        new = dataclasses.replace(self, state=state)
        object.__setattr__(new, "_base", self._base or self)  # later predictors: rebound too
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


def as_detector(model: ChangeModel) -> LearnedDetector:
    """``model`` as a :class:`LearnedDetector` (itself when it is one already)."""
    if isinstance(model, LearnedDetector):
        return model
    fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(model) if f.init}
    out = LearnedDetector(**fields)
    object.__setattr__(out, "_source", model._source)
    return out


def load_model(path_or_name: str | os.PathLike[str], *,
               weights_folder: str | os.PathLike[str] | None = None) -> LearnedDetector:
    """Reads a model file, or a packaged model by name (its sha256 checked), as a detector.

    Args:
      path_or_name: A ``.msgpack`` path, or a packaged name such as ``"sentinel2"``/``"rgb"``.
      weights_folder: Packaged-weights folder override (default ``$CHANGEDET_WEIGHTS_DIR`` or
        ``changedet/weights``).

    Raises:
      ModelFileError: Missing, truncated/corrupt, not a changedet model, made by a newer
        changedet, or a packaged file whose hash differs from the registry's
        (``modelfile.read_model``).
    """
    model = as_detector(modelfile.read_model(path_or_name, weights_folder=weights_folder))
    if model._source is None:  # read_model always records the file it read
        return model
    # Unpickling this model in this process (dask tokenises a graph's functions by pickling
    # them) then returns this instance instead of reading and validating the file again.
    return _share(_file_key(model._source), model)


def random_init_model(cfg: ModelConfig, band_ids: tuple[str, ...] | list[str], seed: int = 0,
                      *, name: str = "random") -> LearnedDetector:
    """An untrained model (identity normalisation) for tests and smoke runs.

    Threshold 0.5 (probability) for diff/conc heads; margin 1 and threshold 0.5 for the
    distance head.
    """
    net = SiameseNet(cfg, rngs=nnx.Rngs(seed))
    state = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(net)))
    n = cfg.num_bands
    return LearnedDetector(config=cfg, state=state, band_ids=tuple(band_ids),
                           norm_mean=(0.0,) * n, norm_std=(1.0,) * n, threshold=0.5,
                           margin=1.0 if cfg.head == "distance" else None, name=name,
                           training={"seed": seed, "epochs": 0})


#: Models rebuilt from pickles in this process, keyed by file+sha256 or content (a few at most).
_SHARED: dict[str, LearnedDetector] = {}
_SHARED_LOCK = threading.Lock()
_SHARED_MAX = 4


def _content_key(fields: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(
        {k: v for k, v in fields.items() if k != "state"} | {"config": to_dict(fields["config"])},
        sort_keys=True, default=str).encode())
    for path, leaf in jax.tree_util.tree_flatten_with_path(fields["state"])[0]:
        arr = np.ascontiguousarray(leaf)
        digest.update(f"{jax.tree_util.keystr(path)}{arr.dtype}{arr.shape}".encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


def _shared_model(source: tuple[str, str] | None, fields: dict[str, Any] | None) -> LearnedDetector:
    """Unpickles a :class:`LearnedDetector`: one instance per process for the same model, so dask
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
        model = load_model(source[0])  # shares itself
        if model._source is None or model._source[1] != source[1]:
            raise ModelFileError(
                f"model file {source[0]} changed while in use (sha256 differs from the "
                "one loaded); do not overwrite a model file during a run.")
        return model
    return _share(key, LearnedDetector(**(fields or {})))


def _file_key(source: tuple[str, str]) -> str:
    return f"file:{source[0]}:{source[1]}"


def _share(key: str, model: LearnedDetector) -> LearnedDetector:
    """Keeps ``model`` as this process's instance for ``key`` (a few models at most)."""
    with _SHARED_LOCK:
        if len(_SHARED) >= _SHARED_MAX and key not in _SHARED:
            _SHARED.pop(next(iter(_SHARED)))
        _SHARED[key] = model
    return model
