"""Sentinel-1 pairing, ingest split across processes (--plan / --part), stores on S3."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr

from benzarr.errors import BadPatchError, InvalidArgumentError, StoreParametersError
from benzarr.ingest import ingest
from benzarr.store import open_store
from tests.conftest import copy_tree
from tests.test_ingest import CLI, all_arrays, assert_stores_equal, run_cli


def test_real_s1_patches_are_paired_and_pixel_exact(real_v1_root: Path, tmp_path: Path) -> None:
    result = ingest(real_v1_root, tmp_path / "s.zarr", workers=1, shard_size=4)
    assert result.failed == {} and result.modalities == ["s2", "s1"]
    store = open_store(tmp_path / "s.zarr")
    s1 = store.array("s1")[:]
    assert s1.shape == (6, 2, 120, 120) and s1.dtype == np.float32
    s1_names = [str(n) for n in store.array("meta/s1_name")[:]]
    s1_root = real_v1_root / "BigEarthNet-S1-v1.0"
    for row, (s2_name, s1_name) in enumerate(zip(store.patch_names(), s1_names)):
        meta = (s1_root / s1_name / f"{s1_name}_labels_metadata.json").read_text()
        assert s2_name in meta  # corresponding_s2_patch
        for c, pol in enumerate(("VV", "VH")):
            with rasterio.open(s1_root / s1_name / f"{s1_name}_{pol}.tif") as tif:
                assert np.array_equal(s1[row, c], tif.read(1))
    countries = {str(c) for c in store.array("meta/country")[:]}
    assert countries == {"Austria", "Ireland", "Portugal", "Finland"}
    stats = store.band_stats("s1")
    assert list(stats) == ["VV", "VH"] and stats["VV"]["count"] == 6 * 120 * 120
    assert stats["VV"]["mean"] == pytest.approx(float(s1[:, 0].astype(np.float64).mean()))


def test_s2_only_ingest_of_a_download_root_with_s1(real_v1_root: Path, tmp_path: Path) -> None:
    result = ingest(real_v1_root, tmp_path / "s.zarr", workers=1, modalities=["s2"])
    assert result.modalities == ["s2"] and not open_store(tmp_path / "s.zarr").has_array("s1")


def test_missing_s1_file_is_a_bad_patch(real_v1_root: Path, tmp_path: Path) -> None:
    root = copy_tree(real_v1_root, tmp_path / "root")
    victim = sorted((root / "BigEarthNet-S1-v1.0").iterdir())[0]
    (victim / f"{victim.name}_VH.tif").unlink()
    result = run_cli("ingest", root, tmp_path / "s.zarr", "--workers", "1")
    assert result.returncode == 3
    assert f"{victim.name}_VH.tif: missing file" in result.stderr
    assert len(open_store(tmp_path / "s.zarr").failed()) == 1
    with pytest.raises(BadPatchError):
        ingest(root, tmp_path / "strict.zarr", workers=1, strict=True)


def test_asking_for_a_modality_the_archive_lacks(real_s2_archive: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="has no s1 data"):
        ingest(real_s2_archive, tmp_path / "s.zarr", modalities=["s2", "s1"])


def test_a_modality_named_twice_is_refused(real_s2_archive: Path, tmp_path: Path) -> None:
    """`ingest --modalities s2,s2` was read as s2 without a word."""
    done = run_cli("ingest", real_s2_archive, tmp_path / "s.zarr", "--modalities", "s2,S2")
    assert done.returncode == 1 and done.stderr == "error: modality 's2' is named twice in 's2,s2'; give each once\n"
    assert not (tmp_path / "s.zarr").exists()


def test_parts_in_concurrent_processes_equal_one_ingest(synth_archive_64: Path, synth_store_64: Path,
                                                        tmp_path: Path) -> None:
    store = tmp_path / "parts.zarr"
    planned = run_cli("ingest", synth_archive_64, store, "--shard-size", "16", "--plan", "--parts", "3")
    assert planned.returncode == 0, planned.stderr
    assert f"planned {store}: 64 patches" in planned.stdout  # the store's path, not a row array's
    info = run_cli("info", store)
    assert "parts missing: 1, 2, 3" in info.stdout
    assert "run `benzarr ingest ... --part I/3` for parts 1/3, 2/3, 3/3)" in info.stdout  # not "the same command"
    first = run_cli("ingest", synth_archive_64, store, "--shard-size", "16", "--part", "2/3", "--workers", "1")
    assert first.returncode == 0 and "parts still missing: 1, 3" in first.stdout
    others = [subprocess.Popen([*CLI, "ingest", str(synth_archive_64), str(store), "--shard-size", "16",
                                "--part", part, "--workers", "1", "--quiet"]) for part in ("1/3", "3/3")]
    assert [p.wait() for p in others] == [0, 0]
    assert open_store(store).complete
    assert_stores_equal(store, synth_store_64)


def test_a_part_that_finds_the_store_being_finalised_waits_and_finds_it_complete(
        synth_archive_64: Path, synth_store_64: Path, tmp_path: Path) -> None:
    """Two parts that finished together both finalised the store, and one's sweep of temporary
    files could delete the other's files in flight. The last part now waits while another holds
    the finalisation lock, then finds the store complete and reports it so."""
    import threading
    import time

    from benzarr.ingest import _finalize
    from benzarr.lock import finalize_lock
    from benzarr.store import DONE_ARRAY

    store = tmp_path / "parts.zarr"
    ingest(synth_archive_64, store, plan=True, parts=2, shard_size=16, compression="lz4", workers=1)
    ingest(synth_archive_64, store, part=(1, 2), shard_size=16, compression="lz4", workers=1)
    results: list = []
    with finalize_lock(store):  # the other part, finalising
        last = threading.Thread(target=lambda: results.append(
            ingest(synth_archive_64, store, part=(2, 2), shard_size=16, compression="lz4", workers=1)))
        last.start()
        deadline = time.monotonic() + 60
        while not np.asarray(open_store(store, require_complete=False).array(DONE_ARRAY)[:]).all():
            assert time.monotonic() < deadline, "part 2 wrote no shards"
            time.sleep(0.05)
        time.sleep(0.3)  # part 2 reaches the lock
        assert last.is_alive() and not open_store(store, require_complete=False).complete  # it waits
        _finalize(open_store(store, mode="r+", require_complete=False))
    last.join(60)
    (result,) = results
    assert result.complete and result.shards_written == 2
    assert not list(tmp_path.glob(".*.lock"))
    assert_stores_equal(store, synth_store_64)


def test_part_needs_a_matching_plan(synth_archive_64: Path, tmp_path: Path) -> None:
    store = tmp_path / "parts.zarr"
    no_plan = run_cli("ingest", synth_archive_64, store, "--part", "1/2")
    assert no_plan.returncode == 1 and "--plan" in no_plan.stderr
    ingest(synth_archive_64, store, plan=True, parts=2, shard_size=16)
    with pytest.raises(StoreParametersError):
        ingest(synth_archive_64, store, part=(1, 2), shard_size=32)
    with pytest.raises(InvalidArgumentError, match="planned for 2 parts"):
        ingest(synth_archive_64, store, part=(1, 4), shard_size=16)
    # a part's speed counts its own patches (the CLI's patches/s counted the whole store's 64)
    first = ingest(synth_archive_64, store, part=(1, 2), shard_size=16)
    assert (first.shards_written, first.patches_written, first.complete) == (2, 32, False)
    again = ingest(synth_archive_64, store, part=(1, 2), shard_size=16)
    assert (again.shards_written, again.patches_written) == (0, 0)
    assert (first.resumed, again.resumed) == (False, True)  # a part resumes only once it has begun


def test_parts_beyond_the_shards_and_a_part_run_twice_say_nothing_to_do(synth_archive_64: Path,
                                                                         tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from benzarr_cli.main import app

    store = tmp_path / "parts.zarr"
    ingest(synth_archive_64, store, plan=True, parts=6, shard_size=16)  # 4 shards over 6 parts

    def part(text: str) -> str:
        result = CliRunner().invoke(app, ["ingest", str(synth_archive_64), str(store), "--part", text,
                                          "--shard-size", "16", "--workers", "1"])
        assert result.exit_code == 0, result.output
        return result.output
    # part 1 of 6 holds no shard: it was reported as "resumed ... (0 written this run)"
    assert f"part 1/6: no shard of {store} falls to this part (4 shards over 6 parts); nothing to do" in part("1/6")
    assert "part 2/6: wrote" in part("2/6")
    assert f"part 2/6: already written to {store}; nothing to do" in part("2/6")


def test_ingest_into_s3_equals_local(s3_server: dict, real_s2_archive: Path, tmp_path: Path) -> None:
    """The six real patches, in two shards on S3 (two worker processes), equal a local ingest
    array by array; --overwrite replaces the S3 store."""
    s3_server["client"].create_bucket(Bucket="ingest-test")
    url = "s3://ingest-test/store.zarr"
    result = ingest(real_s2_archive, url, workers=2, shard_size=4, storage_options=s3_server["options"])
    assert result.complete and result.failed == {}
    ingest(real_s2_archive, tmp_path / "local.zarr", workers=1, shard_size=4)
    remote = zarr.open_group(url, mode="r", storage_options=s3_server["options"])
    local = all_arrays(tmp_path / "local.zarr")
    for name, data in local.items():
        assert np.array_equal(np.asarray(remote[name][:]), data), name
    store = open_store(url, storage_options=s3_server["options"])
    assert store.complete and "ingest/stage" not in [k for k, _ in store.group["ingest"].members()]
    again = ingest(real_s2_archive, url, workers=1, shard_size=8, storage_options=s3_server["options"],
                   overwrite=True)
    assert again.complete and open_store(url, storage_options=s3_server["options"]).attrs["shard_size"] == 8


def test_real_v1_s2_s1_store_splits_loads_and_trains(real_v1_root: Path, tmp_path: Path) -> None:
    from benzarr.data import BigEarthNetDataset
    from benzarr.split import make_split
    from benzarr.train import TrainConfig, train

    path = tmp_path / "s.zarr"
    ingest(real_v1_root, path, workers=1)
    make_split(open_store(path, mode="r+"), "random", "random", fractions=(0.5, 0.25, 0.25), seed=0)
    ds = BigEarthNetDataset(path, split="random", subset="train", modalities=("s2", "s1"), bands=["B04", "VV", "VH"])
    assert ds[0]["image"].shape == (3, 120, 120)
    result = train(TrainConfig(store=str(path), split="random", model="shortcnn-rgb", modalities="s2,s1",
                               epochs=1, batch_size=2, out=str(tmp_path / "run")), None)
    assert result.steps >= 1 and (tmp_path / "run" / "metrics.json").is_file()


def test_cli_ingest_and_info_on_s3_with_endpoint_url(s3_server: dict, real_s2_archive: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    s3_server["client"].create_bucket(Bucket="cli-test")
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    url, endpoint = "s3://cli-test/s.zarr", s3_server["endpoint"]
    done = run_cli("ingest", real_s2_archive, url, "--workers", "1", "--endpoint-url", endpoint)
    assert done.returncode == 0, done.stderr
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)  # the variable, not the flag
    info = run_cli("info", url, "--json")
    assert info.returncode == 0, info.stderr
    assert '"n_patches": 6' in info.stdout and '"complete": true' in info.stdout
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    split = run_cli("split", url, "--name", "r", "--method", "random", "-q", "--endpoint-url", endpoint)
    assert split.returncode == 0, split.stderr  # split had no --endpoint-url
