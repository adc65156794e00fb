"""``benzarr split``: make, list, measure and export train/val/test splits."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer

from benzarr.errors import InvalidArgumentError
from benzarr.leakage import DEFAULT_KM
from benzarr.split import (
    SUBSETS,
    SplitQuality,
    default_label_set,
    export_split,
    list_splits,
    make_split,
    parse_numbers,
    plot_quality,
    store_split_quality,
)
from benzarr.store import open_store
from benzarr_cli._common import console, count, storage_options_for, warn_line


def command(
    store: str = typer.Argument(..., help="Path (or s3:// URL) of a benzarr store."),
    name: Optional[str] = typer.Option(None, "--name", help="Split name (stored as splits/NAME)."),
    method: Optional[str] = typer.Option(None, "--method", help="iterative | random | official | csv."),
    folds: Optional[int] = typer.Option(None, "--folds", help="iterative: number of folds K (default 5)."),
    assign: Optional[str] = typer.Option(None, "--assign", help="iterative: folds to train,val,test, e.g. 3,1,1 (default)."),
    fractions: Optional[str] = typer.Option(None, "--fractions", help="train,val,test shares, e.g. 0.6,0.2,0.2 (iterative instead of folds; random)."),
    seed: int = typer.Option(0, "--seed", help="Random seed (0 .. 2**32-1)."),
    labels: Optional[str] = typer.Option(None, "--labels", help="Label set to stratify on and measure: clc43 | clc19 "
                                         "(default: the store's own, clc43 when present; --quality: the split's own)."),
    group_by: Optional[str] = typer.Option(None, "--group-by", help="iterative over groups, none split across subsets: "
                                           "tile | block:KM | country | season | meta:ARRAY."),
    leakage_km: float = typer.Option(DEFAULT_KM, "--leakage-km", help="Quality: a val/test patch leaks when a train "
                                     "patch lies within this many km (centre to centre, per axis)."),
    csv_dir: Optional[Path] = typer.Option(None, "--csv-dir", help="csv: folder with train.csv, val.csv, test.csv."),
    export: Optional[Path] = typer.Option(None, "--export", help="Write split NAME as train.csv, val.csv, test.csv in this folder."),
    exclude_from: Optional[str] = typer.Option(None, "--exclude-from", help="Give -1 to the patches another split excludes."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a split of the same name."),
    list_: bool = typer.Option(False, "--list", help="List the stored splits."),
    quality: bool = typer.Option(False, "--quality", help="Show the quality of split NAME beside a random split."),
    against: Optional[str] = typer.Option(None, "--against", help="--quality: also show this split's figures."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="--quality (or a new split): write the label-distribution PNG here."),
    endpoint_url: Optional[str] = typer.Option(None, "--endpoint-url", help="S3 endpoint for s3:// stores (default: $AWS_ENDPOINT_URL)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors and warnings."),
) -> None:
    """Make a train/val/test split (iterative stratification, optionally over spatial groups;
    random, official lists, CSV), list splits, show a split's quality, or export it as CSV lists."""
    options = storage_options_for(store, endpoint_url)
    if list_:
        given = [flag for flag, value in (("--name", name), ("--method", method), ("--export", export),
                                          ("--quality", quality or None), ("--against", against), ("--plot", plot))
                 if value is not None]
        if given:  # each used to be ignored without a word
            raise InvalidArgumentError(f"--list shows the stored splits; it takes no {', '.join(given)}")
        _print_list(store, options)
        return
    if export is not None and method is not None:
        raise InvalidArgumentError("--export writes a stored split; make the split first (without --export), "
                                   "then export it")
    if fractions is not None and not fractions.strip():
        raise InvalidArgumentError("--fractions: give the train,val,test shares, e.g. 0.6,0.2,0.2")
    # only where --folds applies and is a count of folds: `--folds 1` and `--method random --folds 3`
    # were sent to an --assign that then failed on the folds or the method
    if (folds is not None and assign is None and folds != 5 and folds >= 2 and method == "iterative"
            and fractions is None):
        raise InvalidArgumentError(f"--folds {folds} needs --assign A,B,C: how many of the {folds} folds go to "
                                   "train, val and test (the default 3,1,1 is for 5 folds)")
    if name is None:
        raise InvalidArgumentError("pass --name NAME (or --list)")
    if plot is not None:  # before anything is written: a bad --plot once failed after the split replaced the old one
        from benzarr.show import check_image_path

        check_image_path(plot, "--plot", "split")
    if export is not None:
        paths = export_split(open_store(store, storage_options=options), name, export)
        if not quiet:
            console.print(f"exported split {name} to {', '.join(str(p) for p in paths.values())}", markup=False)
        return
    if quality or against is not None:
        opened = open_store(store, storage_options=options)
        measured = store_split_quality(opened, name, labels=labels, leakage_km=leakage_km)
        # the other split is measured on the same label set, so the figures compare
        same = labels or opened.read_split(name)[1].get("labels") or default_label_set(opened)
        other = (against, store_split_quality(opened, against, labels=same, leakage_km=leakage_km)) if against else None
        _print_quality(name, measured, other)
        if plot is not None:
            written = plot_quality(measured, plot, title=name, others=[other] if other else [])
            if not quiet:  # the report is what --quality asks for; the file's line is a summary
                console.print(f"wrote {written}", markup=False)
        return
    if method is None:
        raise InvalidArgumentError("pass --method iterative|random|official|csv to make a split")
    result = make_split(
        open_store(store, mode="r+", storage_options=options), name, method,
        folds=folds,
        assign=parse_numbers(assign, int, "--assign") if assign else None,
        fractions=parse_numbers(fractions, float, "--fractions") if fractions else None,
        seed=seed, labels=labels, csv_dir=csv_dir, exclude_from=exclude_from, overwrite=overwrite,
        group_by=group_by, leakage_km=leakage_km,
    )
    if plot is not None:
        plot_quality(result.quality, plot, title=name)
    if method == "csv":  # on stderr, also with --quiet: names the user listed that matched nothing
        for subset, report in result.lists.items():
            missing = report["listed"] - report["matched"]
            if missing:
                shown = ", ".join(report.get("unmatched_examples", []))
                more = ", ..." if missing > len(report.get("unmatched_examples", [])) else ""
                warn_line(f"{missing:,} name{'s' if missing != 1 else ''} in {Path(csv_dir) / (subset + '.csv')} "
                          f"{'are' if missing != 1 else 'is'} not a patch of the store ({shown}{more}); left out")
    counts = result.attrs["counts"]
    grouped = result.attrs["parameters"].get("group_by")
    empty = [s for s, share in zip(SUBSETS, result.attrs["desired"]) if share > 0 and counts[s] == 0] if grouped else []
    if empty:  # on stderr, also with --quiet: a subset asked for and left empty
        n_groups = result.attrs["parameters"]["n_groups"]
        warn_line(f"split {name}: {', '.join(empty)} got no patches: {count(n_groups, 'group')} "
                  f"{'is' if n_groups == 1 else 'are'} too few for these shares; group by something finer (block:KM)")
    if quiet:
        return
    how = f"{method} by {grouped}" if grouped else method
    console.print(
        f"split {name} ({how}, {result.attrs['labels']}): train {counts['train']:,}  val {counts['val']:,}  "
        f"test {counts['test']:,}  excluded {counts['excluded']:,}",
        markup=False,
    )
    if grouped:
        p = result.attrs["parameters"]
        console.print(f"  {count(p['n_groups'], 'group')}, largest {p['largest_group']:,} patches, median "
                      f"{p['median_group']:g}; no group split across subsets", markup=False)
    for subset, report in result.lists.items():
        console.print(f"  {subset} list: {report['matched']:,} of {report['listed']:,} names are patches of the store",
                      markup=False)
    _print_quality(name, result.quality, None)
    if plot is not None:
        console.print(f"wrote {plot}", markup=False)


def _print_list(store: str, options: dict | None) -> None:
    table = list_splits(open_store(store, storage_options=options))
    if table.empty:
        console.print("no splits (make one with `benzarr split STORE --name NAME --method iterative`)", markup=False)
        return
    console.print(f"{'name':<16} {'method':<10} {'labels':<6} {'seed':>10} {'train':>9} {'val':>9} {'test':>9} "
                  f"{'excluded':>9}  created", markup=False)
    for row in table.itertuples(index=False):
        seed = "-" if row.seed is None or (isinstance(row.seed, float) and math.isnan(row.seed)) else str(int(row.seed))
        console.print(f"{row.name:<16} {row.method or '?':<10} {row.labels or '?':<6} {seed:>10} {row.train:>9,} "
                      f"{row.val:>9,} {row.test:>9,} {row.excluded:>9,}  {row.created or ''}", markup=False)


def _leak(quality: SplitQuality, subset: str) -> str:
    return "n/a" if quality.leakage is None else _fmt(float(quality.leakage[subset]), ".1%")


def _print_comparison(columns: list[tuple[str, SplitQuality]], plain: SplitQuality) -> None:
    """One row a split: balance, leakage, and LD against the plain iterative split (the cost of grouping)."""
    out = lambda text="": console.print(text, markup=False)  # noqa: E731
    out()
    out(f"{'split':<16} {'LD':>10} {'ED':>9} {'val leak':>9} {'test leak':>9} {'LD / plain iterative':>21}")
    for label, q in columns:
        ratio = q.label_distribution / plain.label_distribution if plain.label_distribution else float("nan")
        out(f"{label[:16]:<16} {_fmt(q.label_distribution, '.3e'):>10} {_fmt(q.examples_distribution, '.1f'):>9} "
            f"{_leak(q, 'val'):>9} {_leak(q, 'test'):>9} {_fmt(ratio, '.2f'):>21}")


def _fmt(value: float, digits: str = ".4f") -> str:
    return "n/a" if value is None or math.isnan(value) else format(value, digits)


def _print_quality(name: str, quality: SplitQuality, other: tuple[str, SplitQuality] | None) -> None:
    out = lambda text="": console.print(text, markup=False)  # noqa: E731
    out()
    out(f"{'subset':<8} {'patches':>10} {'share':>7} {'desired':>8}")
    for subset in SUBSETS:
        row = quality.sizes.loc[subset]
        out(f"{subset:<8} {int(row['count']):>10,} {row['share']:>7.2%} {_fmt(row['desired'], '.2%'):>8}")

    columns = [(name, quality)]
    if quality.baseline is not None:
        columns.append(("random", quality.baseline))
    if quality.iterative is not None:
        columns.append(("iterative", quality.iterative))
    if other is not None:
        columns.append(other)
    out()
    header = f"{'measure':<36}" + "".join(f"{label[:14]:>15}" for label, _ in columns)
    out(header)
    measures = [
        ("Label Distribution (LD)", lambda q: _fmt(q.label_distribution, ".3e")),
        ("Examples Distribution (ED)", lambda q: _fmt(q.examples_distribution, ".2f")),
        ("labels with no example in a subset", lambda q: str(q.labels_missing)),
        ("mean max rel. share deviation", lambda q: _fmt(float(q.per_label["max_rel_deviation"].mean()), ".2%")),
        ("max rel. share deviation", lambda q: _fmt(float(q.per_label["max_rel_deviation"].max()), ".2%")),
    ]
    if quality.leakage is not None:
        km = quality.leakage["distance_km"]
        measures += [(f"{s} with a train patch <= {km:g} km", lambda q, s=s: _leak(q, s)) for s in ("val", "test")]
    for label, get in measures:
        out(f"{label:<36}" + "".join(f"{get(q):>15}" for _, q in columns))
    if quality.iterative is not None:
        _print_comparison(columns, quality.iterative)

    out()
    out(f"{'class (by frequency)':<40} {'count':>8} {'share':>7}" + "".join(f" {s:>7}" for s in SUBSETS)
        + f" {'max dev':>8} {'random':>8}")
    table = quality.per_label.sort_values("count", ascending=False)
    baseline = quality.baseline.per_label if quality.baseline is not None else None
    for cls, row in table.iterrows():
        cls_name = str(cls) if len(str(cls)) <= 40 else str(cls)[:39] + "…"
        shares = "".join(f" {_fmt(row[f'share_{s}'], '.2%'):>7}" for s in SUBSETS)
        random_dev = _fmt(baseline.loc[cls, "max_rel_deviation"], ".1%") if baseline is not None else "-"
        out(f"{cls_name:<40} {int(row['count']):>8,} {row['share']:>7.2%}{shares} "
            f"{_fmt(row['max_rel_deviation'], '.1%'):>8} {random_dev:>8}")
