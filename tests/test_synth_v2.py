"""Synthetic BigEarthNet v2.0 (reBEN) and v1.0 S2+S1 archives: layout, parquet schema,
modalities agreeing with each other and with the labels, determinism, float32 GeoTIFFs."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import rasterio
from affine import Affine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from benzarr._geotiff import geotiff_bytes, write_geotiff
from benzarr.bigearthnet import (
    BANDS,
    CLC19,
    CLC19_FROM_CLC43,
    CLC43,
    CLC43_CODES,
    S1_BANDS,
    band_side,
    is_s1_name,
    is_v2_patch_name,
    s1_product,
    v2_tile_product,
)
from benzarr.errors import InvalidArgumentError
from benzarr.synth import (
    _plan_v2,
    synth_archive,
    synth_archive_v2,
    synth_labels_v2,
    synth_patch_names,
)

N, SEED = 60, 1  # 3 flagged patches (1 snow, 2 cloud) for this seed
COLUMNS = {
    "patch_id": pa.string(),
    "labels": pa.list_(pa.string()),
    "split": pa.string(),
    "country": pa.string(),
    "s1_name": pa.string(),
    "s2v1_name": pa.string(),
    "contains_seasonal_snow": pa.bool_(),
    "contains_cloud_or_shadow": pa.bool_(),
}


@pytest.fixture(scope="module")
def v2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    out = tmp_path_factory.mktemp("v2") / "reben"
    ids = synth_archive_v2(out, N, seed=SEED, s1=True, reference_maps=True, workers=1)
    return out, ids


@pytest.fixture(scope="module")
def rows(v2: tuple[Path, list[str]]) -> dict[str, dict]:
    """patch_id -> parquet row (with 'flagged_file': which file it came from)."""
    out, _ = v2
    result = {}
    for name, flagged in (("metadata.parquet", False),
                          ("metadata_for_patches_with_snow_cloud_or_shadow.parquet", True)):
        for row in pq.read_table(out / name).to_pylist():
            assert row["patch_id"] not in result
            result[row["patch_id"]] = row | {"flagged_file": flagged}
    return result


def _read_tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _clc43_of(patch: dict) -> list[int]:
    """The CLC43 label indices the generator drew for a v2 patch (via its v1 name)."""
    v1_names = synth_patch_names(N, SEED)
    return np.flatnonzero(synth_labels_v2(N, SEED)[v1_names.index(patch["s2v1_name"])]).tolist()


# --- layout -------------------------------------------------------------------------------------


def test_v2_top_level_holds_the_three_folders_and_two_parquets(v2: tuple[Path, list[str]]) -> None:
    out, ids = v2
    assert sorted(p.name for p in out.iterdir()) == [
        ".benzarr", "BigEarthNet-S1", "BigEarthNet-S2", "Reference_Maps", "metadata.parquet",
        "metadata_for_patches_with_snow_cloud_or_shadow.parquet",
    ]
    assert ids == sorted(ids) and len(set(ids)) == N


def test_v2_patch_ids_parse_and_sit_in_their_tile_product_folder(v2: tuple[Path, list[str]]) -> None:
    out, ids = v2
    for pid in ids:
        assert is_v2_patch_name(pid)
        folder = out / "BigEarthNet-S2" / v2_tile_product(pid) / pid
        assert sorted(p.name for p in folder.iterdir()) == sorted(f"{pid}_{b}.tif" for b in BANDS)
        assert (out / "Reference_Maps" / v2_tile_product(pid) / pid / f"{pid}_reference_map.tif").is_file()
    assert sum(1 for _ in (out / "BigEarthNet-S2").glob("*/*")) == N
    assert sum(1 for _ in (out / "Reference_Maps").glob("*/*")) == N


def test_s1_names_pair_with_their_s2_patch(v2: tuple[Path, list[str]], rows: dict[str, dict]) -> None:
    out, _ = v2
    for pid, row in rows.items():
        s1 = row["s1_name"]
        assert is_s1_name(s1)
        folder = out / "BigEarthNet-S1" / s1_product(s1) / s1
        assert sorted(p.name for p in folder.iterdir()) == [f"{s1}_VH.tif", f"{s1}_VV.tif"]
        tile, r, c = pid.rsplit("_", 3)[1:]
        assert s1.endswith(f"_{tile[1:]}_{r}_{c}")
        s2_day = datetime.strptime(pid.split("_")[2][:8], "%Y%m%d")
        s1_day = datetime.strptime(s1.split("_")[4][:8], "%Y%m%d")
        assert abs((s1_day - s2_day).days) <= 2
    assert sum(1 for _ in (out / "BigEarthNet-S1").glob("*/*")) == N


def test_parquet_schema_is_the_reben_one(v2: tuple[Path, list[str]]) -> None:
    out, _ = v2
    for name in ("metadata.parquet", "metadata_for_patches_with_snow_cloud_or_shadow.parquet"):
        schema = pq.read_schema(out / name)
        assert schema.names == list(COLUMNS)
        for column, kind in COLUMNS.items():
            assert schema.field(column).type.equals(kind, check_metadata=False) or (
                pa.types.is_list(kind) and pa.types.is_list(schema.field(column).type)
                and schema.field(column).type.value_type == pa.string()
            ), column


def test_parquet_rows_cover_every_patch_once_with_valid_values(
    v2: tuple[Path, list[str]], rows: dict[str, dict]
) -> None:
    _, ids = v2
    assert sorted(rows) == ids
    for pid, row in rows.items():
        assert row["split"] in {"train", "validation", "test"}
        assert row["country"]
        assert row["s2v1_name"].endswith("_" + "_".join(pid.rsplit("_", 2)[1:]))
        assert row["s2v1_name"].split("_")[2][:8] == pid.split("_")[2][:8]


def test_flagged_patches_are_only_in_the_second_parquet(rows: dict[str, dict]) -> None:
    flagged = [r for r in rows.values() if r["flagged_file"]]
    clean = [r for r in rows.values() if not r["flagged_file"]]
    assert 0 < len(flagged) < len(clean)
    assert all(r["contains_seasonal_snow"] or r["contains_cloud_or_shadow"] for r in flagged)
    assert not any(r["contains_seasonal_snow"] or r["contains_cloud_or_shadow"] for r in clean)


def test_about_5_percent_flagged_and_a_50_25_25_split() -> None:
    columns = _plan_v2(4000, 0).columns
    flagged = np.array(columns["contains_seasonal_snow"]) | np.array(columns["contains_cloud_or_shadow"])
    assert 0.035 < flagged.mean() < 0.065
    split = np.array(columns["split"])
    for name, share in (("train", 0.5), ("validation", 0.25), ("test", 0.25)):
        assert abs((split == name).mean() - share) < 0.03


# --- labels ---------------------------------------------------------------------------------------


def test_clc19_labels_are_never_empty_and_convert_the_clc43_ones(rows: dict[str, dict]) -> None:
    for row in rows.values():
        labels43 = set(_clc43_of(row))
        expected = [CLC19[j] for j, olds in enumerate(CLC19_FROM_CLC43) if labels43 & set(olds)]
        assert row["labels"] == expected
        assert row["labels"]


def test_redrawn_labels_have_a_clc19_class_for_every_patch() -> None:
    members = {i for olds in CLC19_FROM_CLC43 for i in olds}
    labels = synth_labels_v2(20000, 3)
    assert all(members & set(np.flatnonzero(r).tolist()) for r in labels)
    assert 1 <= labels.sum(axis=1).min() and labels.sum(axis=1).max() <= 6


def test_reference_map_codes_are_exactly_the_clc43_labels(
    v2: tuple[Path, list[str]], rows: dict[str, dict]
) -> None:
    out, _ = v2
    for pid, row in rows.items():
        with rasterio.open(out / "Reference_Maps" / v2_tile_product(pid) / pid / f"{pid}_reference_map.tif") as ds:
            assert ds.dtypes == ("uint16",) and ds.shape == (120, 120)
            codes = set(np.unique(ds.read(1)).tolist())
        assert codes == {CLC43_CODES[i] for i in _clc43_of(row)}, pid


# --- pixels and georeferencing ----------------------------------------------------------------------


def test_modalities_share_crs_and_square_with_native_shapes_and_dtypes(
    v2: tuple[Path, list[str]], rows: dict[str, dict]
) -> None:
    out, ids = v2
    for pid in ids[:: max(1, N // 12)]:
        s1 = rows[pid]["s1_name"]
        files = {f"{b}": out / "BigEarthNet-S2" / v2_tile_product(pid) / pid / f"{pid}_{b}.tif" for b in BANDS}
        files |= {p: out / "BigEarthNet-S1" / s1_product(s1) / s1 / f"{s1}_{p}.tif" for p in S1_BANDS}
        files["map"] = out / "Reference_Maps" / v2_tile_product(pid) / pid / f"{pid}_reference_map.tif"
        origins, crss = set(), set()
        for key, path in files.items():
            with rasterio.open(path) as ds:
                side = band_side(key) if key in BANDS else 120
                assert ds.shape == (side, side)
                assert ds.dtypes == (("float32",) if key in S1_BANDS else ("uint16",))
                t = ds.transform
                assert (t.a, t.e) == (1200 / side, -1200 / side)
                origins.add((t.c, t.f))
                crss.add(ds.crs.to_epsg())
        assert len(origins) == 1 and len(crss) == 1


def test_s1_is_backscatter_in_db_and_shows_the_classes(
    v2: tuple[Path, list[str]], rows: dict[str, dict]
) -> None:
    out, _ = v2
    by_group: dict[str, list[float]] = {"urban": [], "water": []}
    vv_all, vh_all = [], []
    for pid, row in rows.items():
        s1 = row["s1_name"]
        folder = out / "BigEarthNet-S1" / s1_product(s1) / s1
        with rasterio.open(folder / f"{s1}_VV.tif") as ds:
            vv = ds.read(1)
        with rasterio.open(folder / f"{s1}_VH.tif") as ds:
            vh = ds.read(1)
        with rasterio.open(out / "Reference_Maps" / v2_tile_product(pid) / pid / f"{pid}_reference_map.tif") as ds:
            ref = ds.read(1)
        vv_all.append(vv.mean())
        vh_all.append(vh.mean())
        if (ref // 100 == 1).any():
            by_group["urban"].append(float(vv[ref // 100 == 1].mean()))
        if (ref // 10 == 51).any() or (ref // 10 == 52).any():
            by_group["water"].append(float(vv[(ref // 10 == 51) | (ref // 10 == 52)].mean()))
    assert -20 < np.mean(vv_all) < -6 and np.mean(vh_all) < np.mean(vv_all) - 4
    assert by_group["urban"] and by_group["water"]
    assert np.mean(by_group["water"]) < np.mean(by_group["urban"]) - 8


def test_flagged_patches_show_their_cover(v2: tuple[Path, list[str]], rows: dict[str, dict]) -> None:
    out, _ = v2

    def blue(pid: str) -> float:
        with rasterio.open(out / "BigEarthNet-S2" / v2_tile_product(pid) / pid / f"{pid}_B02.tif") as ds:
            return float(ds.read(1).mean())

    flagged = [blue(p) for p, r in rows.items() if r["flagged_file"]]
    clean = [blue(p) for p, r in rows.items() if not r["flagged_file"]]
    assert min(flagged) > np.median(clean) + 1000


# --- v1.0 S2 + S1 ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def v1s1(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    out = tmp_path_factory.mktemp("v1s1") / "download"
    return out, synth_archive(out, 8, seed=4, workers=1, s1=True)


def test_v1_s1_root_holds_the_s2_archive_unchanged(
    v1s1: tuple[Path, list[str]], tmp_path: Path
) -> None:
    out, names = v1s1
    assert sorted(p.name for p in out.iterdir()) == [".benzarr", "BigEarthNet-S1-v1.0", "BigEarthNet-v1.0"]
    plain = tmp_path / "plain"
    assert synth_archive(plain, 8, seed=4, workers=1) == names
    plain_tree = _read_tree(plain)
    assert plain_tree.pop(".benzarr")  # synth's marker sits at the top of what it wrote
    assert _read_tree(out / "BigEarthNet-v1.0") == plain_tree


def test_v1_s1_patches_have_the_real_json_and_pair_with_s2(v1s1: tuple[Path, list[str]]) -> None:
    out, names = v1s1
    s1_folders = sorted((out / "BigEarthNet-S1-v1.0").iterdir())
    assert len(s1_folders) == len(names)
    paired = set()
    for folder in s1_folders:
        s1 = folder.name
        assert is_s1_name(s1)
        assert sorted(p.name for p in folder.iterdir()) == [
            f"{s1}_VH.tif", f"{s1}_VV.tif", f"{s1}_labels_metadata.json",
        ]
        meta = json.loads((folder / f"{s1}_labels_metadata.json").read_text())
        assert list(meta) == ["labels", "coordinates", "projection", "corresponding_s2_patch",
                              "scene_source", "acquisition_time"]
        s2 = meta["corresponding_s2_patch"]
        s2_meta = json.loads((out / "BigEarthNet-v1.0" / s2 / f"{s2}_labels_metadata.json").read_text())
        assert meta["labels"] == s2_meta["labels"] and set(meta["labels"]) <= set(CLC43)
        c, c2 = meta["coordinates"], s2_meta["coordinates"]
        assert list(c) == ["ulx", "uly", "lrx", "lly"]
        assert (c["ulx"], c["uly"], c["lrx"], c["lly"]) == (c2["ulx"], c2["uly"], c2["lrx"], c2["lry"])
        assert meta["projection"] == s2_meta["projection"]
        assert s1.endswith("_" + "_".join(s2.rsplit("_", 2)[1:]))
        assert meta["scene_source"].startswith(s1_product(s1) + "_")
        when = datetime.strptime(meta["acquisition_time"], "%Y-%m-%dT%H:%M:%S")
        assert when.strftime("%Y%m%dT%H%M%S") == s1.split("_")[4]
        s2_when = datetime.strptime(s2_meta["acquisition_date"], "%Y-%m-%d %H:%M:%S")
        assert abs((when.date() - s2_when.date()).days) <= 2
        for pol in S1_BANDS:
            with rasterio.open(folder / f"{s1}_{pol}.tif") as ds:
                assert ds.dtypes == ("float32",) and ds.shape == (120, 120)
                assert ds.transform == Affine(10.0, 0.0, c["ulx"], 0.0, -10.0, c["uly"])
                assert ds.block_shapes == [(17, 120)]  # GDAL's strips, as in the real files
        paired.add(s2)
    assert sorted(paired) == names


# --- determinism and arguments ------------------------------------------------------------------------


def test_v2_same_seed_gives_same_bytes_whatever_the_workers(tmp_path: Path) -> None:
    one = synth_archive_v2(tmp_path / "one", 24, seed=9, s1=True, reference_maps=True, workers=1)
    two = synth_archive_v2(tmp_path / "two", 24, seed=9, s1=True, reference_maps=True, workers=2)
    assert one == two
    assert _read_tree(tmp_path / "one") == _read_tree(tmp_path / "two")


def test_v1_s1_same_seed_gives_same_bytes_whatever_the_workers(tmp_path: Path) -> None:
    synth_archive(tmp_path / "one", 20, seed=3, workers=1, s1=True)
    synth_archive(tmp_path / "two", 20, seed=3, workers=2, s1=True)
    assert _read_tree(tmp_path / "one") == _read_tree(tmp_path / "two")


def test_v2_without_options_writes_s2_and_parquets_only(tmp_path: Path) -> None:
    out = tmp_path / "s2only"
    ids = synth_archive_v2(out, 5, seed=0, workers=1)
    assert sorted(p.name for p in out.iterdir()) == [
        ".benzarr", "BigEarthNet-S2", "metadata.parquet", "metadata_for_patches_with_snow_cloud_or_shadow.parquet",
    ]
    assert len(ids) == 5


def test_v2_overwrite_replaces_the_archive_and_keeps_user_files(tmp_path: Path) -> None:
    out = tmp_path / "a"
    synth_archive_v2(out, 6, seed=1, s1=True, workers=1)
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(InvalidArgumentError, match="a synthetic archive is already there; pass --overwrite"):
        synth_archive_v2(out, 4, seed=2, workers=1)
    ids = synth_archive_v2(out, 4, seed=2, workers=1, overwrite=True)
    assert not (out / "BigEarthNet-S1").exists()
    assert sorted(p.name for p in (out / "BigEarthNet-S2").glob("*/*")) == ids
    assert (out / "notes.txt").read_text() == "keep me"


def test_v2_progress_counts_every_patch(tmp_path: Path) -> None:
    seen: list[int] = []
    synth_archive_v2(tmp_path / "p", 30, seed=0, workers=2, progress=seen.append)
    assert sum(seen) == 30


def test_cli_writes_v2_with_s1_and_reference_maps(tmp_path: Path) -> None:
    from benzarr_cli.main import app

    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["synth", str(out), "--version", "2", "--s1", "--reference-maps",
                                      "--patches", "4", "--seed", "3", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "4 patches (62 files" in result.output  # 4 x (12 + 2 + 1) + 2 parquets
    assert {p.name for p in out.iterdir()} >= {"BigEarthNet-S1", "Reference_Maps", "metadata.parquet"}


def test_cli_writes_the_v1_s1_download_root(tmp_path: Path) -> None:
    from benzarr_cli.main import app

    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["synth", str(out), "--s1", "--patches", "3", "--workers", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [".benzarr", "BigEarthNet-S1-v1.0", "BigEarthNet-v1.0"]


def test_cli_refuses_reference_maps_for_v1(tmp_path: Path) -> None:
    from benzarr_cli.main import app

    result = CliRunner().invoke(app, ["synth", str(tmp_path / "x"), "--reference-maps", "--patches", "2"])
    assert isinstance(result.exception, InvalidArgumentError)
    assert not (tmp_path / "x").exists()


# --- float32 GeoTIFFs ----------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    height=st.integers(1, 200),
    width=st.integers(1, 200),
    epsg=st.sampled_from([32629, 32631, 32633, 32635, 32701]),
    ulx=st.integers(100_000, 900_000),
    uly=st.integers(0, 9_000_000),
    pixel=st.sampled_from([10.0, 20.0, 60.0, 0.5]),
    seed=st.integers(0, 2**32 - 1),
)
def test_float32_rasters_read_back_exactly(
    tmp_path: Path, height: int, width: int, epsg: int, ulx: int, uly: int, pixel: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    pixels = (rng.standard_normal((height, width)) * 8 - 12).astype(np.float32)
    special = np.array([np.nan, np.inf, -np.inf, np.finfo(np.float32).max, -0.0], dtype=np.float32)
    pixels.flat[: min(pixels.size, 5)] = special[: min(pixels.size, 5)]
    path = tmp_path / f"f_{height}_{width}_{seed}.tif"
    assert write_geotiff(path, pixels, epsg, ulx, uly, pixel) == path.stat().st_size
    with rasterio.open(path) as ds:
        assert ds.dtypes == ("float32",) and ds.shape == (height, width)
        assert ds.crs.to_epsg() == epsg
        assert ds.transform == Affine(pixel, 0.0, ulx, 0.0, -pixel, uly)
        assert ds.nodata is None and ds.compression is None
        np.testing.assert_array_equal(ds.read(1), pixels)


def test_reproduces_real_s1_files_byte_for_byte(real_s1_archive: Path) -> None:
    files = sorted(real_s1_archive.glob("*/*.tif"))
    assert files
    for path in files:
        with rasterio.open(path) as ds:
            pixels, t, epsg = ds.read(1), ds.transform, ds.crs.to_epsg()
        assert pixels.dtype == np.float32
        assert geotiff_bytes(pixels, epsg, t.c, t.f, t.a) == path.read_bytes(), path.name


def test_other_pixel_types_are_refused() -> None:
    for dtype in (np.float64, np.int16, np.uint8):
        with pytest.raises(ValueError):
            geotiff_bytes(np.zeros((4, 4), dtype), 32633, 0, 0, 10)
