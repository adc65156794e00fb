"""Splits: exact package folds, fractions, random, official, CSV round trip, quality, store and CLI."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benzarr.bigearthnet import CLC19_FROM_CLC43, CLC43_FREQUENCY
from benzarr.errors import InvalidArgumentError, SplitExistsError, SplitNotFoundError, UnsafeOverwriteError
from benzarr.split import (
    EXCLUDED,
    codes_from_lists,
    export_split,
    fraction_sizes,
    iterative_codes,
    iterative_fraction_codes,
    iterative_group_codes,
    list_splits,
    make_split,
    official_lists,
    plot_quality,
    random_codes,
    read_csv_lists,
    split_quality,
    store_split_quality,
    write_csv_lists,
)
from benzarr.store import create_store, open_store


def skewed_labels(n: int, seed: int = 0) -> np.ndarray:
    """(n, 43) uint8 with BigEarthNet's label frequencies and at least one label a row."""
    rng = np.random.default_rng(seed)
    p = np.asarray(CLC43_FREQUENCY)
    labels = (rng.random((n, p.size)) < p).astype(np.uint8)
    empty = np.flatnonzero(labels.sum(axis=1) == 0)
    labels[empty, rng.choice(p.size, empty.size, p=p / p.sum())] = 1
    return labels


def to_clc19(labels: np.ndarray) -> np.ndarray:
    return np.stack([labels[:, list(cols)].max(axis=1) for cols in CLC19_FROM_CLC43], axis=1).astype(np.uint8)


def make_labels_store(path: Path, names: list[str], labels: np.ndarray, valid: np.ndarray | None = None):
    """A complete labels-only store built with store.py's public functions."""
    store = create_store(path, names, modalities=(), shard_size=256)
    store.group["labels/clc43"][:] = labels
    store.group["labels/clc19"][:] = to_clc19(labels)
    store.group["meta/valid"][:] = np.ones(len(names), bool) if valid is None else valid
    store.update_attrs(complete=True)
    return open_store(path, mode="r+")


@pytest.fixture(scope="module")
def official_names() -> list[str]:
    """600 real patch names: 200 from each official list, sorted."""
    lists = official_lists()
    return sorted(name for subset in ("train", "val", "test") for name in lists[subset][:200])


@pytest.fixture()
def store(tmp_path: Path, official_names: list[str]):
    n = len(official_names)
    valid = np.ones(n, bool)
    valid[[5, 77, 300]] = False  # three patches failed ingest
    return make_labels_store(tmp_path / "store.zarr", official_names, skewed_labels(n, 1), valid)


def package_folds(labels: np.ndarray, n_splits: int, seed: int) -> list[np.ndarray]:
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    kfold = MultilabelStratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return [test for _, test in kfold.split(np.zeros(labels.shape[0]), labels)]


# --- pure core ---------------------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(10, 150),
    n_labels=st.integers(2, 8),
    data_seed=st.integers(0, 2**16),
    seed=st.integers(0, 2**32 - 1),
    assign=st.sampled_from([(3, 1, 1), (1, 1, 1), (2, 0, 1), (4, 1, 0), (1, 2, 3)]),
)
def test_iterative_codes_are_the_package_folds_assigned_in_order(n, n_labels, data_seed, seed, assign) -> None:
    rng = np.random.default_rng(data_seed)
    labels = (rng.random((n, n_labels)) < rng.random(n_labels)).astype(np.uint8)
    usable = rng.random(n) < 0.85
    usable[: sum(assign)] = True  # at least K usable rows
    folds = sum(assign)
    codes = iterative_codes(labels, usable, folds=folds, assign=assign, seed=seed)
    rows = np.flatnonzero(usable)
    expected = np.full(n, EXCLUDED, np.int8)
    fold_code = np.repeat([0, 1, 2], assign)
    for i, test in enumerate(package_folds(labels[usable], folds, seed)):
        expected[rows[test]] = fold_code[i]
    np.testing.assert_array_equal(codes, expected)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 120),
    data_seed=st.integers(0, 2**16),
    seed=st.integers(0, 2**32 - 1),
    method=st.sampled_from(["kfold", "fractions", "random"]),
)
def test_subsets_are_disjoint_and_cover_every_usable_patch(n, data_seed, seed, method) -> None:
    rng = np.random.default_rng(data_seed)
    labels = (rng.random((n, 5)) < [0.6, 0.3, 0.1, 0.02, 0.0]).astype(np.uint8)
    usable = rng.random(n) < 0.8
    if method == "kfold" and usable.sum() < 5:
        return
    if method == "kfold":
        codes = iterative_codes(labels, usable, seed=seed)
    elif method == "fractions":
        codes = iterative_fraction_codes(labels, usable, fractions=(0.7, 0.15, 0.15), seed=seed)
    else:
        codes = random_codes(usable, fractions=(0.7, 0.15, 0.15), seed=seed)
    assert codes.dtype == np.int8 and codes.shape == (n,)
    assert np.all(codes[~usable] == EXCLUDED)
    assert np.isin(codes[usable], [0, 1, 2]).all()  # one code each: disjoint and covering


def test_fraction_mode_reproduces_the_package_function_on_the_shuffled_rows() -> None:
    from benzarr.split import package_fraction_assignment

    labels = skewed_labels(800, 4)
    usable = np.ones(800, bool)
    codes = iterative_fraction_codes(labels, usable, fractions=(0.6, 0.2, 0.2), seed=9)
    np.testing.assert_array_equal(codes, package_fraction_assignment(labels, (0.6, 0.2, 0.2), 9))
    shares = np.bincount(codes, minlength=3) / 800
    np.testing.assert_allclose(shares, [0.6, 0.2, 0.2], atol=0.01)


def test_package_engine_gives_the_same_codes() -> None:
    labels = skewed_labels(500, 2)
    usable = np.random.default_rng(0).random(500) < 0.9
    np.testing.assert_array_equal(
        iterative_codes(labels, usable, seed=3, engine="benzarr"),
        iterative_codes(labels, usable, seed=3, engine="package"),
    )


def test_random_split_sizes_follow_the_fractions_exactly() -> None:
    usable = np.ones(1001, bool)
    codes = random_codes(usable, fractions=(0.6, 0.2, 0.2), seed=1)
    assert np.bincount(codes).tolist() == list(fraction_sizes(1001, (0.6, 0.2, 0.2))) == [601, 200, 200]


def test_same_arguments_give_the_same_codes() -> None:
    labels = skewed_labels(300)
    usable = np.ones(300, bool)
    np.testing.assert_array_equal(iterative_codes(labels, usable, seed=5), iterative_codes(labels, usable, seed=5))
    np.testing.assert_array_equal(random_codes(usable, seed=5), random_codes(usable, seed=5))
    assert not np.array_equal(random_codes(usable, seed=5), random_codes(usable, seed=6))


@pytest.mark.parametrize(
    "kwargs",
    [{"folds": 5, "assign": (3, 1, 2)}, {"folds": 1, "assign": (1, 0, 0)}, {"folds": 3, "assign": (0, 2, 1)},
     {"seed": -1}, {"seed": 2**32},
     {"folds": 2.5, "assign": (1, 1, 0)},  # grouped: split into 2 folds (int(2.5))
     {"labels": skewed_labels(50)[:, 0]},  # one column: ValueError "not enough values to unpack"
     {"usable": np.arange(50)}],  # row indices, read as a mask: every row but row 0
)
def test_bad_iterative_arguments_are_refused(kwargs) -> None:
    kwargs = dict(kwargs)
    labels, usable = kwargs.pop("labels", skewed_labels(50)), kwargs.pop("usable", None)
    with pytest.raises(InvalidArgumentError):
        iterative_codes(labels, usable, **kwargs)
    with pytest.raises(InvalidArgumentError):
        iterative_group_codes(labels, np.arange(50) // 5, usable, **kwargs)
    if usable is not None:
        with pytest.raises(InvalidArgumentError, match=r"^usable must be a bool mask of the rows to split"):
            random_codes(usable)
    if labels.ndim != 2:
        with pytest.raises(InvalidArgumentError, match=r"^labels must be an \(N, L\) multi-hot matrix"):
            iterative_fraction_codes(labels)


@pytest.mark.parametrize("fractions", [(0.5, 0.5), (0.6, 0.3, 0.3), (-0.1, 0.6, 0.5), (0.0, 0.5, 0.5)])
def test_bad_fractions_are_refused(fractions) -> None:
    with pytest.raises(InvalidArgumentError):
        random_codes(np.ones(10, bool), fractions=fractions)
    with pytest.raises(InvalidArgumentError, match=r"^sizes must be whole numbers"):  # a ValueError from np.repeat
        random_codes(np.ones(10, bool), sizes=(5.5, 2.5, 2))


def test_names_from_lists_become_codes_and_are_counted() -> None:
    names = ["a", "b", "c", "d", "e"]
    codes, report = codes_from_lists(names, {"train": ["a", "x"], "val": ["c"], "test": ["e", "d"]},
                                     np.array([1, 1, 1, 1, 0], bool))
    assert codes.tolist() == [0, -1, 1, 2, -1]
    assert report == {"train": {"listed": 2, "matched": 1, "unmatched_examples": ["x"]},
                      "val": {"listed": 1, "matched": 1}, "test": {"listed": 2, "matched": 2}}


def test_names_match_in_any_row_order() -> None:
    codes, report = codes_from_lists(["d", "a", "c", "b"], {"train": ["a", "b"], "val": ["zz"], "test": ["d"]})
    assert codes.tolist() == [2, 0, -1, 0]
    assert report["val"] == {"listed": 1, "matched": 0, "unmatched_examples": ["zz"]}


def test_a_name_in_two_lists_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="both"):
        codes_from_lists(["a", "b"], {"train": ["a"], "test": ["a"]})


def test_official_lists_hold_519284_disjoint_patches() -> None:
    lists = official_lists()
    assert [len(lists[s]) for s in ("train", "val", "test")] == [269695, 123723, 125866]
    assert len(set().union(*lists.values())) == 519284


def test_csv_files_round_trip(tmp_path: Path) -> None:
    names = np.array([f"p{i:03d}" for i in range(50)])
    codes = random_codes(np.arange(50) % 7 != 0, seed=2)
    write_csv_lists(tmp_path, names, codes)
    assert (tmp_path / "train.csv").read_text().splitlines()[0] == names[codes == 0][0]  # no header
    back, _ = codes_from_lists(names, read_csv_lists(tmp_path))
    np.testing.assert_array_equal(back, codes)


def test_missing_csv_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text("a\n")
    with pytest.raises(InvalidArgumentError, match="val.csv"):
        read_csv_lists(tmp_path)
    with pytest.raises(InvalidArgumentError, match=r"train\.csv: is a file, not a folder \(expected train\.csv"):
        read_csv_lists(tmp_path / "train.csv")  # --csv-dir exp1/train.csv said "no such folder"


def test_csv_lists_as_spreadsheets_write_them_read_the_same(store, tmp_path: Path) -> None:
    """A byte-order mark, quotes, CRLF and a header row each changed the import silently; a
    latin-1 file was an "unexpected UnicodeDecodeError" naming no file."""
    names = store.patch_names()
    make_split(store, "ref", "random", seed=1)
    codes, _ = store.read_split("ref")
    plain = tmp_path / "plain"
    write_csv_lists(plain, names, codes)
    fancy = tmp_path / "fancy"
    fancy.mkdir()
    for subset in ("train", "val", "test"):
        rows = (plain / f"{subset}.csv").read_text().splitlines()
        body = "\r\n".join(f'"{row}"' for row in rows)
        (fancy / f"{subset}.csv").write_bytes("\ufeffpatch_name\r\n".encode() + body.encode() + b"\r\n")
    result = make_split(store, "fancy", "csv", csv_dir=fancy)
    np.testing.assert_array_equal(result.codes, codes)
    assert all(r["matched"] == r["listed"] for r in result.lists.values())
    (fancy / "val.csv").write_bytes(b"caf\xe9\n")
    with pytest.raises(InvalidArgumentError, match=r"val\.csv: not UTF-8 text \(byte 0xe9 on line 1\)"):
        read_csv_lists(fancy)


def test_csv_lists_separated_by_tabs_or_semicolons_read_the_same(store, tmp_path: Path) -> None:
    """A TSV (or a spreadsheet's CSV with ';') was read by commas alone: each line one unknown
    "name", and the split was written with that subset empty, exit 0."""
    names = store.patch_names()
    make_split(store, "ref", "random", seed=1)
    codes, _ = store.read_split("ref")
    plain = tmp_path / "plain"
    write_csv_lists(plain, names, codes)
    for sep, second in (("\t", "S1B_IW_GRDH_1SDV_x"), (";", "Forest,Pastures")):
        other = tmp_path / f"sep{ord(sep)}"
        other.mkdir()
        for subset in ("train", "val", "test"):
            rows = (plain / f"{subset}.csv").read_text().splitlines()
            (other / f"{subset}.csv").write_text("".join(f"{row}{sep}{second}\n" for row in rows))
        np.testing.assert_array_equal(make_split(store, "s", "csv", csv_dir=other, overwrite=True).codes, codes)
    (plain / "train.csv").write_text("".join(f"{n},Forest;Pastures\n" for n in names[codes == 0]))
    assert read_csv_lists(plain)["train"] == names[codes == 0].tolist()  # ';' in a later column stays there


def test_csv_names_the_store_lacks_are_warned_about_even_when_quiet(store, tmp_path: Path) -> None:
    names = store.patch_names()
    make_split(store, "ref", "random", seed=1)
    write_csv_lists(tmp_path / "l", names, store.read_split("ref")[0])
    with open(tmp_path / "l" / "train.csv", "a") as fh:
        fh.write("S2A_MSIL2A_20990101T000000_1_1\n")
    result = run_cli("split", store.path, "--name", "c", "--method", "csv", "--csv-dir", str(tmp_path / "l"), "-q")
    assert result.exit_code == 0, result.output
    assert "1 name in" in result.output and "train.csv is not a patch of the store (S2A_MSIL2A_20990101T000000_1_1)" \
        in result.output


def test_csv_empty_train_list_is_refused_naming_the_file(store, tmp_path: Path) -> None:
    """An empty (or header-only) train.csv made a split with 0 train patches, exit 0; empty val.csv
    and test.csv still make a split (a split with no test subset is allowed)."""
    from tests.conftest import run_cli as run_main  # through main: the one-line error

    names = store.patch_names()
    make_split(store, "ref", "random", seed=1)
    write_csv_lists(tmp_path / "l", names, store.read_split("ref")[0])
    for text, what in (("", "lists no patch"), ("patch_name\n", "none of its 1 name is a usable patch of the store")):
        (tmp_path / "l" / "train.csv").write_text(text)
        result = run_main("split", store.path, "--name", "c", "--method", "csv", "--csv-dir", tmp_path / "l", "-q")
        assert result.returncode != 0 and result.stderr.count("\n") == 1 and not result.stdout, result.stderr
        assert f"error: {tmp_path / 'l' / 'train.csv'}: {what}; a split needs train patches" in result.stderr
    assert "c" not in store.split_names()  # nothing written
    write_csv_lists(tmp_path / "m", names, store.read_split("ref")[0])
    (tmp_path / "m" / "val.csv").write_text("")
    (tmp_path / "m" / "test.csv").write_text("")
    result = run_main("split", store.path, "--name", "d", "--method", "csv", "--csv-dir", tmp_path / "m", "-q")
    assert result.returncode == 0, result.stderr


# --- quality -----------------------------------------------------------------------------


def test_quality_of_a_perfect_split_is_zero() -> None:
    # two identical halves of a 3-row pattern: every label has the same share everywhere
    block = np.array([[1, 0], [0, 1], [1, 1]], np.uint8)
    labels = np.concatenate([block] * 4)
    codes = np.repeat(np.array([0, 1, 2, 0], np.int8), 3)
    quality = split_quality(labels, codes, desired=(0.5, 0.25, 0.25))
    assert quality.label_distribution == 0
    assert quality.examples_distribution == 0
    assert quality.labels_missing == 0
    assert quality.per_label["max_abs_deviation"].max() == 0
    assert quality.sizes["count"].tolist() == [6, 3, 3]


def test_quality_follows_sechidis_definitions() -> None:
    labels = np.array([[1, 0], [1, 0], [0, 1], [1, 1], [0, 0], [1, 0]], np.uint8)
    codes = np.array([0, 0, 0, 1, 1, -1], np.int8)
    q = split_quality(labels, codes, desired=(0.6, 0.4, 0.0), baseline_seed=None)
    # D: 5 rows; label 0 in 3 (odds 3/2), label 1 in 2 (odds 2/3). train: 3 rows (2|1), val: 2 rows (1|1)
    ld = (abs(2 / 1 - 3 / 2) + abs(1 / 1 - 3 / 2) + abs(1 / 2 - 2 / 3) + abs(1 / 1 - 2 / 3)) / 4
    assert q.label_distribution == pytest.approx(ld)
    assert q.examples_distribution == pytest.approx((abs(3 - 3) + abs(2 - 2) + 0) / 3)
    assert q.labels_missing == 0  # the empty test subset does not count
    assert q.per_label.loc["class 0", "count_train"] == 2


def test_stratified_split_beats_random_on_skewed_labels() -> None:
    labels = skewed_labels(5000, 3)
    codes = iterative_codes(labels, None, seed=0)
    quality = split_quality(labels, codes, desired=(0.6, 0.2, 0.2))
    assert quality.baseline is not None
    assert quality.label_distribution < quality.baseline.label_distribution
    summary = quality.summary()
    assert list(summary.columns) == ["split", "random"]
    assert (quality.baseline.sizes["count"] == quality.sizes["count"]).all()


def test_plot_writes_a_png(tmp_path: Path) -> None:
    labels = skewed_labels(600)
    quality = split_quality(labels, iterative_codes(labels, None), desired=(0.6, 0.2, 0.2))
    path = plot_quality(quality, tmp_path / "q.png", title="test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- store -------------------------------------------------------------------------------


def test_stored_split_keeps_attrs_and_excludes_failed_patches(store) -> None:
    result = make_split(store, "strat", "iterative", seed=4)
    codes, attrs = store.read_split("strat")
    np.testing.assert_array_equal(codes, result.codes)
    assert codes[[5, 77, 300]].tolist() == [-1, -1, -1]
    assert attrs["method"] == "iterative" and attrs["seed"] == 4 and attrs["labels"] == "clc43"
    assert attrs["parameters"]["folds"] == 5 and attrs["parameters"]["assign"] == [3, 1, 1]
    assert attrs["counts"]["excluded"] == 3 and "created" in attrs
    # exactly the package's folds on the valid rows in store order
    usable = store.valid_mask()
    expected = iterative_codes(store.labels("clc43"), usable, seed=4, engine="package")
    np.testing.assert_array_equal(codes, expected)


def test_the_name_zarr_json_is_refused_as_the_splits_groups_own_file(store) -> None:
    """``--name zarr.json`` was refused as "a folder that is not a split (no zarr.json) is in the
    way", of the file that makes splits/ a group (and on object storage nothing was in the way)."""
    make_split(store, "r", "random")
    with pytest.raises(InvalidArgumentError, match=r"invalid split name 'zarr\.json': it is the file that makes"):
        make_split(store, "zarr.json", "random", overwrite=True)
    assert store.split_names() == ["r"]


def test_existing_name_needs_overwrite(store) -> None:
    make_split(store, "s", "random", seed=1)
    with pytest.raises(SplitExistsError, match="--overwrite"):
        make_split(store, "s", "random", seed=2)
    make_split(store, "s", "random", seed=2, overwrite=True)
    assert store.read_split("s")[1]["seed"] == 2
    # zarr replaces a split by deleting its folder: a user's files in it stop that, whole
    folder = Path(store.path) / "splits" / "s"
    (folder / "mine").mkdir()
    (folder / "mine" / "notes.txt").write_text("mine")
    codes = store.read_split("s")[0]
    for replace in (lambda: make_split(store, "s", "random", seed=3, overwrite=True), lambda: store.delete_split("s")):
        with pytest.raises(UnsafeOverwriteError, match=r"splits/s: holds files that benzarr did not write \(mine/notes.txt\)"):
            replace()
        assert (folder / "mine" / "notes.txt").read_text() == "mine"
        np.testing.assert_array_equal(store.read_split("s")[0], codes)


def test_rerun_with_same_arguments_gives_same_codes(store) -> None:
    first = make_split(store, "a", "iterative", fractions=(0.5, 0.25, 0.25), seed=7, labels="clc19").codes
    second = make_split(store, "a", "iterative", fractions=(0.5, 0.25, 0.25), seed=7, labels="clc19",
                        overwrite=True).codes
    np.testing.assert_array_equal(first, second)


def test_unknown_split_error_lists_existing_names(store) -> None:
    make_split(store, "one", "random")
    make_split(store, "two", "random")
    with pytest.raises(SplitNotFoundError, match="one, two"):
        make_split(store, "three", "random", exclude_from="nope")
    with pytest.raises(SplitNotFoundError, match="one, two"):
        store_split_quality(store, "nope")


def test_official_split_matches_store_names(store, official_names) -> None:
    result = make_split(store, "official", "official")
    lists = official_lists()
    assert {s: r["matched"] for s, r in result.lists.items()} == {"train": 200, "val": 200, "test": 200}
    assert result.lists["train"]["listed"] == len(lists["train"])
    names = store.patch_names()
    train = set(lists["train"])
    valid = store.valid_mask()
    assert all((code == 0) == (name in train) for name, code, ok in zip(names, result.codes, valid) if ok)


def test_export_then_import_round_trips(store, tmp_path: Path) -> None:
    original = make_split(store, "orig", "iterative", seed=2).codes
    export_split(store, "orig", tmp_path / "lists")
    back = make_split(store, "copy", "csv", csv_dir=tmp_path / "lists")
    np.testing.assert_array_equal(back.codes, original)
    assert back.lists["train"]["matched"] == int((original == 0).sum())


def test_exclude_from_carries_exclusions(store) -> None:
    make_split(store, "base", "random", fractions=(0.8, 0.1, 0.1), seed=0)
    codes, _ = store.read_split("base")
    # exclude every test patch of base by re-importing only train+val
    base_excluding_test = np.where(codes == 2, -1, codes).astype(np.int8)
    store.write_split("base2", base_excluding_test, {"method": "manual"})
    result = make_split(store, "child", "iterative", exclude_from="base2", seed=1)
    assert np.all(result.codes[base_excluding_test == -1] == -1)
    assert np.all(result.codes[base_excluding_test != -1] >= 0)
    assert result.attrs["n_excluded_from"] == int(((codes == 2) & store.valid_mask()).sum())


@pytest.mark.parametrize("method", ["random", "iterative"])
def test_a_store_with_no_usable_patch_is_refused_and_nothing_is_written(store, method: str) -> None:
    """A split of nothing wrote an empty train set and exited 0 (random) or spoke of folds the
    user never asked for (iterative with --fractions): now one line says why nothing is left."""
    store.write_split("none", np.full(store.n_patches, -1, dtype=np.int8), {"method": "manual"})
    with pytest.raises(InvalidArgumentError, match=r"^no usable patch to split among the store's 600: 3 failed "
                                                   r"ingest \(benzarr info .* lists them\); 597 are excluded by "
                                                   r"split 'none'$"):
        make_split(store, "child", method, fractions=(0.6, 0.2, 0.2), exclude_from="none")
    assert list_splits(store)["name"].tolist() == ["none"]


def test_split_quality_names_mismatched_shapes() -> None:
    """codes of another length than the labels were a raw numpy IndexError."""
    with pytest.raises(InvalidArgumentError, match=r"^labels must be \(N, L\) and codes \(N,\): got labels \(48, 43\) and codes \(3,\)$"):
        split_quality(np.zeros((48, 43), np.uint8), np.zeros(3, np.int8))


def test_list_and_quality_of_stored_splits(store) -> None:
    make_split(store, "x", "iterative")
    make_split(store, "y", "random")
    table = list_splits(store)
    assert table["name"].tolist() == ["x", "y"]
    assert table["method"].tolist() == ["iterative", "random"]
    quality = store_split_quality(store, "x")
    assert quality.sizes["count"].sum() == store.valid_mask().sum()
    assert quality.per_label.shape[0] == 43


def test_contradictory_options_are_refused(store, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError):
        make_split(store, "z", "random", folds=5)
    with pytest.raises(InvalidArgumentError):
        make_split(store, "z", "official", fractions=(0.6, 0.2, 0.2))
    with pytest.raises(InvalidArgumentError):
        make_split(store, "z", "csv")
    with pytest.raises(InvalidArgumentError):
        make_split(store, "z", "bogus")


@pytest.mark.parametrize("kwargs, message", [
    ({"seed": 1.9}, "seed must be a whole number, got 1.9"),  # stored as 1
    ({"seed": True}, "seed must be a whole number, got True"),
    ({"seed": "5"}, "seed must be a whole number, got '5'"),
    ({"seed": None}, "seed must be a whole number, got None"),  # TypeError
    ({"folds": 2.5, "assign": (1, 0, 1)}, "folds must be a whole number, got 2.5"),  # read as 2
    ({"folds": 5, "assign": (3.0, 1, 1)}, "assign must be whole numbers"),
    ({"fractions": "0.6,0.2,0.2"}, "fractions must be numbers train, val, test"),  # ValueError
    ({"fractions": ("a", 1, 1)}, "fractions must be numbers train, val, test"),
    ({"fractions": 0.6}, "fractions must be numbers train, val, test"),
    ({"leakage_km": -1.0}, "(--leakage-km) must be a non-negative number of km, got -1.0"),
    ({"folds": 3}, "--folds 3 needs --assign A,B,C: how many of the 3 folds go to train, val and test"),  # "got 3,1,1"
])
def test_make_split_refuses_arguments_of_the_wrong_type(store, kwargs: dict, message: str) -> None:
    """The docstring promises InvalidArgumentError; these were coerced or raised TypeError/ValueError."""
    with pytest.raises(InvalidArgumentError, match=re.escape(message)):
        make_split(store, "x", "iterative", **kwargs)
    assert "x" not in store.split_names()


# --- CLI ---------------------------------------------------------------------------------


def run_cli(*args: str):
    from typer.testing import CliRunner

    from benzarr_cli.main import app

    return CliRunner().invoke(app, list(args))


def test_cli_split_quality_list_export(store, tmp_path: Path) -> None:
    path = store.path
    out = run_cli("split", path, "--name", "cli", "--method", "iterative", "--seed", "1")
    assert out.exit_code == 0, out.output
    assert "Label Distribution" in out.output and "random" in out.output
    out = run_cli("split", path, "--list")
    assert out.exit_code == 0 and "cli" in out.output
    out = run_cli("split", path, "--name", "cli", "--quality", "--plot", str(tmp_path / "q.png"))
    assert out.exit_code == 0, out.output
    assert (tmp_path / "q.png").exists() and out.output.endswith(f"wrote {tmp_path / 'q.png'}\n")
    out = run_cli("split", path, "--name", "cli", "--quality", "--plot", str(tmp_path / "q.png"), "-q")
    assert out.exit_code == 0 and "wrote" not in out.output  # the report asked for, not the summary line
    out = run_cli("split", path, "--name", "cli", "--export", str(tmp_path / "csv"))
    assert out.exit_code == 0, out.output
    assert sorted(p.name for p in (tmp_path / "csv").iterdir()) == ["test.csv", "train.csv", "val.csv"]


def test_cli_unknown_split_is_one_error_line(store) -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "benzarr_cli", "split", store.path, "--name", "nope", "--quality"],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "nope" in lines[0]


@pytest.mark.parametrize("plot", ["q.txt", "folder"])
def test_a_bad_plot_path_leaves_the_old_split_untouched(store, tmp_path: Path, plot: str) -> None:
    """`split --overwrite --plot x.txt` replaced the split, then failed on the plot."""
    make_split(store, "s", "iterative", seed=0)
    before = store.read_split("s")[0].copy()
    (tmp_path / "folder").mkdir()
    out = run_cli("split", store.path, "--name", "s", "--method", "random", "--seed", "3", "--overwrite",
                  "--plot", str(tmp_path / plot))
    assert out.exit_code == 1
    np.testing.assert_array_equal(open_store(store.path).read_split("s")[0], before)
    assert open_store(store.path).read_split("s")[1]["method"] == "iterative"


@pytest.mark.parametrize("args, message", [
    (["--list", "--name", "x"], "--list shows the stored splits; it takes no --name"),
    (["--name", "x", "--method", "random", "--export", "out"], "--export writes a stored split"),
    (["--name", "x", "--method", "random", "--fractions", ""], "--fractions: give the train,val,test shares"),
    (["--name", "x", "--method", "iterative", "--folds", "3"], "--folds 3 needs --assign A,B,C"),
    # these were sent to an --assign that then failed on the folds or on the method
    (["--name", "x", "--method", "iterative", "--folds", "1"], "--folds must be at least 2, got 1"),
    (["--name", "x", "--method", "random", "--folds", "3"], "--folds/--assign apply to --method iterative"),
    (["--name", "x", "--method", "iterative", "--fractions", "0.6,0.2,0.2", "--folds", "3"],
     "--folds/--assign apply to --method iterative without --fractions"),
    # the line named no option
    (["--name", "x", "--method", "iterative", "--assign", "0-2,3,4"], "--assign: expected comma-separated whole"),
    (["--name", "x", "--method", "random", "--fractions", "60%,20%,20%"], "--fractions: expected comma-separated"),
    (["--name", "x", "--method", "random", "--fractions", "60,20,20"], "shares of 1, not percent: e.g. 0.6,0.2,0.2"),
    (["--name", "x", "--method", "iterative", "--leakage-km", "-1"], "(--leakage-km) must be a non-negative number"),
    (["--name", "x", "--method", "iterative", "--leakage-km", "nan"], "(--leakage-km) must be a non-negative number"),
])
def test_split_options_that_cannot_go_together_are_refused(store, args: list[str], message: str) -> None:
    """Each used to be ignored without a word (or, for --folds 3, blamed an --assign never given)."""
    result = run_cli("split", store.path, *args)
    assert result.exit_code == 1 and message in str(result.exception)
    assert "x" not in open_store(store.path).split_names()


def test_export_never_replaces_files_that_are_there(store, tmp_path: Path) -> None:
    """It replaced a user's own train.csv without a word, and a val.csv folder left it half written."""
    make_split(store, "s", "random", seed=0)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "train.csv").write_text("my list\n")
    with pytest.raises(InvalidArgumentError, match=r"train\.csv: exists already"):
        export_split(store, "s", tmp_path / "mine")
    assert (tmp_path / "mine" / "train.csv").read_text() == "my list\n"
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["train.csv"]


def test_export_into_a_name_ending_in_csv_is_refused(store, tmp_path: Path) -> None:
    """`--export lists/train.csv` made a folder train.csv holding the three lists."""
    from tests.conftest import run_cli as run_main

    make_split(store, "s", "random", seed=0)
    done = run_main("split", store.path, "--name", "s", "--export", tmp_path / "lists" / "train.csv")
    assert done.returncode == 1 and done.stderr == (f"error: {tmp_path / 'lists' / 'train.csv'}: a .csv file's name "
                                                    "given for the CSV lists (--export), a folder: give the folder the "
                                                    f"files go into, such as {tmp_path / 'lists'}\n"), done.stderr
    assert not (tmp_path / "lists").exists()


def test_a_failed_split_write_to_an_object_store_removes_what_it_wrote(s3_server: dict,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """An object store has no rename: the split is written in place, and a failure between its
    zarr.json and its chunk deletes the half-written array (it broke every reader of the store)."""
    import errno

    from benzarr.errors import FileSystemError
    from benzarr.store import Store

    s3_server["client"].create_bucket(Bucket="splits-fail")
    url, options = "s3://splits-fail/s.zarr", s3_server["options"]
    names = [f"S2A_MSIL2A_20170613T101031_{i}_0" for i in range(10)]
    store = create_store(url, names, modalities=(), storage_options=options)
    store.array("meta/valid")[:] = np.ones(10, bool)
    store.mark_complete()
    store = open_store(url, mode="r+", storage_options=options)
    store.write_split("a", np.zeros(10, np.int8), {"method": "x"})

    def full(self: Store, path: str, codes: np.ndarray, attrs: dict) -> None:
        self.group.create_array(path, shape=(10,), dtype="int8", fill_value=-1, overwrite=True)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Store, "_create_split_array", full)
    with pytest.raises(FileSystemError, match="no space left on device while writing the split"):
        store.write_split("b", np.zeros(10, np.int8), {"method": "x"})
    monkeypatch.undo()
    assert open_store(url, storage_options=options).split_names() == ["a"]
    store.write_split("b", np.ones(10, np.int8), {"method": "x"})
    assert open_store(url, storage_options=options).read_split("b")[0].tolist() == [1] * 10


def test_source_date_epoch_makes_a_split_the_same_bytes(tmp_path: Path, official_names: list[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A split's ``created`` stamp was the only byte of a store that differed between two builds
    from the same inputs and seed. With ``SOURCE_DATE_EPOCH`` (the reproducible-builds
    convention) the two split folders are equal file for file; a bad value is one clear error."""
    n = len(official_names)
    labels, valid = skewed_labels(n, 1), np.ones(n, bool)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    folders = []
    for name in ("a", "b"):
        store = make_labels_store(tmp_path / f"{name}.zarr", official_names, labels, valid)
        make_split(store, "strat", "iterative", seed=3)
        folders.append(tmp_path / f"{name}.zarr" / "splits" / "strat")
    files = [sorted(p.relative_to(f) for p in f.rglob("*") if p.is_file()) for f in folders]
    assert files[0] == files[1] and files[0]
    assert all((folders[0] / p).read_bytes() == (folders[1] / p).read_bytes() for p in files[0])
    assert open_store(tmp_path / "a.zarr").read_split("strat")[1]["created"] == "2023-11-14T22:13:20+00:00"
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(InvalidArgumentError, match=r"^SOURCE_DATE_EPOCH must be a whole number of seconds since 1970, "
                                                   r"got 'yesterday'"):
        make_split(open_store(tmp_path / "a.zarr", mode="r+"), "other", "random", seed=3)


def test_label_distribution_leaves_out_terms_without_odds() -> None:
    from benzarr.split import split_quality

    labels = np.array([[1, 0], [1, 1], [1, 0], [0, 1], [1, 0], [0, 0]], dtype=np.uint8)
    codes = np.array([0, 0, 1, 1, 2, 2], dtype=np.int8)  # every train patch has label 0: no odds there
    q = split_quality(labels, codes, baseline_seed=None)
    terms = []
    for i in range(2):
        whole = labels[:, i].sum() / (6 - labels[:, i].sum())
        for c in range(3):
            s_ji, s_j = labels[codes == c, i].sum(), (codes == c).sum()
            if s_ji < s_j:
                terms.append(abs(s_ji / (s_j - s_ji) - whole))
    assert len(terms) == 5 and q.label_distribution == pytest.approx(np.mean(terms), rel=1e-12)
