"""benzarr ingest: pixel-exact, deterministic, resumable, and loud about bad input."""

from __future__ import annotations

import contextlib
import json
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr

from benzarr.archive import clc43_to_clc19, discover_patches
from benzarr.bigearthnet import BAND_GROUPS, BANDS, CLC19, CLC43
from benzarr.errors import (
    ArchiveNotFoundError,
    BadPatchError,
    NotAnArchiveError,
    StoreExistsError,
    StoreIncompleteError,
    StoreParametersError,
    StoreVersionError,
)
from benzarr.ingest import ingest
from benzarr.store import open_store
from tests.conftest import CLI, copy_tree, run_cli

def all_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of a store, by path (splits excluded)."""
    group = zarr.open_group(str(path), mode="r")
    out = {}

    def walk(g: zarr.Group, prefix: str) -> None:
        for name, node in g.members():
            if isinstance(node, zarr.Array):
                out[prefix + name] = np.asarray(node[:])
            else:
                walk(node, prefix + name + "/")

    walk(group, "")
    return out


def assert_stores_equal(a: Path, b: Path) -> None:
    arrays_a, arrays_b = all_arrays(a), all_arrays(b)
    assert sorted(arrays_a) == sorted(arrays_b)
    for name in arrays_a:
        assert np.array_equal(arrays_a[name], arrays_b[name]), name


# -- real data ---------------------------------------------------------------------------


def test_real_patches_are_ingested_pixel_exact(real_s2_archive: Path, tmp_path: Path) -> None:
    store_path = tmp_path / "real.zarr"
    result = ingest(real_s2_archive, store_path, workers=1, shard_size=4)
    assert result.failed == {} and result.n_patches == 6
    store = open_store(store_path)
    names = store.patch_names()
    assert list(names) == sorted(discover_patches(real_s2_archive))
    for group, (bands, _, _) in BAND_GROUPS.items():
        stored = store.array(f"s2/{group}")[:]
        for row, name in enumerate(names):
            for c, band in enumerate(bands):
                with rasterio.open(real_s2_archive / name / f"{name}_{band}.tif") as tif:
                    assert np.array_equal(stored[row, c], tif.read(1)), (name, band)
    for row, name in enumerate(names):
        meta = json.loads((real_s2_archive / name / f"{name}_labels_metadata.json").read_text())
        expected = [CLC43.index(label) for label in meta["labels"]]
        assert sorted(np.flatnonzero(store.labels("clc43")[row])) == sorted(expected)
        coords = meta["coordinates"]
        assert list(store.array("meta/bounds")[row]) == [coords["ulx"], coords["uly"], coords["lrx"], coords["lry"]]
        assert 32600 < store.array("meta/epsg")[row] < 32661
    assert np.array_equal(store.labels("clc19"), clc43_to_clc19(store.labels("clc43")))


def test_official_folder_layout_is_found(real_s2_archive: Path, tmp_path: Path) -> None:
    # The official download unpacks as BigEarthNet-v1.0/<patch>/...
    root = tmp_path / "download"
    copy_tree(real_s2_archive, root / "BigEarthNet-v1.0")
    assert ingest(root, tmp_path / "s.zarr", workers=1).n_patches == 6


def test_clc19_follows_the_official_conversion() -> None:
    clc43 = np.zeros((3, 43), dtype=np.uint8)
    clc43[0, CLC43.index("Salines")] = 1
    clc43[1, CLC43.index("Airports")] = 1  # maps to nothing
    clc43[2, [CLC43.index("Vineyards"), CLC43.index("Olive groves")]] = 1
    clc19 = clc43_to_clc19(clc43)
    assert np.flatnonzero(clc19[0]).tolist() == [CLC19.index("Coastal wetlands")]
    assert clc19[1].sum() == 0
    assert np.flatnonzero(clc19[2]).tolist() == [CLC19.index("Permanent crops")]


# -- synthetic data ----------------------------------------------------------------------


def test_store_bytes_do_not_depend_on_worker_count(synth_archive_64: Path, tmp_path: Path) -> None:
    one = tmp_path / "one.zarr"
    two = tmp_path / "two.zarr"
    ingest(synth_archive_64, one, workers=1, shard_size=16)
    ingest(synth_archive_64, two, workers=2, shard_size=16)
    files_one = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    files_two = sorted(p.relative_to(two) for p in two.rglob("*") if p.is_file())
    assert files_one == files_two
    for rel in files_one:
        assert (one / rel).read_bytes() == (two / rel).read_bytes(), rel


def test_a_store_replaced_in_the_same_process_is_written_for_its_own_grid(synth_archive_64: Path,
                                                                         synth_store_64: Path, tmp_path: Path) -> None:
    """Ingest, then ``overwrite=True`` with another shard size, in one process (a notebook, a
    long-lived Dask worker): the worker's cached store kept the old store's shard grid and wrote
    every shard index for 32 chunks into a 16-chunk store, which no reader could open."""
    store = tmp_path / "s.zarr"
    ingest(synth_archive_64, store, workers=1, shard_size=32)
    ingest(synth_archive_64, store, workers=1, shard_size=16, compression="lz4", overwrite=True)
    for rel in sorted(p.relative_to(synth_store_64) for p in synth_store_64.rglob("*") if p.is_file()):
        assert (store / rel).read_bytes() == (synth_store_64 / rel).read_bytes(), rel


def test_an_ingest_in_this_process_leaves_the_callers_gdal_settings_as_they_were(synth_archive_64: Path,
                                                                                tmp_path: Path) -> None:
    """workers=1 runs in the caller's process (a notebook), as does a runner calling the shard
    function in its own thread: ingest entered a GDAL environment there and never left it, so
    the caller's own rasterio reads no longer saw .aux.xml sidecars and GDAL's log went to
    /dev/null."""
    import rasterio.env
    from rasterio.transform import Affine

    tif = tmp_path / "side.tif"
    with rasterio.open(tif, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint8",
                       crs="EPSG:32632", transform=Affine(1, 0, 0, 0, -1, 8)) as out:
        out.write(np.ones((1, 8, 8), "uint8"))
    (tmp_path / "side.tif.aux.xml").write_text(
        '<PAMDataset><Metadata><MDI key="SOURCE">sidecar</MDI></Metadata></PAMDataset>')

    def sidecar_seen() -> bool:
        with rasterio.open(tif) as dataset:
            return dataset.tags().get("SOURCE") == "sidecar"

    assert not rasterio.env.hasenv() and sidecar_seen()
    ingest(synth_archive_64, tmp_path / "a.zarr", workers=1, shard_size=32)
    assert not rasterio.env.hasenv() and rasterio.env.get_gdal_config("CPL_LOG") is None and sidecar_seen()

    def in_this_thread(fn, calls):  # noqa: ANN001, ANN202 - a ShardRunner
        return ((index, fn(*args)) for index, args in enumerate(calls))

    ingest(synth_archive_64, tmp_path / "b.zarr", runner=in_this_thread, shard_size=32)
    assert not rasterio.env.hasenv() and sidecar_seen()
    assert_stores_equal(tmp_path / "a.zarr", tmp_path / "b.zarr")


def test_band_statistics_match_numpy(synth_store_64: Path) -> None:
    store = open_store(synth_store_64)
    stats = store.band_stats()
    for group, (bands, _, _) in BAND_GROUPS.items():
        data = store.array(f"s2/{group}")[:].astype(np.float64)
        for c, band in enumerate(bands):
            values = data[:, c]
            assert stats[band]["count"] == values.size
            assert stats[band]["mean"] == pytest.approx(values.mean(), rel=1e-9)
            assert stats[band]["std"] == pytest.approx(values.std(), rel=1e-9)
            assert stats[band]["min"] == values.min() and stats[band]["max"] == values.max()
    assert list(stats) == list(BANDS)


def test_exclude_and_patches_lists(synth_archive_64: Path, tmp_path: Path) -> None:
    names = discover_patches(synth_archive_64)
    exclude = tmp_path / "exclude.txt"
    exclude.write_text("\n".join(names[:5]) + "\n")
    subset = tmp_path / "subset.txt"
    subset.write_text("\n".join(names[:20] + ["S2A_MSIL2A_20990101T000000_1_1"]) + "\n")
    result = ingest(synth_archive_64, tmp_path / "s.zarr", workers=1, exclude=[exclude], patches=subset)
    assert result.n_patches == 15 and result.excluded == 5
    assert result.not_in_archive == ["S2A_MSIL2A_20990101T000000_1_1"]
    assert list(open_store(tmp_path / "s.zarr").patch_names()) == names[5:20]


def test_official_exclusion_lists_by_name(real_s2_archive: Path, tmp_path: Path) -> None:
    # One of the six example patches (Finland, February) is on the seasonal-snow list.
    with pytest.warns(UserWarning, match=r"^--exclude cloud-shadow: none of its [\d,]+ names is a patch of .*, "
                                         r"so it excludes nothing$"):
        result = ingest(real_s2_archive, tmp_path / "s.zarr", workers=1, exclude=["cloud-shadow", "seasonal-snow"])
    assert result.n_patches == 5 and result.excluded == 1
    assert "S2B_MSIL2A_20180204T94161_57_38" not in open_store(tmp_path / "s.zarr").patch_names()


def test_v2_patches_are_excluded_by_their_flags_and_by_their_v1_names(synth_v2_archive: Path, tmp_path: Path) -> None:
    """`--exclude cloud-shadow` excluded nothing from a v2 archive, silently: the official
    lists name v1 patches, and v2 patch ids never match them."""
    import warnings

    import pandas as pd

    flagged = pd.read_parquet(synth_v2_archive / "metadata_for_patches_with_snow_cloud_or_shadow.parquet")
    cloudy = sorted(flagged.loc[flagged["contains_cloud_or_shadow"], "patch_id"])
    assert cloudy  # the archive flags some
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        result = ingest(synth_v2_archive, tmp_path / "a.zarr", workers=1, exclude=["cloud-shadow"], modalities=["s2"])
    assert not [w for w in seen if str(w.message).startswith("--exclude")]  # it names patches: no warning
    assert result.excluded == len(cloudy) and not set(cloudy) & set(open_store(tmp_path / "a.zarr").patch_names())
    # a file of v1 names (as the official lists are) excludes the v2 patches that carry them
    table = pd.read_parquet(synth_v2_archive / "metadata.parquet")
    names = tmp_path / "v1-names.txt"
    names.write_text("\n".join(table["s2v1_name"][:3]) + "\n")
    again = ingest(synth_v2_archive, tmp_path / "b.zarr", workers=1, exclude=[names], modalities=["s2"])
    assert again.excluded == 3 and not set(table["patch_id"][:3]) & set(open_store(tmp_path / "b.zarr").patch_names())


# -- resume ------------------------------------------------------------------------------


def test_killed_ingest_resumes_to_the_same_store(synth_archive_64: Path, synth_store_64: Path, tmp_path: Path) -> None:
    store_path = tmp_path / "killed.zarr"
    args = ["ingest", synth_archive_64, store_path, "--shard-size", "16", "--workers", "2", "--quiet"]
    process = subprocess.Popen([*CLI, *map(str, args)], start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done_dir = store_path / "ingest" / "done" / "c"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if done_dir.is_dir() and len(list(done_dir.iterdir())) >= 1:
            break
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)  # the driver and its workers, mid-run
    process.wait()
    with pytest.raises(StoreIncompleteError, match="resume"):
        open_store(store_path)
    info = run_cli("info", store_path)
    assert info.returncode == 0 and "INCOMPLETE" in info.stdout
    resumed = run_cli(*args)
    assert resumed.returncode == 0, resumed.stderr
    assert_stores_equal(store_path, synth_store_64)
    assert open_store(store_path).complete


def _children(pid: int) -> list[int]:
    """Live processes whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _ingest_under_way(args: list, stderr: int) -> tuple[subprocess.Popen, list[int]]:
    """``benzarr ARGS`` (an ingest into a store ``args[2]``) started in its own session, once its
    2 workers run and one shard is done: (the driver, its children)."""
    process = subprocess.Popen([*CLI, *map(str, args)], start_new_session=True, stdout=subprocess.DEVNULL,
                               stderr=stderr, text=True)
    done_dir = Path(args[2]) / "ingest" / "done" / "c"
    deadline, workers = time.monotonic() + 120, []
    while time.monotonic() < deadline and process.poll() is None:
        workers = _children(process.pid)
        if len(workers) >= 2 and done_dir.is_dir() and any(done_dir.iterdir()):
            break
        time.sleep(0.01)
    assert process.poll() is None, "the ingest ended before it could be stopped"
    return process, workers


def _assert_gone(pids: list[int], seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.05)
    assert not [pid for pid in pids if _alive(pid)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_workers_of_a_killed_ingest_do_not_go_on_writing(synth_archive_64: Path, tmp_path: Path) -> None:
    """kill -9 of the driver alone (an OOM kill, a scheduler) used to leave its workers
    writing shards as orphans, beside the next run that took the dead driver's lock."""
    args = ["ingest", synth_archive_64, tmp_path / "orphans.zarr", "--shard-size", "4", "--workers", "2", "--quiet"]
    process, workers = _ingest_under_way(args, subprocess.DEVNULL)
    try:
        os.kill(process.pid, signal.SIGKILL)  # the driver only
        process.wait()
        _assert_gone(workers)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def test_sigterm_stops_an_ingest_as_ctrl_c_does_and_says_how_to_resume(synth_archive_64: Path, tmp_path: Path) -> None:
    """A batch scheduler's time limit sends SIGTERM: one line that says so and what to do, exit
    143, no worker left behind, and the same command finishes the store."""
    store_path = tmp_path / "term.zarr"
    args = ["ingest", synth_archive_64, store_path, "--shard-size", "4", "--workers", "2", "--quiet"]
    process, workers = _ingest_under_way(args, subprocess.PIPE)
    try:
        process.send_signal(signal.SIGTERM)  # the driver only
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 143
        lines = stderr.strip().splitlines()
        assert lines == [f"error: terminated (SIGTERM); {store_path}: the shards written so far are kept; "
                         "run the same command again to resume"], stderr
        _assert_gone(workers)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    assert not open_store(store_path, require_complete=False).complete
    verified = run_cli("verify", store_path, "--no-record")  # sound so far, but not a store to use
    assert verified.returncode == 1 and "OK SO FAR" in verified.stdout
    assert verified.stderr.startswith(f"error: {store_path}: the ingest did not finish (what is written is sound)")
    resumed = run_cli(*args)
    assert resumed.returncode == 0, resumed.stderr
    assert open_store(store_path).complete


def test_store_with_unfinished_layout_is_rebuilt(synth_archive_64: Path, tmp_path: Path) -> None:
    store_path = tmp_path / "s.zarr"
    ingest(synth_archive_64, store_path, workers=1, shard_size=16)
    store = open_store(store_path, mode="r+")
    store.update_attrs(complete=False, layout_complete=False)
    del store.group["s2/60m"]  # as if killed while creating arrays
    result = ingest(synth_archive_64, store_path, workers=1, shard_size=16)
    assert not result.resumed and open_store(store_path).complete


def test_incomplete_store_with_other_parameters_is_refused(synth_archive_64: Path, tmp_path: Path) -> None:
    store_path = tmp_path / "s.zarr"
    ingest(synth_archive_64, store_path, workers=1, shard_size=16)
    open_store(store_path, mode="r+").update_attrs(complete=False)
    with pytest.raises(StoreParametersError, match="other ingest parameters"):
        ingest(synth_archive_64, store_path, workers=1, shard_size=32)
    result = ingest(synth_archive_64, store_path, workers=1, shard_size=16)
    assert result.resumed and result.shards_written == 0


# -- bad input ---------------------------------------------------------------------------


def _damage(archive: Path, name: str, how: str) -> None:
    folder = archive / name
    if how == "truncated":
        tif = folder / f"{name}_B04.tif"
        tif.write_bytes(tif.read_bytes()[:3000])
    elif how == "missing-band":
        (folder / f"{name}_B8A.tif").unlink()
    elif how == "wrong-shape":
        src = folder / f"{name}_B02.tif"
        (folder / f"{name}_B05.tif").write_bytes(src.read_bytes())  # 120x120 where 60x60 belongs
    elif how == "wrong-dtype":
        with rasterio.open(folder / f"{name}_B01.tif") as tif:
            profile = tif.profile | {"dtype": "float32"}
        with rasterio.open(folder / f"{name}_B01.tif", "w", **profile) as out:
            out.write(np.zeros((1, 20, 20), dtype=np.float32))
    elif how == "missing-json":
        (folder / f"{name}_labels_metadata.json").unlink()
    elif how == "malformed-json":
        (folder / f"{name}_labels_metadata.json").write_text('{"labels": ["Pastures"')
    elif how == "unknown-label":
        path = folder / f"{name}_labels_metadata.json"
        meta = json.loads(path.read_text())
        meta["labels"] = ["Pastures", "Lunar regolith"]
        path.write_text(json.dumps(meta))


BAD_CASES = {
    "truncated": "B04.tif: unreadable GeoTIFF",
    "missing-band": "B8A.tif: missing band file",
    "wrong-shape": "B05.tif: shape 120x120, expected 60x60",
    "wrong-dtype": "B01.tif: dtype float32, expected uint16",
    "missing-json": "missing labels JSON",
    "malformed-json": "malformed JSON",
    "unknown-label": "unknown label 'Lunar regolith'",
}


def test_every_kind_of_bad_patch_is_named_and_skipped(real_s2_archive: Path, tmp_path: Path) -> None:
    archive = copy_tree(real_s2_archive, tmp_path / "archive")
    names = discover_patches(archive)
    cases = dict(zip(names, BAD_CASES))  # six patches, seven cases: one good patch is left over
    cases.pop(names[-1])
    for name, how in cases.items():
        _damage(archive, name, how)
    store_path = tmp_path / "s.zarr"
    result = run_cli("ingest", archive, store_path, "--shard-size", "2", "--workers", "2")
    assert result.returncode == 3, result.stderr  # 3: done, some patches bad (2 is a usage error)
    for name, how in cases.items():
        line = next(line for line in result.stderr.splitlines() if name in line)
        assert BAD_CASES[how] in line, (how, line)
    store = open_store(store_path)
    failed = store.failed()
    assert sorted(failed) == sorted(cases)
    valid = store.valid_mask()
    good = [i for i, n in enumerate(store.patch_names()) if n not in cases]
    assert valid[good].all() and valid.sum() == len(good)
    with rasterio.open(archive / names[-1] / f"{names[-1]}_B03.tif") as tif:
        assert np.array_equal(store.array("s2/10m")[good[-1], 1], tif.read(1))
    info = run_cli("info", store_path)
    assert all(name in info.stdout for name in cases)


def test_strict_stops_at_the_first_bad_patch(real_s2_archive: Path, tmp_path: Path) -> None:
    archive = copy_tree(real_s2_archive, tmp_path / "archive")
    name = discover_patches(archive)[2]
    _damage(archive, name, "missing-band")
    with pytest.raises(BadPatchError, match=name):
        ingest(archive, tmp_path / "s.zarr", workers=1, strict=True)
    result = run_cli("ingest", archive, tmp_path / "s2.zarr", "--strict", "--workers", "1")
    assert result.returncode == 1
    assert name in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "situation, message",
    [
        ("missing-archive", "archive folder not found"),
        ("not-an-archive", "not a BigEarthNet archive"),
        ("complete-store", "a complete store made with other ingest parameters is there"),
        ("newer-format", "format version 99"),
    ],
)
def test_fatal_errors_give_one_line_and_no_traceback(real_s2_archive: Path, tmp_path: Path,
                                                     situation: str, message: str) -> None:
    archive, store_path = real_s2_archive, tmp_path / "s.zarr"
    if situation == "missing-archive":
        archive = tmp_path / "nowhere"
    elif situation == "not-an-archive":
        archive = tmp_path / "empty"
        (archive / "some-folder").mkdir(parents=True)
    elif situation in ("complete-store", "newer-format"):
        ingest(real_s2_archive, store_path, workers=1, shard_size=2 if situation == "complete-store" else 256)
        if situation == "newer-format":
            open_store(store_path, mode="r+").update_attrs(format_version=99)
    result = run_cli("ingest", archive, store_path, "--workers", "1")
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_library_raises_typed_errors(real_s2_archive: Path, tmp_path: Path) -> None:
    with pytest.raises(ArchiveNotFoundError):
        ingest(tmp_path / "nowhere", tmp_path / "s.zarr")
    with pytest.raises(NotAnArchiveError):
        ingest(tmp_path, tmp_path / "s.zarr")
    ingest(real_s2_archive, tmp_path / "s.zarr", workers=1)
    assert ingest(real_s2_archive, tmp_path / "s.zarr", workers=1).already_complete  # same command: nothing to do
    with pytest.raises(StoreExistsError):
        ingest(real_s2_archive, tmp_path / "s.zarr", workers=1, shard_size=2)
    assert ingest(real_s2_archive, tmp_path / "s.zarr", workers=1, overwrite=True).n_patches == 6
    open_store(tmp_path / "s.zarr", mode="r+").update_attrs(format_version=99)
    with pytest.raises(StoreVersionError, match="Upgrade benzarr"):
        open_store(tmp_path / "s.zarr")


@pytest.mark.parametrize("how, reason", [("empty", "empty file (0 bytes)"), ("folder", "is a folder, not a GeoTIFF")])
def test_an_empty_band_file_or_a_folder_in_its_place_is_named_as_such(tmp_path: Path, how: str, reason: str) -> None:
    """Both used to read "unreadable GeoTIFF (... not recognized as being in a supported file format)"."""
    from benzarr.errors import BadPatchError
    from benzarr.sources._common import read_band

    path = tmp_path / "P_B04.tif"
    if how == "empty":
        path.write_bytes(b"")
    else:
        path.mkdir()
    with pytest.raises(BadPatchError, match=re.escape(f"P_B04.tif: {reason}")):
        read_band(path, 120, patch="P")


def test_a_labels_json_with_an_empty_list_is_a_bad_patch() -> None:
    from benzarr.sources._common import parse_labels

    with pytest.raises(ValueError, match="'labels' is empty"):
        parse_labels([])
    assert parse_labels(["Pastures"]).sum() == 1


def test_a_patch_name_file_that_is_a_folder_or_not_utf8_is_one_line(tmp_path: Path) -> None:
    """Non-UTF-8 was "unexpected UnicodeDecodeError"; a folder read "no such file"; a BOM hid
    inside the first name."""
    from benzarr.errors import InvalidArgumentError
    from benzarr.ingest import read_name_file

    (tmp_path / "names").mkdir()
    with pytest.raises(InvalidArgumentError, match="is a folder, not a file of patch names"):
        read_name_file(tmp_path / "names")
    (tmp_path / "utf16.txt").write_bytes("S2A_MSIL2A_20170613T101031_0_48\n".encode("utf-16"))
    with pytest.raises(InvalidArgumentError, match=r"utf16\.txt: not UTF-8 text \(byte 0xff on line 1\)"):
        read_name_file(tmp_path / "utf16.txt")
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbfS2A_MSIL2A_20170613T101031_0_48\n")
    assert read_name_file(tmp_path / "bom.txt") == ["S2A_MSIL2A_20170613T101031_0_48"]


@pytest.mark.parametrize("option, message", [
    ("--exclude", "nofile.txt: no such file (--exclude takes a file of patch names or an official list: "
                  "cloud-shadow, seasonal-snow, no-clc19)"),
    ("--patches", "nofile.txt: no such file (--patches takes a file of patch names)"),  # offered the lists
])
def test_a_missing_name_file_offers_the_official_lists_to_exclude_alone(option: str, message: str) -> None:
    from benzarr.errors import InvalidArgumentError
    from benzarr.ingest import read_name_file

    with pytest.raises(InvalidArgumentError, match=re.escape(message)):
        read_name_file("nofile.txt", option)


def test_parts_go_with_plan_and_a_plan_keeps_its_parts_once_they_run(synth_archive_64: Path, tmp_path: Path) -> None:
    """Re-planning 3 parts over a store planned for 2 with part 1 done moved every part's shards;
    --parts without --plan and --parts 0 were accepted silently."""
    from benzarr.errors import InvalidArgumentError

    store = tmp_path / "p.zarr"
    with pytest.raises(InvalidArgumentError, match="--parts without --plan"):
        ingest(synth_archive_64, store, workers=1, shard_size=16, parts=2)
    with pytest.raises(InvalidArgumentError, match="--parts 0"):
        ingest(synth_archive_64, store, workers=1, shard_size=16, plan=True, parts=0)
    ingest(synth_archive_64, store, workers=1, shard_size=16, plan=True, parts=2)
    ingest(synth_archive_64, store, workers=1, shard_size=16, plan=True, parts=3)  # nothing ran yet: fine
    ingest(synth_archive_64, store, workers=1, shard_size=16, part=(1, 3))
    with pytest.raises(InvalidArgumentError, match="planned for 3 parts, and parts have run; keep --parts 3"):
        ingest(synth_archive_64, store, workers=1, shard_size=16, plan=True, parts=2)
    with pytest.raises(StoreIncompleteError, match=r"parts 2/3, 3/3 still to run"):  # readers name them
        open_store(store)


def test_a_patches_file_naming_no_patch_of_the_archive_says_which_file(synth_archive_64: Path, tmp_path: Path) -> None:
    from benzarr.errors import NotAnArchiveError

    (tmp_path / "g.txt").write_text("garbage\nmore junk\n")
    with pytest.raises(NotAnArchiveError, match=r"none of the 2 names in --patches .*g\.txt is a patch of the archive "
                                                 r"\('garbage', 'more junk'\)"):
        ingest(synth_archive_64, tmp_path / "s.zarr", workers=1, patches=tmp_path / "g.txt")


@pytest.mark.parametrize("args", [["ingest", "{archive}", "~/s.zarr"], ["ingest", "{archive}", "--", "~"],
                                  ["info", "~/s.zarr"], ["train", "s.zarr", "--split", "st", "--out=~/runs"]])
def test_a_quoted_tilde_is_refused_before_anything_is_written(synth_archive_64: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch, args: list[str]) -> None:
    """`benzarr ingest arch '~/s.zarr'` wrote ./~/s.zarr (a folder named ~ in the current one)
    and said it wrote ~/s.zarr; `info '~/s.zarr'` said "no such store" of a store in $HOME."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    result = run_cli(*(a.format(archive=synth_archive_64) for a in args))
    assert result.returncode == 2 and result.stdout == ""
    tilde = args[-1].split("=")[-1]
    assert result.stderr == (f"error: {tilde}: starts with '~', which the shell did not expand (it was quoted, or came "
                             f"after '='), and benzarr reads paths as written: write {home}{tilde[1:]} (or leave "
                             "the ~ unquoted, as its own word)\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"] and not any(home.iterdir())
    (tmp_path / "~").mkdir()  # a folder really named ~ is a path like any other
    assert "starts with '~'" not in run_cli("info", "~").stderr


def test_an_archive_that_is_a_store_or_a_patch_folder_says_which_folder_to_give(
        synth_archive_64: Path, synth_store_64: Path, tmp_path: Path) -> None:
    """`benzarr ingest s.zarr archive` (the arguments swapped) and `ingest archive/PATCH s.zarr`
    said only "not a BigEarthNet archive"."""
    swapped = run_cli("ingest", synth_store_64, synth_archive_64)
    assert swapped.returncode == 1 and swapped.stderr.count("\n") == 1
    assert swapped.stderr.rstrip().endswith("; it is a benzarr store: the archive comes first, then the store "
                                            "(benzarr ingest ARCHIVE STORE)")
    patch = next(p for p in sorted(synth_archive_64.iterdir()) if p.is_dir())
    inside = run_cli("ingest", patch, tmp_path / "s.zarr")
    assert inside.returncode == 1
    assert inside.stderr.rstrip().endswith(f"; it is inside the archive {synth_archive_64}: give that folder")
    assert not (tmp_path / "s.zarr").exists()
