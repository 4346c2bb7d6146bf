"""Training: optimiser, the pure jitted ``train_step``, validation scoring and the ``fit`` loop.

``train_step`` is a module-level pure function of ``(graphdef, state, batch, key)`` jitted once
with fixed shapes, data-parallel over all local devices (batch sharded over a ``"data"`` mesh
axis, state replicated, ``out_shardings`` pinned so later calls do not recompile). ``fit`` owns
everything stateful: normalisation statistics, the patch sampler, checkpoints, early stopping,
``metrics.jsonl``, the loss curve and threshold calibration.

Checkpoints (``workdir/checkpoint.msgpack``, flax msgpack, no pickle) hold the model and optimiser
state, the best parameters so far, the epoch, early-stopping state and the history. Every random
draw is a function of ``(seed, global step)`` (numpy ``Generator`` seeded with both for patches,
``jax.random.fold_in`` for step keys), so a killed run resumes exactly where it stopped and ends
with the same weights and metrics as an uninterrupted run.

Must not import rasterio, rioxarray, xarray, dask or matplotlib (matplotlib is imported lazily,
only to draw the loss curve).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
from flax import nnx

from changedet import bands, evaluate, metrics
from changedet.config import (
    ModelConfig,
    TrainConfig,
    check_compatible,
    to_dict,
)
from changedet.data import Scene, band_statistics, normalize_per_image, normalize_scene
from changedet.detectors.learned import LearnedDetector
from changedet.detectors.modelfile import save_model
from changedet.errors import BandMismatchError, ConfigError, EmptySceneError, ModelFileError
from changedet.models.siamese import SiameseNet
from changedet.training.checkpoints import (
    CHECKPOINT_NAME,
    _atomic_write,
    _Progress,
    _run_signature,
    _to_host,
    load_checkpoint,
    save_checkpoint,
)
from changedet.training.sampling import PatchSampler
from changedet.training.steps import (
    _WEIGHTS,
    StepMetrics,
    data_mesh,
    make_optimizer,
    make_schedule,
    make_train_step,
    placements,
    shard_batch,
)

__all__ = [
    "ValResult", "validate", "band_set_masks", "FitResult", "fit", "fit_model", "TrainedModel",
    "training_summary", "to_change_model",
]

log = logging.getLogger(__name__)


class ValResult(NamedTuple):
    """Validation of one model on whole scenes, pooled over scenes at the F1-best threshold."""

    threshold: float
    precision: float
    recall: float
    f1: float
    iou: float
    num_pixels: int


def validate(model: Any, scenes: Sequence[Scene], num_thresholds: int = 256) -> ValResult:
    """Scores whole *raw* validation scenes with ``model`` (a ``LearnedDetector``) through
    ``changedet.run``'s scoring path (``evaluate.score_scene``: the same normalisation, nodata
    fill, mirrored halo and tiling), and pools P/R/F1/IoU at the F1-best threshold, so the
    threshold fit calibrates is one for the scores ``run`` produces."""
    scores = [evaluate.score_scene(model, s) for s in scenes]
    labels = [s.label for s in scenes]
    valids = [s.valid for s in scenes]
    curve = metrics.pr_curve(scores, labels, valids, num_thresholds)
    k = metrics.best_f1_index(curve)  # EmptySceneError when no validation pixel is valid
    m = metrics.scores_from_counts(curve.tp[k], curve.fp[k], curve.fn[k], curve.tn[k])
    num = int(sum(v.sum() for v in valids))
    return ValResult(float(curve.thresholds[k]), m.precision, m.recall, m.f1, m.iou, num)


def band_set_masks(band_ids: Sequence[str]) -> list[np.ndarray]:
    """Masks over ``band_ids`` of every accepted band set (``bands.BAND_SETS``) they contain."""
    return [np.array([b in members for b in band_ids], bool)
            for members in bands.band_sets_within(band_ids)]


def _check_scenes(scenes: Sequence[Scene], band_ids: tuple[str, ...], what: str) -> None:
    for s in scenes:
        if tuple(s.band_ids) != band_ids:
            raise BandMismatchError(
                f"{what} scene {s.name!r} has bands {s.band_ids}, expected {band_ids}; load every "
                f"scene with the same bands."
            )


def _write_history(workdir: Path, history: list[dict[str, Any]]) -> None:
    text = "".join(json.dumps(h) + "\n" for h in history)
    _atomic_write(workdir / "metrics.jsonl", text.encode())


class FitResult(NamedTuple):
    """What :func:`fit` produced besides the model: where it wrote and how validation went."""

    workdir: Path
    epochs_run: int
    best_epoch: int
    val: ValResult | None
    history: list[dict[str, Any]]


def fit(
    train_scenes: Sequence[Scene],
    val_scenes: Sequence[Scene],
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    workdir: str | Path,
    *,
    band_ids: Sequence[str] | None = None,
    name: str = "model",
    progress: bool = True,
    resume: bool = True,
    max_epochs_per_run: int | None = None,
):
    """Trains a Siamese change model and calibrates its decision threshold.

    Normalisation statistics come from the training scenes and are stored in the model. Each
    epoch runs ``steps_per_epoch`` jitted data-parallel steps on class-balanced augmented patches,
    validates on the whole validation scenes (F1 at the best threshold), writes
    ``metrics.jsonl``, ``loss_curve.png`` and ``checkpoint.msgpack``; training stops early after
    ``patience`` epochs without a better validation F1. The returned model holds the parameters
    of the best epoch, with the threshold maximising validation F1 (Otsu on the training scores
    when there is no validation scene) and, for the distance head, the margin.

    Args:
      train_scenes: Training scenes (raw values), all with ``band_ids``.
      val_scenes: Validation scenes (whole scenes, never patches of training scenes); may be
        empty (then no early stopping and an Otsu threshold).
      model_cfg: Architecture; ``num_bands`` must equal the scenes' band count.
      train_cfg: Optimisation, sampling and loss settings.
      workdir: Folder for checkpoints and logs (created).
      band_ids: Band ids the model expects (default: the first training scene's).
      name: Model name stored in the model file.
      progress: Show a tqdm progress bar.
      resume: Continue from ``workdir/checkpoint.msgpack`` when it exists (same configs and
        training scenes required).
      max_epochs_per_run: Stop this call after this many epochs (e.g. a time-limited job) and
        return the best model so far; a later call with ``resume=True`` continues.

    Returns:
      ``changedet.detectors.learned.LearnedDetector`` (also saved to
      ``workdir/<name>.msgpack``); its ``training`` dict holds the summary (scenes, epochs,
      seed, validation P/R/F1/threshold); per-epoch figures are in ``workdir/metrics.jsonl``.
      Use :func:`fit_model` to get the network and :class:`FitResult` instead.

    Raises:
      ConfigError: Loss and head do not match, or ``num_bands`` differs from the scenes'.
      BandMismatchError: Scenes have different bands.
      ModelFileError: The checkpoint in ``workdir`` is unreadable or from other settings.
    """
    trained, result = fit_model(
        train_scenes, val_scenes, model_cfg, train_cfg, workdir, band_ids=band_ids,
        progress=progress, resume=resume, max_epochs_per_run=max_epochs_per_run,
    )
    summary = training_summary(trained, result, [s.name for s in train_scenes],
                               [s.name for s in val_scenes])
    model = to_change_model(trained, name, summary)
    save_model(Path(workdir) / f"{name}.msgpack", model)
    return model


def fit_model(
    train_scenes: Sequence[Scene],
    val_scenes: Sequence[Scene],
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    workdir: str | Path,
    *,
    band_ids: Sequence[str] | None = None,
    progress: bool = True,
    resume: bool = True,
    max_epochs_per_run: int | None = None,
) -> tuple[TrainedModel, FitResult]:
    """:func:`fit` without packaging: the trained network and its calibration (see ``fit``).

    The phases, each a function of its own: :func:`_prepare_data` (normalisation, the patch
    sampler, the automatic change weight), :func:`_init_or_resume` (a fresh network or the
    checkpoint's), then per epoch :func:`_run_epoch` (the jitted steps) and
    :func:`_after_epoch` (validation, early stopping, checkpoint, history), and finally
    :func:`_calibrate` (the decision threshold of the best parameters).
    """
    check_compatible(model_cfg, train_cfg)
    if model_cfg.members != 1:
        raise ConfigError(
            f"fit trains one network; model.members={model_cfg.members} is an ensemble: train "
            "each member (e.g. other seeds), then changedet.models.assemble_ensemble.")
    if not train_scenes:
        raise EmptySceneError("fit needs at least one training scene; got none.")
    band_ids = tuple(band_ids) if band_ids is not None else tuple(train_scenes[0].band_ids)
    _check_scenes(train_scenes, band_ids, "training")
    _check_scenes(val_scenes, band_ids, "validation")
    if model_cfg.num_bands != len(band_ids):
        raise ConfigError(
            f"model.num_bands is {model_cfg.num_bands} but the scenes have {len(band_ids)} bands "
            f"{band_ids}; set model.num_bands={len(band_ids)}."
        )
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    signature = _run_signature(model_cfg, train_cfg, band_ids, [s.name for s in train_scenes])
    (workdir / "config.json").write_text(json.dumps(signature, indent=2))

    data = _prepare_data(train_scenes, band_ids, train_cfg)
    run = _init_or_resume(model_cfg, train_cfg, workdir / CHECKPOINT_NAME, signature, resume)
    as_model = _ValidationDetector(model_cfg, train_cfg, band_ids, data.mean, data.std)
    mesh = data_mesh(train_cfg.batch_size)
    replicated, _ = placements(mesh)
    run.state = jax.device_put(run.state, replicated)
    step_fn = make_train_step(data.step_cfg, mesh)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=train_cfg.total_steps, initial=run.prog.epoch * train_cfg.steps_per_epoch,
                   unit="step", desc="training", leave=False)
    epochs_this_run = 0
    try:
        while run.prog.epoch < train_cfg.num_epochs and not run.prog.stopped_early:
            if max_epochs_per_run is not None and epochs_this_run >= max_epochs_per_run:
                break
            record = _run_epoch(run, step_fn, data.sampler, train_cfg, mesh, bar)
            _after_epoch(run, record, val_scenes, as_model, train_cfg, workdir, signature,
                         data)
            epochs_this_run += 1
    finally:
        if bar is not None:
            bar.close()

    best_net = SiameseNet(model_cfg, rngs=nnx.Rngs(train_cfg.seed))
    best_state = nnx.state(best_net, _WEIGHTS)
    nnx.replace_by_pure_dict(best_state, run.best_params)
    nnx.update(best_net, best_state)
    threshold, val_result = _calibrate(as_model(best_net), train_scenes, val_scenes,
                                       run.prog.best_threshold, train_cfg)
    trained = TrainedModel(
        net=best_net, model_cfg=model_cfg, train_cfg=train_cfg, band_ids=band_ids,
        mean=data.mean, std=data.std, threshold=threshold,
        margin=train_cfg.margin if model_cfg.head == "distance" else None,
    )
    result = FitResult(workdir, run.prog.epoch, run.prog.best_epoch, val_result,
                       run.prog.history)
    return trained, result


class _Data(NamedTuple):
    """What the loop draws from: the patch sampler over the normalised training scenes, the
    normalisation stored in the model, and ``train_cfg`` with the automatic change weight
    resolved (what the step is compiled with)."""

    sampler: PatchSampler
    mean: np.ndarray
    std: np.ndarray
    step_cfg: TrainConfig


def _prepare_data(train_scenes: Sequence[Scene], band_ids: tuple[str, ...],
                  train_cfg: TrainConfig) -> _Data:
    """Phase 1: normalise the training scenes, build the sampler, resolve ``pos_weight=0``."""
    if train_cfg.normalization in ("per_image", "per_image_scalar"):
        mean, std = np.zeros(len(band_ids)), np.ones(len(band_ids))
        scalar = train_cfg.normalization == "per_image_scalar"
        train_n = [normalize_per_image(s, scalar=scalar) for s in train_scenes]
    else:
        mean, std = band_statistics(train_scenes)
        train_n = [normalize_scene(s, mean, std) for s in train_scenes]
    sets = band_set_masks(band_ids) if train_cfg.band_drop else []
    if train_cfg.band_drop and not sets:
        raise ConfigError(
            f"train.band_drop needs Sentinel-2 band ids holding one of the accepted band sets; "
            f"the scenes have {band_ids}. Set train.band_drop=0."
        )
    sampler = PatchSampler(train_n, train_cfg.patch_px, changed_fraction=train_cfg.changed_fraction,
                           augment=train_cfg.augment, radiometric=train_cfg.radiometric,
                           band_drop=train_cfg.band_drop, band_sets=sets,
                           scale=train_cfg.scale, scene_batches=train_cfg.scene_batches)
    if sampler.num_changed_pixels == 0:
        log.warning("no changed pixel in the training scenes: the model cannot learn change")
    step_cfg = train_cfg
    if train_cfg.loss == "bce" and train_cfg.pos_weight == 0:
        num_valid = sampler.num_valid_pixels
        num_changed = max(sampler.num_changed_pixels, 1)
        ratio = (num_valid - num_changed) / num_changed
        step_cfg = dataclasses.replace(
            train_cfg, pos_weight=float(ratio**train_cfg.pos_weight_power))
        log.info("automatic pos_weight %.3g (unchanged/changed %.3g ^ %g)", step_cfg.pos_weight,
                 ratio, train_cfg.pos_weight_power)
    return _Data(sampler, mean, std, step_cfg)


@dataclasses.dataclass
class _RunState:
    """The loop's mutable state: network + optimiser (split), the loop progress and the best
    parameters so far (host arrays)."""

    graphdef: nnx.GraphDef
    state: nnx.State
    prog: _Progress
    best_params: Any
    base_key: jax.Array


def _init_or_resume(model_cfg: ModelConfig, train_cfg: TrainConfig, ckpt_path: Path,
                    signature: dict[str, Any], resume: bool) -> _RunState:
    """Phase 2: a fresh network and optimiser, or the checkpoint's (same settings only)."""
    net = SiameseNet(model_cfg, rngs=nnx.Rngs(train_cfg.seed))
    optimizer = nnx.Optimizer(net, make_optimizer(train_cfg), wrt=nnx.Param)
    graphdef, state = nnx.split((net, optimizer))
    base_key = jax.random.key(train_cfg.seed)
    if resume and ckpt_path.exists():
        payload = load_checkpoint(ckpt_path)
        if payload["signature"] != json.dumps(signature, sort_keys=True):
            raise ModelFileError(
                f"{ckpt_path} was written by a run with other settings or training scenes; use "
                f"another workdir or pass resume=False to start over."
            )
        nnx.replace_by_pure_dict(state, payload["state"])
        prog = _Progress(**json.loads(payload["progress"]))
        log.info("resuming from %s after epoch %d", ckpt_path, prog.epoch)
        return _RunState(graphdef, state, prog, payload["best_params"], base_key)
    best_params = _to_host(nnx.to_pure_dict(nnx.state(net, _WEIGHTS)))
    return _RunState(graphdef, state, _Progress(), best_params, base_key)


def _run_epoch(run: _RunState, step_fn: Any, sampler: PatchSampler, train_cfg: TrainConfig,
               mesh: jax.sharding.Mesh, bar: Any) -> dict[str, Any]:
    """Phase 3: ``steps_per_epoch`` jitted steps; every draw is a function of ``(seed, global
    step)``. Returns the epoch's record (loss, training F1, speed, learning rate)."""
    epoch, spe = run.prog.epoch, train_cfg.steps_per_epoch
    t0 = time.perf_counter()
    pending: list[StepMetrics] = []
    totals = np.zeros(5, np.float64)
    for i in range(spe):
        global_step = epoch * spe + i
        rng = np.random.default_rng([train_cfg.seed, global_step])
        batch = shard_batch(sampler.sample(train_cfg.batch_size, rng), mesh)
        key = jax.random.fold_in(run.base_key, global_step)
        run.state, step_metrics = step_fn(run.graphdef, run.state, batch, key)
        pending.append(step_metrics)
        if len(pending) >= train_cfg.log_every_steps or i == spe - 1:
            fetched = jax.device_get(pending)
            totals += np.sum([[float(v) for v in m] for m in fetched], axis=0)
            pending = []
            if bar is not None:
                bar.set_postfix(loss=f"{totals[0] / (i + 1):.4f}")
        if bar is not None:
            bar.update(1)
    seconds = time.perf_counter() - t0
    train_m = metrics.scores_from_counts(*totals[1:].astype(np.int64))
    return {
        "epoch": epoch + 1,
        "loss": float(totals[0] / spe),
        "train_f1": train_m.f1,
        "steps_per_s": spe / seconds,
        "lr": float(make_schedule(train_cfg)((epoch + 1) * spe - 1)),
    }


def _after_epoch(run: _RunState, record: dict[str, Any], val_scenes: Sequence[Scene],
                 as_model: _ValidationDetector, train_cfg: TrainConfig, workdir: Path,
                 signature: dict[str, Any], data: _Data) -> None:
    """Phase 4: validate (``run``'s scorer), keep the best parameters, early stopping, then the
    checkpoint, ``metrics.jsonl`` and the loss curve."""
    prog = run.prog
    current = nnx.merge(run.graphdef, run.state)[0]
    params = nnx.state(current, _WEIGHTS)
    if val_scenes:
        val = validate(as_model(current), val_scenes, train_cfg.num_thresholds)
        record.update(val_precision=val.precision, val_recall=val.recall,
                      val_f1=val.f1, val_iou=val.iou, threshold=val.threshold)
        improved = val.f1 > prog.best_f1
    else:
        improved = True
    if improved:
        prog.best_f1 = record.get("val_f1", -1.0)
        prog.best_epoch = record["epoch"]
        prog.best_threshold = record.get("threshold")
        prog.bad_epochs = 0
        run.best_params = _to_host(nnx.to_pure_dict(params))
    else:
        prog.bad_epochs += 1
        if train_cfg.patience and prog.bad_epochs >= train_cfg.patience:
            prog.stopped_early = True
            log.info("early stop after epoch %d: no better val F1 for %d epochs",
                     record["epoch"], prog.bad_epochs)
    prog.epoch = record["epoch"]
    prog.history.append(record)
    log.info("epoch %d: %s", record["epoch"],
             ", ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "epoch"))
    save_checkpoint(workdir / CHECKPOINT_NAME, run.state, run.best_params, prog, signature,
                    data.mean, data.std)
    _write_history(workdir, prog.history)
    try:
        from changedet.viz.plots import write_loss_curve  # matplotlib: only here

        write_loss_curve(prog.history, workdir / "loss_curve.png")
    except ImportError:
        log.warning("matplotlib is not installed: no loss_curve.png")


def _calibrate(best: Any, train_scenes: Sequence[Scene], val_scenes: Sequence[Scene],
               best_threshold: float | None, train_cfg: TrainConfig
               ) -> tuple[float, ValResult | None]:
    """Phase 5: the threshold of the best parameters (``best``, a detector): F1-best on the
    validation scenes, else the best epoch's, else Otsu's over the training scenes' scores."""
    if val_scenes:
        val_result = validate(best, val_scenes, train_cfg.num_thresholds)
        return float(val_result.threshold), val_result
    if best_threshold is not None:
        return float(best_threshold), None
    scores = [evaluate.score_scene(best, s) for s in train_scenes]
    threshold = evaluate.otsu_over(scores, [s.valid for s in train_scenes],
                                   train_cfg.num_thresholds)
    log.info("no validation labels: Otsu threshold %.4g on the training scores", threshold)
    return float(threshold), None


class _ValidationDetector:
    """Networks as the ``LearnedDetector`` ``run`` would use, for validation and calibration.
    The first call packages one; later calls rebind its weights, so every epoch reuses the
    compiled scoring steps (no new trace)."""

    def __init__(self, model_cfg: ModelConfig, train_cfg: TrainConfig,
                 band_ids: tuple[str, ...], mean: np.ndarray, std: np.ndarray):
        self._args = (model_cfg, train_cfg, band_ids, mean, std)
        self._probe: Any = None

    def __call__(self, network: SiameseNet) -> Any:
        if self._probe is not None:
            return self._probe.with_weights(_to_host(nnx.to_pure_dict(nnx.state(network))))
        model_cfg, train_cfg, band_ids, mean, std = self._args
        self._probe = to_change_model(TrainedModel(
            net=network, model_cfg=model_cfg, train_cfg=train_cfg, band_ids=band_ids, mean=mean,
            std=std, threshold=0.5, margin=train_cfg.margin if model_cfg.head == "distance"
            else None), "validation")
        return self._probe


@dataclasses.dataclass
class TrainedModel:
    """A trained network with everything needed to package it as a ``LearnedDetector``."""

    net: SiameseNet
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    band_ids: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray
    threshold: float
    margin: float | None


def training_summary(trained: TrainedModel, result: FitResult,
                     train_names: Sequence[str], val_names: Sequence[str]) -> dict[str, Any]:
    """JSON-friendly record of how a model was trained (stored in the model file)."""
    val = result.val
    return {
        "train_config": to_dict(trained.train_cfg),
        "train_scenes": list(train_names),
        "val_scenes": list(val_names),
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "seed": trained.train_cfg.seed,
        "threshold_source": "val_f1" if val is not None else "otsu_train",
        "val": None if val is None else val._asdict(),
    }


def to_change_model(trained: TrainedModel, name: str, training: dict[str, Any] | None = None):
    """Packages a :class:`TrainedModel` as a ``changedet.detectors.learned.LearnedDetector``."""
    return LearnedDetector(
        config=trained.model_cfg,
        state=_to_host(nnx.to_pure_dict(nnx.state(trained.net))),
        band_ids=trained.band_ids,
        norm_mean=tuple(float(v) for v in trained.mean),
        norm_std=tuple(float(v) for v in trained.std),
        threshold=trained.threshold,
        margin=trained.margin,
        name=name,
        training=training or {},
        normalization=trained.train_cfg.normalization,
        required_bands=(tuple(b for b in bands.REQUIRED_BANDS if b in trained.band_ids)
                        if trained.train_cfg.band_drop else None),
    )
