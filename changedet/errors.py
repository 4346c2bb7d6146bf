"""The changedet exception hierarchy, and how messages name options.

Every error a user can cause derives from :class:`ChangedetError` and from the nearest builtin,
so callers can catch either. The CLI prints a ``ChangedetError`` as one line (what is wrong, what
to do) and exits with status 2.

A message that tells the user which option to change names it with :func:`option`; the message
then speaks the words of the interface that shows it: ``align=True`` to a Python caller,
``--align`` on the command line (``cli.main`` runs inside :func:`command_line_words`). Errors
list the options they name in :attr:`ChangedetError.options`.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = [
    "option", "render", "named_options", "command_line_words", "ChangedetError",
    "InputNotFoundError", "NotARasterError", "GridMismatchError", "BandMismatchError",
    "EmptySceneError", "OutputError", "ModelFileError", "ConfigError", "DatasetError",
    "InputRangeError", "CoregistrationError", "NotPreparedError", "CalibrationError",
]

_MARK = "\x1f"  # ASCII unit separator: never in a path or a value users type
_MARKED = re.compile(f"{_MARK}([^{_MARK}]*){_MARK}")
_NO_VALUE: Any = object()
_cli_flags: dict[str, str] | None = None  # set while the command line runs


def option(name: str, value: Any = _NO_VALUE) -> str:
    """An option named in a message, said in the words of the interface that shows it.

    Args:
      name: The Python API's keyword (``"align"``, ``"band_names"``, ``"block_px"``).
      value: The value to suggest, if any (a bool, number, string or list of strings).

    Returns:
      A marker that :func:`render` (and ``str()`` of a :class:`ChangedetError`) turns into
      ``align=True`` / ``bands`` for Python, ``--align`` / ``--bands`` on the command line.

    Example:
      >>> render(f"pass {option('align', True)} to resample")
      'pass align=True to resample'
    """
    payload = [name] if value is _NO_VALUE else [name, value]
    return f"{_MARK}{json.dumps(payload)}{_MARK}"


def _say(name: str, value: Any = _NO_VALUE) -> str:
    if _cli_flags is None:
        return name if value is _NO_VALUE else f"{name}={value!r}"
    flag = _cli_flags.get(name, "--" + name.replace("_", "-"))
    if value is _NO_VALUE or value is True:
        return flag
    if isinstance(value, list):
        value = ",".join(str(v) for v in value)
    return f"{flag} {value}"


def render(text: str) -> str:
    """``text`` with every :func:`option` said in the current interface's words."""
    return _MARKED.sub(lambda m: _say(*json.loads(m.group(1))), text)


def named_options(text: str) -> tuple[str, ...]:
    """The Python names of the options :func:`option` put in ``text``, in order."""
    return tuple(json.loads(m)[0] for m in _MARKED.findall(text))


@contextlib.contextmanager
def command_line_words(flags: Mapping[str, str]) -> Iterator[None]:
    """Inside this block messages say options as command-line flags: ``flags`` maps a Python
    name to its flag where that is not ``--`` + the name with dashes (``score_path`` ->
    ``--score``). Used by ``cli.main``."""
    global _cli_flags
    previous, _cli_flags = _cli_flags, dict(flags)
    try:
        yield
    finally:
        _cli_flags = previous


class ChangedetError(Exception):
    """Base class; the CLI prints these as one line and exits with code 2.

    ``str(err)`` names options in the words of the interface in use (see :func:`option`).
    """

    def __str__(self) -> str:
        return render(super().__str__())

    @property
    def options(self) -> tuple[str, ...]:
        """Python names of the options the message tells the user to change (the command line
        says them as flags: ``block_px`` is ``--block-px``)."""
        return named_options(super().__str__())


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
    """An output cannot be written: it exists, its folder is missing or read-only, or it is an
    input."""


class ModelFileError(ChangedetError, ValueError):
    """A model file is missing, corrupt, of an unknown format version, or for other bands."""


class ConfigError(ChangedetError, ValueError):
    """A configuration value is invalid."""


class DatasetError(ChangedetError, ValueError):
    """A training/evaluation dataset folder does not have the expected layout."""


class InputRangeError(ChangedetError, ValueError):
    """Input values are far outside the range a model was trained on (other units)."""


class CoregistrationError(ChangedetError, ValueError):
    """The misregistration cannot be measured (image too small, flat, or mostly nodata)."""


class NotPreparedError(ChangedetError, RuntimeError):
    """A detector was asked to score before it was prepared for a pair (call ``prepare``)."""


class CalibrationError(ChangedetError, ValueError):
    """Calibration points cannot be used: unreadable, without the label property, with a bad
    label, off the scene or on nodata."""
