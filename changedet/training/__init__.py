"""Training: the pure jitted step (``steps``), checkpoints, the ``fit`` loop with validation and
threshold calibration (``fit``), the losses (``losses``), patch sampling and augmentation
(``sampling``) and leave-scenes-out cross-validation (``crossval``).

``train_step`` is a module-level pure function of ``(graphdef, state, batch, key)`` jitted once
with fixed shapes, data-parallel over all local devices. ``fit`` owns everything stateful:
normalisation statistics, the patch sampler, checkpoints, early stopping, ``metrics.jsonl``, the
loss curve and threshold calibration. Every random draw is a function of ``(seed, global step)``,
so a killed run resumes exactly where it stopped.

Must not import rasterio, rioxarray, xarray, dask or matplotlib (the loss-curve PNG is drawn by
``changedet.viz``, imported when it is written).
"""

from changedet.training.checkpoints import (
    CHECKPOINT_NAME,
    load_checkpoint,
    save_checkpoint,
)
from changedet.training.fit import (
    FitResult,
    TrainedModel,
    ValResult,
    band_set_masks,
    fit,
    fit_model,
    to_change_model,
    training_summary,
    validate,
)
from changedet.training.steps import (
    StepMetrics,
    data_mesh,
    make_optimizer,
    make_schedule,
    make_train_step,
    placements,
    shard_batch,
    train_step,
)

__all__ = [
    "CHECKPOINT_NAME",
    "FitResult",
    "StepMetrics",
    "TrainedModel",
    "ValResult",
    "band_set_masks",
    "data_mesh",
    "fit",
    "fit_model",
    "load_checkpoint",
    "make_optimizer",
    "make_schedule",
    "make_train_step",
    "placements",
    "save_checkpoint",
    "shard_batch",
    "to_change_model",
    "train_step",
    "training_summary",
    "validate",
]
