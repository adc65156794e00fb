"""The band and modality vocabulary (benzarr.bands): one rule set for every caller."""

from __future__ import annotations

import re

import numpy as np
import pytest

from benzarr import bands as vocabulary
from benzarr.bands import (
    BAND_PRESETS,
    BANDS,
    RESOLUTIONS,
    band_location,
    band_side,
    describe_presets,
    parse_modalities,
    resolve_bands,
)
from benzarr.errors import InvalidArgumentError

# ConfigILM 0.7.1, configilm/extra/BENv2_utils.py, STANDARD_BANDS (and BENv2DataSet's
# channel configuration 14), copied by hand: the order is the contract with the official weights.
CONFIGILM_0_7_1 = {
    "2": ["VV", "VH"],
    "3": ["B04", "B03", "B02"],
    "4": ["B02", "B03", "B04", "B08"],
    "10": ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"],
    "12": ["VV", "VH", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"],
    "14": ["VV", "VH", "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"],
    "S1": ["VV", "VH"],
    "S2": ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"],
    "ALL": ["VV", "VH", "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"],
    "RGB": ["B04", "B03", "B02"],
    "10m": ["B02", "B03", "B04", "B08"],
    "20m": ["B05", "B06", "B07", "B8A", "B11", "B12"],
    "60m": ["B01", "B09"],
    "10m_20m": ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"],
    "S1_10m_20m": ["VV", "VH", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"],
}


def test_presets_are_configilm_standard_bands_in_their_order() -> None:
    assert {name: list(bands) for name, bands in BAND_PRESETS.items()} == CONFIGILM_0_7_1
    assert all(isinstance(bands, tuple) for bands in BAND_PRESETS.values())


def test_presets_are_importable_from_data() -> None:
    pytest.importorskip("torch")
    from benzarr.data import BAND_PRESETS as from_data

    assert from_data is BAND_PRESETS


def test_a_preset_resolves_to_its_bands_when_the_modalities_hold_them() -> None:
    assert resolve_bands("12", ("s2", "s1")) == BAND_PRESETS["12"]
    assert resolve_bands(10, ("s2",)) == BAND_PRESETS["10"]
    assert resolve_bands(np.int64(10), ("s2",)) == BAND_PRESETS["10"]  # was refused: numpy ints read as ints
    assert resolve_bands("ALL", "s2,s1") == BAND_PRESETS["ALL"]
    with pytest.raises(InvalidArgumentError, match=r"preset 'ALL'.*'VV'.*add s1"):
        resolve_bands("ALL", ("s2",))


def test_all_and_rgb_keep_their_meaning_and_add_s1_after_s2() -> None:
    assert resolve_bands("all") == BANDS
    assert resolve_bands("all", ("s2", "s1")) == BANDS + ("VV", "VH")
    assert resolve_bands("all", ("s1",)) == ("VV", "VH")
    assert resolve_bands("rgb") == ("B04", "B03", "B02")
    assert resolve_bands("rgb", ("s2", "s1")) == ("B04", "B03", "B02", "VV", "VH")
    with pytest.raises(InvalidArgumentError, match="'B04'.*add s2"):
        resolve_bands("rgb", ("s1",))


def test_keywords_and_presets_are_case_sensitive_with_a_hint() -> None:
    with pytest.raises(InvalidArgumentError, match="did you mean 'all' or 'ALL'"):
        resolve_bands("All", ("s2", "s1"))


@pytest.mark.parametrize("selection", [["b08", "B04"], "b08,B04", " B08 , b04 ", ("B08", "b04")])
def test_band_names_are_case_insensitive_as_a_list_or_a_comma_string(selection: object) -> None:
    assert resolve_bands(selection) == ("B08", "B04")  # type: ignore[arg-type]


@pytest.mark.parametrize("selection, message", [
    (["B02", "B10"], r"'B10'.*all, rgb, a preset \(2, 3.*B01, B02.*B12"),
    ("rgbn", "'rgbn'"),
    ([], "empty band selection"),
    ("", "empty band selection"),
    ("B04,b04", "names a band twice"),
    (["VV"], "'VV'.*add s1"),
])
def test_bad_selections_name_the_problem_and_the_valid_names(selection: object, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        resolve_bands(selection)  # type: ignore[arg-type]


def test_reference_map_alone_gives_no_image_channels() -> None:
    with pytest.raises(InvalidArgumentError, match="no image modality"):
        resolve_bands("all", ("reference-map",))


def test_modalities_parse_from_a_string_or_a_list_into_stored_order() -> None:
    assert parse_modalities("s1,S2") == ("s2", "s1")
    assert parse_modalities(["reference-map", "s2", "s2"]) == ("s2", "reference-map")
    with pytest.raises(InvalidArgumentError, match=r"^modality 's2' is named twice in 'reference-map,s2,s2'; give"):
        parse_modalities(["reference-map", "s2", "s2"], once=True)  # --modalities: train and ingest
    with pytest.raises(InvalidArgumentError, match="unknown modality 'reference-map': choose from s2, s1"):
        parse_modalities("s2,reference-map", vocabulary.IMAGE_MODALITIES)
    with pytest.raises(InvalidArgumentError, match="no modality given"):
        parse_modalities(" , ")
    for value in (None, 2, b"s2"):  # a TypeError, a TypeError, "unknown modality '115'"
        with pytest.raises(InvalidArgumentError, match=r"^modalities must be names from s2, s1, reference-map \(a list "
                                                       rf"or comma-separated\), got {re.escape(repr(value))}$"):
            parse_modalities(value)


def test_band_location_covers_s2_and_s1() -> None:
    assert band_location("B8A") == ("20m", 3)
    assert band_location("VH") == ("s1", 1)
    assert [band_side(b) for b in ("B02", "B05", "B09", "VV")] == [120, 60, 20, 120]
    assert RESOLUTIONS["B01"] == 60 and RESOLUTIONS["B11"] == 20 and RESOLUTIONS["VV"] == 10
    assert band_location("b8a") == ("20m", 3)  # case does not matter, as in every band selection
    with pytest.raises(InvalidArgumentError, match=r"^unknown band 'B10': choose from B02, B03, B04, B08, B05"):
        band_location("B10")  # was a bare KeyError from a function benzarr.data exports


def test_old_names_are_the_one_implementation() -> None:
    from benzarr import archive, bigearthnet

    assert bigearthnet.band_location is band_location
    assert bigearthnet.BANDS is BANDS and archive.MODALITIES is vocabulary.MODALITIES
    pytest.importorskip("torch")
    from benzarr import data, train

    assert data.resolve_bands is resolve_bands and data.channel_location is band_location
    assert data.DATA_MODALITIES is vocabulary.MODALITIES
    assert train.resolve_bands("shortcnn-all", "10", "s2") == list(BAND_PRESETS["10"])
    assert train.parse_modalities("s1,s2") == ["s2", "s1"]


def test_describe_presets_lists_every_preset_with_its_bands() -> None:
    described = dict(describe_presets())
    assert list(described) == list(BAND_PRESETS)
    assert described["12"] == "VV,VH,B02,B03,B04,B05,B06,B07,B08,B8A,B11,B12"


@pytest.mark.parametrize("selection, message", [(None, "got None"), ({"B02", "B03"}, "a set has no order"),
                                                (True, "got True"),
                                                # iterated, b"B02" was "unknown or unavailable band '66'"
                                                (b"B02", "bands b'B02' are bytes: give a str")])
def test_a_selection_that_is_no_list_or_name_is_refused_naming_bands(selection: object, message: str) -> None:
    """The balanced-bigearthnet study took its band order from a Python set; None was a TypeError."""
    with pytest.raises(InvalidArgumentError, match=message):
        resolve_bands(selection)
