"""A learned model bound to one scene pair: bands matched to its inputs, statistics computed.

``LearnedDetector.prepare(pair)`` (``run``) and ``LearnedDetector.prepare_scene(scene)``
(evaluation, cross-validation) both return a :class:`PreparedModel`, the detector that scores
blocks:

* **bands** — each input band is matched to one of the model's band slots by its canonical id
  (:mod:`changedet.bands`: ``B2``, ``blue`` and ``B02`` are one band), or by position for
  positional models (``rgb``). A model trained with band dropout accepts any subset of its
  bands holding its ``required_bands``; the missing ones are fed at their mean (0 after
  standardisation), exactly as in training;
* **statistics** — ``per_image`` models standardise each date by its own per-band mean and
  std over the pixels valid in both dates (one reduction over the whole scene before the main
  pass, so tiled output still equals whole-image output); ``per_image_scalar`` models pool
  those into one mean and std per date over the blue, green and red bands; ``global`` models
  use the training statistics stored in the model file;
* **difference statistics** — models with ``config.norm_adapt="difference"`` re-estimate the
  BatchNorms after the dates' difference on a sample of the scene (up to 16 windows of 256 px,
  :mod:`changedet.models.adapt`), once, before the main pass.

NumPy only here; the dask reduction for a lazy pair is in :func:`pair_statistics`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from changedet import bands
from changedet.data import (
    image_statistics,
    normalize,
    scalar_reference,
    scalar_statistics,
    stats_from_sums,
)
from changedet.errors import (
    BandMismatchError,
    ConfigError,
    EmptySceneError,
    InputRangeError,
    option,
)

if TYPE_CHECKING:
    from changedet.data import Scene
    from changedet.detectors.learned import LearnedDetector
    from changedet.models.record import ChangeModel

log = logging.getLogger(__name__)

__all__ = ["QUALITY_TTA", "PreparedModel", "match_bands", "pair_statistics", "prepare",
           "with_quality"]


def match_bands(model: ChangeModel, input_bands: Sequence[str]) -> tuple[int, ...]:
    """The model slot of each input band, in input order.

    Raises:
      BandMismatchError: A band the model does not know, a required band missing, or (for a
        model that needs all its bands) any band missing — with what to do.
    """
    found = tuple(str(b) for b in input_bands)
    wanted = model.band_ids
    if bands.is_positional(wanted):
        if len(found) != len(wanted):
            raise BandMismatchError(
                f"model {model.name!r} takes {len(wanted)} bands (red, green, blue for 'rgb') but "
                f"the input has {len(found)} ({','.join(found) or 'none'}); pick {len(wanted)} "
                f"with {option('bands')}, or another model with {option('model')}.")
        return tuple(range(len(wanted)))
    ids = bands.canonical_bands(found) if any(b not in wanted for b in found) else found
    if ids is None:
        unknown = [b for b in found if bands.canonical_band(b) is None and b not in wanted]
        raise BandMismatchError(
            f"model {model.name!r} expects bands {','.join(wanted)} but the input has "
            f"{','.join(found)} ({','.join(unknown) or 'a repeated band'}: not a known band "
            f"name); name the file's bands with {option('band_names', 'blue,green,red,nir')}, "
            f"or choose bands with {option('bands')}.")
    extra = [b for b in ids if b not in wanted]
    required = model.required_bands if model.required_bands is not None else wanted
    missing = [b for b in required if b not in ids]
    if extra or missing:
        what = "needs at least" if model.required_bands is not None else "expects"
        problems = "; ".join(p for p in (
            f"missing {','.join(missing)}" if missing else "",
            f"it does not take {','.join(extra)}" if extra else "") if p)
        raise BandMismatchError(
            f"model {model.name!r} {what} bands {','.join(required)} but the input has "
            f"{','.join(found) or 'none'} ({problems}); choose the bands with {option('bands')}, "
            f"name them with {option('band_names')}, or pick another model with "
            f"{option('model')}.")
    return tuple(wanted.index(b) for b in ids)


@dataclasses.dataclass(frozen=True, eq=False)
class PreparedModel:
    """A :class:`~changedet.detectors.learned.LearnedDetector` bound to one pair's bands and
    statistics.

    Attributes:
      model: The model.
      band_ids: The input bands, in input order.
      slots: Model band slot of each input band.
      before_mean, before_std, after_mean, after_std: Per input band, raw units: what each
        date is standardised with.
      tta: Test-time augmentation, the dihedral transforms averaged per tile (1: none; see
        :func:`changedet.inference.predict_step`). :func:`with_quality` sets it.
    """

    model: LearnedDetector
    band_ids: tuple[str, ...]
    slots: tuple[int, ...]
    before_mean: np.ndarray
    before_std: np.ndarray
    after_mean: np.ndarray
    after_std: np.ndarray
    tta: int = 1

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def halo_px(self) -> int:
        return self.model.halo_px

    @property
    def align_px(self) -> int:
        return self.model.align_px

    @property
    def threshold(self) -> float | None:
        return self.model.threshold

    @property
    def max_change_fraction(self) -> float | None:
        return self.model.max_change_fraction

    @property
    def compile_seconds(self) -> float:
        """One-off compile time of the model's predictors so far (see ``LearnedDetector``)."""
        return self.model.compile_seconds

    @property
    def model_bands(self) -> tuple[str, ...]:
        """The model's slots that this input fills, in model order."""
        return tuple(self.model.band_ids[i] for i in sorted(self.slots))

    def fill_values(self) -> tuple[np.ndarray, np.ndarray]:
        """Raw values invalid pixels take in each date: the band means (0 once standardised)."""
        return (self.before_mean.astype(np.float32), self.after_mean.astype(np.float32))

    def _expand(self, block: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
        z = normalize(block, mean, std)
        n = self.model.config.num_bands
        if len(self.slots) == n and self.slots == tuple(range(n)):
            return z
        full = np.zeros((n,) + z.shape[1:], np.float32)
        full[list(self.slots)] = z
        return full

    def score_block(self, before: np.ndarray, after: np.ndarray, *,
                    context_px: int = 0) -> np.ndarray:
        """``(h, w)`` float32 change score of raw ``(band, h, w)`` blocks (see
        ``LearnedDetector.score_block``)."""
        b = self._expand(before, self.before_mean, self.before_std)
        a = self._expand(after, self.after_mean, self.after_std)
        return self.model.predictor(tta=self.tta).predict(b, a, context_px=context_px,
                                                          normalized=True)


#: ``quality`` of :func:`changedet.run`/``--quality``: the test-time transforms per tile and
#: so the model cost relative to ``"fast"``.
QUALITY_TTA = {"fast": 1, "best": 8}


def with_quality(detector: Any, quality: str) -> Any:
    """``detector`` at ``quality`` (``"fast"``: one pass; ``"best"``: the mean over the 8
    dihedral transforms of every tile, 8x the model time). Detectors without a network (CVA)
    are returned unchanged.

    Raises:
      ConfigError: For an unknown quality.
    """
    if quality not in QUALITY_TTA:
        raise ConfigError(f"quality must be one of {', '.join(QUALITY_TTA)}; got {quality!r}.")
    if not isinstance(detector, PreparedModel):
        return detector
    return dataclasses.replace(detector, tta=QUALITY_TTA[quality])


#: A global-statistics model refuses input whose band mean lies this many training standard
#: deviations from the training mean (other units: uint16 DN into an 8-bit model).
MAX_RANGE_Z = 8.0


def check_range(model: ChangeModel, input_bands: Sequence[str], slots: Sequence[int],
                means: Sequence[np.ndarray]) -> None:
    """Raises :class:`InputRangeError` when a ``global`` model gets values in other units."""
    train_mean = np.asarray(model.norm_mean, np.float64)[list(slots)]
    train_std = np.asarray(model.norm_std, np.float64)[list(slots)]
    if not train_mean.any() and (train_std == 1).all():
        return  # identity statistics (an untrained smoke-test model): no range to check
    for mean in means:
        z = np.abs(np.asarray(mean, np.float64) - train_mean) / train_std
        worst = int(np.argmax(z))
        if z[worst] > MAX_RANGE_Z:
            raise InputRangeError(
                f"band {input_bands[worst]} of the input averages {mean[worst]:.4g} but model "
                f"{model.name!r} was trained on values averaging {train_mean[worst]:.4g} (std "
                f"{train_std[worst]:.3g}): the input is in other units (e.g. 16-bit Sentinel-2 "
                "values into an 8-bit model); rescale it to the model's units, or use a model "
                "that standardises each image (the packaged sentinel2 and rgb do).")


def _bind(model: LearnedDetector, input_bands: Sequence[str], stats: Any) -> PreparedModel:
    slots = match_bands(model, input_bands)
    if model.normalization == "per_image":
        (bm, bs), (am, as_) = stats()
    elif model.normalization == "per_image_scalar":
        # pooled over the model's reference bands (blue, green, red for Sentinel-2 models), which
        # every accepted input holds: a band subset is scaled as the full image would be
        reference = set(scalar_reference(model.band_ids))
        ref = [i for i, slot in enumerate(slots) if slot in reference]
        if len(ref) < len(reference):
            names = ",".join(model.band_ids[i] for i in sorted(reference))
            raise BandMismatchError(
                f"model {model.name!r} scales each image by its bands {names}, but the input "
                f"has {','.join(map(str, input_bands))}; choose the bands with "
                f"{option('bands')} or name them with {option('band_names')}.")
        (bm, bs), (am, as_) = (scalar_statistics(m, s, ref) for m, s in stats())
    else:
        (in_b, _), (in_a, _) = stats()
        check_range(model, input_bands, slots, (in_b, in_a))
        mean = np.asarray(model.norm_mean, np.float64)[list(slots)]
        std = np.asarray(model.norm_std, np.float64)[list(slots)]
        bm, bs, am, as_ = mean, std, mean, std
    bm, bs, am, as_ = (np.asarray(x, np.float64) for x in (bm, bs, am, as_))
    return PreparedModel(model, tuple(str(b) for b in input_bands), slots, bm, bs, am, as_)


def _adapted(prepared: PreparedModel, shape: tuple[int, int], read: Any) -> PreparedModel:
    """``prepared`` with its model's difference BatchNorms re-estimated on the scene
    (``config.norm_adapt``; unchanged otherwise). ``read(windows)`` returns raw ``(before,
    after, valid)`` arrays per ``(row, col, height, width)`` window."""
    model = prepared.model
    if model.config.norm_adapt == "none":
        return prepared
    from changedet.models.adapt import adapt_difference_norms, window_grid

    windows = window_grid(*shape)
    blocks = read(windows)
    # windows at least half valid, else the most valid ones; within them the statistics count
    # only valid pixels (filled nodata and clouds would pull them towards "no change")
    share = [float(ok.mean()) for _, _, ok in blocks]
    keep = [i for i, f in enumerate(share) if f >= 0.5] or [int(np.argmax(share))]
    fills = prepared.fill_values()
    dates = []
    for d in (0, 1):
        dates.append(np.stack([np.moveaxis(prepared._expand(
            np.where(blocks[i][2][None], blocks[i][d], fills[d][:, None, None]),
            (prepared.before_mean, prepared.after_mean)[d],
            (prepared.before_std, prepared.after_std)[d]), 0, -1) for i in keep]))
    state = adapt_difference_norms(model, dates[0], dates[1],
                                   np.stack([blocks[i][2] for i in keep]))
    log.info("model %r: difference statistics re-estimated on %d windows (%.2g Mpx) of the "
             "scene", model.name, len(keep), sum(blocks[i][2].size for i in keep) / 1e6)
    return dataclasses.replace(prepared, model=model.with_weights(state))


def prepare(model: LearnedDetector, pair: Any) -> PreparedModel:
    """Binds ``model`` to a lazy :class:`~changedet.io.RasterPair` (one dask reduction for
    ``per_image`` models; one read of a sample of windows for ``norm_adapt`` models)."""
    prepared = _bind(model, pair.band_ids, lambda: pair_statistics(pair))
    if len(prepared.slots) < model.config.num_bands:
        log.info("model %r uses the input's %d bands %s (%s); the other %d are filled at their "
                 "mean", model.name, len(prepared.slots), ",".join(prepared.model_bands),
                 bands.describe_band_set(prepared.model_bands),
                 model.config.num_bands - len(prepared.slots))
    return _adapted(prepared, pair.valid.shape, lambda windows: _read_windows(pair, windows))


def _read_windows(pair: Any, windows: Sequence[tuple[int, int, int, int]]
                  ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Raw ``(before, after, valid)`` of a lazy pair's windows, in one dask computation."""
    import dask

    parts = [(pair.before.data[:, y:y + h, x:x + w], pair.after.data[:, y:y + h, x:x + w],
              pair.valid.data[y:y + h, x:x + w]) for y, x, h, w in windows]
    return [(np.asarray(b), np.asarray(a), np.asarray(ok)) for b, a, ok in dask.compute(*parts)]


def prepare_scene(model: LearnedDetector, scene: Scene) -> PreparedModel:
    """Binds ``model`` to an in-memory scene (the statistics :func:`pair_statistics` would give
    for the same pixels)."""

    def stats():
        ok = scene.pixels_valid
        if not ok.any():
            raise EmptySceneError(f"scene {scene.name!r} has no valid pixel.")
        return image_statistics(scene.before, ok), image_statistics(scene.after, ok)

    ok = scene.pixels_valid
    return _adapted(_bind(model, scene.band_ids, stats), ok.shape, lambda windows: [
        (scene.before[:, y:y + h, x:x + w], scene.after[:, y:y + h, x:x + w], ok[y:y + h, x:x + w])
        for y, x, h, w in windows])


def pair_statistics(pair: Any) -> tuple[tuple[np.ndarray, np.ndarray],
                                        tuple[np.ndarray, np.ndarray]]:
    """``((mean, std) before, (mean, std) after)`` per band over the pixels valid in both dates,
    in one dask pass over the lazy pair.

    Raises:
      EmptySceneError: No pixel is valid in both dates.
    """
    import dask
    import dask.array as da

    valid = pair.valid.data
    sums = []
    for arr in (pair.before.data, pair.after.data):
        values = da.where(valid[None], arr.astype(np.float64), 0.0)
        sums.append((values.sum(axis=(1, 2)), (values * values).sum(axis=(1, 2))))
    (b1, b2), (a1, a2), count = dask.compute(*sums, valid.sum())
    if int(count) == 0:
        raise EmptySceneError(
            f"{pair.before_path} and {pair.after_path} have no pixel that is valid in both "
            "dates (all nodata, NaN, or outside the other date's footprint). Check the inputs' "
            "nodata values and extents.")
    return stats_from_sums(b1, b2, int(count)), stats_from_sums(a1, a2, int(count))
