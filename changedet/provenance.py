"""The tags written into every output raster: how it was made (detector, model hash, threshold,
bands, inputs), the cloud masks, the co-registration check and the uncertainty calibration.
"""

from __future__ import annotations

import logging

from changedet import __version__, clouds, io
from changedet.detectors.choice import method_name
from changedet.detectors.prepare import QUALITY_TTA, PreparedModel
from changedet.errors import (
    ChangedetError,
    option,
    render,
)
from changedet.types import Detector
from changedet.uncertainty import ScoreCalibration

__all__ = [
    "provenance", "uncertainty_tags", "cloud_tags", "MISREGISTRATION_WARN_PX",
    "coregistration_tags",
]

log = logging.getLogger(__name__)


def provenance(detector: Detector, threshold: float, pair: io.RasterPair) -> dict[str, str]:
    """GeoTIFF tags that make every map traceable to its inputs and settings."""
    tags = {
        "changedet_version": __version__,
        "method": method_name(detector),
        "threshold": repr(float(threshold)),
        "before": str(pair.before_path),
        "after": str(pair.after_path),
        "bands": ",".join(pair.band_ids),
    }
    if isinstance(detector, PreparedModel):
        model = detector.model
        tags["model"] = model.name
        tags["model_head"] = model.config.head
        tags["model_bands"] = ",".join(detector.model_bands)
        tags["normalization"] = model.normalization
        names = {n: q for q, n in QUALITY_TTA.items()}
        tags["quality"] = names.get(detector.tta, f"tta{detector.tta}")
        if model.source_sha256:
            tags["model_sha256"] = model.source_sha256
    return tags


def uncertainty_tags(calibration: ScoreCalibration | None) -> dict[str, str]:
    """What the uncertainty raster holds, for its tags (none without it)."""
    if calibration is None:
        return {}
    return {"uncertainty": "P(mask wrong): 1 - P(change | score) where mapped change, "
                           "P(change | score) elsewhere; P(change | score) measured on "
                           f"{calibration.pixels} out-of-fold pixels"}


def cloud_tags(masks: clouds.CloudMasks) -> dict[str, str]:
    """GeoTIFF tags recording the cloud masking of a run."""
    return {"cloud_mask": masks.source,
            "cloud_fraction_before": f"{masks.before_fraction:.4f}",
            "cloud_fraction_after": f"{masks.after_fraction:.4f}"}


#: A measured misregistration above this (in pixels, with a clear correlation peak) is warned of.
MISREGISTRATION_WARN_PX = 0.5


def coregistration_tags(pair: io.RasterPair) -> dict[str, str]:
    """Measures the pair's misregistration cheaply (a few blocks, see
    :func:`changedet.coregister.estimate_shift`), warns above
    :data:`MISREGISTRATION_WARN_PX`, and returns the GeoTIFF tags recording it (none when it
    cannot be measured: the run goes on)."""
    from changedet import coregister

    try:
        shift = coregister.estimate_shift(pair, max_blocks=9)
    except ChangedetError as err:
        log.info("misregistration not measured: %s", err)
        return {}
    applied = {}
    if pair.shift_px is not None:  # after was resampled by --coregister: this is the residual
        applied = {"coregistration_applied_dx_px": f"{pair.shift_px[0]:.3f}",
                   "coregistration_applied_dy_px": f"{pair.shift_px[1]:.3f}"}
    if shift.magnitude_px > MISREGISTRATION_WARN_PX and shift.quality >= 3:
        log.warning(render(
            "the dates are misregistered by dx %+.2f px, dy %+.2f px (where before's content is "
            "in after; spread %.2f px): expect false change along edges. Pass "
            f"{option('coregister', True)} to resample after by it; see docs/coregister.md"),
            shift.dx_px, shift.dy_px, shift.spread_px)
    return {"coregistration_dx_px": f"{shift.dx_px:.3f}",
            "coregistration_dy_px": f"{shift.dy_px:.3f}",
            "coregistration_quality": f"{shift.quality:.2f}",
            "coregistration_spread_px": f"{shift.spread_px:.3f}"} | applied
