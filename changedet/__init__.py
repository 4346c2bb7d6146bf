"""changedet: satellite change detection with Siamese networks in JAX/Flax.

Two co-registered scenes in, a georeferenced change mask (and score map) out::

    import changedet
    result = changedet.run("before.tif", "after.tif", "change.tif")
    ds = changedet.detect("before.tif", "after.tif")   # lazy xarray Dataset: score, mask

The names in ``__all__`` are the documented API.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

from changedet.errors import (  # noqa: E402
    BandMismatchError,
    ChangedetError,
    ConfigError,
    CoregistrationError,
    EmptySceneError,
    GridMismatchError,
    InputNotFoundError,
    ModelFileError,
    NotARasterError,
    OutputError,
)
from changedet.types import Grid  # noqa: E402

if TYPE_CHECKING:  # what IDEs and type checkers see; at run time these load on first use
    from changedet.config import ModelConfig
    from changedet.coregister import Shift, estimate_shift
    from changedet.detectors.cva import CVADetector
    from changedet.detectors.learned import LearnedDetector, load_model
    from changedet.detectors.modelfile import save_model
    from changedet.io import RasterPair, open_pair, open_scene
    from changedet.models.record import ChangeModel
    from changedet.pipeline import RunResult, detect, run

_LAZY = {
    "open_scene": ("changedet.io", "open_scene"),
    "open_pair": ("changedet.io", "open_pair"),
    "RasterPair": ("changedet.io", "RasterPair"),
    "detect": ("changedet.pipeline", "detect"),
    "run": ("changedet.pipeline", "run"),
    "RunResult": ("changedet.pipeline", "RunResult"),
    "CVADetector": ("changedet.detectors.cva", "CVADetector"),
    "ChangeModel": ("changedet.models.record", "ChangeModel"),
    "LearnedDetector": ("changedet.detectors.learned", "LearnedDetector"),
    "load_model": ("changedet.detectors.learned", "load_model"),
    "save_model": ("changedet.detectors.modelfile", "save_model"),
    "ModelConfig": ("changedet.config", "ModelConfig"),
    "estimate_shift": ("changedet.coregister", "estimate_shift"),
    "Shift": ("changedet.coregister", "Shift"),
}


def __getattr__(name: str):
    # Heavy modules (rasterio, dask, jax) load on first use, so `import changedet` is fast
    # and the compute modules can be imported without the I/O stack.
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'changedet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "BandMismatchError",
    "ChangedetError",
    "ConfigError",
    "CoregistrationError",
    "EmptySceneError",
    "Grid",
    "GridMismatchError",
    "InputNotFoundError",
    "ModelFileError",
    "NotARasterError",
    "OutputError",
    "__version__",
    # loaded on first use (_LAZY):
    "CVADetector",
    "ChangeModel",
    "LearnedDetector",
    "ModelConfig",
    "RasterPair",
    "RunResult",
    "Shift",
    "detect",
    "estimate_shift",
    "load_model",
    "open_pair",
    "open_scene",
    "run",
    "save_model",
]
