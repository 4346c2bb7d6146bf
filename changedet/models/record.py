"""The model record: :class:`ChangeModel`, a Siamese change model as plain data.

Architecture (``ModelConfig``), weights (nested dict of numpy arrays), bands, normalisation,
threshold, margin, calibration and the training summary: what a model file stores
(``changedet.detectors.modelfile``) and what inference, training and evaluation pass around.
The detector built on it (compiled predictors, pickling for dask) is in ``changedet.detectors``.

Must not import rasterio, rioxarray, xarray, dask or matplotlib.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

from changedet.config import NORMALIZATIONS, ModelConfig
from changedet.errors import ConfigError, ModelFileError
from changedet.models.ensemble import SiameseEnsemble, build_network, stack_states
from changedet.models.siamese import SiameseNet, halo_px
from changedet.uncertainty import ScoreCalibration

__all__ = ["ChangeModel", "assemble_ensemble"]


@dataclasses.dataclass(frozen=True, eq=False)
class ChangeModel:
    """A trained (or randomly initialised) Siamese change model: the record a model file holds.

    Plain data (frozen): the architecture, the weights as numpy arrays, the bands, the
    normalisation and the calibrated decision. It builds its network (:meth:`module`) but
    holds nothing compiled or device-bound; the detector that scores with it, caches compiled
    predictors and travels to dask workers is
    :class:`changedet.detectors.learned.LearnedDetector` (what ``load_model`` returns).

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
        ``norm_mean``/``norm_std`` are then 0/1 and unused) or ``"per_image_scalar"`` (each
        date scaled by one mean and std pooled over its blue, green and red bands; see
        :func:`changedet.data.scalar_statistics`).
      required_bands: Bands an input must have when the model accepts subsets of ``band_ids``
        (trained with band dropout; missing bands are filled with their mean). None: every
        band in ``band_ids`` is required.
      calibration: ``P(change | score)`` measured on out-of-fold scenes when the model was
        cross-validated (:class:`changedet.uncertainty.ScoreCalibration`); ``run
        --uncertainty`` needs it. None for models trained without cross-validation.
      max_change_fraction: The most of a scene's valid pixels the model's own decision marks
        as change, in (0, 1]: where ``score > threshold`` would mark more, the scene's
        threshold is raised until it marks no more than this (``changedet.run``). Set from the
        training scenes by cross-validation (the largest change fraction among them, rounded
        up to a whole percent) and kept only when it raised the pooled out-of-fold F1. None:
        no cap.
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
    max_change_fraction: float | None = None
    #: ``(absolute path, sha256)`` of the file this model was loaded from, else None.
    _source: tuple[str, str] | None = dataclasses.field(default=None, init=False, repr=False)

    @property
    def source_sha256(self) -> str | None:
        """sha256 of the file this model was loaded from (None if built in memory)."""
        return None if self._source is None else self._source[1]

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
        if self.normalization not in NORMALIZATIONS:
            raise ModelFileError(f"model {self.name!r}: normalization must be one of "
                                 f"{', '.join(NORMALIZATIONS)}; got {self.normalization!r}.")
        if self.required_bands is not None:
            object.__setattr__(self, "required_bands", tuple(str(b) for b in self.required_bands))
            extra = set(self.required_bands) - set(self.band_ids)
            if extra:
                raise ModelFileError(f"model {self.name!r}: required bands {sorted(extra)} are "
                                     "not among its band_ids.")
        if self.max_change_fraction is not None:
            cap = float(self.max_change_fraction)
            if not 0.0 < cap <= 1.0:
                raise ModelFileError(f"model {self.name!r}: max_change_fraction must be in "
                                     f"(0, 1]; got {self.max_change_fraction!r}.")
            object.__setattr__(self, "max_change_fraction", cap)
        if any(not np.isfinite(s) or s <= 0 for s in self.norm_std):
            raise ModelFileError(f"model {self.name!r}: norm_std must be finite and > 0; got "
                                 f"{self.norm_std}.")

    def module(self) -> SiameseNet | SiameseEnsemble:
        """A fresh :class:`~changedet.models.SiameseNet` (or, for ``config.members > 1``, a
        :class:`~changedet.models.SiameseEnsemble`) holding this model's parameters.

        Raises:
          ModelFileError: If the state does not fit the config (e.g. a corrupt file).
        """
        abstract = nnx.eval_shape(lambda: build_network(self.config, rngs=nnx.Rngs(0)))
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
        return halo_px(self.config)

    @property
    def align_px(self) -> int:
        """Block/tile origins must be multiples of this (``2**num_downsamplings``)."""
        return self.config.align_px

    def with_weights(self, state: dict[str, Any]) -> ChangeModel:
        """This model with other weights (same architecture)."""
        return dataclasses.replace(self, state=state)


def _check_shapes(state: Any, pure: dict[str, Any]) -> None:
    """Raises ValueError when a leaf of ``pure`` differs in shape from the built state."""
    built = jax.tree.leaves_with_path(state)
    given = jax.tree.leaves_with_path(pure)
    if [p for p, _ in built] != [p for p, _ in given]:
        raise ValueError(f"{len(given)} arrays for {len(built)} parameters, or other names")
    for (where, b), (_, g) in zip(built, given, strict=True):
        if tuple(b.shape) != tuple(np.shape(g)):
            raise ValueError(f"{jax.tree_util.keystr(where)} has shape {np.shape(g)}, "
                             f"expected {tuple(b.shape)}")


def assemble_ensemble(models: Sequence[ChangeModel], *, threshold: float | None,
                      name: str | None = None, training: dict[str, Any] | None = None,
                      calibration: ScoreCalibration | None = None) -> ChangeModel:
    """One model whose score is the mean of ``models``' scores (``config.members`` of them).

    The members must share architecture, bands, normalisation and required bands (several
    trainings of one recipe, e.g. other seeds). The ensemble's score has its own scale, so its
    decision ``threshold`` (and ``calibration``) must be chosen for it, on scenes its members
    did not train on; it is a required argument.

    Args:
      models: Trained single-network models, in order.
      threshold: Decision threshold on the mean score (None: Otsu at run time).
      name: The ensemble's name (default: the first member's).
      training: Training summary (default: ``{"members": [each member's training]}``).
      calibration: ``P(change | score)`` of the ensemble's score, if measured.

    Raises:
      ConfigError: Fewer than two members, or members that differ in architecture.
      ModelFileError: Members that differ in bands or normalisation.
    """
    models = list(models)
    if not models:
        raise ConfigError("an ensemble needs at least two members; got none.")
    first = models[0]
    keys = ("band_ids", "normalization", "norm_mean", "norm_std", "required_bands")
    for i, m in enumerate(models[1:], start=1):
        for key in keys:
            if getattr(m, key) != getattr(first, key):
                raise ModelFileError(
                    f"ensemble member {i} ({m.name!r}) has {key} {getattr(m, key)}, member 0 "
                    f"has {getattr(first, key)}: members must take the same input.")
    config, state = stack_states([m.config for m in models], [m.state for m in models])
    return ChangeModel(
        config=config, state=state, band_ids=first.band_ids, norm_mean=first.norm_mean,
        norm_std=first.norm_std, threshold=threshold, margin=first.margin,
        name=name or first.name,
        training=training if training is not None else {"members": [m.training for m in models]},
        normalization=first.normalization, required_bands=first.required_bands,
        calibration=calibration,
    )
