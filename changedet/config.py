"""Frozen, validated configuration dataclasses (no JAX, no I/O).

Defaults live only here. Configs are hashable, JSON-serialisable through :func:`to_dict` /
:func:`model_config_from_dict`, and are stored inside every model file.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from changedet.errors import ConfigError

__all__ = [
    "Head", "Distance", "HEADS", "DISTANCES", "Upsample", "Norm", "UPSAMPLES", "NORMS",
    "NormAdapt", "NORM_ADAPTS", "INFERENCE_ONLY",
    "ModelConfig", "to_dict", "model_config_from_dict", "Loss", "Mining", "Schedule",
    "Normalization", "NORMALIZATIONS", "LOSSES", "MININGS", "SCHEDULES", "TrainConfig",
    "check_compatible", "train_config_from_dict", "DEFAULT_STEPS", "default", "tiny",
    "PACKAGED_RECIPES", "packaged",
]

Head = Literal["distance", "diff", "conc", "msdiff"]
Distance = Literal["euclidean", "manhattan", "cosine"]

HEADS: tuple[str, ...] = ("distance", "diff", "conc", "msdiff")
DISTANCES: tuple[str, ...] = ("euclidean", "manhattan", "cosine")
Upsample = Literal["shuffle", "nearest"]
Norm = Literal["none", "layer", "batch"]
UPSAMPLES: tuple[str, ...] = ("shuffle", "nearest")
NORMS: tuple[str, ...] = ("none", "layer", "batch")
NormAdapt = Literal["none", "difference", "all"]
NORM_ADAPTS: tuple[str, ...] = ("none", "difference", "all")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of the Siamese network.

    Attributes:
      num_bands: Input channels per date.
      features: Channels at each encoder level; ``len(features) - 1`` 2x downsamplings.
      embed_dim: Per-pixel embedding size ``D`` produced by the shared encoder.
      convs_per_level: 3x3 convolutions per level (encoder and decoder).
      head: ``"distance"`` (metric learning: score = distance of embeddings),
        ``"diff"`` (late fusion: a small decoder on ``|f(before) - f(after)|`` of the
        full-resolution embeddings, logits, BCE),
        ``"conc"`` (FC-Siam-conc style, symmetric: decoder on ``[f(b)+f(a), |f(b)-f(a)|]``) or
        ``"msdiff"`` (FC-Siam-diff proper: the encoder's down path only, and a decoder on the
        dates' feature differences at every level; ``embed_dim`` is unused).
      distance: Per-pixel distance for the ``distance`` head.
      upsample: Decoder upsampling: ``"shuffle"`` (1x1 conv + depth-to-space, i.e. a 2x2
        stride-2 transposed conv without XLA CPU's slow kernel; the fastest measured) or
        ``"nearest"`` (nearest resize + 3x3 conv).
      norm: ``"none"``, ``"layer"`` (per-pixel LayerNorm over channels after each conv) or
        ``"batch"`` (BatchNorm after each conv: batch statistics in training steps, their
        running averages at inference, where it is a fixed per-channel affine map, so tiled
        inference stays exact).
      head_convs: 3x3 convolutions in the ``diff``/``conc``/``msdiff`` head before its 1x1 logit.
      dropout: Spatial dropout (whole channels, as Dropout2d) after every 3x3 conv's ReLU, in
        training steps only; inference is unaffected. FC-Siam-diff uses 0.2.
      norm_adapt: ``"none"``, ``"difference"`` or ``"all"`` (needs ``norm="batch"``, one network, a
        diff/conc/msdiff head): at inference the BatchNorms that see the dates' differences
        (all but the shared encoder's) take their mean and variance from the scene being
        scored, measured in one pass over a sample of it before the main pass (AdaBN, Li et
        al. 2016), the variance never below the trained one. A scene whose differences run
        hotter than the training scenes' (season, haze, another sensor's noise) is scaled back
        to the training range instead of lighting up. Tiled output still equals whole-image
        output (the statistics are fixed per scene). Training ignores it. ``"all"``: AdaBN
        proper, every BatchNorm (the shared encoder's over both dates' valid pixels) takes
        the scene's statistics, with no floor: for networks trained on one scene per batch
        (``TrainConfig.scene_batches``), which always normalised with one scene's.
      members: Networks of this architecture whose change scores are averaged (an ensemble,
        ``changedet.models.ensemble``); 1 = one network. Members are trained one by one
        (``fit`` trains single networks) and assembled afterwards; each costs one network's
        inference time.
    """

    num_bands: int = 13
    features: tuple[int, ...] = (16, 32, 64)
    embed_dim: int = 16
    convs_per_level: int = 2
    head: Head = "diff"
    distance: Distance = "euclidean"
    upsample: Upsample = "shuffle"
    norm: Norm = "none"
    head_convs: int = 2
    dropout: float = 0.0
    members: int = 1
    norm_adapt: NormAdapt = "none"

    def __post_init__(self) -> None:
        if self.num_bands < 1:
            raise ConfigError(f"model.num_bands must be >= 1; got {self.num_bands}.")
        if not self.features or any(f < 1 for f in self.features):
            raise ConfigError(
                f"model.features must be positive channel counts; got {self.features}.")
        if self.embed_dim < 1:
            raise ConfigError(f"model.embed_dim must be >= 1; got {self.embed_dim}.")
        if self.convs_per_level < 1:
            raise ConfigError(f"model.convs_per_level must be >= 1; got {self.convs_per_level}.")
        if self.head not in HEADS:
            raise ConfigError(f"model.head must be one of {HEADS}; got {self.head!r}.")
        if self.distance not in DISTANCES:
            raise ConfigError(f"model.distance must be one of {DISTANCES}; got {self.distance!r}.")
        if self.upsample not in UPSAMPLES:
            raise ConfigError(f"model.upsample must be one of {UPSAMPLES}; got {self.upsample!r}.")
        if self.norm not in NORMS:
            raise ConfigError(f"model.norm must be one of {NORMS}; got {self.norm!r}.")
        if self.head_convs < 0:
            raise ConfigError(f"model.head_convs must be >= 0; got {self.head_convs}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1); got {self.dropout}.")
        if self.members < 1:
            raise ConfigError(f"model.members must be >= 1; got {self.members}.")
        if self.norm_adapt not in NORM_ADAPTS:
            raise ConfigError(f"model.norm_adapt must be one of {NORM_ADAPTS}; got "
                              f"{self.norm_adapt!r}.")
        if self.norm_adapt != "none" and (
                self.norm != "batch" or self.members != 1 or self.head == "distance"
                or (self.head in ("diff", "conc") and self.head_convs == 0)):
            raise ConfigError("model.norm_adapt re-estimates BatchNorm statistics after the "
                              "dates' difference: it needs model.norm='batch', one network "
                              "(members=1) and an msdiff head, or a diff/conc head with "
                              f"head_convs >= 1; got norm={self.norm!r}, members={self.members}, "
                              f"head={self.head!r}, head_convs={self.head_convs}.")

    @property
    def num_downsamplings(self) -> int:
        """Number of 2x poolings; input tiles are padded to multiples of :attr:`align_px`."""
        return len(self.features) - 1

    @property
    def align_px(self) -> int:
        """``2**num_downsamplings``: tile and block origins and sizes must be multiples of this
        so every tile lies on the same pooling grid."""
        return 2**self.num_downsamplings


#: ModelConfig fields that change only how a trained network is applied, not its training:
#: fold models that differ from a recipe only in these are that recipe's fold models.
INFERENCE_ONLY: tuple[str, ...] = ("norm_adapt",)


def to_dict(config: Any) -> dict[str, Any]:
    """A dataclass config as plain JSON-friendly data (tuples become lists)."""
    return dataclasses.asdict(config)


def model_config_from_dict(data: dict[str, Any]) -> ModelConfig:
    """Rebuilds a :class:`ModelConfig` from :func:`to_dict` output; rejects unknown keys."""
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"unknown model config keys {sorted(unknown)}; known: {sorted(known)}.")
    values = dict(data)
    if "features" in values:
        values["features"] = tuple(int(f) for f in values["features"])
    return ModelConfig(**values)


Loss = Literal["bce", "contrastive", "triplet"]
Mining = Literal["batch_hard", "semi_hard", "all"]
Schedule = Literal["cosine", "constant"]
Normalization = Literal["global", "per_image", "per_image_scalar"]
NORMALIZATIONS: tuple[str, ...] = ("global", "per_image", "per_image_scalar")
LOSSES: tuple[str, ...] = ("bce", "contrastive", "triplet")
MININGS: tuple[str, ...] = ("batch_hard", "semi_hard", "all")
SCHEDULES: tuple[str, ...] = ("cosine", "constant")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How a model is trained (``changedet.training.fit``).

    Attributes:
      learning_rate: Peak AdamW learning rate (after warmup).
      schedule: ``"cosine"`` (linear warmup, then cosine decay to ``end_lr_fraction`` of the
        peak over all ``num_epochs * steps_per_epoch`` steps) or ``"constant"`` (warmup, then flat).
      warmup_steps: Linear warmup steps from 0 to ``learning_rate``.
      end_lr_fraction: Final learning rate of the cosine schedule, as a fraction of the peak.
      weight_decay: Decoupled AdamW weight decay.
      grad_clip_norm: Global gradient-norm clipping (0 disables it).
      batch_size: Patches per step (split over all local devices: a multiple of their count).
      patch_px: Patch edge in pixels (a multiple of ``2**model.num_downsamplings``).
      steps_per_epoch: Optimiser steps between validations/checkpoints.
      num_epochs: Maximum number of epochs.
      loss: ``"bce"`` (logit heads ``diff``/``conc``) or ``"contrastive"`` / ``"triplet"``
        (``distance`` head).
      margin: Distance margin of the contrastive / triplet losses (embedding units).
      pos_weight: Weight of changed pixels in BCE (changed pixels are rare); 0 = the training
        pixels' unchanged/changed ratio raised to ``pos_weight_power`` (inverse class frequency
        at power 1, as FC-Siam-diff weights its NLL).
      pos_weight_power: Exponent of the automatic ``pos_weight`` (0.5 = square root).
      mining: Triplet mining: ``"batch_hard"``, ``"semi_hard"`` or ``"all"``.
      dice_weight: Weight of a soft Dice term (a differentiable ``1 - F1`` over the batch)
        added to the BCE; 0 = BCE only.
      changed_fraction: Share of patches centred on a changed pixel (class balancing).
      augment: Random flips / 90° rotations / date swaps of the patches.
      normalization: ``"global"`` (per-band mean/std of all training pixels, stored in the
        model) or ``"per_image"`` (each date standardised by its own statistics, in training
        and at inference: units, gains and offsets of the input cancel out) or
        ``"per_image_scalar"`` (each date scaled by one mean and std pooled over its blue, green
        and red bands, as FC-Siam-diff does: brightness and contrast cancel out, the spectral
        shape stays).
      radiometric: Strength of the per-date radiometric jitter (gain, offset, haze ramp in
        normalised units; 0 = off), so that illumination differences are not change.
      band_drop: Probability that a training patch keeps only one of the model's accepted band
        sets (``changedet.bands.BAND_SETS``; Sentinel-2 models), the rest set to their mean.
      scale: Scale augmentation in octaves: each patch is cut from a window ``2**U(-scale,
        scale)`` times ``patch_px`` wide and resampled to ``patch_px``, so that the model sees
        objects at other ground resolutions than its training scenes' (0 = off).
      scene_batches: Draw each batch from one scene, with one band-drop choice and one
        radiometric jitter per date, so that BatchNorm's batch statistics are one scene's (as
        ``ModelConfig.norm_adapt`` measures them at inference) instead of a mix of scenes.
      seed: Seeds the parameter init, the patch sampler and the dropout-free step keys.
      patience: Stop after this many epochs without a better validation F1 (0 = never stop).
      log_every_steps: Fetch and log training metrics every this many steps.
      num_thresholds: Threshold grid size for validation PR curves.
    """

    learning_rate: float = 1e-3
    schedule: Schedule = "cosine"
    warmup_steps: int = 100
    end_lr_fraction: float = 0.01
    weight_decay: float = 1e-4
    grad_clip_norm: float = 1.0
    batch_size: int = 8
    patch_px: int = 128
    steps_per_epoch: int = 200
    num_epochs: int = 30
    loss: Loss = "bce"
    margin: float = 2.0
    pos_weight: float = 5.0
    mining: Mining = "batch_hard"
    dice_weight: float = 0.0
    changed_fraction: float = 0.5
    augment: bool = True
    normalization: Normalization = "global"
    radiometric: float = 0.0
    band_drop: float = 0.0
    scale: float = 0.0
    scene_batches: bool = False
    pos_weight_power: float = 1.0
    seed: int = 0
    patience: int = 8
    log_every_steps: int = 20
    num_thresholds: int = 256

    def __post_init__(self) -> None:
        positive = ("batch_size", "patch_px", "steps_per_epoch", "num_epochs", "log_every_steps")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1; got {getattr(self, name)}.")
        if not self.learning_rate > 0:
            raise ConfigError(f"train.learning_rate must be > 0; got {self.learning_rate}.")
        for name in ("warmup_steps", "weight_decay", "grad_clip_norm", "patience", "dice_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0; got {getattr(self, name)}.")
        if not 0.0 <= self.end_lr_fraction <= 1.0:
            raise ConfigError(
                f"train.end_lr_fraction must be in [0, 1]; got {self.end_lr_fraction}.")
        if not 0.0 <= self.changed_fraction <= 1.0:
            raise ConfigError(
                f"train.changed_fraction must be in [0, 1]; got {self.changed_fraction}."
            )
        if not self.margin > 0:
            raise ConfigError(f"train.margin must be > 0; got {self.margin}.")
        if not self.pos_weight >= 0:
            raise ConfigError(f"train.pos_weight must be >= 0 (0 = automatic); got "
                              f"{self.pos_weight}.")
        if self.normalization not in NORMALIZATIONS:
            raise ConfigError(f"train.normalization must be one of {NORMALIZATIONS}; got "
                              f"{self.normalization!r}.")
        if not self.radiometric >= 0:
            raise ConfigError(f"train.radiometric must be >= 0; got {self.radiometric}.")
        if not 0.0 <= self.band_drop <= 1.0:
            raise ConfigError(f"train.band_drop must be in [0, 1]; got {self.band_drop}.")
        if not 0.0 <= self.scale <= 3.0:
            raise ConfigError(f"train.scale must be in [0, 3] octaves; got {self.scale}.")
        if self.num_thresholds < 2:
            raise ConfigError(f"train.num_thresholds must be >= 2; got {self.num_thresholds}.")
        if self.loss not in LOSSES:
            raise ConfigError(f"train.loss must be one of {LOSSES}; got {self.loss!r}.")
        if self.mining not in MININGS:
            raise ConfigError(f"train.mining must be one of {MININGS}; got {self.mining!r}.")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"train.schedule must be one of {SCHEDULES}; got {self.schedule!r}.")

    @property
    def total_steps(self) -> int:
        """``num_epochs * steps_per_epoch``: the length of the learning-rate schedule."""
        return self.num_epochs * self.steps_per_epoch


def check_compatible(model: ModelConfig, train: TrainConfig) -> None:
    """Raises :class:`ConfigError` when the loss does not fit the head or the patch the model."""
    if model.head == "distance" and train.loss == "bce":
        raise ConfigError(
            "model.head='distance' outputs distances, not logits: use train.loss='contrastive' "
            "or 'triplet' (or model.head='diff' with loss='bce')."
        )
    if train.dice_weight and train.loss != "bce":
        raise ConfigError(f"train.dice_weight adds a Dice term to the BCE: it needs "
                          f"train.loss='bce', not {train.loss!r} (or set dice_weight=0).")
    if model.head != "distance" and train.loss != "bce":
        raise ConfigError(
            f"model.head={model.head!r} outputs logits: use train.loss='bce' (the "
            f"{train.loss!r} loss needs model.head='distance')."
        )
    align = model.align_px
    if train.patch_px % align:
        raise ConfigError(
            f"train.patch_px must be a multiple of {align} (2**model.num_downsamplings); "
            f"got {train.patch_px}."
        )


def train_config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Rebuilds a :class:`TrainConfig` from :func:`to_dict` output; rejects unknown keys."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"unknown train config keys {sorted(unknown)}; known: {sorted(known)}.")
    return TrainConfig(**data)


#: Optimiser steps of the packaged recipe (96 px patches, batch 8).
DEFAULT_STEPS = 600


def default(band_ids: tuple[str, ...] | list[str] | None = None
            ) -> tuple[ModelConfig, TrainConfig]:
    """The recipe of the packaged models, chosen by leave-scenes-out cross-validation
    (``docs/models.md``): FC-Siam-diff proper (``head="msdiff"``: a shared 16/32/64/128
    encoder, the dates' feature differences decoded at every level), each date
    standardised by its own statistics, uniform 96 px patches (the true class prior) with a
    square-root inverse-frequency change weight, flips/rotations/date swaps, per-date
    radiometric jitter, and band dropout over the accepted band sets when the bands are
    Sentinel-2's.

    Args:
      band_ids: The training bands (default: the 13 Sentinel-2 bands).
    """
    from changedet import bands

    ids = tuple(band_ids) if band_ids is not None else bands.SENTINEL2_BANDS
    drop = bool(bands.band_sets_within(ids))
    model = ModelConfig(num_bands=len(ids), features=(16, 32, 64, 128), head="msdiff",
                        head_convs=0)
    train = TrainConfig(patch_px=96, batch_size=8, steps_per_epoch=100,
                        num_epochs=DEFAULT_STEPS // 100, warmup_steps=50, patience=0,
                        log_every_steps=25, normalization="per_image", changed_fraction=0.0,
                        pos_weight=0.0, pos_weight_power=0.5, radiometric=0.1,
                        band_drop=0.5 if drop else 0.0)
    return model, train


#: The packaged models' recipes on top of :func:`default` (``docs/models.md`` says why):
#: BatchNorm and spatial dropout 0.2 after every 3x3 convolution, 4500 steps; ``sentinel2``
#: re-estimates its difference BatchNorms on each scene (``norm_adapt``); ``rgb`` adds scale
#: augmentation over one octave (its sources sit at 0.5-2 m, a user's photos at any other).
PACKAGED_RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    "sentinel2": {"model": {"norm": "batch", "dropout": 0.2, "norm_adapt": "difference"},
                  "train": {"num_epochs": 45, "seed": 1}},
    "rgb": {"model": {"norm": "batch", "dropout": 0.2},
            "train": {"num_epochs": 45, "seed": 0, "scale": 1.0}},
}


def packaged(name: str, band_ids: tuple[str, ...] | list[str] | None = None
             ) -> tuple[ModelConfig, TrainConfig]:
    """The recipe that trained the packaged model ``name`` (``"sentinel2"`` or ``"rgb"``),
    for ``band_ids`` (default: the 13 Sentinel-2 bands): :func:`default` plus
    :data:`PACKAGED_RECIPES`. ``changedet train --preset sentinel2`` trains it on a user's
    scenes; ``scripts/train_default_models.py`` on the packaged data."""
    if name not in PACKAGED_RECIPES:
        raise ConfigError(f"no packaged recipe {name!r}; choose one of "
                          f"{', '.join(PACKAGED_RECIPES)}.")
    model, train = default(band_ids)
    recipe = PACKAGED_RECIPES[name]
    return (dataclasses.replace(model, **recipe["model"]),
            dataclasses.replace(train, **recipe["train"]))


def tiny(num_bands: int = 3) -> tuple[ModelConfig, TrainConfig]:
    """A seconds-long preset for tests, notebooks and smoke runs (CPU, 32 px patches)."""
    model = ModelConfig(num_bands=num_bands, features=(8, 16), embed_dim=8, convs_per_level=1,
                        head_convs=1)
    train = TrainConfig(learning_rate=3e-3, warmup_steps=2, batch_size=4, patch_px=32,
                        steps_per_epoch=4, num_epochs=2, patience=0, log_every_steps=2,
                        num_thresholds=64)
    return model, train
