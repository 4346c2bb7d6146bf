"""Flax NNX models: the Siamese U-Net, its heads, distances and receptive field, and the
plain model record (:class:`ChangeModel`), and ensembles of trained networks
(:func:`assemble_ensemble`)."""

from changedet.models.ensemble import SiameseEnsemble, build_network, member_states
from changedet.models.record import ChangeModel, assemble_ensemble
from changedet.models.siamese import (
    SiameseNet,
    UNetEncoder,
    distance,
    halo_px,
    receptive_radius_px,
)

__all__ = ["ChangeModel", "SiameseEnsemble", "SiameseNet", "UNetEncoder", "assemble_ensemble",
           "build_network", "distance", "halo_px", "member_states", "receptive_radius_px"]
