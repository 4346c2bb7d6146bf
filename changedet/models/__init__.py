"""Flax NNX models: the Siamese U-Net, its heads, distances and receptive field."""

from changedet.models.siamese import (
    SiameseNet,
    UNetEncoder,
    distance,
    halo_px,
    receptive_radius_px,
)

__all__ = ["SiameseNet", "UNetEncoder", "distance", "halo_px", "receptive_radius_px"]
