"""Train/val/test splits: iterative stratification, random, official and CSV lists; split quality.

A split is one int8 code per store row (see :mod:`benzarr.store`): 0 train, 1 val, 2 test,
-1 excluded. Patches that failed ingest, and patches excluded by ``exclude_from`` (another
split's -1), always get -1; the others are the *usable* patches, in store order.

Methods:

``iterative`` with ``folds``/``assign`` (default 5 folds, 3/1/1: the study's 60/20/20)
    ``MultilabelStratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)`` of the
    iterative-stratification package on the usable label rows, in store order. Fold ``i`` is
    the package's i-th yielded test set; the first ``A`` folds become train, the next ``B``
    val, the last ``C`` test. Computed by :mod:`benzarr.stratify`, which gives exactly the
    package's folds about 7x faster (tests compare them); ``engine="package"`` runs the package.
``iterative`` with ``fractions`` (train, val, test)
    The same procedure with three subsets whose desired shares are the fractions: the
    ``RandomState(seed)`` shuffle of the rows, the package's ``IterativeStratification``
    with ``r = fractions`` on the shuffled rows, then back to store order. It is what
    ``MultilabelStratifiedKFold`` does internally with ``r = [1/K] * K``.
``iterative`` with ``group_by`` (``tile``, ``block:KM``, ``country``, ``season``, ``meta:ARRAY``)
    Iterative stratification whose items are groups of patches (:mod:`benzarr.groups`: the
    rarest label first, each group to the subset that most needs it, ties to the larger
    remaining room in patches), so no group is split across subsets. With ``folds``/``assign``
    it makes K folds of equal desired shares and assigns them as above; with ``fractions``,
    three subsets of those shares. Grouping trades some label balance for spatial
    independence; ``--quality`` shows both beside the plain iterative split.
``random`` with ``fractions``
    ``numpy.random.default_rng(seed).permutation`` of the usable rows; the first
    ``round(f_train * n)`` become train, the next ``round((f_train + f_val) * n) - n_train``
    val, the rest test. The baseline.
``official``
    The official split of the store's archive source (:func:`official_codes`): BigEarthNet
    v1.0's train/val/test lists shipped in :mod:`benzarr.resources`; for a v2.0 store, the
    ``split`` column of its metadata.parquet (train/validation/test).
``csv``
    ``train.csv``, ``val.csv``, ``test.csv`` in a folder, one patch name per line, no header
    (the format :func:`export_split` writes).

Quality (:func:`split_quality`) follows Sechidis, Tsoumakas and Vlahavas (2011), "On the
stratification of multi-label data", ECML PKDD: Label Distribution (LD), Examples
Distribution (ED) and the labels left without examples in some subset, beside a random split
of the same sizes and seed. Where the store knows each patch's footprint (``meta/bounds``,
``meta/epsg``), it adds the spatial leakage of :mod:`benzarr.leakage`: the share of val and
test patches with a train patch within 1.2 km. A grouped split is also measured beside the
plain iterative split of the same parameters, so the label-distribution cost of grouping shows.

The library never prints; the CLI (``benzarr split``) formats what these functions return.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from benzarr.errors import InvalidArgumentError
from benzarr.fsutil import check_not_a_file, read_utf8
from benzarr.groups import GroupBy, group_ids, group_summary, grouped_assignment, parse_group_by
from benzarr.checks import MAX_SEED, boolean, check_seed, is_number, is_whole  # noqa: F401  (MAX_SEED, check_seed: also this module's API)
from benzarr.leakage import DEFAULT_KM, check_km, split_leakage
from benzarr.store import EXCLUDED, TEST, TRAIN, VAL, Store, check_split_name, open_store  # noqa: F401 (codes re-exported)
from benzarr.store import SUBSETS as SUBSET_CODES
from benzarr.stratify import kfold_assignment, shuffled_stratification
from benzarr.timestamps import utc_timestamp

if TYPE_CHECKING:
    import pandas as pd

#: Subset names in code order (codes and names: benzarr.store).
SUBSETS: tuple[str, ...] = tuple(SUBSET_CODES)
METHODS: tuple[str, ...] = ("iterative", "random", "official", "csv")
LABEL_SETS: tuple[str, ...] = ("clc43", "clc19")
ENGINES: tuple[str, ...] = ("benzarr", "package")
DEFAULT_FOLDS = 5
DEFAULT_ASSIGN: tuple[int, int, int] = (3, 1, 1)
DEFAULT_FRACTIONS: tuple[float, float, float] = (0.6, 0.2, 0.2)
DEFAULT_SEED = 0


# --- argument checks ------------------------------------------------------------------


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """Three non-negative train, val, test fractions summing to 1 (within 1e-6)."""
    # a string is a sequence too: "0.6,0.2,0.2" used to fail in float(",") as a bare ValueError
    if not _numbers(fractions, is_number):
        raise InvalidArgumentError(f"fractions must be numbers train, val, test, e.g. (0.6, 0.2, 0.2); "
                                   f"got {fractions!r}")
    values = tuple(float(f) for f in fractions)
    if len(values) != 3:
        raise InvalidArgumentError(f"fractions must be three values train,val,test; got {len(values)}")
    if any(not np.isfinite(f) or f < 0 for f in values) or abs(sum(values) - 1) > 1e-6:
        # 60,20,20 (percent) is the usual slip: the line said only what was wrong, not what to give
        hint = "; shares of 1, not percent" if abs(sum(values) - 100) <= 1e-6 else ""
        raise InvalidArgumentError(f"fractions must be non-negative and sum to 1, got {','.join(map(str, values))}"
                                   f"{hint}: e.g. 0.6,0.2,0.2")
    if values[0] == 0:
        raise InvalidArgumentError("the train fraction must be positive")
    return values  # type: ignore[return-value]


def check_assign(folds: int, assign: Sequence[int]) -> tuple[int, int, int]:
    """``assign`` = (A, B, C) folds to train, val, test; A >= 1 and A + B + C == folds >= 2."""
    if not is_whole(folds):  # 2.5 used to be read as 2
        raise InvalidArgumentError(f"folds must be a whole number, got {folds!r}")
    if not _numbers(assign, is_whole):
        raise InvalidArgumentError(f"assign must be whole numbers A, B, C of folds for train, val, test; "
                                   f"got {assign!r}")
    values = tuple(int(a) for a in assign)
    if folds < 2:
        raise InvalidArgumentError(f"--folds must be at least 2, got {folds}")
    if len(values) != 3 or any(a < 0 for a in values) or values[0] < 1 or sum(values) != folds:
        raise InvalidArgumentError(
            f"--assign must be three counts A,B,C of folds for train, val, test with A >= 1 and "
            f"A+B+C = --folds ({folds}); got {','.join(map(str, values))}"
        )
    return values  # type: ignore[return-value]


def _numbers(values: Any, test: Callable[[Any], bool]) -> bool:
    """True if ``values`` is a sequence (not a string) whose items pass ``test`` (its length is the caller's check)."""
    if isinstance(values, (str, bytes)):
        return False
    try:
        items = tuple(values)
    except TypeError:  # a bare number
        return False
    return all(test(v) for v in items)


def parse_numbers(text: str, kind: type = float, what: str = "value") -> tuple:
    """``"0.6,0.2,0.2"`` -> ``(0.6, 0.2, 0.2)``; raises InvalidArgumentError on bad numbers, naming
    ``what`` (the option, e.g. ``"--assign"``: the line named no option at all)."""
    try:
        return tuple(kind(part) for part in text.split(","))
    except ValueError:
        example = "3,1,1" if kind is int else "0.6,0.2,0.2"
        noun = "whole numbers" if kind is int else "numbers"
        raise InvalidArgumentError(f"{what}: expected comma-separated {noun}, e.g. {example}; got {text!r}") from None


def fraction_sizes(n: int, fractions: Sequence[float]) -> tuple[int, int, int]:
    """Subset sizes for ``n`` rows: cumulative rounding, so they sum to ``n`` exactly."""
    bounds = [int(round(b * n)) for b in np.cumsum(fractions[:2])]
    bounds = [min(max(b, 0), n) for b in bounds]
    return bounds[0], max(bounds[1] - bounds[0], 0), n - max(bounds[1], bounds[0])


# --- pure methods: usable mask + inputs -> codes (N,) int8 ------------------------------


def _spread(usable: np.ndarray, subset_of_usable: np.ndarray) -> np.ndarray:
    codes = np.full(usable.shape[0], EXCLUDED, dtype=np.int8)
    codes[usable] = subset_of_usable
    return codes


def _label_matrix(labels: np.ndarray) -> np.ndarray:
    """``labels`` as an (N, L) array, else InvalidArgumentError: one column (N,) was a bare
    "not enough values to unpack" ValueError from deep in the stratification."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise InvalidArgumentError(f"labels must be an (N, L) multi-hot matrix (store.labels(...)), got shape {labels.shape}")
    return labels


def _usable(usable: np.ndarray | None, n: int | None) -> np.ndarray:
    """``usable`` as an (n,) bool mask (None: every row; ``n`` None: any length), else
    InvalidArgumentError. Row indices are refused: np.asarray(rows, dtype=bool) read them as a
    mask, so usable=np.arange(N) left out row 0 alone, without a word."""
    if usable is None and n is not None:
        return np.ones(n, dtype=bool)
    raw = np.asarray(usable)
    if raw.dtype != bool and not (raw.dtype.kind in "iuf" and np.isin(raw, (0, 1)).all()):
        raise InvalidArgumentError(f"usable must be a bool mask of the rows to split, one value a row, not row "
                                   f"indices or {raw.dtype} values (np.isin(np.arange(N), rows) makes the mask of rows)")
    usable = raw.astype(bool)
    if usable.ndim != 1 or (n is not None and usable.shape != (n,)):
        raise InvalidArgumentError(f"usable mask must have shape ({'N' if n is None else n},), got {usable.shape}")
    return usable


def package_kfold_assignment(labels: np.ndarray, n_splits: int, seed: int) -> np.ndarray:
    """Fold of each row as the iterative-stratification package yields it (the reference).

    Returns:
        (n,) int64: ``folds[test] = i`` for the i-th test array of
        ``MultilabelStratifiedKFold(n_splits, shuffle=True, random_state=seed).split``.
    """
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold  # imports scikit-learn: ~1-2 s

    folds = np.full(labels.shape[0], -1, dtype=np.int64)
    kfold = MultilabelStratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    for i, (_, test) in enumerate(kfold.split(np.zeros(labels.shape[0]), labels)):
        folds[test] = i
    return folds


def package_fraction_assignment(labels: np.ndarray, fractions: Sequence[float], seed: int) -> np.ndarray:
    """The package's ``IterativeStratification`` with ``r = fractions`` after the K-fold shuffle."""
    from iterstrat.ml_stratifiers import IterativeStratification

    rng = np.random.RandomState(seed)
    order = np.arange(labels.shape[0])
    rng.shuffle(order)
    folds = IterativeStratification(labels=np.asarray(labels, dtype=bool)[order], r=np.asarray(fractions, dtype=np.float64),
                                    random_state=rng)
    return np.asarray(folds)[np.argsort(order)]


def iterative_codes(
    labels: np.ndarray,
    usable: np.ndarray | None = None,
    *,
    folds: int = DEFAULT_FOLDS,
    assign: Sequence[int] = DEFAULT_ASSIGN,
    seed: int = DEFAULT_SEED,
    engine: str = "benzarr",
) -> np.ndarray:
    """Codes from ``MultilabelStratifiedKFold`` folds on the usable rows, in store order.

    Args:
        labels: (N, L) uint8 multi-hot, every store row.
        usable: (N,) bool, rows to split (None: all).
        folds: K, the number of folds.
        assign: (A, B, C): folds 0..A-1 train, the next B val, the last C test.
        engine: ``benzarr`` (:mod:`benzarr.stratify`, exact and faster) or ``package``.

    Returns:
        (N,) int8 codes; -1 where not usable.
    """
    labels = _label_matrix(labels)
    usable = _usable(usable, labels.shape[0])
    assign = check_assign(folds, assign)
    seed = check_seed(seed)
    rows = labels[usable]
    if rows.shape[0] < folds:
        raise InvalidArgumentError(f"{rows.shape[0]} usable patch(es) cannot be split into {folds} folds")
    fold = _assignment(engine, rows, folds, seed)
    fold_to_code = np.repeat(np.arange(3, dtype=np.int8), assign)
    return _spread(usable, fold_to_code[fold])


def _assignment(engine: str, rows: np.ndarray, folds: int, seed: int) -> np.ndarray:
    if engine == "benzarr":
        return kfold_assignment(rows, folds, seed)
    if engine == "package":
        return package_kfold_assignment(rows, folds, seed)
    raise InvalidArgumentError(f"unknown engine {engine!r}: choose one of {', '.join(ENGINES)}")


def iterative_fraction_codes(
    labels: np.ndarray,
    usable: np.ndarray | None = None,
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = DEFAULT_SEED,
    engine: str = "benzarr",
) -> np.ndarray:
    """Codes from iterative stratification into three subsets of desired shares ``fractions``.

    The package's K-fold procedure with ``r = fractions`` instead of ``[1/K] * K`` (see the
    module docstring).

    Returns:
        (N,) int8 codes; -1 where not usable.
    """
    labels = _label_matrix(labels)
    usable = _usable(usable, labels.shape[0])
    fractions = check_fractions(fractions)
    seed = check_seed(seed)
    rows = labels[usable]
    if engine == "benzarr":
        subset = shuffled_stratification(rows, np.asarray(fractions, dtype=np.float64), seed)
    elif engine == "package":
        subset = package_fraction_assignment(rows, fractions, seed)
    else:
        raise InvalidArgumentError(f"unknown engine {engine!r}: choose one of {', '.join(ENGINES)}")
    return _spread(usable, subset.astype(np.int8))


def iterative_group_codes(
    labels: np.ndarray,
    groups: np.ndarray,
    usable: np.ndarray | None = None,
    *,
    folds: int | None = None,
    assign: Sequence[int] | None = None,
    fractions: Sequence[float] | None = None,
    seed: int = DEFAULT_SEED,
) -> np.ndarray:
    """Codes from iterative stratification over groups (:mod:`benzarr.groups`).

    Args:
        labels: (N, L) uint8 multi-hot, every store row.
        groups: (N,) int64 group id of every row (any integers; only usable rows count).
        usable: (N,) bool, rows to split (None: all).
        folds, assign: K folds of desired share 1/K, A to train, B to val, C to test
            (default 5 and (3, 1, 1)); or
        fractions: three subsets of these desired shares instead.

    Returns:
        (N,) int8 codes; -1 where not usable. Rows of one group share a code.
    """
    labels = _label_matrix(labels)
    usable = _usable(usable, labels.shape[0])
    seed = check_seed(seed)
    groups = np.asarray(groups)
    if groups.shape != (labels.shape[0],):
        raise InvalidArgumentError(f"groups must have shape ({labels.shape[0]},), got {groups.shape}")
    ids = np.unique(groups[usable], return_inverse=True)[1].reshape(-1)
    if fractions is not None:
        if folds is not None or assign is not None:
            raise InvalidArgumentError("pass --folds/--assign or --fractions, not both")
        subset = grouped_assignment(labels[usable], ids, check_fractions(fractions), seed)
        return _spread(usable, subset.astype(np.int8))
    folds = DEFAULT_FOLDS if folds is None else folds  # (int(folds) made 2.5 two folds before the check)
    assign = check_assign(folds, DEFAULT_ASSIGN if assign is None else assign)
    fold = grouped_assignment(labels[usable], ids, [1 / folds] * folds, seed)
    fold_to_code = np.repeat(np.arange(3, dtype=np.int8), assign)
    return _spread(usable, fold_to_code[fold])


def random_codes(
    usable: np.ndarray,
    *,
    fractions: Sequence[float] | None = DEFAULT_FRACTIONS,
    sizes: Sequence[int] | None = None,
    seed: int = DEFAULT_SEED,
) -> np.ndarray:
    """A uniformly random split of the usable rows.

    Args:
        usable: (N,) bool.
        fractions: train, val, test shares (ignored when ``sizes`` is given).
        sizes: exact train, val, test sizes summing to ``usable.sum()``.

    Returns:
        (N,) int8 codes; -1 where not usable.
    """
    usable = _usable(usable, None)
    n = int(usable.sum())
    if sizes is None:
        sizes = fraction_sizes(n, check_fractions(fractions or DEFAULT_FRACTIONS))
    if not _numbers(sizes, is_whole):  # (5.5, 2.5, 2) sums to 10 too: a ValueError from np.repeat
        raise InvalidArgumentError(f"sizes must be whole numbers train, val, test; got {sizes!r}")
    if len(sizes) != 3 or sum(sizes) != n or min(sizes) < 0:
        raise InvalidArgumentError(f"sizes {tuple(sizes)} do not split {n} usable patches")
    subset = np.repeat(np.arange(3, dtype=np.int8), sizes)
    permuted = np.empty(n, dtype=np.int8)
    permuted[np.random.default_rng(check_seed(seed)).permutation(n)] = subset
    return _spread(usable, permuted)


def official_codes(store: Any, usable: np.ndarray) -> tuple[np.ndarray, dict[str, dict[str, int]], str]:
    """Codes from the official split of the store's archive source (:mod:`benzarr.sources`).

    The source gives either name lists (v1: BigEarthNet's train/val/test lists), matched with
    the store's names by :func:`codes_from_lists`, or a stored row column (v2: the parquet's
    ``split`` column as ``meta/official_split``), read by :func:`column_codes`.

    Returns:
        codes (N,) int8 (-1 where unlisted or not usable), per subset ``{"listed",
        "matched"}``, and the split's description.

    Raises:
        InvalidArgumentError: the store's source is not registered or has no official split.
    """
    from benzarr.sources import source_of_store  # lazy: rasterio

    source = source_of_store(store.attrs)
    official = source.official_split()
    if official is None:
        raise InvalidArgumentError(f"{store.path}: {source.title} has no official split; use --method iterative "
                                   "or random")
    if official.column is None:
        codes, lists = codes_from_lists(store.patch_names(), official.lists or {}, usable)
    else:
        column = np.asarray(np.asarray(store.array(official.column)[:]).tolist(), dtype=str)
        codes, lists = column_codes(column, official.values, usable)
    return codes, lists, official.description


def column_codes(column: np.ndarray, values: Mapping[str, str],
                 usable: np.ndarray) -> tuple[np.ndarray, dict[str, dict[str, int]]]:
    """Codes from a (N,) string column: a row whose value is ``values[subset]`` goes to that
    subset (e.g. v2's ``validation`` to val); other rows and unusable ones get -1.

    Returns:
        codes (N,) int8, and per subset ``{"listed": rows with its value, "matched": those usable}``.
    """
    codes = np.full(column.shape, -1, dtype=np.int8)
    lists: dict[str, dict[str, int]] = {}
    for code, subset in enumerate(SUBSETS):
        listed = column == values[subset] if subset in values else np.zeros(column.shape, dtype=bool)
        codes[listed & usable] = code
        lists[subset] = {"listed": int(listed.sum()), "matched": int((listed & usable).sum())}
    return codes, lists


def official_lists() -> dict[str, tuple[str, ...]]:
    """BigEarthNet v1.0's official train, val and test patch names (519,284 in all)."""
    from benzarr.sources.ben_v1 import official_lists as lists  # lazy: rasterio

    return lists()


def codes_from_lists(
    patch_names: Sequence[str] | np.ndarray,
    lists: Mapping[str, Iterable[str]],
    usable: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[str, dict[str, int]]]:
    """Codes from lists of patch names per subset; rows in no list get -1.

    Args:
        patch_names: (N,) names of the store rows.
        lists: ``{"train": names, "val": names, "test": names}`` (missing keys: empty).
        usable: (N,) bool; rows not usable get -1 even when listed.

    Returns:
        codes (N,) int8, and per subset ``{"listed": ..., "matched": ...}``: names in the list
        and how many of them are store rows.

    Raises:
        InvalidArgumentError: a name is in two lists.
    """
    names = np.asarray(patch_names).astype(str, copy=False)
    usable = _usable(usable, names.shape[0])
    # match by binary search in the sorted names (store rows are sorted; sort if not)
    order: np.ndarray | None = None
    sorted_names = names
    if names.shape[0] > 1 and not (names[:-1] < names[1:]).all():
        order = np.argsort(names, kind="stable")
        sorted_names = names[order]
    listed = {subset: list(dict.fromkeys(lists.get(subset, ()))) for subset in SUBSETS}  # drop repeats
    if sum(len(v) for v in listed.values()) != len(set().union(*listed.values())):
        for i, first in enumerate(SUBSETS):
            for second in SUBSETS[i + 1:]:
                both = set(listed[first]) & set(listed[second])
                if both:
                    raise InvalidArgumentError(f"patch {min(both)} is in both the {first} and the {second} list")
    codes = np.full(names.shape[0], EXCLUDED, dtype=np.int8)
    report: dict[str, dict[str, int]] = {}
    for code, subset in enumerate(SUBSETS):
        wanted = np.asarray(listed[subset], dtype=str)
        rows = np.empty(0, dtype=np.int64)
        if wanted.size and sorted_names.size:
            pos = np.minimum(np.searchsorted(sorted_names, wanted), sorted_names.shape[0] - 1)
            rows = pos[sorted_names[pos] == wanted]
            rows = rows if order is None else order[rows]
        codes[rows] = code
        report[subset] = {"listed": len(listed[subset]), "matched": int(rows.shape[0])}
        if report[subset]["matched"] < report[subset]["listed"]:  # a few, for a warning
            hit = set(names[rows].tolist())
            report[subset]["unmatched_examples"] = [n for n in listed[subset] if n not in hit][:5]
    codes[~usable] = EXCLUDED
    return codes, report


def read_csv_lists(folder: str | Path) -> dict[str, list[str]]:
    """``train.csv``, ``val.csv``, ``test.csv`` of ``folder``: one patch name per line, no header.

    Blank lines are skipped; a line's first field is the name. Fields are separated by commas,
    or by tabs or semicolons (a TSV, or the CSV of a spreadsheet set to a language whose decimal
    mark is the comma): patch names hold none of the three, so the first of them on the file's
    first line ends its first field and is the file's separator.

    Raises:
        InvalidArgumentError: the folder or one of the three files is missing.
    """
    import csv

    folder = Path(folder)
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "no such folder"  # --csv-dir exp1/train.csv
        raise InvalidArgumentError(f"{folder}: {what} (expected train.csv, val.csv, test.csv in it)")
    lists: dict[str, list[str]] = {}
    for subset in SUBSETS:
        path = folder / f"{subset}.csv"
        if not path.is_file():
            what = "a folder, not a file" if path.is_dir() else "missing"
            raise InvalidArgumentError(f"{path}: {what} (a split folder holds train.csv, val.csv and test.csv)")
        text = read_utf8(path, "save it as UTF-8")
        # the csv module, so that a quoted name ("S2A_...") is the name; the first field of a row
        # is the patch (the S1-S2 lists carry the S1 name second)
        lines = text.splitlines()
        rows = csv.reader(lines, delimiter=_delimiter(lines))
        lists[subset] = [row[0].strip() for row in rows if row and row[0].strip()]
    return lists


def _delimiter(lines: Sequence[str]) -> str:
    """The field separator of a list's lines: whichever of comma, tab and semicolon comes first on
    its first non-blank line (comma when none does), so a later column of labels joined by ``;``
    stays a column. Read with commas alone, every line of a TSV was one unknown "name", and the
    split was written with that subset empty (exit 0, one warning)."""
    first = next((line for line in lines if line.strip()), "")
    found = [(first.index(sep), sep) for sep in (",", "\t", ";") if sep in first]
    return min(found)[1] if found else ","


def _without_headers(lists: dict[str, list[str]], names: np.ndarray) -> dict[str, list[str]]:
    """``lists`` without a first line that is no patch of the store while the next one is (a
    header such as ``patch_name``: every list has it, so it read as a patch in two lists)."""
    known = set(names.tolist())
    out = {}
    for subset, listed in lists.items():
        if len(listed) >= 2 and listed[0] not in known and listed[1] in known:
            listed = listed[1:]
        out[subset] = listed
    return out


def write_csv_lists(folder: str | Path, patch_names: Sequence[str] | np.ndarray, codes: np.ndarray) -> dict[str, Path]:
    """Write ``train.csv``, ``val.csv``, ``test.csv`` (names in store order, no header).

    Returns:
        subset -> file written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = np.asarray(patch_names).astype(str)
    codes = np.asarray(codes)
    paths = {}
    for code, subset in enumerate(SUBSETS):
        path = folder / f"{subset}.csv"
        selected = names[codes == code].tolist()
        path.write_text("".join(f"{name}\n" for name in selected), encoding="utf-8")
        paths[subset] = path
    return paths


# --- quality ---------------------------------------------------------------------------


@dataclass
class SplitQuality:
    """How well a split keeps the label distribution (Sechidis et al. 2011).

    Attributes:
        sizes: index train/val/test; columns ``count``, ``share`` (of the usable patches),
            ``desired`` (share asked for; NaN for official and CSV lists).
        per_label: index class names, sorted as the label set; columns ``count`` and
            ``share`` (fraction of patches with the label) over all usable patches, then
            ``count_<subset>``/``share_<subset>`` per subset, ``max_abs_deviation`` (largest
            |share in a subset - share overall|) and ``max_rel_deviation`` (the same divided by
            the overall share).
        label_distribution: LD = mean over labels and non-empty subsets of
            | |S_j^i| / (|S_j| - |S_j^i|) - |D^i| / (|D| - |D^i|) |, labels present in D only;
            the mean of all these terms at once (equal to the paper's mean over labels of
            means over subsets whenever every term is finite), leaving out the infinite
            ones (a subset, or D, whose every patch has the label: no odds).
        examples_distribution: ED = mean over subsets of | |S_j| - desired_j * |D| |; NaN
            when no desired shares are known.
        labels_missing: labels with examples overall but none in some non-empty subset.
        baseline: the same measures for a random split of the same sizes and seed.
        leakage: spatial leakage (:func:`benzarr.leakage.split_leakage`): ``distance_km``,
            ``val`` and ``test`` (share of the subset's patches with a train patch within
            that distance) and their counts; None when the store has no patch geometry.
        iterative: for a grouped split, the same measures for the plain iterative split of
            the same parameters (what grouping costs in label balance); else None.
    """

    sizes: pd.DataFrame
    per_label: pd.DataFrame
    label_distribution: float
    examples_distribution: float
    labels_missing: int
    baseline: SplitQuality | None = field(default=None, repr=False)
    leakage: dict[str, float | int] | None = None
    iterative: SplitQuality | None = field(default=None, repr=False)

    def summary(self) -> pd.DataFrame:
        """Headline measures: rows LD, ED, labels_missing, mean/max relative deviation (and,
        with geometry, ``leakage_val``/``leakage_test``); column ``split`` and, with a
        baseline, ``random``; for a grouped split, ``iterative``."""
        import pandas as pd

        columns = {"split": self._headline()}
        if self.baseline is not None:
            columns["random"] = self.baseline._headline()
        if self.iterative is not None:
            columns["iterative"] = self.iterative._headline()
        return pd.DataFrame(columns)

    def _headline(self) -> dict[str, float]:
        rel = self.per_label["max_rel_deviation"]
        out = {
            "label_distribution": self.label_distribution,
            "examples_distribution": self.examples_distribution,
            "labels_missing": float(self.labels_missing),
            "mean_max_rel_deviation": float(rel.mean()),
            "max_rel_deviation": float(rel.max()),
            "max_abs_deviation": float(self.per_label["max_abs_deviation"].max()),
        }
        if self.leakage is not None:
            out["leakage_val"] = float(self.leakage["val"])
            out["leakage_test"] = float(self.leakage["test"])
        return out


def split_quality(
    labels: np.ndarray,
    codes: np.ndarray,
    *,
    class_names: Sequence[str] | None = None,
    desired: Sequence[float] | None = None,
    baseline_seed: int | None = DEFAULT_SEED,
    geometry: tuple[np.ndarray, np.ndarray] | None = None,
    leakage_km: float = DEFAULT_KM,
) -> SplitQuality:
    """Measure a split.

    Args:
        labels: (N, L) uint8 multi-hot, every store row.
        codes: (N,) int8 split codes; -1 rows are left out of every figure.
        class_names: L names (default ``class 0`` ...).
        desired: the train, val, test shares asked for (for ED); None if unknown.
        baseline_seed: seed of the random split of the same sizes measured beside it
            (:func:`random_codes`); None for no baseline.
        geometry: ``(bounds (N, 4) float64, epsg (N,))`` of every row, for the spatial
            leakage (:func:`store_geometry`); None: no leakage measure.
        leakage_km: the leakage distance, km.
    """
    import pandas as pd  # here, not at import: a CLI call that makes no table starts 0.3 s sooner

    labels = np.asarray(labels)
    codes = np.asarray(codes)
    if labels.ndim != 2 or codes.shape != (labels.shape[0],):
        raise InvalidArgumentError(f"labels must be (N, L) and codes (N,): got labels {labels.shape} and codes {codes.shape}")
    n_labels = labels.shape[1]
    names = list(class_names) if class_names is not None else [f"class {i}" for i in range(n_labels)]
    usable = codes != EXCLUDED
    subset_sizes = np.array([int((codes == c).sum()) for c in range(3)], dtype=np.int64)
    subset_counts = np.stack([labels[codes == c].sum(axis=0, dtype=np.int64) for c in range(3)])  # (3, L)
    total = int(subset_sizes.sum())
    counts = subset_counts.sum(axis=0)  # (L,)

    with np.errstate(divide="ignore", invalid="ignore"):
        share = counts / total if total else np.zeros(n_labels)
        subset_share = subset_counts / subset_sizes[:, None]  # NaN rows for empty subsets
        filled = subset_sizes > 0
        abs_dev = np.abs(subset_share[filled] - share).max(axis=0) if filled.any() else np.full(n_labels, np.nan)
        rel_dev = np.where(counts > 0, abs_dev / share, np.nan)

        # LD: odds of each label in each subset against the whole (Sechidis et al. 2011, eq. 1)
        present = counts > 0
        whole_odds = counts / (total - counts)
        odds = subset_counts / (subset_sizes[:, None] - subset_counts)
        terms = np.abs(odds[filled][:, present] - whole_odds[present])
        terms = terms[np.isfinite(terms)]  # a subset or the whole made only of this label: no odds
        ld = float(terms.mean()) if terms.size else float("nan")

    if desired is not None and total:
        ed = float(np.abs(subset_sizes - np.asarray(desired, dtype=np.float64) * total).mean())
    else:
        ed = float("nan")
    missing = int(((subset_counts[filled] == 0) & present).any(axis=0).sum()) if filled.any() else 0

    sizes = pd.DataFrame(
        {
            "count": subset_sizes,
            "share": subset_sizes / total if total else np.zeros(3),
            "desired": np.asarray(desired, dtype=np.float64) if desired is not None else np.full(3, np.nan),
        },
        index=pd.Index(SUBSETS, name="subset"),
    )
    table: dict[str, Any] = {"count": counts, "share": share}
    for c, subset in enumerate(SUBSETS):
        table[f"count_{subset}"] = subset_counts[c]
        table[f"share_{subset}"] = subset_share[c]
    table["max_abs_deviation"] = abs_dev
    table["max_rel_deviation"] = rel_dev
    per_label = pd.DataFrame(table, index=pd.Index(names, name="class"))

    baseline = None
    if baseline_seed is not None:
        random = random_codes(usable, sizes=subset_sizes.tolist(), seed=baseline_seed)
        baseline = split_quality(labels, random, class_names=names, desired=desired, baseline_seed=None,
                                 geometry=geometry, leakage_km=leakage_km)
    leakage = split_leakage(codes, geometry[0], geometry[1], leakage_km) if geometry is not None else None
    return SplitQuality(sizes, per_label, ld, ed, missing, baseline, leakage)


def plot_quality(quality: SplitQuality, path: str | Path, *, title: str | None = None,
                 others: Sequence[tuple[str, SplitQuality]] = ()) -> Path:
    """Write a PNG of per-label counts and shares per subset, labels sorted by frequency.

    Top: examples of each label in each subset (log count axis), like the study's
    label-distribution figure. Middle: the share of each label's examples that went to each
    subset (stacked to 1), with the subsets' overall shares as dashed lines: a perfectly
    stratified split has every bar at the lines. Bottom: each label's largest relative
    share deviation (log) for this split, its random baseline, the plain iterative split
    (grouped splits) and ``others`` (``--against``), each named in the legend with its LD
    and, where measured, its spatial leakage.

    Raises:
        UnsafeOverwriteError: ``path`` is a file benzarr did not write (see
            :func:`benzarr.show.check_image_path`); nothing is drawn.
    """
    from benzarr.show import check_image_path, figure_marker, new_figure

    check_image_path(path, "--plot", "split")

    table = quality.per_label.sort_values("count", ascending=False)
    table = table[table["count"] > 0]
    x = np.arange(len(table))
    colours = {"train": "#1f77b4", "val": "#ff7f0e", "test": "#2ca02c"}
    fig = new_figure(figsize=(max(8.0, 0.28 * len(table) + 2), 11.5))
    top, bottom, compare = fig.subplots(3, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2, 2]})
    width = 0.27
    for c, subset in enumerate(SUBSETS):
        heights = table[f"count_{subset}"].to_numpy(dtype=np.float64)
        heights[heights == 0] = np.nan  # no bar (a zero has no place on a log axis)
        top.bar(x + (c - 1) * width, heights, width, label=subset, color=colours[subset])
    top.set_yscale("log")
    top.set_ylim(bottom=0.5)
    top.set_ylabel("patches with the label (log)")
    top.legend(loc="upper right")
    top.grid(axis="y", which="major", alpha=0.3)

    fractions = table[[f"count_{s}" for s in SUBSETS]].to_numpy(dtype=np.float64) / table["count"].to_numpy()[:, None]
    base = np.zeros(len(table))
    for c, subset in enumerate(SUBSETS):
        bottom.bar(x, fractions[:, c], 0.8, bottom=base, color=colours[subset], label=subset)
        base += fractions[:, c]
    for level in np.cumsum(quality.sizes["share"].to_numpy())[:2]:
        bottom.axhline(level, color="black", linestyle="--", linewidth=0.8)
    bottom.set_ylim(0, 1)
    bottom.set_ylabel("share of the label's patches")
    _plot_comparison(compare, table.index, [(title or "this split", quality), *_compared(quality), *others])
    compare.set_xticks(x)
    compare.set_xticklabels([_short(name) for name in table.index], rotation=90, fontsize=7)
    headline = f"LD {quality.label_distribution:.2e}   ED {quality.examples_distribution:.1f}"
    if quality.baseline is not None:
        headline += f"   (random: LD {quality.baseline.label_distribution:.2e}, ED {quality.baseline.examples_distribution:.1f})"
    top.set_title(f"{title + ': ' if title else ''}{headline}", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, **figure_marker(path))
    return path


def _compared(quality: SplitQuality) -> list[tuple[str, SplitQuality]]:
    out = []
    if quality.baseline is not None:
        out.append(("random", quality.baseline))
    if quality.iterative is not None:
        out.append(("plain iterative", quality.iterative))
    return out


def _plot_comparison(axis: Any, classes: Sequence[str], splits: Sequence[tuple[str, SplitQuality]]) -> None:
    """Per-label max relative deviation of each split, one line each, on ``axis``."""
    markers = "os^vDP*X"
    for i, (label, q) in enumerate(splits):
        values = q.per_label["max_rel_deviation"].reindex(classes).to_numpy(dtype=np.float64) * 100
        values[values <= 0] = np.nan  # log axis
        legend = f"{label}: LD {q.label_distribution:.2e}"
        if q.leakage is not None:
            legend += f", test near train {q.leakage['test']:.0%}"
        axis.plot(np.arange(len(classes)), values, marker=markers[i % len(markers)], markersize=4, linewidth=1,
                  label=legend)
    axis.set_yscale("log")
    axis.set_ylabel("max rel. share deviation (%)")
    axis.grid(axis="y", which="major", alpha=0.3)
    axis.legend(loc="upper left", fontsize=7)


def _short(name: str, width: int = 38) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


# --- store-level operations -------------------------------------------------------------


@dataclass
class SplitResult:
    """What :func:`make_split` stored.

    Attributes:
        name: the split's name.
        codes: (N,) int8 as stored.
        attrs: the array's attributes as stored.
        quality: measures of the split beside a random split of the same sizes.
        lists: for ``official``/``csv``, per subset ``{"listed", "matched"}``; else empty.
    """

    name: str
    codes: np.ndarray
    attrs: dict[str, Any]
    quality: SplitQuality
    lists: dict[str, dict[str, int]] = field(default_factory=dict)


def _package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("benzarr", "numpy", "iterative-stratification"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "not installed"
    return out


def make_split(
    store: Store | str | Path,
    name: str,
    method: str,
    *,
    folds: int | None = None,
    assign: Sequence[int] | None = None,
    fractions: Sequence[float] | None = None,
    seed: int = DEFAULT_SEED,
    labels: str | None = None,
    csv_dir: str | Path | None = None,
    exclude_from: str | None = None,
    overwrite: bool = False,
    engine: str = "benzarr",
    group_by: str | None = None,
    leakage_km: float = DEFAULT_KM,
) -> SplitResult:
    """Compute a split of ``store`` and write it as ``splits/<name>``.

    Args:
        store: a store opened with ``mode="r+"``, or its path (opened so).
        method: ``iterative``, ``random``, ``official`` or ``csv``.
        folds, assign: K-fold mode of ``iterative`` (defaults 5 and (3, 1, 1)).
        fractions: train, val, test shares for ``iterative`` (instead of folds) or ``random``
            (default 0.6, 0.2, 0.2).
        seed: 0 .. 2**32 - 1.
        labels: label set stratified on and measured (``clc43`` or ``clc19``); None: the
            store's own (:func:`default_label_set`: clc43 when present, else clc19).
        csv_dir: folder with train.csv, val.csv, test.csv for ``csv``.
        exclude_from: another split; its -1 patches get -1 here.
        engine: ``benzarr`` or ``package`` for ``iterative`` (same codes).
        group_by: ``iterative`` over groups (:func:`benzarr.groups.parse_group_by`: ``tile``,
            ``block:KM``, ``country``, ``season``, ``meta:ARRAY``); no group is split.
        leakage_km: the leakage distance of the quality measured after the split, km (>= 0).

    Raises:
        SplitExistsError: ``name`` exists and not ``overwrite`` (checked before any work).
        SplitNotFoundError: ``exclude_from`` is not a split of the store.
        InvalidArgumentError: bad or contradictory arguments, or a store opened read-only.
    """
    if not isinstance(store, Store):
        store = open_store(store, mode="r+")
    store.check_writable()
    labels, seed, kfold, grouping = _check_split_args(
        store, name, method, labels, seed, folds, assign, fractions, csv_dir, overwrite, engine, group_by, leakage_km
    )
    usable, n_failed, n_excluded_from = _usable_rows(store, exclude_from)
    if method in ("iterative", "random") and not usable.any():
        raise InvalidArgumentError(_nothing_to_split(store, n_failed, exclude_from, n_excluded_from))
    label_matrix = store.labels(labels)
    codes, parameters, desired, lists = _split_codes(
        store, method, label_matrix, usable, kfold=kfold, grouping=grouping, folds=folds, assign=assign,
        fractions=fractions, seed=seed, engine=engine, csv_dir=csv_dir,
    )
    attrs: dict[str, Any] = {
        "method": method,
        "parameters": parameters,
        "seed": seed if method in ("iterative", "random") else None,
        "labels": labels,
        "exclude_from": exclude_from,
        "n_usable": int(usable.sum()),
        "n_failed": n_failed,
        "n_excluded_from": n_excluded_from,
        "desired": list(desired) if desired is not None else None,
        "engine": engine if method == "iterative" else None,
        "versions": _package_versions(),
        "created": utc_timestamp(),
    }
    store.write_split(name, codes, attrs, overwrite=overwrite)
    stored, stored_attrs = store.read_split(name)
    geometry = store_geometry(store)
    quality = split_quality(label_matrix, stored, class_names=store.class_names(labels), desired=desired,
                            baseline_seed=seed, geometry=geometry, leakage_km=leakage_km)
    if grouping is not None:
        quality.iterative = _plain_iterative_quality(label_matrix, usable, stored_attrs, store.class_names(labels),
                                                     geometry, leakage_km)
    return SplitResult(name, stored, stored_attrs, quality, lists)


def _check_split_args(
    store: Store,
    name: str,
    method: str,
    labels: str | None,
    seed: int,
    folds: int | None,
    assign: Sequence[int] | None,
    fractions: Sequence[float] | None,
    csv_dir: str | Path | None,
    overwrite: bool,
    engine: str,
    group_by: str | None,
    leakage_km: float = DEFAULT_KM,
) -> tuple[str, int, bool, GroupBy | None]:
    """:func:`make_split`'s argument checks, before any work.

    Returns:
        (the label set, the checked seed, whether it is K-fold, the parsed ``group_by`` or None).
    """
    if method not in METHODS:
        raise InvalidArgumentError(f"unknown split method {method!r}: choose one of {', '.join(METHODS)}")
    boolean("overwrite", overwrite)  # overwrite="no" replaced the split
    if labels is None:
        labels = default_label_set(store)
    if labels not in LABEL_SETS:
        raise InvalidArgumentError(f"unknown label set {labels!r}: choose one of {', '.join(LABEL_SETS)}")
    check_split_name(name)
    store.check_split_target(name, overwrite)  # before the work, not only when writing
    seed = check_seed(seed)
    kfold = method == "iterative" and fractions is None
    if (folds is not None or assign is not None) and not kfold:
        raise InvalidArgumentError("--folds/--assign apply to --method iterative without --fractions")
    if fractions is not None and method not in ("iterative", "random"):
        raise InvalidArgumentError("--fractions applies to --method iterative or random")
    if (csv_dir is not None) != (method == "csv"):
        raise InvalidArgumentError("--method csv needs --csv-dir, and --csv-dir needs --method csv")
    # the numbers' types and ranges too, before any work (a float folds was read as int(folds))
    if kfold and assign is None and is_whole(folds) and folds >= 2 and folds != DEFAULT_FOLDS:
        # the line blamed an --assign never given ("got 3,1,1"), as the CLI's once did
        raise InvalidArgumentError(f"--folds {folds} needs --assign A,B,C: how many of the {folds} folds go to "
                                   "train, val and test (the default 3,1,1 is for 5 folds)")
    if kfold and (folds is not None or assign is not None):
        check_assign(DEFAULT_FOLDS if folds is None else folds, DEFAULT_ASSIGN if assign is None else assign)
    if fractions is not None:
        check_fractions(fractions)
    check_km(leakage_km)
    grouping = None
    if group_by is not None:
        if method != "iterative":
            raise InvalidArgumentError("--group-by applies to --method iterative")
        if engine != "benzarr":
            raise InvalidArgumentError("--group-by runs on the benzarr engine only (the package has no groups)")
        grouping = parse_group_by(group_by)
    return labels, seed, kfold, grouping


def _usable_rows(store: Store, exclude_from: str | None) -> tuple[np.ndarray, int, int]:
    """The rows a split may place: ingested, and not excluded by split ``exclude_from``.

    Returns:
        (the usable mask, the number of failed rows, the number ``exclude_from`` took out).
    """
    usable = store.valid_mask()
    n_failed = int((~usable).sum())
    n_excluded_from = 0
    if exclude_from is not None:
        other, _ = store.read_split(exclude_from)  # SplitNotFoundError lists the names
        dropped = usable & (other == EXCLUDED)
        n_excluded_from = int(dropped.sum())
        usable &= other != EXCLUDED
    return usable, n_failed, n_excluded_from


def _nothing_to_split(store: Store, n_failed: int, exclude_from: str | None, n_excluded_from: int) -> str:
    """Why a store has no patch to split (a split of nothing would write an empty train set)."""
    why = []
    if n_failed:
        why.append(f"{n_failed} failed ingest (benzarr info {store.path} lists them)")
    if exclude_from is not None:
        why.append(f"{n_excluded_from} are excluded by split {exclude_from!r}")
    return f"no usable patch to split among the store's {store.n_patches}: " + "; ".join(why or ["the store is empty"])


def _split_codes(
    store: Store,
    method: str,
    label_matrix: np.ndarray,
    usable: np.ndarray,
    *,
    kfold: bool,
    grouping: GroupBy | None,
    folds: int | None,
    assign: Sequence[int] | None,
    fractions: Sequence[float] | None,
    seed: int,
    engine: str,
    csv_dir: str | Path | None,
) -> tuple[np.ndarray, dict[str, Any], tuple[float, ...] | None, dict[str, dict[str, int]]]:
    """The codes of one split by ``method`` (arguments as checked by :func:`_check_split_args`).

    Returns:
        (codes, the ``parameters`` attribute, the desired subset shares or None, the official or
        CSV lists' counts).
    """
    parameters: dict[str, Any] = {}
    desired: tuple[float, ...] | None = None
    lists: dict[str, dict[str, int]] = {}
    groups: np.ndarray | None = None
    if grouping is not None:
        rows = np.flatnonzero(usable)
        groups = np.full(usable.shape[0], -1, dtype=np.int64)
        groups[rows] = group_ids(store, grouping, rows)[0]
        folds = (DEFAULT_FOLDS if folds is None else int(folds)) if kfold else None
        assign = check_assign(folds, DEFAULT_ASSIGN if assign is None else assign) if kfold else None
        fractions = None if kfold else check_fractions(fractions)
        codes = iterative_group_codes(label_matrix, groups, usable, folds=folds, assign=assign, fractions=fractions,
                                      seed=seed)
        parameters = {"group_by": str(grouping), **group_summary(groups[rows])}
        if kfold:
            parameters.update(folds=folds, assign=list(assign))
            desired = tuple(a / folds for a in assign)
        else:
            parameters["fractions"] = list(fractions)
            desired = fractions
        parameters["algorithm"] = "benzarr grouped iterative stratification (benzarr.groups)"
    elif kfold:
        folds = DEFAULT_FOLDS if folds is None else int(folds)
        assign = check_assign(folds, DEFAULT_ASSIGN if assign is None else assign)
        codes = iterative_codes(label_matrix, usable, folds=folds, assign=assign, seed=seed, engine=engine)
        parameters = {"folds": folds, "assign": list(assign), "shuffle": True,
                      "algorithm": "iterstrat MultilabelStratifiedKFold folds"}
        desired = tuple(a / folds for a in assign)
    elif method == "iterative":
        fractions = check_fractions(fractions)
        codes = iterative_fraction_codes(label_matrix, usable, fractions=fractions, seed=seed, engine=engine)
        parameters = {"fractions": list(fractions), "shuffle": True,
                      "algorithm": "iterstrat IterativeStratification with r = fractions"}
        desired = fractions
    elif method == "random":
        fractions = check_fractions(DEFAULT_FRACTIONS if fractions is None else fractions)
        codes = random_codes(usable, fractions=fractions, seed=seed)
        parameters = {"fractions": list(fractions), "algorithm": "numpy default_rng(seed).permutation"}
        desired = fractions
    else:
        names = store.patch_names()
        if method == "official":
            codes, lists, description = official_codes(store, usable)
            parameters = {"source": description}
        else:
            listed = _without_headers(read_csv_lists(csv_dir), np.asarray(names))  # its errors name the file
            try:
                codes, lists = codes_from_lists(names, listed, usable)
            except InvalidArgumentError as exc:  # a name in two lists: say which folder
                raise InvalidArgumentError(f"{csv_dir}: {exc}") from None
            parameters = {"csv_dir": str(Path(csv_dir).resolve())}
        parameters["lists"] = lists
        if not (codes >= 0).any():
            what = "the official lists" if method == "official" else f"the CSV lists in {csv_dir}"
            raise InvalidArgumentError(
                f"{store.path}: none of the store's patches is in {what} (a synthetic archive has its "
                "own names: use --method iterative or random)"
            )
        if method == "csv" and not (codes == 0).any():  # val.csv and test.csv may be empty; train.csv not
            path, listed_train = Path(csv_dir) / "train.csv", lists["train"]["listed"]
            what = ("lists no patch" if not listed_train else
                    f"none of its {listed_train:,} name{'s' if listed_train != 1 else ''} is a usable patch of the store")
            raise InvalidArgumentError(f"{path}: {what}; a split needs train patches to train on "
                                       "(val.csv and test.csv may be empty)")
    return codes, parameters, desired, lists



def default_label_set(store: Store) -> str:
    """The store's own label set: ``clc43`` when it has it, else ``clc19``."""
    available = list(store.attrs.get("label_sets", LABEL_SETS))
    return "clc43" if "clc43" in available or not available else str(available[0])


def store_geometry(store: Store) -> tuple[np.ndarray, np.ndarray] | None:
    """``(bounds (N, 4) float64, epsg (N,) int64)`` when every valid patch has a footprint
    (a CRS and non-zero bounds), else None (labels-only stores, for instance)."""
    if not (store.has_array("meta/bounds") and store.has_array("meta/epsg")):
        return None
    bounds = np.asarray(store.array("meta/bounds")[:], dtype=np.float64)
    epsg = np.asarray(store.array("meta/epsg")[:], dtype=np.int64)
    valid = store.valid_mask()
    if not valid.any() or ((epsg[valid] <= 0) | ~bounds[valid].any(axis=1)).any():
        return None
    return bounds, epsg


def _plain_iterative_quality(
    labels: np.ndarray,
    usable: np.ndarray,
    attrs: Mapping[str, Any],
    class_names: Sequence[str],
    geometry: tuple[np.ndarray, np.ndarray] | None,
    leakage_km: float = DEFAULT_KM,
) -> SplitQuality:
    """Quality of the plain iterative split with a grouped split's folds/fractions and seed."""
    parameters = attrs.get("parameters") or {}
    seed = int(attrs.get("seed") or 0)
    if parameters.get("fractions") is not None:
        codes = iterative_fraction_codes(labels, usable, fractions=parameters["fractions"], seed=seed)
    else:
        codes = iterative_codes(labels, usable, folds=int(parameters.get("folds", DEFAULT_FOLDS)),
                                assign=parameters.get("assign", DEFAULT_ASSIGN), seed=seed)
    return split_quality(labels, codes, class_names=class_names, desired=attrs.get("desired"), baseline_seed=None,
                         geometry=geometry, leakage_km=leakage_km)


def store_split_quality(store: Store, name: str, *, labels: str | None = None,
                        leakage_km: float = DEFAULT_KM) -> SplitQuality:
    """Quality of the stored split ``name`` on its label set (or ``labels``), beside random;
    with the spatial leakage when the store has patch geometry, and for a grouped split the
    plain iterative split of the same parameters beside it."""
    check_km(leakage_km)  # also where the store has no geometry to measure it on
    codes, attrs = store.read_split(name)
    label_set = labels or attrs.get("labels") or default_label_set(store)
    desired = attrs.get("desired")
    seed = attrs.get("seed")
    label_matrix = store.labels(label_set)
    class_names = store.class_names(label_set)
    geometry = store_geometry(store)
    quality = split_quality(label_matrix, codes, class_names=class_names, desired=desired,
                            baseline_seed=DEFAULT_SEED if seed is None else int(seed), geometry=geometry,
                            leakage_km=leakage_km)
    if (attrs.get("parameters") or {}).get("group_by"):
        quality.iterative = _plain_iterative_quality(label_matrix, codes != EXCLUDED, attrs, class_names, geometry,
                                                     leakage_km)
    return quality


def export_split(store: Store, name: str, folder: str | Path) -> dict[str, Path]:
    """Write the stored split ``name`` as train.csv, val.csv, test.csv in ``folder``.

    Raises:
        InvalidArgumentError: one of the three is there already (a file of the user's, or an
            earlier export: it would be replaced without a word), or is a folder; nothing is
            written then.
        FileSystemError: ``folder`` is a file.
    """
    check_not_a_file(folder, "the CSV lists (--export)")
    codes, _ = store.read_split(name)
    taken = [Path(folder) / f"{subset}.csv" for subset in SUBSETS if os.path.lexists(Path(folder) / f"{subset}.csv")]
    if taken:
        raise InvalidArgumentError(f"{taken[0]}: exists already; export into a new or empty folder "
                                   "(nothing was written)")
    return write_csv_lists(folder, store.patch_names(), codes)


def list_splits(store: Store) -> pd.DataFrame:
    """One row per stored split: method, labels, seed, counts, created."""
    import pandas as pd

    rows = []
    for split_name in store.split_names():
        codes, attrs = store.read_split(split_name)
        counts = attrs.get("counts") or {s: int((codes == c).sum()) for s, c in
                                         {**SUBSET_CODES, "excluded": EXCLUDED}.items()}
        rows.append({
            "name": split_name,
            "method": attrs.get("method"),
            "labels": attrs.get("labels"),
            "seed": attrs.get("seed"),
            **{k: counts.get(k, 0) for k in ("train", "val", "test", "excluded")},
            "created": attrs.get("created"),
        })
    columns = ["name", "method", "labels", "seed", "train", "val", "test", "excluded", "created"]
    return pd.DataFrame(rows, columns=columns)
