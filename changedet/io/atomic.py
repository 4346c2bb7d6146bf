"""Atomic file writes: the one home of changedet's "never a half-written output" rule.

Every writer (rasters, vectors, quicklooks, model files, the registry, checkpoints, training
plots) writes to a hidden temporary name in the destination folder and renames it over the
destination only once the file is complete: a crash, a kill or a full disk leaves the old file
(or none), never a truncated one. Temporary names are ``.<stem>.partial-<pid>-<token><suffix>``,
so leftovers of a killed process are easy to spot (``*partial*``) and two writers never share
one.

Standard library only: used by modules that must not import the I/O or JAX stacks.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "temporary_path", "write_bytes"]


def temporary_path(path: str | os.PathLike[str]) -> Path:
    """A hidden, unique temporary name next to ``path``, with the same suffix (GDAL and
    matplotlib pick the format from it)."""
    path = Path(path)
    token = secrets.token_hex(3)
    return path.with_name(f".{path.stem}.partial-{os.getpid()}-{token}{path.suffix}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, mode: int | None = None) -> Iterator[Path]:
    """Yields a temporary path to write ``path``'s content to; on a clean exit it is renamed
    over ``path`` (with permission bits ``mode`` if given), on any exception it is removed.

    Example:
      >>> import tempfile
      >>> folder = Path(tempfile.mkdtemp())
      >>> with atomic_path(folder / "a.txt") as tmp:
      ...     _ = tmp.write_text("done")
      >>> (folder / "a.txt").read_text(), [p.name for p in folder.iterdir()]
      ('done', ['a.txt'])
    """
    path = Path(path)
    temp = temporary_path(path)
    try:
        yield temp
        if mode is not None:
            os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike[str], data: bytes, *, mode: int | None = None,
                fsync: bool = True) -> Path:
    """Writes ``data`` to ``path`` atomically (flushed to disk before the rename when
    ``fsync``). Returns ``path``."""
    path = Path(path)
    with atomic_path(path, mode=mode) as temp:
        with open(temp, "wb") as f:
            f.write(data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
    return path
