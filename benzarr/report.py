"""Run folders -> figures and tables (``benzarr report``).

Input: run folders written by :func:`benzarr.train.train` (``config.json``, ``metrics.json``,
TensorBoard event files). A folder without ``config.json`` stands for the run folders below it,
down to two levels (``--seeds`` writes ``seed-0/``, ``seed-1/``, ...; a folder of runs may hold
such a folder): one *group*.

Output (``write_report``)::

    curves.png    loss, micro-F1 and macro-F1 per epoch; train dashed, val solid; one line per
                  group and configuration (:func:`curve_groups`: the mean over its runs, never
                  over runs that differ in more than their seed), a band of +- one standard
                  deviation across seeds
    runs.csv/.md  one row per run: model, split, labels, seed, epochs trained, best epoch, test metrics
    summary.csv/.md  one row per configuration: (model, split, labels, bands), the data (a
                  ``store`` column when the runs' store identities differ: store folder name,
                  patch count, SHA-256 of the split codes, as ``config.json`` records them) and every
                  other setting whose value differs between the runs given (loss, lr, augment,
                  ...; not the seed, nor settings that cannot change the result,
                  ``OUTCOME_FREE``): n runs (distinct seeds: runs with the same seed are one
                  sample, their mean, and a warning says so) and, per test metric, the mean and
                  the half-width of its 95% confidence interval across seeds (Student t, n - 1
                  degrees of freedom; none for a single seed). So runs that differ in more than
                  their seed are never averaged together, and grouping by split makes a
                  comparison of splits one table.

Every file is written only where no file is, or over the same file of an earlier report
(:func:`is_report_file`): a user's ``summary.md`` in ``--out`` is never replaced.

With ``evaluations`` (names of ``RUN/evaluations/<name>/`` folders that ``benzarr evaluate``
wrote, such as ``grouped-test``), the tables hold those evaluations' metrics instead of the
runs' own test metrics, one row per run and evaluation, and gain an ``evaluated_on`` column
("test of grouped"): the same seeds scored on two splits' test subsets side by side.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benzarr.checks import is_whole
from benzarr.errors import InvalidArgumentError
from benzarr.fsutil import check_not_a_file, check_outside_datasets, check_replaceable_file
from benzarr.metrics import SCALAR_KEYS

#: Test metrics of the tables, in column order.
TABLE_METRICS: tuple[str, ...] = SCALAR_KEYS
#: The columns that identify a configuration in the summary table, always.
GROUP_KEYS: tuple[str, ...] = ("model", "split", "labels", "bands")
#: Settings that do not change a run's result (or are what the summary averages over, the
#: seed): never a grouping column. Batches are the same with any worker count, a resumed or
#: mid-epoch-checkpointed run ends as an uninterrupted one (tests/test_train.py). The store
#: setting is only the path as given: the data is compared by the store identity the run
#: recorded (:func:`store_labels`), which does change the result.
OUTCOME_FREE: frozenset[str] = frozenset({
    "seed", "out", "resume", "workers", "loader_timeout", "device", "checkpoint_every", "track_emissions",
    "emissions_country", "store", "deterministic", *GROUP_KEYS})


@dataclass
class Run:
    """One run folder, read.

    Attributes:
        path: the folder.
        group: the report group (the folder given on the command line).
        config: ``config.json``.
        metrics: ``metrics.json``, or None for a run that did not finish.
        scalars: TensorBoard scalars, tag -> {epoch: value}.
        evaluation: an ``evaluations/<name>/metrics.json`` of ``benzarr evaluate``, whose
            metrics then stand for the run's test metrics in the tables; None: the run's own.
    """

    path: Path
    group: str
    config: dict[str, Any]
    metrics: dict[str, Any] | None
    scalars: dict[str, dict[int, float]] = field(default_factory=dict)
    evaluation: dict[str, Any] | None = None

    @property
    def test(self) -> dict[str, Any]:
        """The metrics the tables show: the evaluation's, else the run's own test metrics ({} if unfinished)."""
        if self.evaluation is not None:
            return self.evaluation.get("metrics") or {}
        return (self.metrics or {}).get("test") or {}

    def evaluated_on(self) -> str:
        """``"<subset> of <split>"`` (plus the store's name when it is not the run's)."""
        if self.evaluation is None:
            return f"test of {self.settings.get('split')}"
        ev = self.evaluation
        where = "all patches" if ev.get("split") is None else f"{ev.get('subset')} of {ev.get('split')}"
        if not ev.get("own_store", True):  # benzarr evaluate decided whether it read the run's store
            where += f" in {Path(str(ev['store']).rstrip('/')).name}"
        return where

    @property
    def settings(self) -> dict[str, Any]:
        """The run's training settings (``config.json`` ``settings``)."""
        return self.config.get("settings", {})

    def key(self) -> dict[str, str]:
        """model, split, labels, bands of the run (the summary's grouping)."""
        from benzarr.bigearthnet import BANDS, RGB_BANDS

        s = self.settings
        bands = s.get("bands")
        if isinstance(bands, list):
            bands = {tuple(BANDS): "all", tuple(RGB_BANDS): "rgb"}.get(tuple(bands), ",".join(bands))
        return {"model": str(s.get("model")), "split": str(s.get("split")), "labels": str(s.get("labels")),
                "bands": str(bands)}


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except ValueError as exc:  # JSONDecodeError, and UnicodeDecodeError (bytes that are no text), once a bare error
        raise InvalidArgumentError(f"{path}: not valid JSON ({exc})") from None


def _read_metrics(path: Path, block: str) -> dict[str, Any] | None:
    """``metrics.json`` of a run (``block="test"``) or of an evaluation (``"metrics"``), None if
    absent, checked: the tables' metrics are numbers (or null). A damaged file once ended the
    report with "could not convert string to float: 'abc'", naming no file."""
    doc = _read_json(path)
    if doc is None:
        return None
    metrics = doc.get(block) if isinstance(doc, dict) else None
    # a run's test block is null without a test subset; an evaluation's is never: a run's own
    # metrics.json in evaluations/NAME/ gave a row without metrics, left out of the summary in silence.
    # train always writes the key, so a file without it ({}) is damaged, not a run without a test subset
    if (not isinstance(doc, dict) or block not in doc
            or not isinstance(metrics, (dict, type(None) if block == "test" else dict))):
        raise InvalidArgumentError(f"{path}: not the metrics.json benzarr {'train' if block == 'test' else 'evaluate'} "
                                   f"writes (no '{block}' block of metrics)")
    for key in TABLE_METRICS:
        value = (metrics or {}).get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise InvalidArgumentError(f"{path}: '{block}.{key}' is {value!r}, not a number: the file is damaged")
    # the counts: a block without its patch count (n_samples) was left out of the summary without
    # a word, its metrics still in runs.csv; the epochs went into the tables as they came ("x")
    counts = [(f"{block}.n_samples", (metrics or {"n_samples": 0}).get("n_samples"), False)]
    counts += [(key, doc.get(key), True) for key in ("epochs", "best_epoch") if block == "test"]
    for key, value, nullable in counts:
        if not (is_whole(value) or (nullable and value is None)):
            raise InvalidArgumentError(f"{path}: '{key}' is {value!r}, not a whole number: the file is damaged")
    return doc


def find_runs(paths: Sequence[str | Path], scalars: bool = True, evaluations: Sequence[str] = ()) -> list[Run]:
    """Read the run folders named by ``paths`` (a run folder, or a folder with run folders up to
    two levels below it: a folder of runs and ``--seeds`` folders);
    with ``evaluations``, one :class:`Run` per run folder and evaluation name.

    A run folder named twice (``r1`` and ``./r1/``, or ``runs`` and ``runs/r1``), or an
    evaluation named twice, is read once: counted twice, it read as two seeds with a
    confidence interval of zero.

    Raises:
        InvalidArgumentError: a path is missing or holds no run folder, a run's ``config.json``
            is not a run configuration, a run lacks one of the ``evaluations``, or an
            evaluation name is a path.
    """
    from benzarr.evaluate import check_run_folder, read_run_config, runs_under
    from benzarr.store import SPLIT_NAME
    from benzarr.tb import read_scalars

    for name in evaluations:  # a folder name under RUN/evaluations/, never a path out of it
        if not isinstance(name, str) or SPLIT_NAME.fullmatch(name) is None:
            raise InvalidArgumentError(f"--evaluation {name!r}: the name of a folder in RUN/evaluations/ "
                                       "(letters, digits, '.', '_', '-'), not a path")
    evaluations = list(dict.fromkeys(evaluations))
    runs: list[Run] = []
    seen: set[Path] = set()  # a run given twice (r1 and ./r1/) is one run, not two seeds
    for p in map(Path, paths):
        check_run_folder(p)  # "no such run folder" was said of a file and of a link loop too
        folders = runs_under(p)
        if not folders:
            raise InvalidArgumentError(f"{p}: no run here (no config.json in it or in the two levels of folders below it); "
                                       "give the --out folder of benzarr train")
        for folder in folders:
            if folder.resolve() in seen:
                continue
            seen.add(folder.resolve())
            config = read_run_config(folder)  # `{}` or `[]` is no run: refused, as evaluate and show refuse it
            run = Run(folder, str(p), config, _read_metrics(folder / "metrics.json", "test"),
                      read_scalars(folder) if scalars else {})
            if not evaluations:
                runs.append(run)
            for name in evaluations:
                evaluation = _read_metrics(folder / "evaluations" / name / "metrics.json", "metrics")
                if evaluation is None:
                    have = sorted(d.name for d in (folder / "evaluations").glob("*") if (d / "metrics.json").is_file())
                    raise InvalidArgumentError(
                        f"{folder}: no evaluations/{name}/metrics.json (it has: {', '.join(have) or 'none'}); "
                        f"write it with `benzarr evaluate {folder} --split ... --subset ...`")
                runs.append(Run(folder, str(p), config, run.metrics, run.scalars, evaluation))
    return runs


def group_keys(runs: Sequence[Run]) -> tuple[str, ...]:
    """The columns that identify a row of the summary: ``GROUP_KEYS``, ``store`` when the runs
    were trained on different data (:func:`store_labels`), the settings that differ between
    ``runs`` (:func:`varying_settings`), and ``evaluated_on`` when the runs carry evaluations."""
    stores = ("store",) if len(set(store_labels(runs).values())) > 1 else ()
    evaluated = ("evaluated_on",) if any(r.evaluation is not None for r in runs) else ()
    return (*GROUP_KEYS, *stores, *varying_settings(runs), *evaluated)


def _store_identity(run: Run) -> tuple[str, str, str, str] | None:
    """The data a run trained on: its store's folder name, patch count, split name and the
    SHA-256 of its split codes (``config.json`` ``store``, :func:`benzarr.train.store_identity`);
    None if unrecorded. The name, not the path: a store staged to each job's scratch disk
    (``$TMPDIR/ben.zarr``) or moved between runs is the same data."""
    identity = run.config.get("store")
    if not isinstance(identity, dict) or not identity.get("path"):
        return None
    return (Path(str(identity["path"])).name, str(identity.get("n_patches")), str(identity.get("split")),
            str(identity.get("split_sha256")))


def store_labels(runs: Sequence[Run]) -> dict[tuple[str, str, str, str] | None, str]:
    """A table cell for each store identity among ``runs`` (:func:`_store_identity`): the store's
    folder name, plus ``(split <first 12 hex digits of the fingerprint>)`` when runs of one
    split of one store saw different codes (the split rewritten between them, or two stores of
    one name); ``unknown`` for runs that recorded none. Two splits of one store
    get one cell: the split is a column of its own. With the split name, distinct identities
    get distinct cells, so grouping never puts runs on different data together."""
    identities = list(dict.fromkeys(_store_identity(r) for r in runs))

    def label(identity: tuple[str, str, str, str] | None) -> str:
        if identity is None:
            return "unknown"
        name, _, split, sha = identity
        text = name
        if sum(1 for i in identities if i is not None and i[0] == name and i[2] == split) > 1:
            text += f" (split {sha[:12]})"
        return text

    labels = {i: label(i) for i in identities}
    if len({(cell, i and i[2]) for i, cell in labels.items()}) < len(labels):  # a shared prefix, a store "unknown"
        labels = {i: "unknown" if i is None else f"{i[0]} ({i[1]} patches, split {i[3]})" for i in identities}
    return labels


def varying_settings(runs: Sequence[Run]) -> tuple[str, ...]:
    """Names of the training settings (``config.json`` ``settings``) whose value is not the same
    in every run, but those in ``OUTCOME_FREE``; in ``TrainConfig`` field order. A setting a run
    predates counts as its default."""
    names = [n for n in _setting_names(runs) if n not in OUTCOME_FREE]
    return tuple(n for n in names if len({_setting(r, n) for r in runs}) > 1)


def _setting_names(runs: Sequence[Run]) -> list[str]:
    from dataclasses import fields

    from benzarr.train_config import TrainConfig

    names = [f.name for f in fields(TrainConfig)]
    extra = sorted({k for r in runs for k in r.settings} - set(names))  # from a newer benzarr
    return names + extra


def _setting(run: Run, name: str) -> str:
    """A setting's value as a table cell (its default when the run predates it)."""
    from benzarr.train_config import TrainConfig

    value = run.settings.get(name, getattr(TrainConfig, name, None))
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def runs_table(runs: Sequence[Run]) -> pd.DataFrame:
    """One row per run: identity, epochs trained, best epoch and every test metric (NaN if unfinished)."""
    rows = []
    evaluated = any(r.evaluation is not None for r in runs)
    varying = varying_settings(runs)
    stores = store_labels(runs)
    for run in runs:
        m = run.metrics or {}
        test = run.test
        rows.append({
            "run": str(run.path), **run.key(),
            **({"store": stores[_store_identity(run)]} if len(set(stores.values())) > 1 else {}),
            **{name: _setting(run, name) for name in varying},
            **({"evaluated_on": run.evaluated_on(), "seen_in_training": (run.evaluation or {}).get("seen_in_training")}
               if evaluated else {}),
            # not "epochs": that is the setting's column when runs differ in it, and the epochs a run
            # trained (fewer after an early stop) replaced it there, so the summary grouped by them
            "seed": run.settings.get("seed"), "epochs_trained": m.get("epochs"), "best_epoch": m.get("best_epoch"),
            "n_test": test.get("n_samples"), **{k: _num(test.get(k)) for k in TABLE_METRICS},
        })
    return pd.DataFrame(rows)


def _num(value: Any) -> float:
    return math.nan if value is None else float(value)


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% confidence interval of the mean (Student t, n - 1 dof).

    NaN values are left out; the half-width is NaN for fewer than two values.
    """
    from scipy import stats

    x = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan
    if x.size == 1:
        return float(x[0]), math.nan
    half = stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return float(x.mean()), float(half)


def summary_table(runs: Sequence[Run]) -> pd.DataFrame:
    """One row per configuration (:func:`group_keys`) over the finished runs: ``n_runs`` (distinct
    seeds), ``seeds`` (of every run), and ``<metric>_mean``, ``<metric>_ci95`` for each test metric."""
    return _summary(runs)[0]


def _summary(runs: Sequence[Run]) -> tuple[pd.DataFrame, list[str]]:
    """:func:`summary_table`, and one warning per configuration with several runs of one seed."""
    keys = group_keys(runs)
    table = runs_table(runs)
    table = table[table["n_test"].notna()] if len(table) else table
    rows = []
    notes = []
    if len(table):
        for key, part in table.groupby(list(keys), sort=False):
            row: dict[str, Any] = dict(zip(keys, key))
            # Runs with one seed are no independent samples (trained again, a run gives the same
            # numbers): counted as several they shrink the interval. Each seed is one sample, its mean.
            per_seed = part.groupby("seed", sort=False, dropna=False)[list(TABLE_METRICS)].mean()
            row["n_runs"] = len(per_seed)
            row["seeds"] = ",".join(str(s) for s in part["seed"])
            for metric in TABLE_METRICS:
                row[f"{metric}_mean"], row[f"{metric}_ci95"] = mean_ci95(per_seed[metric].tolist())
            rows.append(row)
            # a metric a run did not record (an older metrics.json) is left out of its mean and
            # interval, which then stand on fewer seeds than n_runs says: say so
            short = {metric: int(per_seed[metric].isna().sum()) for metric in TABLE_METRICS}
            short = {metric: n for metric, n in short.items() if 0 < n}
            if short:
                where = ", ".join(f"{k} {v}" for k, v in row.items() if k in keys)
                notes.append(f"{where}: " + "; ".join(f"{metric} is missing for {n} of {len(per_seed)} seeds"
                                                     for metric, n in short.items())
                             + ": its mean and interval stand on the other seeds")
            shared = [f"{' and '.join(dict.fromkeys(group['run']))} share seed {seed}"
                      for seed, group in part.groupby("seed", sort=False, dropna=False) if len(group) > 1]
            if shared:
                where = ", ".join(f"{k} {v}" for k, v in row.items() if k in keys)
                notes.append(f"{where}: {'; '.join(shared)}: not independent runs; each seed counts once "
                             "(the mean of its runs) in n_runs and the 95% interval")
    frame = pd.DataFrame(rows, columns=[*keys, "n_runs", "seeds",
                                        *(f"{m}_{s}" for m in TABLE_METRICS for s in ("mean", "ci95"))])
    return frame, notes


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub Markdown table of ``frame`` (floats with 4 decimals, NaN and None as empty cells:
    an unfinished run has no epochs, best epoch or test size yet)."""
    def cell(v: Any) -> str:
        if v is None:
            return ""
        if isinstance(v, float):
            return "" if math.isnan(v) else f"{v:.4f}"
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def summary_markdown(summary: pd.DataFrame) -> str:
    """The summary as ``mean ± ci95`` cells (the form for a paper or README)."""
    cols = ["micro_f1", "macro_f1", "micro_f2", "macro_f2", "micro_precision", "micro_recall",
            "macro_precision", "macro_recall", "micro_map", "macro_map"]
    keys = list(summary.columns[:list(summary.columns).index("n_runs")])  # the grouping columns
    out = summary[[*keys, "n_runs"]].copy()
    for metric in cols:
        means, cis = summary[f"{metric}_mean"], summary[f"{metric}_ci95"]
        out[metric] = [("" if math.isnan(m) else f"{m:.4f}") + ("" if math.isnan(c) else f" ± {c:.4f}")
                       for m, c in zip(means, cis)]
    return markdown_table(out)


#: Lines of ``curves.png`` whose legend fits inside the loss panel; more go below the panels
#: (40 lines in the panel squeezed its axes to nothing).
LEGEND_IN_PANEL = 12
#: Height of one row of that legend ("small" text), inches.
LEGEND_ROW_INCHES = 0.22


def plot_curves(runs: Sequence[Run], path: str | Path) -> Path:
    """Loss, micro-F1 and macro-F1 per epoch (train dashed, val solid), one colour per line of
    :func:`curve_groups`, the mean over its runs with a +- 1 standard deviation band. Writes a PNG."""
    from matplotlib.ticker import MaxNLocator

    from benzarr.show import figure_marker, new_figure

    panels = (("loss", "loss"), ("micro_f1", "micro F1"), ("macro_f1", "macro F1"))
    fig = new_figure(figsize=(15, 4.2), layout="constrained")
    axes = fig.subplots(1, len(panels))
    groups = curve_groups(runs)
    colours = [f"C{i % 10}" for i in range(len(groups))]
    for (label, members), colour in zip(groups.items(), colours):
        for ax, (metric, title) in zip(axes, panels):
            for subset, style in (("train", "--"), ("val", "-")):
                series = [r.scalars.get(f"{subset}/{metric}", {}) for r in members]
                epochs = sorted({e for s in series for e in s})
                if not epochs:
                    continue
                values = [[s[e] for s in series if e in s] for e in epochs]
                mean = np.array([np.mean(v) for v in values])
                std = np.array([np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in values])
                ax.plot(epochs, mean, style, color=colour, marker="o", markersize=3, label=f"{label} {subset}")
                if len(members) > 1:
                    ax.fill_between(epochs, mean - std, mean + std, color=colour, alpha=0.15, linewidth=0)
            ax.set_title(title + (" (mean ± 1 sd over seeds)" if any(len(m) > 1 for m in groups.values()) else ""))
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()  # none: runs stopped before their first epoch
    if 0 < len(handles) <= LEGEND_IN_PANEL:
        axes[0].legend(fontsize="small")
    elif handles:  # taller than the panel: below the three, the figure grown by its rows
        columns = 4
        fig.set_figheight(4.2 + LEGEND_ROW_INCHES * math.ceil(len(handles) / columns))
        fig.legend(handles, labels, loc="outside lower center", ncols=columns, fontsize="small")
    path = Path(path)
    fig.savefig(path, dpi=110, **figure_marker(path))
    return path


def curve_groups(runs: Sequence[Run]) -> dict[str, list[Run]]:
    """The lines of ``curves.png``: legend label -> the runs averaged into that line.

    A line is the runs of one folder given on the command line (``Run.group``) that share a
    configuration, the summary's row key (:func:`group_keys`). So a ``--seeds`` folder is one
    line, and a folder of run folders that differ in more than their seed (``report runs``
    over ``runs/rgb`` and ``runs/all``) is one line per configuration, never their mean. The
    label is the folder's name, then the model (unless the name holds it), the split, the
    other configuration values that differ inside the folder, and the number of runs.
    """
    keys = [k for k in group_keys(runs) if k != "evaluated_on"]
    stores = store_labels(runs)

    def config(run: Run) -> tuple[str, ...]:
        values = {**run.key(), "store": stores[_store_identity(run)]}
        return tuple(values[k] if k in values else _setting(run, k) for k in keys)

    lines: dict[tuple[str, tuple[str, ...]], list[Run]] = {}
    for run in runs:
        lines.setdefault((run.group, config(run)), []).append(run)
    out: dict[str, list[Run]] = {}
    for (group, values), members in lines.items():
        siblings = [v for (g, v) in lines if g == group]
        differing = [i for i, k in enumerate(keys) if k not in ("model", "split") and len({v[i] for v in siblings}) > 1]
        folder = Path(group).name
        model, split = members[0].key()["model"], members[0].key()["split"]
        parts = [model if model not in folder else "", split, *(f"{keys[i]} {values[i]}" for i in differing),
                 f"{len(members)} seeds" if len(members) > 1 else ""]
        label = f"{folder} ({', '.join(p for p in parts if p)})"
        out[f"{group} ({', '.join(p for p in parts if p)})" if label in out else label] = members  # a/runs, b/runs
    return out


#: The first line of each table ``write_report`` writes (every version of benzarr wrote them so):
#: how a later report knows the files of an earlier one in ``--out``, which it replaces.
_TABLE_HEADS: dict[str, tuple[str, ...]] = {
    "runs.csv": ("run,model,split,labels,bands",),
    "runs.md": ("| run | model | split | labels | bands |",),
    "summary.csv": ("model,split,labels,bands",),
    "summary.md": ("Test metrics of each run's best checkpoint: ", "Metrics of the evaluations "),
}
#: Everything ``write_report`` writes into ``--out``.
REPORT_FILES: tuple[str, ...] = ("curves.png", *_TABLE_HEADS)


def is_report_file(path: str | Path) -> bool:
    """Whether ``path``, one of :data:`REPORT_FILES`, is that file of a report benzarr wrote:
    a table by its first line, ``curves.png`` by its benzarr marker
    (:func:`benzarr.show.is_benzarr_image`) or, drawn before the marker was written, a
    matplotlib PNG beside a report's ``summary.md``."""
    path = Path(path)
    if path.name == "curves.png":
        from benzarr.show import image_note, is_benzarr_image

        if is_benzarr_image(path):
            return True
        summary = path.parent / "summary.md"
        return image_note(path).startswith("Matplotlib") and summary.is_file() and is_report_file(summary)
    heads = _TABLE_HEADS.get(path.name)
    if heads is None:
        return False
    try:
        with open(path, encoding="utf-8") as handle:
            first = handle.readline()
    except (OSError, UnicodeDecodeError):
        return False
    return first.startswith(heads)


def check_report_folder(out: str | Path) -> None:
    """Refuse, before anything is written, an ``--out`` holding a file of one of the names the
    report writes (:data:`REPORT_FILES`) that is not an earlier report's (:func:`is_report_file`).

    Raises:
        UnsafeOverwriteError: naming the file; nothing is written.
        FileSystemError: a folder where the report writes a file.
    """
    for name in REPORT_FILES:
        check_replaceable_file(Path(out) / name, owned=is_report_file, what=f"the {name} of a report", command="report")


@dataclass
class Report:
    """What :func:`write_report` wrote, and the tables."""

    out: Path
    files: dict[str, Path]
    runs: pd.DataFrame
    summary: pd.DataFrame
    summary_md: str
    unfinished: list[str] = field(default_factory=list)  # run folders without metrics.json (rows without test metrics)
    warnings: list[str] = field(default_factory=list)  # what the caller should tell the user, one line each
    evaluations: list[str] = field(default_factory=list)  # the evaluations tabulated, each once, in order given


def write_report(paths: Sequence[str | Path], out: str | Path, evaluations: Sequence[str] = ()) -> Report:
    """Read run folders and write ``curves.png``, ``runs.csv``/``.md``, ``summary.csv``/``.md`` into ``out``
    (the tables with the metrics of ``evaluations``, when given: see the module docstring).

    Raises:
        InvalidArgumentError: a path holds no run, or a run lacks one of the ``evaluations``.
        PathConflictError: ``out`` is, or lies inside, a benzarr store or an archive.
        UnsafeOverwriteError: ``out`` holds a file of a name the report writes that an earlier
            report did not write (:func:`check_report_folder`); nothing is written.
        FileSystemError: ``out`` is a file.
    """
    check_not_a_file(out, "the report (--out)")
    runs = find_runs(paths, evaluations=evaluations)
    evaluations = list(dict.fromkeys(evaluations))  # named twice, read once (find_runs): summary.md names it once
    out = Path(out)
    check_outside_datasets(out, "--out", "the report")
    check_report_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    runs_df = runs_table(runs)
    summary, notes = _summary(runs)
    summary_md = summary_markdown(summary)
    unique = list({id(r.scalars): r for r in runs}.values())  # a run's curves once, however many evaluations
    files = {"curves": plot_curves(unique, out / "curves.png")}
    runs_df.to_csv(out / "runs.csv", index=False)
    files["runs.csv"] = out / "runs.csv"
    (out / "runs.md").write_text(markdown_table(runs_df), encoding="utf-8")
    files["runs.md"] = out / "runs.md"
    summary.to_csv(out / "summary.csv", index=False)
    files["summary.csv"] = out / "summary.csv"
    what = (f"Metrics of the evaluations {', '.join(evaluations)} (benzarr evaluate)" if evaluations
            else "Test metrics of each run's best checkpoint")
    (out / "summary.md").write_text(
        f"{what}: mean ± half-width of the 95% confidence interval across seeds (Student t).\n\n" + summary_md
        + "".join(f"\nNote: {note}.\n" for note in notes), encoding="utf-8")
    files["summary.md"] = out / "summary.md"
    unfinished = list(dict.fromkeys(str(r.path) for r in runs if r.metrics is None))
    untested = list({str(r.path): r for r in runs if r.metrics is not None and r.evaluation is None
                     and not r.metrics.get("test")}.values())
    return Report(out, files, runs_df, summary, summary_md, unfinished,
                  [*(unfinished_warning(Path(r)) for r in unfinished), *map(untested_warning, untested),
                   *map(no_curves_warning, _without_curves(unique)),
                   *(short_curves_warning(*short) for short in _cut_short(unique)), *notes], evaluations)


def _without_curves(runs: Sequence[Run]) -> list[Path]:
    """Runs that finished an epoch (``metrics.json`` says so) but whose event files gave no
    scalar: deleted, damaged or cut short, which TensorBoard's reader passes over in silence."""
    return [r.path for r in runs if not r.scalars and (r.metrics or {}).get("epochs")]


def _cut_short(runs: Sequence[Run]) -> list[tuple[Path, int, int]]:
    """``(run folder, last epoch, epochs)`` of the runs whose curves end before the epochs their
    ``metrics.json`` counts: an event file cut short mid-record gives the curves up to there, and
    TensorBoard's reader says nothing of the rest."""
    from benzarr.tb import F1_TAGS, LOSS_TAGS

    short = []
    for run in runs:
        epochs = (run.metrics or {}).get("epochs")
        ends = [max(run.scalars[tag]) for tag in (*LOSS_TAGS, *F1_TAGS) if run.scalars.get(tag)]
        if ends and isinstance(epochs, int) and min(ends) < epochs:
            short.append((run.path, min(ends), epochs))
    return short


def short_curves_warning(run_dir: Path, last: int, epochs: int) -> str:
    """What ``report`` says of a run whose curves end early (:func:`_cut_short`)."""
    return (f"{run_dir}: its event files end at epoch {last} of its {epochs} (damaged or cut short?), so its "
            f"curves in curves.png stop there; its test metrics are in the tables")


def no_curves_warning(run_dir: Path) -> str:
    """What ``report`` says of a finished run with no curves (:func:`_without_curves`)."""
    found = len(list(run_dir.glob("events.out.tfevents.*")))
    where = f"its {found} event file(s) hold no scalar (damaged or cut short?)" if found else "it has no event file"
    return f"{run_dir}: {where}, so curves.png has no curves for it; its test metrics are in the tables"


def untested_warning(run: Run) -> str:
    """What ``report`` says of a finished run without test metrics (``"test": null``: its split
    has no test subset). The summary leaves such a run out, as it must, but it said so nowhere:
    "2 run(s)" above a table of one row."""
    split = run.settings.get("split")
    return (f"{run.path}: its metrics.json has no test metrics (split {split} has no test subset?), so the "
            f"summary has no row for it; score it with `benzarr evaluate {run.path} --split OTHER` and report "
            "with --evaluation")


def unfinished_warning(run_dir: Path) -> str:
    """What to do about a run folder without ``metrics.json``: finish it with ``--resume`` when
    it has a checkpoint to go on from, else (it failed before its first one, and ``--resume``
    refuses it) train it again."""
    from benzarr.lock import held_by, run_lock_path

    training = held_by(run_lock_path(run_dir))
    if training is not None:  # not "--resume": that would meet the run lock
        return f"{run_dir}: no metrics.json yet, the run is still training ({training}): its row has no test metrics"
    if (run_dir / "checkpoints" / "last.pt").is_file():
        return (f"{run_dir}: no metrics.json, the run did not finish: its row has no test metrics "
                "(benzarr train --resume --out RUN finishes it)")
    return (f"{run_dir}: no metrics.json and no checkpoint: the run failed before its first checkpoint, so its row "
            "has no test metrics and --resume cannot finish it; delete the folder and train again")
