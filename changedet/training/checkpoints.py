"""Training checkpoints: model and optimiser state, the best parameters so far and the loop state
in one flax-msgpack file (no pickle), written atomically every epoch and checked on resume.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx, serialization

from changedet.config import (
    ModelConfig,
    TrainConfig,
    to_dict,
)
from changedet.errors import ModelFileError
from changedet.io import atomic

__all__ = [
    "CHECKPOINT_NAME", "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "save_checkpoint",
    "load_checkpoint",
]

CHECKPOINT_NAME = "checkpoint.msgpack"


CHECKPOINT_FORMAT = "changedet-checkpoint"


CHECKPOINT_VERSION = 1


def _to_host(tree: Any) -> Any:
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


def _atomic_write(path: Path, data: bytes) -> None:
    atomic.write_bytes(path, data, fsync=False)  # a checkpoint, rewritten every epoch


@dataclasses.dataclass
class _Progress:
    """Loop state saved in every checkpoint (besides the arrays)."""

    epoch: int = 0  # epochs completed
    best_f1: float = -1.0
    best_epoch: int = -1
    best_threshold: float | None = None
    bad_epochs: int = 0
    stopped_early: bool = False
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def _run_signature(model_cfg: ModelConfig, train_cfg: TrainConfig, band_ids, names) -> dict:
    model = to_dict(model_cfg)
    model.pop("members")  # always 1 in training; checkpoints from before the field resume
    train = to_dict(train_cfg)
    if not train["scale"]:  # off: checkpoints from before the field resume
        train.pop("scale")
    return {"model": model, "train": train,
            "band_ids": list(band_ids), "train_scenes": sorted(names)}


def save_checkpoint(path: Path, state: nnx.State, best_params: dict, progress: _Progress,
                    signature: dict, mean: np.ndarray, std: np.ndarray) -> None:
    """Writes the training state atomically (msgpack; a crash never leaves half a file)."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "signature": json.dumps(signature, sort_keys=True),
        "progress": json.dumps(dataclasses.asdict(progress)),
        "mean": np.asarray(mean, np.float64),
        "std": np.asarray(std, np.float64),
        "state": _to_host(nnx.to_pure_dict(state)),
        "best_params": best_params,
    }
    _atomic_write(path, serialization.msgpack_serialize(payload))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Reads a checkpoint written by :func:`save_checkpoint` (arrays as numpy)."""
    try:
        payload = serialization.msgpack_restore(path.read_bytes())
    except Exception as err:  # corrupt msgpack raises several types
        raise ModelFileError(
            f"{path}: not a readable changedet checkpoint ({err}); delete it or pass resume=False."
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ModelFileError(
            f"{path}: not a changedet checkpoint; delete it or use another workdir.")
    if payload.get("format_version") != CHECKPOINT_VERSION:
        raise ModelFileError(
            f"{path}: checkpoint format {payload.get('format_version')} (expected "
            f"{CHECKPOINT_VERSION}); restart with resume=False."
        )
    return payload
