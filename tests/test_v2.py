"""BigEarthNet v2.0 (reBEN) end to end: S2 + S1 + reference maps, parquet labels and splits."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import torch

from benzarr.sources import open_archive
from benzarr.bigearthnet import CLC19, CLC43_CODES
from benzarr.data import BigEarthNetDataset, make_loader
from benzarr.errors import InvalidArgumentError
from benzarr.ingest import ingest
from benzarr.split import make_split
from benzarr.store import open_store
from tests.conftest import copy_tree

CLI = [sys.executable, "-m", "benzarr_cli"]


def parquet_rows(archive: Path) -> dict[str, dict]:
    rows = {}
    for name in ("metadata.parquet", "metadata_for_patches_with_snow_cloud_or_shadow.parquet"):
        for row in pq.read_table(archive / name).to_pylist():
            rows[row["patch_id"]] = row | {"clean": name == "metadata.parquet"}
    return rows


def test_v2_is_detected_and_every_modality_ingested(synth_v2_archive: Path, synth_v2_store: Path) -> None:
    assert open_archive(synth_v2_archive).version == "2"
    store = open_store(synth_v2_store)
    assert store.modalities == ["s2", "s1", "reference-map"]
    assert store.attrs["source"]["version"] == "2.0"
    rows = parquet_rows(synth_v2_archive)
    names = list(store.patch_names())
    assert names == sorted(rows)
    assert store.failed() == {}


def test_v2_pixels_are_exact_in_every_modality(synth_v2_archive: Path, synth_v2_store: Path) -> None:
    store = open_store(synth_v2_store)
    rows = parquet_rows(synth_v2_archive)
    for row in (0, 17, 47):
        name = str(store.patch_names()[row])
        product = name.rsplit("_", 2)[0]
        s2 = synth_v2_archive / "BigEarthNet-S2" / product / name
        with rasterio.open(s2 / f"{name}_B8A.tif") as tif:
            assert np.array_equal(store.array("s2/20m")[row, 3], tif.read(1))
        s1_name = rows[name]["s1_name"]
        s1_dir = synth_v2_archive / "BigEarthNet-S1" / s1_name.rsplit("_", 3)[0] / s1_name
        with rasterio.open(s1_dir / f"{s1_name}_VH.tif") as tif:
            assert np.array_equal(store.array("s1")[row, 1], tif.read(1))
        ref = synth_v2_archive / "Reference_Maps" / product / name / f"{name}_reference_map.tif"
        with rasterio.open(ref) as tif:
            assert np.array_equal(store.array("reference_map")[row], tif.read(1))


def test_v2_labels_come_from_parquet_and_reference_map(synth_v2_archive: Path, synth_v2_store: Path) -> None:
    store = open_store(synth_v2_store)
    rows = parquet_rows(synth_v2_archive)
    clc19, clc43 = store.labels("clc19"), store.labels("clc43")
    maps = store.array("reference_map")[:]
    for i, name in enumerate(store.patch_names()):
        assert [CLC19[j] for j in np.flatnonzero(clc19[i])] == sorted(rows[name]["labels"], key=CLC19.index)
        codes = {int(c) for c in np.unique(maps[i])}
        assert {CLC43_CODES[j] for j in np.flatnonzero(clc43[i])} == codes & set(CLC43_CODES)
        assert store.array("meta/country")[i] == rows[name]["country"]
        assert bool(store.array("meta/contains_seasonal_snow")[i]) == rows[name]["contains_seasonal_snow"]


def test_v2_without_reference_maps_has_no_clc43(synth_v2_archive: Path, tmp_path: Path) -> None:
    ingest(synth_v2_archive, tmp_path / "s.zarr", workers=1, modalities=["s2"])
    store = open_store(tmp_path / "s.zarr")
    assert store.labels("clc19").sum() > 0
    with pytest.raises(InvalidArgumentError, match="no clc43 labels"):
        store.labels("clc43")


def test_official_v2_split_is_the_parquet_column(synth_v2_archive: Path, synth_v2_store: Path, tmp_path: Path) -> None:
    path = copy_tree(synth_v2_store, tmp_path / "s.zarr")
    store = open_store(path, mode="r+")
    result = make_split(store, "official", "official")
    rows = parquet_rows(synth_v2_archive)
    expected = {"train": 0, "validation": 1, "test": 2}
    for code, name in zip(result.codes, store.patch_names()):
        row = rows[name]
        assert code == (expected[row["split"]] if row["clean"] else -1)
    stratified = make_split(store, "strat", "iterative", labels="clc19")
    assert (stratified.codes >= 0).sum() == len(rows)


def test_dataset_serves_s2_s1_and_mask(synth_v2_store: Path) -> None:
    ds = BigEarthNetDataset(synth_v2_store, modalities=("s2", "s1", "reference-map"), labels="clc19",
                            normalize=True)
    assert ds.bands[-2:] == ("VV", "VH") and len(ds.bands) == 14
    sample = ds[5]
    assert sample["image"].shape == (14, 120, 120) and sample["mask"].shape == (120, 120)
    store = open_store(synth_v2_store)
    row = sample["index"]
    stats = store.band_stats("s1")
    vv = (torch.from_numpy(store.array("s1")[row, 0]) - stats["VV"]["mean"]) / stats["VV"]["std"]
    assert torch.allclose(sample["image"][12], vv, atol=1e-5)
    assert torch.equal(sample["mask"], torch.from_numpy(store.array("reference_map")[row].astype(np.int64)))
    batch = next(iter(make_loader(ds, 8, True, 0, seed=0, device="cpu")))
    assert batch["image"].shape == (8, 14, 120, 120) and batch["mask"].dtype == torch.int64
    s1_only = BigEarthNetDataset(synth_v2_store, modalities=("s1",), bands=["VH"], labels="clc19")
    assert torch.equal(s1_only[0]["image"][0], torch.from_numpy(store.array("s1")[0, 1]))


def test_dataset_refuses_a_modality_the_store_lacks(synth_store_64: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="no s1 data"):
        BigEarthNetDataset(synth_store_64, modalities=("s2", "s1"))


def test_synth_v2_cli_then_ingest_cli(tmp_path: Path) -> None:
    archive = tmp_path / "reBEN"
    made = subprocess.run([*CLI, "synth", str(archive), "--version", "2", "--s1", "--reference-maps",
                           "--patches", "12", "--workers", "1"], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    done = subprocess.run([*CLI, "ingest", str(archive), str(tmp_path / "s.zarr"), "--workers", "1",
                           "--modalities", "s2,s1"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert open_store(tmp_path / "s.zarr").modalities == ["s2", "s1"]


def test_xarray_and_dask_compute_band_means(synth_store_64: Path) -> None:
    xr = pytest.importorskip("xarray")
    da = pytest.importorskip("dask.array")
    store = open_store(synth_store_64)
    stats = store.band_stats()
    ds = xr.open_zarr(synth_store_64, group="s2", consolidated=False)
    means = ds["10m"].mean(dim=("patch", "y_10m", "x_10m")).compute().values
    assert np.allclose(means, [stats[b]["mean"] for b in ("B02", "B03", "B04", "B08")])
    array = da.from_zarr(str(synth_store_64 / "s2" / "20m"))
    assert np.allclose(array.mean(axis=(0, 2, 3)).compute(),
                       [stats[b]["mean"] for b in ("B05", "B06", "B07", "B8A", "B11", "B12")])


def test_train_on_s2_and_s1_channels(synth_v2_store: Path, tmp_path: Path) -> None:
    from benzarr.train import TrainConfig, train

    path = copy_tree(synth_v2_store, tmp_path / "s.zarr")
    make_split(open_store(path, mode="r+"), "official", "official")
    run = tmp_path / "run"
    result = train(TrainConfig(store=str(path), split="official", model="shortcnn-all", labels="clc19",
                               modalities="s2,s1", epochs=1, batch_size=8, out=str(run)), None)
    assert result.test is not None and (run / "checkpoints" / "best.pt").is_file()
    state = torch.load(run / "checkpoints" / "best.pt", weights_only=True)["model"]
    first_conv = next(v for k, v in state.items() if v.ndim == 4)
    assert first_conv.shape[1] == 14  # 12 S2 bands + VV + VH
    import json

    assert json.loads((run / "config.json").read_text())["settings"]["modalities"] == "s2,s1"


def test_an_rgb_model_on_s1_alone_says_which_bands_it_reads(synth_v2_store: Path, tmp_path: Path) -> None:
    """shortcnn-rgb (the default model) with --modalities s1 trained on VV,VH without a word."""
    from benzarr.train import TrainConfig, train

    path = copy_tree(synth_v2_store, tmp_path / "s.zarr")
    make_split(open_store(path, mode="r+"), "official", "official")
    settings = dict(store=str(path), split="official", labels="clc19", epochs=1, batch_size=32, max_steps=1)
    with pytest.warns(UserWarning, match=r"shortcnn-rgb takes RGB \(S2\) bands by default; with --modalities s1 "
                                         r"it reads VV,VH instead"):
        train(TrainConfig(model="shortcnn-rgb", modalities="s1", out=str(tmp_path / "a"), **settings), None)
    with warnings.catch_warnings(record=True) as caught:  # chosen bands, or a 12-band model: nothing to say
        warnings.simplefilter("always")
        train(TrainConfig(model="shortcnn-rgb", modalities="s1", bands="VH", out=str(tmp_path / "b"), **settings), None)
        train(TrainConfig(model="shortcnn-all", modalities="s1", out=str(tmp_path / "c"), **settings), None)
    assert not [w for w in caught if "by default" in str(w.message)]


# -- damaged metadata.parquet ----------------------------------------------------------


def _metadata_variant(archive: Path, tmp_path: Path, change) -> Path:
    """A folder holding ``archive``'s metadata.parquet after ``change(rows) -> table``: what
    ``open_archive`` reads (it opens no patch)."""
    import pyarrow as pa

    root = tmp_path / "v2"
    (root / "BigEarthNet-S2").mkdir(parents=True)
    rows = pq.read_table(archive / "metadata.parquet").to_pylist()
    table = change(rows)
    pq.write_table(table if isinstance(table, pa.Table) else pa.Table.from_pylist(table), root / "metadata.parquet")
    return root


@pytest.mark.parametrize("case, message", [
    ("duplicate", "is listed twice"),
    ("duplicate-s1", "s1_name {s1} is listed for two patches, {first} and {second}; each patch must have its own"),
    ("bad-split", "split 'training' of"),
    ("no-split", "split None of"),
    ("labels-as-text", "column labels holds string, expected lists of label names"),
    ("no-rows", "metadata.parquet: lists no patches"),
])
def test_a_damaged_metadata_parquet_is_refused_naming_what_is_wrong(synth_v2_archive: Path, tmp_path: Path,
                                                                    case: str, message: str) -> None:
    """Each used to ingest with exit 0: a duplicated patch_id kept the later row's labels, a
    split of "training" became 'excluded' silently, labels as text were read letter by letter."""
    import pyarrow as pa

    from benzarr.errors import NotAnArchiveError

    def change(rows: list[dict]):
        if case == "duplicate":
            return rows + [rows[0] | {"labels": ["Marine waters"]}]
        if case == "duplicate-s1":  # two S2 patches would get the same S1 pixels
            return [rows[0], rows[1] | {"s1_name": rows[0]["s1_name"]}] + rows[2:]
        if case == "bad-split":
            return [rows[0] | {"split": "training"}] + rows[1:]
        if case == "no-split":
            return [rows[0] | {"split": None}] + rows[1:]
        if case == "labels-as-text":
            return pa.Table.from_pylist([r | {"labels": "; ".join(r["labels"])} for r in rows])
        return pa.Table.from_pylist(rows).slice(0, 0)

    root = _metadata_variant(synth_v2_archive, tmp_path, change)
    if case == "duplicate-s1":  # the line names the S1 patch and both S2 patches
        rows = pq.read_table(root / "metadata.parquet").to_pylist()
        message = message.format(s1=rows[0]["s1_name"], first=rows[0]["patch_id"], second=rows[1]["patch_id"])
    with pytest.raises(NotAnArchiveError, match=message.replace("(", r"\(")):
        open_archive(root)


def test_a_v2_patch_without_labels_is_a_bad_patch(synth_v2_archive: Path, tmp_path: Path) -> None:
    archive = copy_tree(synth_v2_archive, tmp_path / "archive")
    table = pq.read_table(archive / "metadata.parquet")
    rows = table.to_pylist()
    rows[0]["labels"] = []
    pq.write_table(pq.read_table(archive / "metadata.parquet").from_pylist(rows, schema=table.schema),
                   archive / "metadata.parquet")
    result = ingest(archive, tmp_path / "s.zarr", workers=1, modalities=["s2"])
    assert result.failed == {rows[0]["patch_id"]: "metadata.parquet: no labels (every v2.0 patch has at least one)"}


def test_train_on_a_v2_store_without_reference_maps(synth_v2_archive: Path, tmp_path: Path) -> None:
    """Its normalisation statistics read the store with the clc43 default, which such a store
    lacks: `benzarr train --labels clc19` failed with "this store has no clc43 labels"."""
    from benzarr.train import TrainConfig, train

    ingest(synth_v2_archive, tmp_path / "s.zarr", workers=1, modalities=["s2"])
    make_split(open_store(tmp_path / "s.zarr", mode="r+"), "r", "random", fractions=(0.6, 0.2, 0.2), seed=0)
    result = train(TrainConfig(store=str(tmp_path / "s.zarr"), split="r", model="shortcnn-all", labels="clc19",
                               epochs=1, batch_size=16, max_steps=2, device="cpu", out=str(tmp_path / "run")))
    assert result.steps == 2 and "micro_f1" in result.test
    # without --labels, the store's own set, as split and show choose (it failed: "no clc43 labels")
    import json

    own = train(TrainConfig(store=str(tmp_path / "s.zarr"), split="r", model="shortcnn-all", epochs=1,
                            batch_size=16, max_steps=1, device="cpu", out=str(tmp_path / "own")))
    assert own.steps == 1 and len(own.test["per_class"]) == 19
    recorded = json.loads((tmp_path / "own" / "config.json").read_text())
    assert recorded["labels"] == recorded["settings"]["labels"] == "clc19"
