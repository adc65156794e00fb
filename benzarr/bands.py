"""The band and modality vocabulary: names, stored groups, resolutions, presets, parsing.

The one home of these facts; archive, ingest, store, data, train and the CLI import them.
Everything here is a constant or a pure function; no I/O, no numpy.

Channels (every name upper case)::

    S2  B01 ... B12   uint16 reflectance x 10,000, groups 10m (120 px), 20m (60 px), 60m (20 px)
    S1  VV, VH        float32 backscatter in dB, 120 px (10 m)

Selections (:func:`resolve_bands`):

* ``"all"``: B01 ... B12 in band order, then VV, VH when ``s1`` is among the modalities;
* ``"rgb"``: B04, B03, B02, then VV, VH when ``s1`` is among the modalities;
* a preset name of :data:`BAND_PRESETS` (ConfigILM's channel configurations, in ConfigILM's
  order, exactly as listed: no channel is added or dropped);
* band names, as a list or a comma string (``"b08,B04"``), in the order given; case does not
  matter.

Keywords and preset names are matched exactly: ``all`` (benzarr's order, S2 first) and
``ALL`` (ConfigILM's, S1 first) are different selections.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

from benzarr.errors import InvalidArgumentError

# --- channels -----------------------------------------------------------------------------

#: All 12 Sentinel-2 bands in band order (B8A after B08), the order of every full-band tensor.
BANDS: tuple[str, ...] = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12",
)
S2_BANDS = BANDS
#: Sentinel-1 polarisations, in stored channel order.
S1_BANDS: tuple[str, ...] = ("VV", "VH")
#: True-colour bands, red first (the order a display expects).
RGB_BANDS: tuple[str, ...] = ("B04", "B03", "B02")
#: Patch side at 10 m (the side every band is upsampled to).
PATCH_SIDE = 120

#: S2 band groups as stored: group -> (bands, side in pixels, ground sampling distance in m).
BAND_GROUPS: dict[str, tuple[tuple[str, ...], int, int]] = {
    "10m": (("B02", "B03", "B04", "B08"), 120, 10),
    "20m": (("B05", "B06", "B07", "B8A", "B11", "B12"), 60, 20),
    "60m": (("B01", "B09"), 20, 60),
}
#: Every stored channel group, S2's then S1's: group -> (channel names, native side in pixels).
CHANNEL_GROUPS: dict[str, tuple[tuple[str, ...], int]] = {
    **{group: (names, side) for group, (names, side, _) in BAND_GROUPS.items()},
    "s1": (S1_BANDS, PATCH_SIDE),
}
#: Ground sampling distance in metres of every channel (S1: 10 m, as BigEarthNet ships it).
RESOLUTIONS: dict[str, int] = {
    **{band: metres for names, _, metres in BAND_GROUPS.values() for band in names},
    **{band: 10 for band in S1_BANDS},
}
#: Every channel name: S2 bands in band order, then S1.
CHANNELS: tuple[str, ...] = BANDS + S1_BANDS

# --- modalities ---------------------------------------------------------------------------

#: Modalities a store can hold and a dataset can serve, in stored order.
MODALITIES: tuple[str, ...] = ("s2", "s1", "reference-map")
#: Modalities that give image channels (``reference-map`` gives the ``mask``).
IMAGE_MODALITIES: tuple[str, ...] = ("s2", "s1")
#: Channels of each image modality.
MODALITY_BANDS: dict[str, tuple[str, ...]] = {"s2": BANDS, "s1": S1_BANDS}

# --- presets ------------------------------------------------------------------------------

_10M_20M = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
#: Named channel configurations of the official TU Berlin tools, each in the exact order they
#: use: ConfigILM 0.7.1's ``STANDARD_BANDS`` (configilm/extra/BENv2_utils.py; its integer keys
#: as strings) and ``BENv2DataSet.channel_configurations`` 14 (configilm/extra/DataSets/
#: BENv2_DataSet.py). These are the orders of the reBEN models v0.2.0 ("2", "10", "12" for
#: S1, S2 and S1+S2 models); the v0.1.1 models used other orders (S2 B02, B03, B04, B08, B05,
#: B06, B07, B11, B12, B8A; S1 VH, VV; S1+S2 those ten then VH, VV), which no preset gives.
BAND_PRESETS: dict[str, tuple[str, ...]] = {
    "2": S1_BANDS,
    "3": RGB_BANDS,
    "4": BAND_GROUPS["10m"][0],
    "10": _10M_20M,
    "12": S1_BANDS + _10M_20M,
    "14": S1_BANDS + BANDS,
    "S1": S1_BANDS,
    "S2": BANDS,
    "ALL": S1_BANDS + BANDS,
    "RGB": RGB_BANDS,
    "10m": BAND_GROUPS["10m"][0],
    "20m": BAND_GROUPS["20m"][0],
    "60m": BAND_GROUPS["60m"][0],
    "10m_20m": _10M_20M,
    "S1_10m_20m": S1_BANDS + _10M_20M,
}
#: Selection keywords besides presets and names (``all``: S2 bands then S1; ``rgb``: B04, B03,
#: B02 then S1; S1 only with ``s1`` among the modalities).
KEYWORDS: tuple[str, ...] = ("all", "rgb")


def describe_presets() -> list[tuple[str, str]]:
    """``(name, comma-separated bands)`` of every preset, in :data:`BAND_PRESETS` order (for
    ``benzarr models`` and ``--help``)."""
    return [(name, ",".join(bands)) for name, bands in BAND_PRESETS.items()]


# --- lookups ------------------------------------------------------------------------------


def band_location(band: str) -> tuple[str, int]:
    """``(group, position)`` of an S2 band or an S1 polarisation in the stored groups.

    >>> band_location("B8A")
    ('20m', 3)
    >>> band_location("VH")
    ('s1', 1)

    Raises:
        InvalidArgumentError: not a channel name (case does not matter, as everywhere), with
            the valid ones.
    """
    name = band.upper() if isinstance(band, str) else band
    for group, (names, _) in CHANNEL_GROUPS.items():
        if name in names:
            return group, names.index(name)
    valid = ", ".join(n for names, _ in CHANNEL_GROUPS.values() for n in names)
    raise InvalidArgumentError(f"unknown band {band!r}: choose from {valid}")


def band_side(band: str) -> int:
    """Side in pixels of ``band`` as BigEarthNet ships it (120, 60 or 20)."""
    return CHANNEL_GROUPS[band_location(band)[0]][1]


def band_groups_for(bands: Sequence[str]) -> tuple[str, ...]:
    """Stored channel groups (``10m``, ``20m``, ``60m``, ``s1``, in that order) ``bands`` need."""
    needed = {band_location(b)[0] for b in bands}
    return tuple(g for g in CHANNEL_GROUPS if g in needed)


# --- parsing ------------------------------------------------------------------------------


def _names(value: str | Sequence[str]) -> list[str]:
    """A comma string or a sequence of names, stripped, empty items dropped."""
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    return [item.strip() for item in items if item.strip()]


def parse_modalities(modalities: str | Sequence[str], allowed: Sequence[str] = MODALITIES, *,
                     once: bool = False) -> tuple[str, ...]:
    """Modalities from a comma string or a sequence (case-insensitive), in stored order
    (:data:`MODALITIES`), each once.

    Args:
        allowed: the modalities the caller accepts (:data:`IMAGE_MODALITIES` for image
            channels only).
        once: refuse a modality named twice (an option of the command line: ``train`` and
            ``ingest --modalities s2,s2``); without it, a repeat is read once.

    Raises:
        InvalidArgumentError: empty, not a str or a sequence of str, a name outside
            ``allowed`` (listing the valid names), or with ``once`` a name given twice.
    """
    if (modalities is None or isinstance(modalities, (bool, bytes, bytearray))
            or not (isinstance(modalities, str) or hasattr(modalities, "__iter__"))):  # None was a TypeError
        raise InvalidArgumentError(f"modalities must be names from {', '.join(allowed)} (a list or comma-separated), "
                                   f"got {modalities!r}")
    names = [m.lower() for m in _names(modalities)]
    unknown = [m for m in names if m not in allowed]
    if unknown or not names:
        what = f"unknown modality {unknown[0]!r}" if unknown else "no modality given"
        raise InvalidArgumentError(f"{what}: choose from {', '.join(allowed)} (a list or comma-separated)")
    twice = [m for i, m in enumerate(names) if m in names[:i]]
    if twice and once:  # --modalities s2,s2 was read as s2 without a word
        raise InvalidArgumentError(f"modality {twice[0]!r} is named twice in {','.join(names)!r}; give each once")
    return tuple(m for m in MODALITIES if m in names)


def resolve_bands(selection: str | int | Sequence[str], modalities: str | Sequence[str] = ("s2",)) -> tuple[str, ...]:
    """Channel names, in input-channel order, for a band selection (rules in the module
    docstring): ``"all"``, ``"rgb"``, a preset name of :data:`BAND_PRESETS` (an int such as
    ``12`` is read as ``"12"``), or band names (a list or a comma string, any case).

    Args:
        modalities: the image modalities available (``s2``, ``s1``; others are ignored); a
            band of a modality not among them is refused.

    Raises:
        InvalidArgumentError: an unknown, repeated or unavailable band, an empty selection, or
            an unknown keyword, listing the valid band and preset names.
    """
    chosen = [m for m in (_names(modalities) if isinstance(modalities, str) else modalities) if m in MODALITY_BANDS]
    available = tuple(b for m in IMAGE_MODALITIES if m in chosen for b in MODALITY_BANDS[m])
    s1 = S1_BANDS if "s1" in chosen else ()
    if isinstance(selection, numbers.Integral) and not isinstance(selection, bool):  # numpy's ints too
        selection = str(int(selection))
    if isinstance(selection, (bytes, bytearray, memoryview)):  # iterated, b"B02" was read as bands 66, 48, 50
        raise InvalidArgumentError(f"bands {selection!r} are bytes: give a str such as 'B02' or a list of names")
    if isinstance(selection, (set, frozenset, dict)):  # the study took its band order from a set
        raise InvalidArgumentError(f"bands {selection!r}: a set has no order, and the order of the bands is the "
                                   "order of the input channels; give a list")
    if selection is None or isinstance(selection, bool) or not hasattr(selection, "__iter__"):
        raise InvalidArgumentError(f"bands must be 'all', 'rgb', a preset name or a list of band names, "
                                   f"got {selection!r}")
    if not available:
        raise InvalidArgumentError(f"no image modality among {list(modalities)}: choose from {', '.join(IMAGE_MODALITIES)}")
    if isinstance(selection, str):
        if selection == "all":
            return available
        if selection == "rgb":
            return _check_bands(RGB_BANDS, available, "'rgb'") + s1
        if selection in BAND_PRESETS:
            return _check_bands(BAND_PRESETS[selection], available, f"preset {selection!r}")
        similar = [k for k in (*KEYWORDS, *BAND_PRESETS) if k.lower() == selection.lower()]
        if similar:  # keywords and presets are exact: 'all' and 'ALL' differ
            raise InvalidArgumentError(f"unknown band selection {selection!r}: did you mean {' or '.join(map(repr, similar))}? "
                                       "(keywords and preset names are case-sensitive)")
    written = _names(selection)
    if not written:
        raise InvalidArgumentError(f"empty band selection: {_choices(available)}")
    return _check_bands(tuple(b.upper() for b in written), available, "band list", written)


def _check_bands(names: tuple[str, ...], available: tuple[str, ...], what: str,
                 written: Sequence[str] | None = None) -> tuple[str, ...]:
    """``names`` if each is in ``available`` and none repeats; errors quote ``written``
    (the names as the caller wrote them)."""
    unknown = [i for i, b in enumerate(names) if b not in available]
    if unknown:
        band = names[unknown[0]]
        where = " (an S1 polarisation: add s1 to the modalities)" if band in S1_BANDS else (
            " (an S2 band: add s2 to the modalities)" if band in BANDS else "")
        shown = (written or names)[unknown[0]]
        raise InvalidArgumentError(f"{what}: unknown or unavailable band {shown!r}{where}; {_choices(available)}")
    if len(set(names)) != len(names):
        raise InvalidArgumentError(f"{what} {','.join(names)!r} names a band twice")
    return names


def _choices(available: tuple[str, ...]) -> str:
    return (f"use {', '.join(KEYWORDS)}, a preset ({', '.join(BAND_PRESETS)}) or band names from "
            f"{', '.join(available) or '(none: no image modality)'}")
