"""The store format: round-trips of arbitrary archives, opening rules, split arrays."""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benzarr._geotiff import write_geotiff
from benzarr.archive import clc43_to_clc19
from benzarr.bigearthnet import BAND_GROUPS, BANDS, CLC43
from benzarr.errors import (
    InvalidArgumentError,
    SplitExistsError,
    SplitNotFoundError,
    StoreIncompleteError,
    StoreNotFoundError,
)
from benzarr.ingest import ingest
from benzarr.store import FORMAT_VERSION, open_store


def write_archive(root: Path, patches: list[tuple[dict[str, np.ndarray], np.ndarray]]) -> list[str]:
    """Write patches (band group -> (C, H, W) uint16, (43,) labels) as a v1.0 archive."""
    names = []
    for i, (bands, labels) in enumerate(patches):
        name = f"S2A_MSIL2A_20170613T101031_{i}_{7 * i % 11}"
        folder = root / name
        folder.mkdir(parents=True)
        for group, (band_names, side, metres) in BAND_GROUPS.items():
            for c, band in enumerate(band_names):
                write_geotiff(folder / f"{name}_{band}.tif", bands[group][c], 32633, 400000.0, 5300000.0, metres)
        meta = {
            "labels": [CLC43[j] for j in np.flatnonzero(labels)],
            "coordinates": {"ulx": 400000, "uly": 5300000, "lrx": 401200, "lry": 5298800},
            "projection": 'PROJCS["WGS 84 / UTM zone 33N",AUTHORITY["EPSG","32633"]]',
            "tile_source": "S2A_MSIL1C_20170613T101031_N0205_R022_T33UUP_20170613T101608.SAFE",
            "acquisition_date": "2017-06-13 10:10:31",
        }
        (folder / f"{name}_labels_metadata.json").write_text(json.dumps(meta))
        names.append(name)
    return names


@st.composite
def archives(draw: st.DrawFn) -> list[tuple[dict[str, np.ndarray], np.ndarray]]:
    n = draw(st.integers(1, 9))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    patches = []
    for _ in range(n):
        bands = {g: rng.integers(0, 65536, size=(len(b), s, s), dtype=np.uint16) for g, (b, s, _) in BAND_GROUPS.items()}
        labels = np.zeros(43, dtype=np.uint8)
        labels[rng.choice(43, size=rng.integers(1, 7), replace=False)] = 1
        patches.append((bands, labels))
    return patches


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(patches=archives(), shard_size=st.sampled_from([1, 2, 4, 8]),
       compression=st.sampled_from(["none", "lz4", "zstd"]))
def test_any_archive_round_trips_through_the_store(patches, shard_size: int, compression: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "archive"
        names = write_archive(root, patches)
        ingest(root, Path(tmp) / "s.zarr", workers=1, shard_size=shard_size, compression=compression)
        store = open_store(Path(tmp) / "s.zarr")
        order = np.argsort(names)  # rows are in sorted name order
        assert list(store.patch_names()) == sorted(names)
        for group in BAND_GROUPS:
            expected = np.stack([patches[i][0][group] for i in order])
            assert np.array_equal(store.array(f"s2/{group}")[:], expected)
        labels = np.stack([patches[i][1] for i in order])
        assert np.array_equal(store.labels("clc43"), labels)
        assert np.array_equal(store.labels("clc19"), clc43_to_clc19(labels))
        assert store.valid_mask().all()


def test_store_layout_matches_the_design(synth_store_64: Path) -> None:
    store = open_store(synth_store_64)
    expected = {
        "s2/10m": ((64, 4, 120, 120), "uint16"),
        "s2/20m": ((64, 6, 60, 60), "uint16"),
        "s2/60m": ((64, 2, 20, 20), "uint16"),
        "labels/clc43": ((64, 43), "uint8"),
        "labels/clc19": ((64, 19), "uint8"),
        "meta/acquisition_time": ((64,), "int64"),
        "meta/bounds": ((64, 4), "float64"),
        "meta/epsg": ((64,), "int32"),
    }
    for name, (shape, dtype) in expected.items():
        array = store.array(name)
        assert array.shape == shape and str(array.dtype) == dtype, name
    band = store.array("s2/10m")
    assert band.chunks == (1, 4, 120, 120) and band.shards == (16, 4, 120, 120)
    for name in ("meta/patch_name", "meta/tile_source", "meta/error"):
        assert store.array(name).metadata.to_dict()["data_type"] == "string"
    attrs = store.attrs
    assert attrs["format_version"] == FORMAT_VERSION and attrs["complete"]
    assert attrs["bands"]["s2/20m"] == ["B05", "B06", "B07", "B8A", "B11", "B12"]
    assert attrs["classes"]["clc43"] == list(CLC43)
    # Any Zarr v3 reader sees the same data.
    assert zarr.open_array(str(synth_store_64 / "s2/60m"), mode="r")[3].shape == (2, 20, 20)


def test_the_layout_table_in_the_docstring_is_the_declared_layout() -> None:
    import benzarr.store as store_module

    assert store_module.layout_table() in store_module.__doc__


def test_a_created_store_holds_exactly_the_declared_arrays(tmp_path: Path) -> None:
    from benzarr.store import (BAND_ARRAYS, COORDINATES, OTHER_ARRAYS, ROW_FIELDS, STAGE_GROUP, create_store,
                               stage_path)

    store = create_store(tmp_path / "s.zarr", ["a", "b", "c"], shard_size=2, modalities=("s2", "s1", "reference-map"))
    declared = {path: ((3, *spec.row_shape), spec.dtype) for path, spec in BAND_ARRAYS.items()}
    declared |= {path: ((3, *spec.trailing), "string" if spec.dtype is str else spec.dtype)
                 for path, spec in ROW_FIELDS.items()}
    declared |= {path: ((3 if coord.labels is None else len(coord.labels),), "string")
                 for path, coord in COORDINATES.items()}
    found = {path: (array.shape, array.metadata.to_dict()["data_type"]) for path, array in store.arrays()
             if not path.startswith(STAGE_GROUP)}
    others = {path for path in found if path not in declared}
    assert {path: found[path] for path in declared} == declared
    assert others == {path for path in OTHER_ARRAYS if "<" not in path and "*" not in path}
    assert {path for path, _ in store.arrays() if path.startswith(STAGE_GROUP)} == {
        stage_path(path) for path in ROW_FIELDS if path != "meta/patch_name"}
    assert store.attrs["bands"] == {path: list(spec.channels) for path, spec in BAND_ARRAYS.items() if spec.channels}


def test_xarray_sees_band_class_and_patch_names_as_coordinates(synth_v2_store: Path) -> None:
    xr = pytest.importorskip("xarray")
    store = open_store(synth_v2_store)
    names = store.patch_names()
    s2 = xr.open_zarr(synth_v2_store, group="s2", consolidated=False)
    b04 = s2["10m"].sel(band_10m="B04")
    assert b04.dims == ("patch", "y_10m", "x_10m")
    np.testing.assert_array_equal(b04.values, store.array("s2/10m")[:, 2])
    assert list(s2["band_20m"].values) == ["B05", "B06", "B07", "B8A", "B11", "B12"]
    assert list(s2["band_60m"].values) == store.band_names("s2/60m")
    assert s2.indexes["patch"].tolist() == names.tolist()
    one = s2["60m"].sel(patch=names[5], band_60m="B09")
    np.testing.assert_array_equal(one.values, store.array("s2/60m")[5, 1])
    # the root group (s1, reference_map), labels and meta: the same names on their dimensions
    root = xr.open_zarr(synth_v2_store, consolidated=False)
    np.testing.assert_array_equal(root["s1"].sel(polarisation="VH").values, store.array("s1")[:, 1])
    assert root["patch"].values.tolist() == names.tolist()
    labels = xr.open_zarr(synth_v2_store, group="labels", consolidated=False)
    assert labels["patch"].values.tolist() == names.tolist()
    assert list(labels["class_clc19"].values) == store.class_names("clc19")
    forest = labels["clc43"].sel(class_clc43="Coniferous forest", patch=names[3])
    assert int(forest) == store.labels("clc43")[3, CLC43.index("Coniferous forest")]
    meta = xr.open_zarr(synth_v2_store, group="meta", consolidated=False)
    assert list(meta["corner"].values) == ["ulx", "uly", "lrx", "lry"]
    assert (meta["patch"].values == meta["patch_name"].values).all()


def test_coordinate_arrays_are_plain_zarr_and_equal_meta_patch_name(synth_v2_store: Path) -> None:
    from benzarr.store import COORDINATES

    group = zarr.open_group(str(synth_v2_store), mode="r")
    assert list(group["s2/band_10m"][:]) == ["B02", "B03", "B04", "B08"]
    assert list(group["polarisation"][:]) == ["VV", "VH"]
    for path, coord in COORDINATES.items():
        array = group[path]
        assert array.metadata.dimension_names == (path.rsplit("/", 1)[-1],), path
        if coord.labels is None:  # a copy of meta/patch_name: same values, same zarr.json and chunk bytes
            assert list(array[:]) == list(group["meta/patch_name"][:])
            for name in ("zarr.json", "c/0"):
                assert (synth_v2_store / path / name).read_bytes() == (synth_v2_store / "meta/patch_name" / name).read_bytes()
        else:
            assert tuple(array[:]) == coord.labels, path


def test_a_store_without_coordinate_arrays_still_opens(synth_store_64: Path, tmp_path: Path) -> None:
    import shutil

    from benzarr.store import COORDINATES

    path = tmp_path / "old.zarr"
    shutil.copytree(synth_store_64, path)
    for coord in COORDINATES:
        shutil.rmtree(path / coord, ignore_errors=True)  # as written before coordinates existed
    store = open_store(path)
    assert store.patch_names().tolist() == open_store(synth_store_64).patch_names().tolist()
    assert store.row_reader("s2/10m").read([1]).shape == (1, 4, 120, 120)
    xr = pytest.importorskip("xarray")
    s2 = xr.open_zarr(path, group="s2", consolidated=False)
    assert "band_10m" not in s2.coords and s2["10m"].isel(band_10m=2).shape == (64, 120, 120)


def test_empty_rows_allocate_every_staged_row_field_at_its_fill_value() -> None:
    from benzarr.store import PATCH_FIELDS, ROW_FIELDS, empty_rows

    rows = empty_rows(3)
    assert set(rows) == set(ROW_FIELDS) - {"meta/patch_name"}
    for path, data in rows.items():
        spec = ROW_FIELDS[path]
        assert data.shape == (3, *spec.trailing) and (data == spec.fill).all(), path
    assert {path for path, _ in PATCH_FIELDS} == set(rows) - {"meta/valid", "meta/error"}


def test_row_readers_of_a_local_store_read_the_shard_files_directly(synth_store_64: Path) -> None:
    from benzarr.shards import ShardReader

    store = open_store(synth_store_64)
    assert store.local_path("s2/10m") == synth_store_64 / "s2/10m"
    reader = store.row_reader("s2/10m")
    assert isinstance(reader, ShardReader)
    np.testing.assert_array_equal(reader.read([5, 2]), store.array("s2/10m")[[5, 2]])


def test_open_store_refuses_what_is_not_a_finished_benzarr_store(tmp_path: Path, synth_store_64: Path) -> None:
    with pytest.raises(StoreNotFoundError, match="no such store"):
        open_store(tmp_path / "missing.zarr")
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    with pytest.raises(StoreNotFoundError, match="not a benzarr store"):
        open_store(tmp_path / "plain.zarr")
    import shutil

    copy = tmp_path / "copy.zarr"
    shutil.copytree(synth_store_64, copy)
    open_store(copy, mode="r+").update_attrs(complete=False)
    with pytest.raises(StoreIncompleteError, match="ingest did not finish"):
        open_store(copy)
    assert not open_store(copy, require_complete=False).complete


@pytest.mark.parametrize("mode", ["w", "w-", "a", "x", "rw"])
def test_open_store_takes_read_or_read_write_only_and_never_empties_a_store(tmp_path: Path, synth_store_64: Path,
                                                                            mode: str) -> None:
    """``open_store(path, mode="w")`` went to zarr, which emptied the store (5 MB to an empty
    group) before StoreNotFoundError; "x" or "rw" were a bare AssertionError."""
    import shutil

    copy = shutil.copytree(synth_store_64, tmp_path / "copy.zarr")
    files = sorted(p.relative_to(copy) for p in copy.rglob("*"))
    with pytest.raises(InvalidArgumentError, match=rf"^mode must be 'r' \(read\) or 'r\+' \(add splits\), got '{re.escape(mode)}'"):
        open_store(copy, mode=mode)
    assert sorted(p.relative_to(copy) for p in copy.rglob("*")) == files
    assert open_store(copy).n_patches == 64


def test_arguments_of_the_wrong_type_are_named(tmp_path: Path, synth_store_64: Path) -> None:
    """open_store(3) and make_split(None, ...) were a TypeError from pathlib; overwrite="no"
    replaced the split; a NaN mean made every input NaN."""
    import shutil

    from benzarr.data import BigEarthNetDataset
    from benzarr.split import make_split

    for path in (3, None):
        with pytest.raises(InvalidArgumentError, match=rf"a store is a path or URL \(str or os.PathLike\), got {type(path).__name__}"):
            open_store(path)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentError, match="a store is a path or URL"):
            make_split(path, "s", "random")  # type: ignore[arg-type]
    copy = shutil.copytree(synth_store_64, tmp_path / "copy.zarr")
    make_split(copy, "s", "random")
    with pytest.raises(InvalidArgumentError, match="overwrite must be True or False, got 'no'"):
        make_split(copy, "s", "random", overwrite="no")  # type: ignore[arg-type]
    ds = BigEarthNetDataset(copy, bands="rgb")
    for mean, std in (([math.nan, 0, 0], [1, 1, 1]), ([0, 0, 0], [1, -1, 1]), ([0, 0, "a"], [1, 1, 1])):
        with pytest.raises(InvalidArgumentError, match="mean and std must be finite numbers and std not negative"):
            ds.set_normalization(mean, std, "mine")


def test_writing_through_a_read_only_store_names_the_store_and_the_mode(tmp_path: Path, synth_store_64: Path) -> None:
    """zarr's "store was opened in read-only mode" ValueError named neither the store nor the fix."""
    import shutil

    from benzarr.split import make_split

    copy = shutil.copytree(synth_store_64, tmp_path / "copy.zarr")
    store = open_store(copy)
    expected = rf"^{re.escape(str(copy))}: opened read-only; open_store\('{re.escape(str(copy))}', mode='r\+'\)"
    for write in (lambda: store.update_attrs(note="x"), lambda: store.write_split("s", np.zeros(64, np.int8), {}),
                  lambda: store.delete_split("s"), lambda: make_split(store, "s", "random")):
        with pytest.raises(InvalidArgumentError, match=expected):
            write()
    assert open_store(copy).split_names() == []
    # a path is opened for writing: the notebook's make_split("s.zarr", ...) works
    assert (make_split(copy, "s", "random").codes == 0).sum() > 0
    assert open_store(copy).split_names() == ["s"]


def test_storage_options_with_a_local_path_are_one_line(synth_store_64: Path) -> None:
    """They reached zarr, whose TypeError said "'storage_options' was provided but unused"."""
    from benzarr.data import BigEarthNetDataset

    message = rf"^{re.escape(str(synth_store_64))}: storage_options apply to a URL \(s3://bucket/store.zarr\), not to"
    with pytest.raises(InvalidArgumentError, match=message):
        open_store(synth_store_64, storage_options={"anon": True})
    with pytest.raises(InvalidArgumentError, match=message):
        BigEarthNetDataset(synth_store_64, storage_options={"anon": True})
    assert open_store(synth_store_64, storage_options={}).n_patches == 64  # none given


def test_unknown_label_set_or_band_array_is_named(synth_store_64: Path) -> None:
    """class_names("clc44") and band_names("s2/5m") were bare KeyErrors; labels("clc44") already said."""
    store = open_store(synth_store_64)
    with pytest.raises(InvalidArgumentError, match=r"^unknown label set 'clc44': choose one of clc43, clc19$"):
        store.class_names("clc44")
    with pytest.raises(InvalidArgumentError, match=r": no band array 's2/5m' \(it has: s2/10m, s2/20m, s2/60m\)$"):
        store.band_names("s2/5m")
    assert store.band_names("s2/60m") == ["B01", "B09"] and len(store.class_names("clc19")) == 19
    with pytest.raises(InvalidArgumentError, match=r"^unknown modality 'S2' for band statistics: choose s2 or s1$"):
        store.band_stats("S2")  # was {}, as for a store without the modality
    assert store.band_stats("s1") == {} and set(store.band_stats("s2")) == set(BANDS)


def test_splits_are_stored_with_attributes_and_failed_rows_excluded(synth_store_64: Path, tmp_path: Path) -> None:
    import shutil

    path = tmp_path / "s.zarr"
    shutil.copytree(synth_store_64, path)
    store = open_store(path, mode="r+")
    valid = store.valid_mask().copy()
    store.array("meta/valid")[5] = False  # pretend row 5 failed ingest
    codes = np.arange(64, dtype=np.int8) % 3
    store.write_split("mine", codes, {"method": "test"})
    stored, attrs = store.read_split("mine")
    assert stored[5] == -1 and np.array_equal(np.delete(stored, 5), np.delete(codes, 5))
    assert attrs["method"] == "test" and sum(attrs["counts"].values()) == 64
    with pytest.raises(SplitExistsError, match="--overwrite"):
        store.write_split("mine", codes, {})
    with pytest.raises(SplitNotFoundError, match=r"splits in this store: mine"):
        store.read_split("other")
    with pytest.raises(InvalidArgumentError):
        store.write_split("bad", np.full(64, 7, dtype=np.int8), {})
    # cast to int8 first, these were stored: 0.5 as train, 1.7 as val, 255 as -1, 258 as 2, True as val
    for bad in (np.full(64, 0.5), np.full(64, 1.7), np.full(64, 255, np.uint8), np.full(64, 258), np.ones(64, bool)):
        with pytest.raises(InvalidArgumentError, match=r"^split codes must be -1, 0, 1 or 2 \(excluded, train, val, "
                                                       rf"test\), got {bad.dtype} values such as"):
            store.write_split("bad", bad, {})
    assert "bad" not in store.split_names()
    assert 5 not in store.subset_rows("mine", "train") and len(store.subset_rows(None, None)) == valid.sum() - 1


def test_labels_only_store_from_the_cli(tmp_path: Path) -> None:
    import subprocess
    import sys

    from benzarr.resources import read_official_list

    path = tmp_path / "labels.zarr"
    result = subprocess.run([sys.executable, "-m", "benzarr_cli", "synth", str(path), "--labels-only",
                             "--patches", "3000", "--seed", "1"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    store = open_store(path)
    assert store.n_patches == 3000 and not store.has_array("s2/10m")
    labels = store.labels("clc43")
    assert labels.shape == (3000, 43) and 1 <= labels.sum(axis=1).min() and labels.sum(axis=1).max() <= 6
    official = set(read_official_list("train")) | set(read_official_list("val")) | set(read_official_list("test"))
    assert set(store.patch_names()) <= official
    assert store.valid_mask().all()
    # marked complete the way ingest does it (Store.mark_complete): summaries, no staging left
    attrs = store.attrs
    assert attrs["n_failed"] == 0 and attrs["label_counts"]["clc43"]["Coniferous forest"] == int(labels[:, 23].sum())
    assert not any(path.startswith("ingest/stage") for path, _ in store.arrays())


@pytest.mark.parametrize("value", ["abc", None, [2], 2.5, True])
def test_a_format_version_that_is_not_a_whole_number_is_damage_named_by_file(tmp_path: Path, value: object,
                                                                            synth_store_64: Path) -> None:
    """It used to be int()-ed: 2.5 read as 2, "abc" gave an unexpected ValueError."""
    from benzarr.errors import StoreCorruptError
    from tests.conftest import copy_tree

    store = copy_tree(synth_store_64, tmp_path / "v.zarr")
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"]["benzarr"]["format_version"] = value
    (store / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(StoreCorruptError, match=r"v\.zarr/zarr\.json: the store's format_version is .*not a whole number"):
        open_store(store)


GONE = object()  # the attribute deleted


@pytest.mark.parametrize("key, value, expected", [
    ("complete", "false", 'attribute \'complete\' is "false", not a boolean'),  # read as complete
    ("classes", None, "attribute 'classes' is null, not an object"),  # unexpected AttributeError
    ("bands", None, "attribute 'bands' is null, not an object"),  # show: unexpected TypeError
    ("bands", {"s2/10m": "B02"}, "attribute 'bands' is"),
    ("n_patches", "40", "attribute 'n_patches' is \"40\", not a whole number"),
    ("label_sets", ["clc43", 1], "attribute 'label_sets' is"),
    # names out of order labelled every channel wrongly; a class list cut short: info's IndexError
    ("bands", {"s2/10m": ["B04", "B03", "B02", "B08"]},
     "attribute 'bands' lists the names of s2/10m wrongly from name 1 on ('B04' where this format has 'B02')"),
    ("classes", {"clc43": ["Continuous urban fabric", "Discontinuous urban fabric"]},
     "attribute 'classes' lists the names of clc43 wrongly from name 3 on (2 names where this format has 43)"),
    ("bands", GONE, "attributes lack 'bands'"),  # show: unexpected KeyError: 'bands'
    ("n_patches", GONE, "attributes lack 'n_patches'"),
])
def test_a_root_attribute_of_the_wrong_type_is_damage_named_by_file(tmp_path: Path, synth_store_64: Path, key: str,
                                                                    value: object, expected: str) -> None:
    """Checked when the store opens; verify exits with its corruption code 4."""
    from benzarr.errors import StoreCorruptError, StoreVerifyError
    from benzarr.verify import verify_store
    store = tmp_path / "v.zarr"
    store.mkdir()  # the root zarr.json is all that is read before the check
    meta = json.loads((synth_store_64 / "zarr.json").read_text())
    meta["attributes"]["benzarr"][key] = value
    if value is GONE:
        del meta["attributes"]["benzarr"][key]
    (store / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(StoreCorruptError, match=re.escape(f"v.zarr/zarr.json: the store's {expected}")):
        open_store(store)
    with pytest.raises(StoreVerifyError, match=re.escape(expected)) as info:
        verify_store(store, record=False)
    assert info.value.exit_code == 4


@pytest.mark.parametrize("what, message", [
    ("archive", "arch: not a benzarr store (no zarr.json); it holds a BigEarthNet v1 archive ("),
    ("run", "run: not a benzarr store (no zarr.json); it is a run folder of `benzarr train`, which `benzarr evaluate`"),
    ("array", "10m: an array inside the benzarr store "),
    ("group", "s2: a Zarr group, but not a benzarr store (no 'benzarr' attributes); it is inside the benzarr store "),
    ("file", "notes.txt: is a file, not a benzarr store"),
])
def test_a_folder_that_is_no_store_says_what_it_is(tmp_path: Path, synth_store_64: Path, synth_archive_64: Path,
                                                   what: str, message: str) -> None:
    """info/verify/bench said "not a Zarr v3 store (No group found in store 'arch' at path '')",
    and for an array of a store "(An array already exists in store ...)"."""
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "config.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("mine")
    os.symlink(synth_archive_64, tmp_path / "arch")
    path = {"archive": tmp_path / "arch", "run": tmp_path / "run", "array": synth_store_64 / "s2" / "10m",
            "group": synth_store_64 / "s2", "file": tmp_path / "notes.txt"}[what]
    with pytest.raises(StoreNotFoundError, match=re.escape(message)):
        open_store(path)


def test_a_folder_holding_both_layouts_is_named_as_such(tmp_path: Path, synth_archive_64: Path,
                                                        synth_v2_archive: Path) -> None:
    """v1 patch folders beside a v2 BigEarthNet-S2 folder: it said "it holds 12 entries that
    benzarr did not write" (the two sources' claims cancelled out); now both are named, with
    the --source that ingests one of them, and `examples` refuses the folder as it refuses one archive."""
    from benzarr.examples import extract_examples

    both = tmp_path / "both"
    both.mkdir()
    for entry in [*sorted(synth_archive_64.iterdir())[1:4], *synth_v2_archive.iterdir()]:  # (one .benzarr)
        if not (both / entry.name).exists():
            os.symlink(entry, both / entry.name)
    count = len(list(both.iterdir()))
    with pytest.raises(StoreNotFoundError, match=re.escape(
            f"{both}: not a benzarr store (no zarr.json); it holds both a BigEarthNet v1 and a BigEarthNet v2 "
            f"archive ({count} entries: ")) as caught:
        open_store(both)
    assert str(caught.value).endswith(f"`benzarr ingest {both} STORE --source v1` (or v2) makes a store of one of them")
    with pytest.raises(InvalidArgumentError, match="holds both a BigEarthNet v1 and a BigEarthNet v2 archive"):
        extract_examples(both)


def test_a_root_zarr_json_cut_short_is_damage_not_a_foreign_store(tmp_path: Path, synth_store_64: Path) -> None:
    from benzarr.errors import StoreCorruptError
    from benzarr.fsutil import describe
    from tests.conftest import copy_tree

    store = copy_tree(synth_store_64, tmp_path / "cut.zarr")
    raw = (store / "zarr.json").read_bytes()
    (store / "zarr.json").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(StoreCorruptError, match=r"zarr\.json: damaged store metadata \(not JSON"):
        open_store(store)
    assert "damaged" in describe(store) and "did not write" not in describe(store)


@pytest.mark.parametrize("array, edit, message", [
    ("s2/10m", {"data_type": "int16"}, "rows of shape (4, 120, 120) and data type int16, where this format stores "
                                       "(4, 120, 120) and uint16"),
    ("labels/clc43", {"shape": [64, 42]}, "rows of shape (42,) and data type uint8, where this format stores (43,) and uint8"),
    # fewer or more rows than patches: "unexpected IndexError: s2/10m: rows must lie in [0, 60)" in train
    ("s2/10m", {"shape": [60, 4, 120, 120]}, "60 rows in a store of 64 patches"),
    ("meta/patch_name", {"shape": [70]}, "70 rows in a store of 64 patches"),
])
def test_an_array_declared_with_another_row_shape_or_type_is_damage_named_by_file(
        tmp_path: Path, synth_store_64: Path, array: str, edit: dict, message: str) -> None:
    """Training met int16 10 m bands as "unexpected KeyError: dtype('int16')", and 42 label
    columns as a loss of the wrong size."""
    from benzarr.errors import StoreCorruptError
    from tests.conftest import copy_tree

    store = copy_tree(synth_store_64, tmp_path / "d.zarr")
    meta = json.loads((store / array / "zarr.json").read_text())
    (store / array / "zarr.json").write_text(json.dumps({**meta, **edit}))
    with pytest.raises(StoreCorruptError, match=re.escape(f"d.zarr/{array}/zarr.json: {message}")):
        open_store(store).array(array)


@pytest.mark.parametrize("folder", ["splits/r", "meta/epsg"])
def test_a_folder_without_zarr_json_is_one_warning_line_naming_it(tmp_path: Path, synth_store_64: Path,
                                                                   folder: str) -> None:
    """`rm s.zarr/splits/r/zarr.json; benzarr info s.zarr` printed zarr's own ZarrUserWarning
    ("Object at r is not recognized ...") with its `warnings.warn(` source line."""
    import shutil
    import subprocess
    import sys

    from benzarr.errors import UnsafeOverwriteError
    from benzarr.split import make_split

    store = tmp_path / "s.zarr"
    shutil.copytree(synth_store_64, store)
    make_split(open_store(store, mode="r+"), "r", "random", seed=0)
    (store / folder / "zarr.json").unlink()
    commands = [("info", store)] + ([("split", store, "--list")] if folder.startswith("splits") else [])
    for command in commands:
        result = subprocess.run([sys.executable, "-m", "benzarr_cli", *map(str, command)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("warning: "), result.stderr
        assert f"{store}/{folder}: a folder without zarr.json" in lines[0]
    if folder.startswith("splits"):  # not a split, and what is left of one is never replaced
        with pytest.warns(UserWarning, match="splits/r: a folder without zarr.json"):
            assert open_store(store).split_names() == []
        with pytest.warns(UserWarning), pytest.raises(UnsafeOverwriteError, match="not a split"):
            make_split(open_store(store, mode="r+"), "r", "random", seed=1, overwrite=True)
        assert (store / "splits" / "r" / "c" / "0").is_file()


# -- a Store held while another call updates or replaces the store (a notebook) -------------


@pytest.fixture
def other_archive_32(tmp_path: Path) -> Path:
    """A 32-patch synthetic archive, seed 1: other patches, pixels and labels than seed 0's."""
    from benzarr.synth import synth_archive

    out = tmp_path / "other-archive"
    synth_archive(out, 32, seed=1, workers=1)
    return out


def test_a_held_store_keeps_the_attributes_another_call_recorded(tmp_path: Path, synth_store_64: Path) -> None:
    """A Store kept open wrote back the attributes zarr read when it was opened: its next
    update_attrs dropped the `verified` and `split_stats` that verify and split_band_stats
    had recorded meanwhile through their own handles."""
    import shutil

    store = tmp_path / "s.zarr"
    shutil.copytree(synth_store_64, store)
    held = open_store(store, mode="r+")
    open_store(store, mode="r+").update_attrs(verified={"ok": True}, split_stats={"r": {}})
    assert held.attrs["verified"] == {"ok": True}  # read as they are now
    held.update_attrs(note="x")
    attrs = open_store(store).attrs
    assert (attrs["verified"], attrs["split_stats"], attrs["note"]) == ({"ok": True}, {"r": {}}, "x")


def test_attribute_and_split_writes_do_not_count_as_another_store(tmp_path: Path, synth_store_64: Path) -> None:
    """The identity a held Store checks survives what is done to a store in place: splits
    made, replaced and deleted, attributes added (also its own), verify's record."""
    import shutil

    from benzarr.split import make_split
    from benzarr.verify import verify_store

    store = tmp_path / "s.zarr"
    shutil.copytree(synth_store_64, store)
    held = open_store(store, mode="r+")
    make_split(open_store(store, mode="r+"), "r", "random", seed=0)
    make_split(open_store(store, mode="r+"), "r", "random", seed=1, overwrite=True)
    held.update_attrs(note="mine")
    verify_store(store)
    make_split(held, "q", "random", seed=0)
    held.delete_split("r")
    assert held.split_names() == ["q"] and held.n_patches == 64
    assert "verified" in held.attrs and open_store(store).attrs["note"] == "mine"


def test_a_held_store_refuses_once_another_store_is_at_its_path(tmp_path: Path, synth_archive_64: Path,
                                                                  other_archive_32: Path) -> None:
    """After `ingest(..., overwrite=True)` at its path, a Store kept open wrote its old
    attributes (n_patches 64, the old statistics) over the new store's, which then failed every
    open as damaged; its other methods mixed the old attributes with the new arrays."""
    from benzarr.errors import StoreChangedError
    from benzarr.split import make_split

    store = tmp_path / "s.zarr"
    ingest(synth_archive_64, store, workers=1, shard_size=16)
    held = open_store(store, mode="r+")
    ingest(other_archive_32, store, workers=1, shard_size=16, overwrite=True)
    expected = f"{store}: the store was replaced or removed since this Store was opened; open it again"
    for call in (lambda: held.update_attrs(note="x"), lambda: held.n_patches, lambda: held.labels(),
                 lambda: make_split(held, "r", "random", seed=0), lambda: held.read_split("r")):
        with pytest.raises(StoreChangedError) as caught:
            call()
        assert str(caught.value) == expected
    assert isinstance(caught.value, StoreNotFoundError) and caught.value.exit_code == 1
    assert "replaced" in repr(held)  # a notebook shows it without an error
    fresh = open_store(store)
    assert fresh.n_patches == 32 and "note" not in fresh.attrs and fresh.split_names() == []
    fresh.labels()  # its label counts are its own: not damaged
    import shutil

    shutil.rmtree(store)
    with pytest.raises(StoreChangedError, match="replaced or removed"):
        held.attrs


# -- two writers at once -----------------------------------------------------------------

_WRITER = """
import sys
import numpy as np
from benzarr.errors import SplitExistsError
from benzarr.store import open_store
store, tag, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
import time
while time.time() < start:  # both processes begin together
    time.sleep(0.001)
opened = open_store(store, mode="r+")
for i in range(25):  # a key of its own each time, as a train caching its split's figures
    with opened.editing_attrs() as attrs:
        attrs.setdefault("notes", {})[f"{tag}{i}"] = i
codes = np.full(opened.n_patches, int(tag == "b"), dtype=np.int8)
try:
    opened.write_split("same", codes, {"by": tag})
    print("wrote")
except SplitExistsError:
    print("exists")
"""


def test_two_processes_writing_attributes_and_one_split_name_at_once_lose_nothing(synth_store_64: Path,
                                                                                  tmp_path: Path) -> None:
    """Two processes each adding attribute keys kept 169 of 300 (each read, merged and wrote over
    the other's write), and two `split` runs of one new name both "created" it, the last one's
    silently replacing the first. Under the store's write lock every key stays, and exactly one
    writer creates the split; the other is told it exists."""
    import subprocess
    import sys
    import time

    from benzarr.store import SPLITS_GROUP
    from tests.conftest import copy_tree

    store = copy_tree(synth_store_64, tmp_path / "s.zarr")
    start = str(time.time() + 1.5)  # after both interpreters have started
    writers = [subprocess.Popen([sys.executable, "-c", _WRITER, str(store), tag, start], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for tag in ("a", "b")]
    said = [writer.communicate(timeout=120) for writer in writers]
    assert [writer.returncode for writer in writers] == [0, 0], said
    assert sorted(out.strip() for out, _ in said) == ["exists", "wrote"], said
    opened = open_store(store)
    assert sorted(opened.attrs["notes"]) == sorted(f"{tag}{i}" for tag in "ab" for i in range(25))
    winner = "a" if said[0][0].strip() == "wrote" else "b"
    codes, attrs = opened.read_split("same")
    assert attrs["by"] == winner and (codes[opened.valid_mask()] == int(winner == "b")).all()
    assert [p.name for p in (store / SPLITS_GROUP).iterdir() if p.name.startswith(".")] == []
    assert not list(tmp_path.glob(".*.lock"))
