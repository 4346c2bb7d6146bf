"""Flax NNX models: the Siamese U-Net, its heads, distances and receptive field, and the
plain model record (:class:`ChangeModel`)."""

from changedet.models.record import ChangeModel
from changedet.models.siamese import (
    SiameseNet,
    UNetEncoder,
    distance,
    halo_px,
    receptive_radius_px,
)

__all__ = ["ChangeModel", "SiameseNet", "UNetEncoder", "distance", "halo_px",
           "receptive_radius_px"]
