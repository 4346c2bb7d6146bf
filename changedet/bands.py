"""Band identity: one vocabulary for Sentinel-2 ids, Earth Engine ids, STAC common names and
Landsat bands, and the band sets models are trained to accept. NumPy-free, I/O-free.

Every band a model knows is a *canonical* Sentinel-2 MSI id (``B01`` … ``B12``, ``B8A``). Names
are matched case-insensitively:

============  ========  ==========  ====================  =======================
canonical     EE id     common      Landsat TM / ETM+     Landsat OLI (8/9)
============  ========  ==========  ====================  =======================
B01           B1        coastal     –                     1 (coastal)
B02           B2        blue        1                     2
B03           B3        green       2                     3
B04           B4        red         3                     4
B05           B5        rededge071  –                     –
B06           B6        rededge075  –                     –
B07           B7        rededge078  –                     –
B08           B8        nir         4                     –
B8A           B8A       nir08       –                     5 (nir08)
B09           B9        nir09       –                     –
B10           B10       cirrus      –                     9 (cirrus)
B11           B11       swir16      5                     6
B12           B12       swir22      7                     7
============  ========  ==========  ====================  =======================

Landsat bands have no ids of their own in most files: name them with ``--band-names`` using
the common names (``blue,green,red,nir,swir16,swir22`` for TM/ETM+ bands 1,2,3,4,5,7).
Landsat's thermal bands (TM 6, OLI/TIRS 10–11) and the panchromatic band have no counterpart and
are refused by name.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from changedet.errors import BandMismatchError, option

__all__ = [
    "BAND_SETS",
    "COMMON_NAMES",
    "REQUIRED_BANDS",
    "SENTINEL2_BANDS",
    "band_positions",
    "canonical_band",
    "canonical_bands",
    "band_sets_within",
    "describe_band_set",
    "is_positional",
    "parse_band_names",
]

#: Sentinel-2 MSI band ids in canonical order (the slots of the Sentinel-2 models).
SENTINEL2_BANDS: tuple[str, ...] = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12",
)  # fmt: skip

#: STAC ``eo:common_name`` of each canonical band.
COMMON_NAMES: dict[str, str] = {
    "B01": "coastal", "B02": "blue", "B03": "green", "B04": "red", "B05": "rededge071",
    "B06": "rededge075", "B07": "rededge078", "B08": "nir", "B8A": "nir08", "B09": "nir09",
    "B10": "cirrus", "B11": "swir16", "B12": "swir22",
}  # fmt: skip

_ALIASES: dict[str, str] = {}
for _band, _common in COMMON_NAMES.items():
    _ALIASES[_band.lower()] = _band
    _ALIASES[_common] = _band
    if _band != "B8A":  # Earth Engine spells B02 as B2
        _ALIASES[f"b{int(_band[1:])}"] = _band
_ALIASES.update({"rededge1": "B05", "rededge2": "B06", "rededge3": "B07", "nir1": "B8A",
                 "swir1": "B11", "swir2": "B12", "narrow_nir": "B8A", "nir_narrow": "B8A",
                 "water_vapour": "B09", "water_vapor": "B09", "aerosol": "B01"})

#: Band sets the packaged Sentinel-2 model is trained on (band dropout) and accepts; any other
#: subset holding blue, green and red works too, with missing bands filled at their mean.
BAND_SETS: dict[str, tuple[str, ...]] = {
    "Sentinel-2 L1C (13 bands)": SENTINEL2_BANDS,
    "Sentinel-2 L2A (12 bands, no B10)": tuple(b for b in SENTINEL2_BANDS if b != "B10"),
    "Sentinel-2 10 m + 20 m (10 bands)": ("B02", "B03", "B04", "B05", "B06", "B07", "B08",
                                          "B8A", "B11", "B12"),
    "Landsat 8/9 OLI (coastal, blue…swir22, cirrus)": ("B01", "B02", "B03", "B04", "B8A", "B10",
                                                       "B11", "B12"),
    "Landsat 4-7 TM/ETM+ (bands 1-5, 7)": ("B02", "B03", "B04", "B08", "B11", "B12"),
    "4 bands (blue, green, red, nir)": ("B02", "B03", "B04", "B08"),
    "3 bands (blue, green, red)": ("B02", "B03", "B04"),
}

#: Bands every Sentinel-2 model input must hold.
REQUIRED_BANDS: tuple[str, ...] = ("B02", "B03", "B04")


def canonical_band(name: str) -> str | None:
    """The canonical Sentinel-2 id of a band name, or None if the name is not a known band.

    Example:
      >>> canonical_band("b8"), canonical_band("SWIR16"), canonical_band("B8A"), canonical_band("7")
      ('B08', 'B11', 'B8A', None)
    """
    return _ALIASES.get(str(name).strip().lower())


def canonical_bands(names: Sequence[str]) -> tuple[str, ...] | None:
    """Canonical ids of all ``names`` when every one is a distinct known band, else None."""
    ids = [canonical_band(n) for n in names]
    if any(i is None for i in ids) or len(set(ids)) != len(ids):
        return None
    return tuple(ids)  # type: ignore[arg-type]


def parse_band_names(text: str | Iterable[str], num_bands: int, *, where: str) -> tuple[str, ...]:
    """Validated canonical ids from a ``--band-names`` value for a file with ``num_bands`` bands.

    Raises:
      BandMismatchError: Wrong count, an unknown name, or a name given twice.
    """
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text)]
    names = [n for n in names if n]
    if len(names) != num_bands:
        raise BandMismatchError(
            f"{option('band_names')} gives {len(names)} names but {where} has {num_bands} "
            "bands; give one name per band, in file order."
        )
    unknown = [n for n in names if canonical_band(n) is None]
    if unknown:
        raise BandMismatchError(
            f"{option('band_names')}: {', '.join(unknown)} is not a known band; use Sentinel-2 "
            "ids (B02), Earth Engine ids (B2) or common names (blue, green, red, nir, swir16, "
            "swir22, …)."
        )
    ids = tuple(canonical_band(n) for n in names)
    if len(set(ids)) != len(ids):
        raise BandMismatchError(
            f"{option('band_names', ','.join(names))} names one band twice.")
    return ids  # type: ignore[return-value]


def is_positional(band_ids: Sequence[str]) -> bool:
    """True for generic ids ``"1".."n"``: bands known by position only (e.g. red, green, blue
    of a photo), not by sensor band name.

    Example:
      >>> is_positional(["1", "2", "3"]), is_positional(["B02", "B03", "B04"])
      (True, False)
    """
    return tuple(band_ids) == tuple(str(i) for i in range(1, len(band_ids) + 1))


def band_sets_within(band_ids: Sequence[str]) -> list[tuple[str, ...]]:
    """The accepted band sets (:data:`BAND_SETS`) that are proper subsets of ``band_ids``:
    what band dropout can drop a scene with these bands to."""
    ids = set(band_ids)
    return [m for m in BAND_SETS.values() if set(m) <= ids and len(m) < len(ids)]


def describe_band_set(ids: Sequence[str]) -> str:
    """A readable name of a band set (``"Sentinel-2 L2A (12 bands, no B10)"`` or the ids)."""
    for label, members in BAND_SETS.items():
        if tuple(ids) == members:
            return label
    return ",".join(ids)


def band_positions(available: Sequence[str], requested: Sequence[str], *,
                   where: str) -> list[int]:
    """Positions of ``requested`` bands, given by id or by 1-based index, in ``available``.

    Args:
      available: The scene's band ids, in order.
      requested: Band ids (``"B04"``) or 1-based indices (``"3"``), in the wanted order.
      where: The scene, for the error message (a path or a scene name).

    Returns:
      0-based positions into ``available``, in the requested order.

    Raises:
      BandMismatchError: A requested band is neither an id nor a valid index.

    Example:
      >>> band_positions(["B02", "B03", "B04"], ["B04", "2"], where="x")
      [2, 1]
    """
    ids = [str(b) for b in available]
    positions = []
    for band in requested:
        band = str(band).strip()
        if band in ids:
            positions.append(ids.index(band))
        elif band.isdigit() and 1 <= int(band) <= len(ids):
            positions.append(int(band) - 1)
        else:
            raise BandMismatchError(
                f"band {band!r} is not in {where}; its bands are {', '.join(ids)}. "
                f"Pass {option('bands')} with ids or 1-based indices from that list."
            )
    return positions
