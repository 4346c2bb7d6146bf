"""Readers of real change-detection dataset layouts into in-memory :class:`~changedet.data.Scene`s.

Each reader loads whole scenes (the benchmarks' scenes are < 1200 px a side) through
:func:`changedet.io.open_pair`, so band matching, resampling and nodata handling live in one
place. Labels are returned as uint8 {0, 1} with a ``valid`` mask that is False on nodata and on
unlabelled pixels. Layouts:

* OSCD: ``images/<city>/imgs_1|imgs_2`` band folders, ``train_labels/<city>/cm/<city>-cm.tif``
  with **1 = no change, 2 = change** (the dataset README's 0/1 is wrong);
* LEVIR-CD / DSIFN: ``A/``, ``B/``, ``label/`` images with the same file names, label 0/255;
* SZTAKI AirChange: ``<site>/<n>/im1.bmp, im2.bmp, gt.bmp`` (any case), plus ``Archieve/``;
* a generic pair + label raster, and sparse labels (Landsat Taizhou: ``change.bmp`` /
  ``unchanged.bmp``; everything else unlabelled).

Splits are made by scene (:func:`split_by_scene`), never by patches of one scene.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from changedet import io
from changedet.data import Scene
from changedet.errors import DatasetError, InputNotFoundError
from changedet.types import size_px

log = logging.getLogger(__name__)

__all__ = [
    "Scene",
    "load_airchange",
    "load_levir",
    "load_oscd",
    "load_pair",
    "load_sparse",
    "oscd_cities",
    "split_by_scene",
]

#: OSCD change-map values.
OSCD_NO_CHANGE, OSCD_CHANGE = 1, 2
_IMAGE_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".jpg")


def _quiet_ungeoreferenced() -> None:
    """Inside ``catch_warnings``: benchmark images are known to lack georeferencing."""
    warnings.simplefilter("ignore", io.UngeoreferencedWarning)
    warnings.filterwarnings("ignore", message="Dataset has no geotransform")


def _read_label(path: Path) -> np.ndarray:
    """First band of a label raster as a numpy array (pixels read now)."""
    with warnings.catch_warnings():  # the pixels are read (and GDAL warns) inside
        _quiet_ungeoreferenced()
        return np.asarray(io.open_scene(path).isel(band=0).values)


def _load_scene(
    name: str,
    before: Path,
    after: Path,
    *,
    align: bool = False,
    bands: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    """``(before, after, valid, band_ids)`` of a pair, read into memory as float32."""
    with warnings.catch_warnings():
        _quiet_ungeoreferenced()
        pair = io.open_pair(before, after, align=align)
    pair = io.select_bands(pair, bands)  # ids or 1-based indices, as run's --bands
    band_ids = pair.band_ids
    b, a = pair.before, pair.after
    before_np = np.asarray(b.values, dtype=np.float32)
    after_np = np.asarray(a.values, dtype=np.float32)
    valid = np.asarray(pair.valid.values, dtype=bool)
    # Non-finite values are invalid (io's mask says so); keep the arrays finite for the model.
    before_np = np.where(np.isfinite(before_np), before_np, np.float32(0))
    after_np = np.where(np.isfinite(after_np), after_np, np.float32(0))
    return before_np, after_np, valid, band_ids


def _check_label_shape(name: str, label_path: Path, label: np.ndarray, shape) -> None:
    if label.shape != tuple(shape):
        raise DatasetError(
            f"{label_path}: label is {size_px(*label.shape[-2:])} but scene {name!r} is "
            f"{size_px(*shape[-2:])}; the label must lie on the first date's grid."
        )


def load_pair(
    before: str | Path,
    after: str | Path,
    label: str | Path,
    *,
    name: str | None = None,
    change_values: Iterable[int] | None = None,
    ignore_values: Iterable[int] = (),
    align: bool = False,
    bands: Sequence[str] | None = None,
) -> Scene:
    """One labelled scene from two rasters and a label raster on the first date's grid.

    Args:
      before: First-date raster (file or Sentinel-2 band folder).
      after: Second-date raster.
      label: Label raster, same size as ``before``.
      name: Scene name (default: the label's file stem).
      change_values: Label values meaning "change"; default: ``> 127`` (0/255 masks, robust to
        stray grey values) when the label's maximum exceeds 1, else ``== 1``.
      ignore_values: Label values meaning "unlabelled" (made invalid).
      align: Resample ``after`` onto ``before``'s grid if they differ.
      bands: Band ids to keep, in this order (default: all).

    Returns:
      A :class:`Scene`; ``valid`` is False on nodata of either date and ignored label values.

    Raises:
      InputNotFoundError: A path does not exist.
      DatasetError: The label is not on the scene's grid.
    """
    label_path = Path(label)
    name = name or label_path.stem
    b, a, valid, band_ids = _load_scene(name, Path(before), Path(after), align=align, bands=bands)
    raw = _read_label(label_path)
    _check_label_shape(name, label_path, raw, valid.shape)
    if change_values is None:
        changed = raw > 127 if raw.max(initial=0) > 1 else raw == 1
    else:
        changed = np.isin(raw, list(change_values))
    ignore = list(ignore_values)
    if ignore:
        valid = valid & ~np.isin(raw, ignore)
    return Scene(name, b, a, changed.astype(np.uint8), valid, band_ids)


def load_sparse(
    before: str | Path,
    after: str | Path,
    changed_mask: str | Path,
    unchanged_mask: str | Path,
    *,
    name: str | None = None,
    align: bool = False,
    bands: Sequence[str] | None = None,
) -> Scene:
    """A scene with sparse labels: only the marked pixels are labelled (Landsat Taizhou style).

    Args:
      before: First-date raster (e.g. ``landsat/Taizhou/2000TM``, ENVI).
      after: Second-date raster.
      changed_mask: Raster whose pixels > 127 are sampled changed pixels.
      unchanged_mask: Raster whose pixels > 127 are sampled unchanged pixels.
      name: Scene name (default: the folder name of ``changed_mask``).
      align: Resample ``after`` onto ``before``'s grid if they differ.
      bands: Band ids to keep, in this order.

    Returns:
      A :class:`Scene` whose ``valid`` is True only on labelled pixels (either mask), and only
      where the imagery is valid; ``label`` is 1 on the changed mask.

    Raises:
      DatasetError: A mask is not on the scene's grid, or a pixel is marked both changed and
        unchanged.
    """
    changed_path, unchanged_path = Path(changed_mask), Path(unchanged_mask)
    name = name or changed_path.parent.name
    b, a, valid, band_ids = _load_scene(name, Path(before), Path(after), align=align, bands=bands)
    changed = _read_label(changed_path) > 127
    unchanged = _read_label(unchanged_path) > 127
    _check_label_shape(name, changed_path, changed, valid.shape)
    _check_label_shape(name, unchanged_path, unchanged, valid.shape)
    both = changed & unchanged
    if both.any():
        raise DatasetError(
            f"{changed_path} and {unchanged_path}: {int(both.sum())} pixels are marked both "
            f"changed and unchanged; fix the masks so they are disjoint."
        )
    return Scene(name, b, a, changed.astype(np.uint8), valid & (changed | unchanged), band_ids,
                 image_valid=valid)


def oscd_cities(root: str | Path) -> list[str]:
    """City names of an OSCD folder: ``images/train.txt`` if present, else the label folders."""
    root = Path(root)
    listing = root / "images" / "train.txt"
    if listing.is_file():
        names = [c.strip() for c in listing.read_text().replace("\n", ",").split(",")]
        return [c for c in names if c]
    labels = root / "train_labels"
    if not labels.is_dir():
        raise DatasetError(
            f"{root}: not an OSCD folder (no images/train.txt nor train_labels/); point to the "
            f"folder holding images/ and train_labels/."
        )
    return sorted(p.name for p in labels.iterdir() if p.is_dir())


def load_oscd(
    root: str | Path,
    cities: Sequence[str] | None = None,
    bands: Sequence[str] | None = None,
) -> list[Scene]:
    """OSCD cities as scenes on each city's date-1 10 m grid.

    Both dates' per-band files are resampled onto the 10 m grid (by :func:`changedet.io.open_pair`
    with ``align=True``: in ``saclay_e`` and ``abudhabi`` the date-2 grid differs slightly).

    Args:
      root: Folder holding ``images/`` and ``train_labels/``.
      cities: City names (default: :func:`oscd_cities`).
      bands: Band ids to keep in order, e.g. ``("B04", "B03", "B02")``; default all 13.

    Returns:
      Scenes named ``"oscd/<city>"``; label 1 where the change map is 2.

    Raises:
      DatasetError: A city has no images or label, or the label holds values other than 1/2.
    """
    root = Path(root)
    cities = list(cities) if cities is not None else oscd_cities(root)
    scenes = []
    for city in cities:
        folder = root / "images" / city
        label_path = root / "train_labels" / city / "cm" / f"{city}-cm.tif"
        for p in (folder / "imgs_1", folder / "imgs_2", label_path):
            if not p.exists():
                raise DatasetError(
                    f"OSCD city {city!r}: {p} is missing; expected images/<city>/imgs_1|imgs_2 "
                    f"and train_labels/<city>/cm/<city>-cm.tif under {root}."
                )
        name = f"oscd/{city}"
        b, a, valid, band_ids = _load_scene(
            name, folder / "imgs_1", folder / "imgs_2", align=True, bands=bands
        )
        raw = _read_label(label_path)
        _check_label_shape(name, label_path, raw, valid.shape)
        unexpected = np.setdiff1d(np.unique(raw), [OSCD_NO_CHANGE, OSCD_CHANGE])
        if unexpected.size:
            raise DatasetError(
                f"{label_path}: values {unexpected.tolist()} found; OSCD change maps hold "
                f"1 (no change) and 2 (change) only. Is this an OSCD label?"
            )
        scenes.append(Scene(name, b, a, (raw == OSCD_CHANGE).astype(np.uint8), valid, band_ids))
        log.info("loaded %s: %s, %d changed", name, size_px(*valid.shape), int((raw == 2).sum()))
    return scenes


def _find_case_insensitive(folder: Path, stem: str) -> Path | None:
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.stem.lower() == stem and p.suffix.lower() in _IMAGE_SUFFIXES:
            return p
    return None


def load_levir(root: str | Path, *, prefix: str | None = None) -> list[Scene]:
    """LEVIR-CD / DSIFN style samples: ``A/<id>``, ``B/<id>``, ``label/<id>`` (0/255).

    Files in ``A/`` without a label (e.g. illustration images) are skipped with a warning; an
    alpha band is dropped; labels are binarised at > 127.

    Args:
      root: Folder holding ``A/``, ``B/`` and ``label/``.
      prefix: Scene name prefix (default: the folder name), names are ``"<prefix>/<id>"``.

    Returns:
      Scenes sorted by name, band ids ``("1", "2", "3")``.

    Raises:
      DatasetError: The folders are missing or no sample has all three files.
    """
    root = Path(root)
    dirs = {k: root / k for k in ("A", "B", "label")}
    for k, d in dirs.items():
        if not d.is_dir():
            raise DatasetError(
                f"{root}: no {k}/ folder; a LEVIR-CD/DSIFN folder holds A/, B/ and label/."
            )
    prefix = prefix or root.name
    scenes = []
    for before in sorted(p for p in dirs["A"].iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES):
        after = _find_case_insensitive(dirs["B"], before.stem.lower())
        label = _find_case_insensitive(dirs["label"], before.stem.lower())
        if after is None or label is None:
            log.warning("skipping %s: no matching %s", before, "B/" if after is None else "label/")
            continue
        scene = load_pair(before, after, label, name=f"{prefix}/{before.stem}")
        if len(scene.band_ids) == 4:  # RGBA: drop alpha
            scene = scene._replace(
                before=scene.before[:3], after=scene.after[:3], band_ids=scene.band_ids[:3]
            )
        scenes.append(scene)
    if not scenes:
        raise DatasetError(f"{root}: no sample has an A/, B/ and label/ file of the same name.")
    return scenes


def load_airchange(root: str | Path) -> list[Scene]:
    """SZTAKI AirChange pairs: every folder below ``root`` holding im1, im2 and gt images.

    File names are matched case-insensitively (``im2.BMP`` occurs); ground truth is binarised at
    > 127 (two masks hold stray grey values).

    Args:
      root: The ``airchange`` folder (``Szada/<n>``, ``Tiszadob/<n>``, ``Archieve``).

    Returns:
      Scenes named ``"airchange/<site>/<n>"`` (or ``"airchange/Archieve"``), sorted.

    Raises:
      DatasetError: No folder below ``root`` holds im1, im2 and gt.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputNotFoundError(f"{root} does not exist; pass the AirChange folder.")
    scenes = []
    for folder in sorted([root, *(p for p in root.rglob("*") if p.is_dir())]):
        im1, im2, gt = (_find_case_insensitive(folder, s) for s in ("im1", "im2", "gt"))
        if im1 is None or im2 is None or gt is None:
            continue
        rel = folder.relative_to(root).as_posix()
        name = f"airchange/{rel}" if rel != "." else "airchange"
        scenes.append(load_pair(im1, im2, gt, name=name, change_values=None))
    if not scenes:
        raise DatasetError(
            f"{root}: no folder holds im1, im2 and gt images; expected <site>/<n>/im1.bmp etc."
        )
    return scenes


def split_by_scene(
    scenes: Sequence[Scene], val_names: Iterable[str]
) -> tuple[list[Scene], list[Scene]]:
    """Splits scenes into ``(train, val)`` by name: whole scenes, never patches of one scene.

    A name matches a scene whose name equals it or ends with ``"/" + name`` (so ``"paris"``
    selects ``"oscd/paris"``).

    Raises:
      DatasetError: A validation name matches no scene, or scene names are not unique.
    """
    names = [s.name for s in scenes]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise DatasetError(f"scene names must be unique to split by scene; repeated: {dup}.")
    wanted = list(val_names)

    def matches(scene: Scene, v: str) -> bool:
        return scene.name == v or scene.name.endswith("/" + v)

    for v in wanted:
        if not any(matches(s, v) for s in scenes):
            raise DatasetError(
                f"validation scene {v!r} is not among the scenes {names}; check the name."
            )
    is_val = [any(matches(s, v) for v in wanted) for s in scenes]
    val = [s for s, f in zip(scenes, is_val, strict=True) if f]
    train = [s for s, f in zip(scenes, is_val, strict=True) if not f]
    return train, val
