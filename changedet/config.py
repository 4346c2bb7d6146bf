"""Frozen, validated configuration dataclasses (no JAX, no I/O).

Defaults live only here. Configs are hashable, JSON-serialisable through :func:`to_dict` /
:func:`model_config_from_dict`, and are stored inside every model file.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from changedet.errors import ConfigError

Head = Literal["distance", "diff", "conc"]
Distance = Literal["euclidean", "manhattan", "cosine"]

HEADS: tuple[str, ...] = ("distance", "diff", "conc")
DISTANCES: tuple[str, ...] = ("euclidean", "manhattan", "cosine")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of the Siamese network.

    Attributes:
      num_bands: Input channels per date.
      features: Channels at each encoder level; ``len(features) - 1`` 2x downsamplings.
      embed_dim: Per-pixel embedding size ``D`` produced by the shared encoder.
      convs_per_level: 3x3 convolutions per level (encoder and decoder).
      head: ``"distance"`` (metric learning: score = distance of embeddings),
        ``"diff"`` (FC-Siam-diff decoder on ``|f(before) - f(after)|``, logits, BCE) or
        ``"conc"`` (FC-Siam-conc style, symmetric: decoder on ``[f(b)+f(a), |f(b)-f(a)|]``).
      distance: Per-pixel distance for the ``distance`` head.
    """

    num_bands: int = 13
    features: tuple[int, ...] = (16, 32, 64)
    embed_dim: int = 16
    convs_per_level: int = 2
    head: Head = "diff"
    distance: Distance = "euclidean"

    def __post_init__(self) -> None:
        if self.num_bands < 1:
            raise ConfigError(f"model.num_bands must be >= 1; got {self.num_bands}.")
        if not self.features or any(f < 1 for f in self.features):
            raise ConfigError(f"model.features must be positive channel counts; got {self.features}.")
        if self.embed_dim < 1:
            raise ConfigError(f"model.embed_dim must be >= 1; got {self.embed_dim}.")
        if self.convs_per_level < 1:
            raise ConfigError(f"model.convs_per_level must be >= 1; got {self.convs_per_level}.")
        if self.head not in HEADS:
            raise ConfigError(f"model.head must be one of {HEADS}; got {self.head!r}.")
        if self.distance not in DISTANCES:
            raise ConfigError(f"model.distance must be one of {DISTANCES}; got {self.distance!r}.")

    @property
    def num_downsamplings(self) -> int:
        """Number of 2x poolings; input tiles are padded to multiples of ``2**num_downsamplings``."""
        return len(self.features) - 1


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
