"""Archive sources are a seam: a source defined here, with no change to benzarr, is detected,
ingested, loaded, split by its own official split and refused where it has none."""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from benzarr.bands import BAND_GROUPS
from benzarr.bigearthnet import CLC43, clc43_to_clc19
from benzarr.data import BigEarthNetDataset
from benzarr.errors import BadPatchError, InvalidArgumentError, NotAnArchiveError
from benzarr.ingest import ingest
from benzarr.sources import (
    Archive,
    OfficialSplit,
    Patch,
    PatchRef,
    detect_source,
    get_source,
    list_sources,
    open_archive,
    register_source,
    source_of_store,
    unregister_source,
)
from benzarr.split import make_split
from benzarr.store import open_store

TOY_LABELS = "toy-labels.csv"


class ToySource:
    """A made-up dataset of BigEarthNet's shape: ``toy-labels.csv`` (name, CLC43 labels joined
    by ``;``, split) and ``patches/<name>.npz`` holding the ``10m``, ``20m`` and ``60m`` band
    groups as uint16 (C, H, W)."""

    name = "toy"
    aliases = ("toy-1",)
    title = "Toy"
    store_source = {"dataset": "Toy", "version": "0.1"}
    looks_for = TOY_LABELS

    def detect(self, path: Path) -> bool:
        return (path / TOY_LABELS).is_file()

    def _rows(self, path: Path) -> list[list[str]]:
        with open(path / TOY_LABELS, newline="") as handle:
            return list(csv.reader(handle))

    def open(self, path: Path) -> Archive:
        refs = {name: PatchRef(name=name, s2_dir=str(path / "patches"), clc19=tuple(labels.split(";")),
                               official_split=split)
                for name, labels, split in sorted(self._rows(path))}
        return Archive(path=path, source=self.name, modalities=("s2",), refs=refs)

    def read(self, ref: PatchRef, modalities: Sequence[str]) -> Patch:
        try:
            data = np.load(Path(ref.s2_dir) / f"{ref.name}.npz")
        except OSError:
            raise BadPatchError(ref.name, f"{ref.name}.npz: missing") from None
        clc43 = np.zeros(len(CLC43), dtype=np.uint8)
        clc43[[CLC43.index(label) for label in ref.clc19 or ()]] = 1  # the CSV holds CLC43 names
        return Patch(name=ref.name, bands={group: data[group] for group in BAND_GROUPS}, clc43=clc43,
                     tile_source="toy", acquisition_time=0, bounds=(0.0, 1200.0, 1200.0, 0.0), epsg=32633,
                     clc19=clc43_to_clc19(clc43), official_split=ref.official_split)

    def label_sets(self, modalities: Sequence[str]) -> list[str]:
        return ["clc43", "clc19"]

    def official_split(self) -> OfficialSplit:
        return OfficialSplit("the toy CSV's split column", column="meta/official_split",
                             values={"train": "train", "val": "val", "test": "test"})


class ToyWithoutSplit(ToySource):
    name, aliases, title = "toy-nosplit", (), "Toy without a split"
    store_source = {"dataset": "Toy", "version": "0.0"}

    def detect(self, path: Path) -> bool:
        return False

    def official_split(self) -> None:
        return None


@pytest.fixture
def toy() -> Iterator[ToySource]:
    source = ToySource()
    register_source(source)
    try:
        yield source
    finally:
        unregister_source(source.name)


def write_toy(root: Path, n: int = 10, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """A toy archive of ``n`` patches; returns name -> band groups written."""
    rng = np.random.default_rng(seed)
    (root / "patches").mkdir(parents=True)
    written = {}
    with open(root / TOY_LABELS, "w", newline="") as handle:
        out = csv.writer(handle)
        for i in range(n):
            name = f"toy_{i:03d}"
            groups = {g: rng.integers(1, 10000, (len(b), side, side), dtype=np.uint16)
                      for g, (b, side, _) in BAND_GROUPS.items()}
            np.savez(root / "patches" / f"{name}.npz", **groups)
            labels = [CLC43[j] for j in sorted(rng.choice([11, 17, 22, 23, 39], 2, replace=False))]
            out.writerow([name, ";".join(labels), ("train", "val", "test")[i % 3]])
            written[name] = groups
    return written


def test_a_registered_source_is_detected_and_listed(toy: ToySource, tmp_path: Path) -> None:
    write_toy(tmp_path / "toy")
    assert detect_source(tmp_path / "toy") is toy
    assert get_source("toy-1") is toy and "toy" in list_sources()
    archive = open_archive(tmp_path / "toy")
    assert archive.source == "toy" and archive.names == sorted(archive.names) and len(archive.names) == 10


def test_a_toy_source_is_ingested_and_loaded_with_no_library_change(toy: ToySource, tmp_path: Path) -> None:
    written = write_toy(tmp_path / "toy")
    result = ingest(tmp_path / "toy", tmp_path / "s.zarr", workers=1, shard_size=4)
    assert result.complete and result.failed == {} and result.n_patches == 10
    store = open_store(tmp_path / "s.zarr")
    assert store.attrs["source"] == {"dataset": "Toy", "version": "0.1", "modality": "S2"}
    assert store.attrs["ingest"]["source"] == "toy"
    assert source_of_store(store.attrs) is toy
    ds = BigEarthNetDataset(tmp_path / "s.zarr", bands="rgb")
    for i, name in enumerate(store.patch_names()):
        expected = torch.from_numpy(written[name]["10m"][[2, 1, 0]].astype(np.float32))
        assert torch.equal(ds[i]["image"], expected)
    labels = store.labels("clc43")
    assert labels.sum(axis=1).tolist() == [2] * 10


def test_the_official_split_of_a_source_comes_from_the_source(toy: ToySource, tmp_path: Path) -> None:
    write_toy(tmp_path / "toy")
    ingest(tmp_path / "toy", tmp_path / "s.zarr", workers=1, shard_size=4)
    store = open_store(tmp_path / "s.zarr", mode="r+")
    result = make_split(store, "official", "official")
    assert result.codes.tolist() == [i % 3 for i in range(10)]
    assert result.attrs["parameters"]["source"] == "the toy CSV's split column"


def test_a_source_without_an_official_split_says_so(toy: ToySource, tmp_path: Path) -> None:
    register_source(ToyWithoutSplit)
    try:
        write_toy(tmp_path / "toy")
        ingest(tmp_path / "toy", tmp_path / "s.zarr", workers=1, shard_size=4, source="toy-nosplit")
        store = open_store(tmp_path / "s.zarr", mode="r+")
        with pytest.raises(InvalidArgumentError, match="Toy without a split has no official split"):
            make_split(store, "official", "official")
    finally:
        unregister_source("toy-nosplit")


def test_a_bad_toy_patch_is_recorded_like_any_bad_patch(toy: ToySource, tmp_path: Path) -> None:
    write_toy(tmp_path / "toy")
    (tmp_path / "toy" / "patches" / "toy_004.npz").unlink()
    result = ingest(tmp_path / "toy", tmp_path / "s.zarr", workers=1, shard_size=4)
    assert result.failed == {"toy_004": "toy_004.npz: missing"}


def test_registering_a_taken_name_or_a_non_source_is_refused(toy: ToySource) -> None:
    with pytest.raises(InvalidArgumentError, match="already registered"):
        register_source(ToySource)
    with pytest.raises(InvalidArgumentError, match="not an archive source"):
        register_source(object())


def test_an_unknown_source_name_lists_the_known_ones() -> None:
    with pytest.raises(InvalidArgumentError, match="choose v1 or v2"):
        get_source("v3")


def test_a_folder_no_source_knows_is_not_an_archive(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("hello")
    with pytest.raises(NotAnArchiveError, match="no metadata.parquet"):
        open_archive(tmp_path / "x")


def test_a_folder_two_sources_claim_must_be_chosen(toy: ToySource, tmp_path: Path) -> None:
    write_toy(tmp_path / "toy")
    (tmp_path / "toy" / "metadata.parquet").write_bytes(b"")
    with pytest.raises(NotAnArchiveError, match="--source toy or v2|--source v2 or toy"):
        open_archive(tmp_path / "toy")


def test_the_builtin_sources_record_what_stores_always_recorded() -> None:
    assert get_source("1").store_source == {"dataset": "BigEarthNet", "version": "1.0"}
    assert get_source("v2").store_source == {"dataset": "BigEarthNet", "version": "2.0"}
    assert source_of_store({"source": {"dataset": "BigEarthNet", "version": "2.0", "modality": "S2"}}).name == "v2"
    assert source_of_store({"source": {"dataset": "BigEarthNet", "version": "1.0"}}).name == "v1"


def test_official_products_are_those_of_the_name_table() -> None:
    """official_names skips names of other products (a synthetic archive's) without loading the
    590,326-row table; the product list it checks first must be the table's own."""
    from benzarr.sources._common import _official_name_table, official_names, official_products

    table = _official_name_table()
    s2, s1 = official_products()
    assert s2 == {n.rsplit("_", 2)[0] for n in table["s2_name"].to_pylist()}
    assert s1 == {n.rsplit("_", 3)[0] for n in table["s1_name"].to_pylist()}
    real_s2, real_s1 = table["s2_name"][0].as_py(), table["s1_name"][0].as_py()
    place, pairs = official_names([real_s2, "S2A_MSIL2A_20171116T103448_0_48"], [real_s1])
    assert list(place) == [real_s2] and pairs == {real_s1: real_s2}
    assert official_names(["S2A_MSIL2A_20171116T103448_0_48"], ["S1A_IW_GRDH_1SDV_20171116T000000_33UUP_0_48"]) == ({}, {})


def test_the_season_fallback_follows_the_official_tables_whole_months() -> None:
    """The official name table puts 1-20 June in Summer and 1-20 September in Fall (whole
    months); the fallback for names outside it used astronomical seasons (June 13: Spring)."""
    from collections import Counter

    from benzarr.resources import read_official_list
    from benzarr.sources._common import name_time, official_names, season_of

    names = list(read_official_list("train"))[:20000]
    place, _ = official_names(s2_names=names)
    agree = Counter(season_of(name_time(name)) == season for name, (_, season) in place.items())
    assert agree[True] == len(place) > 10000, agree  # every patch of the table, not most
    assert season_of(name_time("S2A_MSIL2A_20170613T101031_87_48")) == "Summer"
