"""Which detector a run uses: ``method="auto"`` picks the packaged model for the input's bands
(or CVA for pixels coarser than :data:`MAX_MODEL_PIXEL_M`), and how a detector is named in logs
and output tags.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, Literal

from changedet import bands, io
from changedet.detectors import modelfile
from changedet.detectors.cva import CVADetector
from changedet.detectors.learned import as_detector, load_model
from changedet.detectors.prepare import PreparedModel
from changedet.errors import (
    BandMismatchError,
    ConfigError,
    option,
    render,
)
from changedet.models.record import ChangeModel
from changedet.types import Detector
from changedet.uncertainty import ScoreCalibration

__all__ = [
    "Method", "method_name", "model_name", "describe_detector", "default_model_name",
    "MAX_MODEL_PIXEL_M", "pixel_size_m", "resolve_detector", "score_calibration_for",
    "check_threshold",
]

log = logging.getLogger(__name__)


Method = Literal["auto", "siamese", "cva"]


def method_name(detector: Detector) -> str:
    """``"siamese"`` for a learned model, else the detector's own name (``"cva"``)."""
    return "siamese" if isinstance(detector, (PreparedModel, ChangeModel)) else detector.name


def model_name(detector: Detector) -> str | None:
    """The learned model's name, or None for a detector without a model (CVA)."""
    return detector.name if method_name(detector) == "siamese" else None


def describe_detector(detector: Detector) -> str:
    """``"siamese (model 'sentinel2')"`` or ``"cva"``, for messages."""
    model = model_name(detector)
    return method_name(detector) if model is None else f"siamese (model {model!r})"


def default_model_name(band_ids: Sequence[str]) -> str:
    """The packaged model for these bands: ``sentinel2`` for named Sentinel-2 / Landsat bands
    holding blue, green and red (any subset of the 13: L1C, L2A, 4-band exports, Landsat via
    common names), ``rgb`` for 3 unnamed bands (photos, 8-bit or not).

    Raises:
      BandMismatchError: Neither fits; the message says how to name or pick bands.
    """
    ids = bands.canonical_bands(band_ids)
    if ids is not None and set(bands.REQUIRED_BANDS) <= set(ids):
        return "sentinel2"
    if len(band_ids) == 3:
        return "rgb"
    found = f"{len(band_ids)} band{'s' if len(band_ids) != 1 else ''} ({', '.join(band_ids)})"
    packaged = ("'sentinel2' takes named bands holding blue, green and red (Sentinel-2 ids, "
                "Earth Engine ids or common names), 'rgb' takes 3 bands in red, green, blue order")
    if len(band_ids) < 3:  # no choice of bands or names makes blue, green and red of fewer
        raise BandMismatchError(
            f"no packaged model fits the input's {found}: {packaged}. Use "
            f"{option('method', 'cva')} (change vector analysis takes any number of bands), or "
            f"pass a model trained on these bands with {option('model')}."
        )
    raise BandMismatchError(
        f"no packaged model fits the input's {found}: {packaged}. Name the bands with "
        f"{option('band_names', 'blue,green,red,nir,swir16,swir22')} (Landsat TM), pick 3 "
        f"with {option('bands')}, pass a model file with {option('model')}, or use "
        f"{option('method', 'cva')}."
    )


#: Pixels coarser than this (metres) are not what the packaged learned models were trained on
#: (10 m Sentinel-2 urban change; 1.5 m aerial photos): ``method="auto"`` uses CVA there.
MAX_MODEL_PIXEL_M = 20.0


def pixel_size_m(grid) -> float | None:
    """Pixel width in metres (geographic CRSs converted at the scene's latitude), or None
    without a CRS."""
    if grid.crs is None:
        return None
    from pyproj import CRS

    crs = CRS.from_user_input(grid.crs)
    width = abs(grid.transform.a)
    if crs.is_geographic:
        lat = grid.transform.f + grid.transform.e * grid.height / 2
        return width * 111_320.0 * math.cos(math.radians(lat))
    factor = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
    return width * factor


def resolve_detector(
    pair: io.RasterPair, *, method: Method = "auto", model: Any = None
) -> Detector:
    """Chooses the detector for a pair: CVA, a model file/name, or the packaged default.

    ``model`` may be a ``ChangeModel``, a packaged name (``"sentinel2"``, ``"rgb"``) or a path.
    With ``method="auto"`` and no model: 13 Sentinel-2 band ids use ``sentinel2``, 3 bands
    use ``rgb``; anything else is an error naming ``--model``, ``--bands`` and ``--method cva``.
    """
    if method == "cva":
        return CVADetector()
    if method not in ("auto", "siamese"):
        raise ConfigError(f"method must be 'auto', 'siamese' or 'cva'; got {method!r}.")

    if model is None:
        name = default_model_name(pair.band_ids)
        gsd = pixel_size_m(pair.grid)
        if method == "auto" and gsd is not None and gsd > MAX_MODEL_PIXEL_M:
            log.info(render(
                "%.0f m pixels: the packaged models learned 10 m urban change; at this "
                "resolution change vector analysis was more accurate (Landsat Taizhou, F1 "
                f"0.91 vs 0.76), so {option('method', 'auto')} uses CVA. Pass "
                f"{option('method', 'siamese')} for the %s model."), gsd, name)
            return CVADetector()
        model = name
    model = as_detector(model) if isinstance(model, ChangeModel) else load_model(model)
    modelfile.check_bands(model, pair.band_ids)
    return model


def score_calibration_for(detector: Detector) -> ScoreCalibration:
    """The out-of-fold score calibration ``uncertainty`` needs, or a one-line error."""
    model = detector.model if isinstance(detector, PreparedModel) else None
    if model is None:
        raise ConfigError(f"uncertainty needs a learned model with an out-of-fold score "
                          f"calibration; pass {option('model')} instead of CVA.")
    if model.calibration is None:
        raise ConfigError(f"model {model.name!r} carries no out-of-fold score calibration, "
                          "which uncertainty is measured with: train it with cross-validation "
                          "(train --cv K) or use the packaged sentinel2 model.")
    return model.calibration


def check_threshold(threshold: float | None, detector: Detector) -> None:
    """Refuses a threshold outside the score's range: (0, 1) for a probability, > 0 for a
    distance or CVA magnitude; NaN never.

    Raises:
      ConfigError: With the valid range.
    """
    if threshold is None:
        return
    value = float(threshold)
    probability = isinstance(detector, PreparedModel) and detector.model.config.head != "distance"
    if not math.isfinite(value):
        raise ConfigError(f"{option('threshold')} must be a finite number; got {threshold!r}.")
    if probability and not 0.0 < value < 1.0:
        raise ConfigError(
            f"{option('threshold', value)} is outside (0, 1): model {detector.name!r} scores a "
            f"change probability; its calibrated threshold is {detector.threshold:.3g}.")
    if not probability and value <= 0:
        raise ConfigError(f"{option('threshold', value)} must be > 0 for a distance score.")
