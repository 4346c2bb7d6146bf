"""Ensembles: several trained Siamese networks of one architecture whose change scores are
averaged (``ModelConfig.members``).

Members are trained one by one (``changedet.training.fit`` trains one network) and assembled
into one model record with ``changedet.models.assemble_ensemble``. The ensemble scores a tile
as the mean of its members' change scores (probabilities for the logit heads, distances for
the distance head), so its receptive field, halo and tiling are one member's and tiled output
still equals a whole-image pass; each member costs one network's inference time.

Must not import rasterio, rioxarray, xarray, dask or matplotlib.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
from flax import nnx

from changedet.config import ModelConfig, to_dict
from changedet.errors import ConfigError
from changedet.models.siamese import SiameseNet

__all__ = ["SiameseEnsemble", "build_network", "stack_states", "member_states"]


class SiameseEnsemble(nnx.Module):
    """``cfg.members`` :class:`SiameseNet` s of one architecture; the change score is the mean
    of theirs.

    Example:
      >>> import jax.numpy as jnp
      >>> cfg = ModelConfig(num_bands=3, features=(4, 8), convs_per_level=1, members=2)
      >>> net = SiameseEnsemble(cfg, rngs=nnx.Rngs(0))
      >>> net.change_score(jnp.zeros((1, 16, 16, 3)), jnp.ones((1, 16, 16, 3))).shape
      (1, 16, 16)
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs) -> None:
        if cfg.members < 2:
            raise ConfigError(f"an ensemble needs model.members >= 2; got {cfg.members}.")
        self.cfg = cfg
        one = dataclasses.replace(cfg, members=1)
        self.nets = nnx.List([SiameseNet(one, rngs=rngs) for _ in range(cfg.members)])

    def change_score(self, before: jax.Array, after: jax.Array) -> jax.Array:
        """Mean of the members' ``SiameseNet.change_score`` ``(N, H, W)``."""
        total = self.nets[0].change_score(before, after)
        for net in self.nets[1:]:
            total = total + net.change_score(before, after)
        return total / len(self.nets)


def build_network(cfg: ModelConfig, *, rngs: nnx.Rngs) -> SiameseNet | SiameseEnsemble:
    """The network ``cfg`` describes: one :class:`SiameseNet`, or an ensemble of them."""
    if cfg.members == 1:
        return SiameseNet(cfg, rngs=rngs)
    return SiameseEnsemble(cfg, rngs=rngs)


def stack_states(configs: Sequence[ModelConfig], states: Sequence[dict[str, Any]]
                 ) -> tuple[ModelConfig, dict[str, Any]]:
    """The config and weights (a pure dict, as ``ChangeModel.state``) of an ensemble of trained
    single networks, in order.

    Raises:
      ConfigError: Fewer than two members, a member that is itself an ensemble, or members
        of different architectures.
    """
    if len(states) < 2 or len(configs) != len(states):
        raise ConfigError(f"an ensemble needs at least two members (one config each); got "
                          f"{len(states)} weight sets and {len(configs)} configs.")
    first = configs[0]
    for i, cfg in enumerate(configs):
        if cfg.members != 1:
            raise ConfigError(f"member {i} is already an ensemble of {cfg.members}; assemble "
                              "from single networks.")
        if cfg != first:
            raise ConfigError(f"member {i} has architecture {to_dict(cfg)}, member 0 has "
                              f"{to_dict(first)}: every member must share one architecture.")
    return (dataclasses.replace(first, members=len(states)),
            {"nets": {i: state for i, state in enumerate(states)}})


def member_states(cfg: ModelConfig, state: dict[str, Any]) -> list[dict[str, Any]]:
    """The members' weights of an ensemble's pure-dict ``state`` (``[state]`` for one network)."""
    if cfg.members == 1:
        return [state]
    nets = state["nets"]
    return [nets[i] for i in range(cfg.members)]
