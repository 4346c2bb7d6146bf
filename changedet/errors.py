"""The changedet exception hierarchy.

Every error a user can cause derives from :class:`ChangedetError` and from the nearest builtin,
so callers can catch either. The CLI prints a ``ChangedetError`` as one line (what is wrong, what
to do) and exits with status 2.
"""

from __future__ import annotations


class ChangedetError(Exception):
    """Base class; the CLI prints these as one line and exits with code 2."""


class InputNotFoundError(ChangedetError, FileNotFoundError):
    """An input file or folder does not exist, or a folder holds no band files."""


class NotARasterError(ChangedetError, ValueError):
    """A file exists but GDAL cannot read it as a raster (or it is corrupt)."""


class GridMismatchError(ChangedetError, ValueError):
    """The before/after rasters are not on the same pixel grid (CRS, transform, shape)."""


class BandMismatchError(ChangedetError, ValueError):
    """The two dates, or a scene and a model, do not have the same bands."""


class EmptySceneError(ChangedetError, ValueError):
    """No pixel is valid in both dates (all nodata, or no overlap)."""


class OutputError(ChangedetError, OSError):
    """An output cannot be written: it exists, its folder is missing or read-only, or it is an input."""


class ModelFileError(ChangedetError, ValueError):
    """A model file is missing, corrupt, of an unknown format version, or for other bands."""


class ConfigError(ChangedetError, ValueError):
    """A configuration value is invalid."""


class DatasetError(ChangedetError, ValueError):
    """A training/evaluation dataset folder does not have the expected layout."""


class InputRangeError(ChangedetError, ValueError):
    """Input values are far outside the range a model was trained on (other units)."""
