"""Training patches: ``PatchSampler`` draws square patches from scenes (uniformly or centred on
change), with scale changes, flips/rotations, date swaps, per-date radiometric jitter and band
dropout.

Pure numpy; every draw comes from the ``numpy.random.Generator`` the caller passes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from changedet.data import Batch, Scene, to_nhwc
from changedet.errors import ConfigError, EmptySceneError

__all__ = ["augment", "radiometric_jitter", "zoom_arrays", "resample_scene", "PatchSampler"]


def augment(
    before: np.ndarray,
    after: np.ndarray,
    label: np.ndarray,
    valid: np.ndarray,
    rng: np.random.Generator,
    *,
    swap_dates: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A random dihedral transform (flip + 90° rotation) applied identically to all four arrays,
    then a random before/after swap (change is symmetric, so the label is kept).

    Args:
      before, after: ``(band, height, width)`` arrays (square if a rotation may apply).
      label, valid: ``(height, width)`` arrays.
      rng: Draws exactly three numbers, whatever the outcome.
      swap_dates: Allow the before/after swap.

    Returns:
      The transformed ``(before, after, label, valid)``.
    """
    k = int(rng.integers(4))
    flip = bool(rng.integers(2))
    swap = bool(rng.integers(2)) and swap_dates

    def tf(x: np.ndarray) -> np.ndarray:
        if flip:
            x = x[..., ::-1]
        return np.rot90(x, k, axes=(-2, -1))

    before, after, label, valid = tf(before), tf(after), tf(label), tf(valid)
    if swap:
        before, after = after, before
    return before, after, label, valid


def radiometric_jitter(image: np.ndarray, rng: np.random.Generator, strength: float
                       ) -> np.ndarray:
    """A random per-band gain, offset and smooth haze on one *normalised* date.

    Gain ``exp(U(-s, s))``, offset ``U(-s, s)`` and a linear ramp (haze/illumination gradient)
    of amplitude ``U(0, s)`` across the patch, drawn per band: the illumination and season
    differences between two dates that are not change. Always draws the same numbers.
    """
    num_bands, height, width = image.shape
    gain = np.exp(rng.uniform(-strength, strength, (num_bands,))).astype(np.float32)
    offset = rng.uniform(-strength, strength, (num_bands,)).astype(np.float32)
    ramp_amp = rng.uniform(0.0, strength, (num_bands,)).astype(np.float32)
    angle = rng.uniform(0.0, 2 * np.pi)
    rows = np.linspace(-0.5, 0.5, height, dtype=np.float32)[:, None]
    cols = np.linspace(-0.5, 0.5, width, dtype=np.float32)[None, :]
    ramp = np.float32(np.cos(angle)) * rows + np.float32(np.sin(angle)) * cols
    return image * gain[:, None, None] + offset[:, None, None] + ramp_amp[:, None, None] * ramp


def zoom_arrays(
    before: np.ndarray, after: np.ndarray, label: np.ndarray, valid: np.ndarray, zoom: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(band, H, W)`` images and ``(H, W)`` 0/1 label and valid mask resampled to
    ``round(H * zoom) x round(W * zoom)`` pixels, as a sensor with ``zoom`` times the pixel
    density would see the same ground.

    Everything is interpolated bilinearly on the same grid, after a Gaussian blur of ``sigma =
    (1/zoom - 1)/2`` input pixels when shrinking (a coarser sensor integrates over its larger
    pixels; without it, shrinking aliases). Invalid pixels take no part: the images are
    resampled as ``image * valid / valid`` (normalised convolution), a new pixel is valid only
    where it draws on valid pixels alone, and changed where the resampled label is at least
    one half. Invalid pixels come out 0.

    Raises:
      ConfigError: ``zoom`` is not positive.
    """
    if not zoom > 0:
        raise ConfigError(f"zoom must be > 0; got {zoom}.")
    sigma = max(1.0 / zoom - 1.0, 0.0) / 2

    def resample(x: np.ndarray) -> np.ndarray:  # (..., H, W) float32
        lead = (0,) * (x.ndim - 2)
        if sigma > 0:
            x = ndimage.gaussian_filter(x, lead + (sigma, sigma), mode="nearest")
        return ndimage.zoom(x, (1,) * len(lead) + (zoom, zoom), order=1, mode="nearest",
                            grid_mode=True)

    weight = valid.astype(np.float32)
    new_weight = resample(weight)
    new_valid = new_weight > 0.999

    def image(x: np.ndarray) -> np.ndarray:
        num = resample(np.where(valid, x, 0).astype(np.float32))
        return np.where(new_valid, num / np.maximum(new_weight, 1e-6), 0).astype(np.float32)

    changed = resample(np.where(valid, label, 0).astype(np.float32))
    new_label = (new_valid & (changed >= 0.5 * new_weight)).astype(label.dtype)
    return image(before), image(after), new_label, new_valid


def resample_scene(scene: Scene, zoom: float) -> Scene:
    """``scene`` at ``zoom`` times its pixel density (0.5: pixels twice as large), bands, label
    and valid mask resampled together (:func:`zoom_arrays`): how a model fares on imagery of
    another ground resolution than its training scenes'. With sparse labels (``image_valid``
    set), the bands draw on the imagery's valid pixels, labelled or not, the label on the
    labelled ones."""
    if scene.image_valid is None:
        before, after, label, valid = zoom_arrays(scene.before, scene.after, scene.label,
                                                  scene.valid, zoom)
        return scene._replace(before=before, after=after, label=label, valid=valid)
    before, after, _, imagery = zoom_arrays(scene.before, scene.after, scene.label,
                                            scene.image_valid, zoom)
    first = scene.before[:1]
    _, _, label, valid = zoom_arrays(first, first, scene.label, scene.valid, zoom)
    return scene._replace(before=before, after=after, label=label, valid=valid & imagery,
                          image_valid=imagery)


def _crop_padded(
    arr: np.ndarray, row0: int, col0: int, size: int, fill: float | bool = 0
) -> np.ndarray:
    """``arr[..., row0:row0+size, col0:col0+size]`` padded with ``fill`` past the edges."""
    out = np.full(arr.shape[:-2] + (size, size), fill, dtype=arr.dtype)
    h, w = arr.shape[-2:]
    r1, c1 = min(row0 + size, h), min(col0 + size, w)
    out[..., : r1 - row0, : c1 - col0] = arr[..., row0:r1, col0:c1]
    return out


class _BatchDraw(NamedTuple):
    """What every patch of a scene batch shares: the scene, the seeds of the two dates'
    radiometric jitter and the band-drop choice."""

    scene: int
    jitter: tuple[int, int]
    bands: tuple[bool, np.ndarray]


class PatchSampler:
    """Draws class-balanced, augmented square patches from in-memory scenes.

    A fraction ``changed_fraction`` of each batch (rounded) is centred, up to a random jitter of
    a quarter patch, on a changed valid pixel drawn uniformly over all scenes; the rest on a valid
    pixel drawn uniformly over all scenes. Patches stay inside a scene when it is large enough;
    scenes smaller than the patch are padded with ``valid=False``. If no scene has a changed pixel,
    every patch is a uniform one.

    Example:
      >>> import numpy as np
      >>> s = Scene("s", np.zeros((2, 40, 40), np.float32), np.ones((2, 40, 40), np.float32),
      ...           np.eye(40, dtype=np.uint8), np.ones((40, 40), bool), ("1", "2"))
      >>> batch = PatchSampler([s], patch_px=16).sample(4, np.random.default_rng(0))
      >>> batch.before.shape, batch.label.dtype.name, batch.valid.dtype.name
      ((4, 16, 16, 2), 'int32', 'bool')
    """

    def __init__(
        self,
        scenes: Sequence[Scene],
        patch_px: int,
        *,
        changed_fraction: float = 0.5,
        augment: bool = True,
        swap_dates: bool = True,
        radiometric: float = 0.0,
        band_drop: float = 0.0,
        band_sets: Sequence[Sequence[bool] | np.ndarray] = (),
        scale: float = 0.0,
        scene_batches: bool = False,
    ) -> None:
        """Indexes the scenes' valid and changed pixels.

        Args:
          scenes: Scenes (already normalised if the batches should be), same bands.
          patch_px: Patch edge in pixels.
          changed_fraction: Share of patches centred on changed pixels, in [0, 1].
          augment: Apply :func:`augment` to each patch.
          swap_dates: Allow random before/after swaps when augmenting.
          radiometric: Strength of :func:`radiometric_jitter`, applied to each date on its own
            (0 = off).
          band_drop: Probability that a patch keeps only the bands of one of ``band_sets``
            (drawn uniformly); the others are set to 0, the band mean after normalisation, in
            both dates — how a model learns to work on any of those band sets.
          band_sets: Masks (one bool per band) of the band sets to train for.
          scale: Scale augmentation: each patch is cut from a window ``2**U(-scale, scale)``
            times ``patch_px`` wide and resampled to ``patch_px``, so that
            objects appear at other ground resolutions (0 = off; 1 = half to double size).
            :func:`resample_scene` resamples it.
          scene_batches: Draw every patch of a batch from one scene (drawn by its valid
            pixels), with one band-drop choice and one radiometric jitter per date for the
            whole batch: batch statistics are then one scene's, as a model that adapts its
            normalisation to each scene (``ModelConfig.norm_adapt``) measures them at inference.

        Raises:
          ConfigError: On a bad ``patch_px``, ``changed_fraction`` or ``scale``.
          EmptySceneError: If no scene has a valid pixel.
        """
        if patch_px < 1:
            raise ConfigError(f"patch_px must be >= 1; got {patch_px}.")
        if not 0.0 <= changed_fraction <= 1.0:
            raise ConfigError(f"changed_fraction must be in [0, 1]; got {changed_fraction}.")
        if not 0.0 <= scale <= 3.0:
            raise ConfigError(f"scale must be in [0, 3] (octaves); got {scale}.")
        self.scenes = list(scenes)
        self.patch_px = int(patch_px)
        self.changed_fraction = float(changed_fraction)
        self.augment = augment
        self.swap_dates = swap_dates
        self.radiometric = float(radiometric)
        self.band_drop = float(band_drop)
        self.scale = float(scale)
        self.scene_batches = bool(scene_batches)
        self.band_sets = [np.asarray(m, bool) for m in band_sets]
        if self.band_drop and not self.band_sets:
            raise ConfigError("band_drop > 0 needs at least one band set to drop to.")
        self._valid_idx = [np.flatnonzero(s.valid) for s in self.scenes]
        self._changed_idx = [np.flatnonzero(s.valid & (s.label > 0)) for s in self.scenes]
        self._valid_cum = np.cumsum([len(i) for i in self._valid_idx])
        self._changed_cum = np.cumsum([len(i) for i in self._changed_idx])
        if not len(self._valid_cum) or self._valid_cum[-1] == 0:
            raise EmptySceneError("PatchSampler: no valid pixel in any training scene.")

    @property
    def num_valid_pixels(self) -> int:
        """Valid pixels over all scenes."""
        return int(self._valid_cum[-1])

    @property
    def num_changed_pixels(self) -> int:
        """Changed valid pixels over all scenes."""
        return int(self._changed_cum[-1])

    def _draw_pixel(self, rng: np.random.Generator, changed: bool, scene: int | None = None
                    ) -> tuple[int, int, int]:
        cum, idx = (
            (self._changed_cum, self._changed_idx) if changed
            else (self._valid_cum, self._valid_idx)
        )
        if scene is None:
            j = int(rng.integers(int(cum[-1])))
            scene_i = int(np.searchsorted(cum, j, side="right"))
            start = int(cum[scene_i - 1]) if scene_i else 0
            flat = int(idx[scene_i][j - start])
        else:
            scene_i = scene
            if changed and not len(idx[scene_i]):  # a scene without change: a uniform patch
                idx = self._valid_idx
            flat = int(idx[scene_i][int(rng.integers(len(idx[scene_i])))])
        width = self.scenes[scene_i].valid.shape[1]
        return scene_i, flat // width, flat % width

    def patch(
        self, rng: np.random.Generator, changed: bool, shared: _BatchDraw | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One ``(before, after, label, valid)`` patch, ``(band, P, P)`` / ``(P, P)``;
        ``shared`` fixes the scene, band drop and radiometric jitter (scene batches)."""
        changed = changed and self.num_changed_pixels > 0
        scene_i, row, col = self._draw_pixel(rng, changed, None if shared is None else shared.scene)
        s = self.scenes[scene_i]
        size = self.patch_px
        if self.scale:
            size = max(int(round(size * 2.0 ** rng.uniform(-self.scale, self.scale))), 2)
        jitter = size // 4
        h, w = s.valid.shape
        row0 = row - size // 2 + int(rng.integers(-jitter, jitter + 1))
        col0 = col - size // 2 + int(rng.integers(-jitter, jitter + 1))
        row0 = min(max(row0, 0), max(h - size, 0))
        col0 = min(max(col0, 0), max(w - size, 0))
        window = s._replace(
            before=_crop_padded(s.before, row0, col0, size, 0),
            after=_crop_padded(s.after, row0, col0, size, 0),
            label=_crop_padded(s.label, row0, col0, size, 0),
            valid=_crop_padded(s.valid, row0, col0, size, False),
            image_valid=(None if s.image_valid is None
                         else _crop_padded(s.image_valid, row0, col0, size, False)))
        if size != self.patch_px:
            window = resample_scene(window, self.patch_px / size)
        before, after, label, valid = window.before, window.after, window.label, window.valid
        imagery = window.pixels_valid  # where the imagery is valid, labelled or not
        if self.augment:  # the two masks travel as one (2, P, P) array
            before, after, label, masks = augment(
                before, after, label, np.stack([valid, imagery]), rng,
                swap_dates=self.swap_dates)
            valid, imagery = masks
        if self.radiometric:
            rng_b, rng_a = ((rng, rng) if shared is None else
                            (np.random.default_rng(shared.jitter[0]),
                             np.random.default_rng(shared.jitter[1])))
            before = radiometric_jitter(before, rng_b, self.radiometric)
            after = radiometric_jitter(after, rng_a, self.radiometric)
        if self.band_drop:
            drop, keep = self._band_choice(rng) if shared is None else shared.bands
            if drop:
                zero = ~keep[:, None, None]
                before = np.where(zero, np.float32(0), before)
                after = np.where(zero, np.float32(0), after)
        if self.radiometric or self.band_drop or size != self.patch_px:
            # nodata back to 0 (the band mean); unlabelled imagery keeps its values
            before = np.where(imagery[None], before, np.float32(0)).astype(np.float32)
            after = np.where(imagery[None], after, np.float32(0)).astype(np.float32)
        return before, after, label, valid

    def _band_choice(self, rng: np.random.Generator) -> tuple[bool, np.ndarray]:
        drop = rng.random() < self.band_drop
        return bool(drop), self.band_sets[int(rng.integers(len(self.band_sets)))]

    def _batch_draw(self, rng: np.random.Generator) -> _BatchDraw:
        scene = self._draw_pixel(rng, changed=False)[0]
        jitter = (int(rng.integers(2**63)), int(rng.integers(2**63)))
        bands = self._band_choice(rng) if self.band_drop else (False, np.ones(0, bool))
        return _BatchDraw(scene, jitter, bands)

    def sample(self, batch_size: int, rng: np.random.Generator) -> Batch:
        """A :class:`Batch` of ``batch_size`` patches, NHWC float32 / int32 / bool."""
        num_changed = int(round(self.changed_fraction * batch_size))
        shared = self._batch_draw(rng) if self.scene_batches else None
        patches = [self.patch(rng, changed=i < num_changed, shared=shared)
                   for i in range(batch_size)]
        before = to_nhwc(np.stack([p[0] for p in patches]).astype(np.float32))
        after = to_nhwc(np.stack([p[1] for p in patches]).astype(np.float32))
        label = np.stack([p[2] for p in patches]).astype(np.int32)
        valid = np.stack([p[3] for p in patches]).astype(bool)
        return Batch(before, after, label, valid)
