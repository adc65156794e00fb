"""benzarr report: run folders -> curves and tables."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from benzarr.errors import InvalidArgumentError
from benzarr.report import find_runs, mean_ci95, write_report
from benzarr.split import make_split
from benzarr.store import open_store
from benzarr.train import TrainConfig, train, train_seeds
from tests.conftest import copy_tree, run_cli


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, synth_store_64: Path) -> dict[str, Path]:
    """Two seeds on a stratified split (one folder of seed-<s>/) and one run on a random split."""
    root = tmp_path_factory.mktemp("report")
    store = copy_tree(synth_store_64, root / "store.zarr")
    opened = open_store(store, mode="r+")
    make_split(opened, "strat", "iterative", fractions=(0.6, 0.2, 0.2), seed=0)
    make_split(opened, "rand", "random", fractions=(0.6, 0.2, 0.2), seed=0)
    cfg = TrainConfig(store=str(store), split="strat", model="shortcnn-rgb", epochs=2, batch_size=16, max_steps=4,
                      device="cpu", out=str(root / "strat"))
    train_seeds(cfg, [0, 1])
    train(replace(cfg, split="rand", out=str(root / "rand")))
    return {"strat": root / "strat", "rand": root / "rand", "root": root}


def test_report_writes_png_curves_and_tables(runs: dict[str, Path], tmp_path: Path) -> None:
    report = write_report([runs["strat"], runs["rand"]], tmp_path / "out")
    assert report.files["curves"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("runs.csv", "runs.md", "summary.csv", "summary.md"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    per_run = pd.read_csv(tmp_path / "out" / "runs.csv")
    assert len(per_run) == 3 and sorted(per_run["seed"]) == [0, 0, 1]
    assert per_run["micro_f1"].between(0, 1).all()


def test_many_lines_get_a_legend_below_the_panels_and_keep_their_axes(runs: dict[str, Path], tmp_path: Path) -> None:
    """40 lines (20 runs' train and val) in one panel's legend were taller than the panel:
    matplotlib warned "constrained_layout not applied because axes sizes collapsed to zero" and
    squeezed the curves. Many lines now go in a legend below the three panels, which keep
    their height."""
    import warnings

    import matplotlib.image

    from benzarr.report import find_runs, plot_curves

    folders = [copy_tree(runs["rand"], tmp_path / f"run{i:02d}") for i in range(20)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the layout's warning fails the test
        path = plot_curves(find_runs(folders), tmp_path / "curves.png")
    height, width = matplotlib.image.imread(path).shape[:2]
    assert height > 4.2 * 110 and width == 15 * 110  # grown for the legend rows, not squeezed into the panels


def test_the_curves_band_is_one_sample_sd_over_seeds(runs: dict[str, Path], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The band was the population sd (1/sqrt(2) of the sample sd with two seeds) while the
    tables' intervals use the sample sd."""
    import matplotlib.axes

    from benzarr.report import find_runs, plot_curves
    from benzarr.tb import read_scalars

    bands = []
    monkeypatch.setattr(matplotlib.axes.Axes, "fill_between",
                        lambda self, x, low, high, **kw: bands.append((list(x), np.asarray(low), np.asarray(high))))
    plot_curves(find_runs([runs["strat"]]), tmp_path / "c.png")
    seeds = [read_scalars(runs["strat"] / f"seed-{s}") for s in (0, 1)]
    for tag in ("train/loss", "val/loss"):
        values = np.array([[seed[tag][e] for e in sorted(seed[tag])] for seed in seeds])  # (seeds, epochs)
        width = np.std(values, axis=0, ddof=1)
        assert any(np.allclose((high - low) / 2, width) for _, low, high in bands), tag


def test_summary_compares_splits_in_one_table_with_t_intervals(runs: dict[str, Path], tmp_path: Path) -> None:
    report = write_report([runs["strat"], runs["rand"]], tmp_path / "out")
    summary = report.summary.set_index("split")
    assert list(summary.index) == ["strat", "rand"]
    assert summary.loc["strat", "n_runs"] == 2 and summary.loc["rand", "n_runs"] == 1
    seeds = report.runs[report.runs["split"] == "strat"]["macro_f1"].tolist()
    assert summary.loc["strat", "macro_f1_mean"] == pytest.approx(sum(seeds) / 2)
    assert math.isnan(summary.loc["rand", "macro_f1_ci95"])  # one run: no interval
    assert "| strat |" in report.summary_md.replace("shortcnn-rgb | ", "")
    assert " ± " in report.summary_md


def test_a_metric_missing_for_some_seeds_is_named_beside_n_runs(runs: dict[str, Path], tmp_path: Path) -> None:
    """A metric one seed's metrics.json lacks (written by an older benzarr) was left out of the
    mean and interval, which then stood on fewer seeds than n_runs said, without a word."""
    strat = copy_tree(runs["strat"], tmp_path / "strat")
    path = strat / "seed-1" / "metrics.json"
    doc = json.loads(path.read_text())
    del doc["test"]["macro_f2"]
    path.write_text(json.dumps(doc))
    report = write_report([strat], tmp_path / "out")
    row = pd.read_csv(tmp_path / "out" / "summary.csv").iloc[0]
    assert row["n_runs"] == 2 and np.isnan(row["macro_f2_ci95"]) and not np.isnan(row["micro_f1_ci95"])
    note = ("macro_f2 is missing for 1 of 2 seeds: its mean and interval stand on the other seeds")
    assert any(note in line for line in report.warnings), report.warnings
    assert note in (tmp_path / "out" / "summary.md").read_text()


def test_mean_ci95_is_the_student_t_interval() -> None:
    mean, half = mean_ci95([0.80, 0.82, 0.84])
    assert mean == pytest.approx(0.82)
    assert half == pytest.approx(4.302653 * 0.02 / math.sqrt(3), rel=1e-5)
    assert math.isnan(mean_ci95([0.5])[1])


def test_curves_come_from_the_event_files(runs: dict[str, Path]) -> None:
    found = find_runs([runs["strat"]])
    assert [r.path.name for r in found] == ["seed-0", "seed-1"]
    assert all(r.group == str(runs["strat"]) for r in found)
    assert sorted(found[0].scalars["train/loss"]) == [1, 2]


def test_a_folder_of_runs_includes_its_seeds_folders(runs: dict[str, Path], tmp_path: Path) -> None:
    """``report runs`` over a run and a ``--seeds`` folder read the run alone: the seeds were left
    out without a word (the demo's own runs/ holds both kinds)."""
    found = find_runs([runs["root"]], scalars=False)  # rand/, store.zarr/ (not looked into), strat/seed-*/
    assert [r.path.relative_to(runs["root"]).as_posix() for r in found] == ["rand", "strat/seed-0", "strat/seed-1"]
    assert {r.group for r in found} == {str(runs["root"])}
    deep = copy_tree(runs["rand"], tmp_path / "a" / "b" / "c")  # three levels down: not searched
    with pytest.raises(InvalidArgumentError, match="no run here"):
        find_runs([tmp_path], scalars=False)
    assert find_runs([deep.parent], scalars=False)[0].path == deep


def test_a_folder_without_runs_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="no run here"):
        write_report([tmp_path], tmp_path / "out")
    for text, why in (("{}", "no 'settings' in it"), ("[]", "not the layout benzarr train writes")):
        (tmp_path / "config.json").write_text(text)  # tabulated as model None, split None, rc 0
        with pytest.raises(InvalidArgumentError, match=rf"config\.json: not a benzarr run configuration \({why}\)"):
            write_report([tmp_path], tmp_path / "out")


@pytest.mark.parametrize("what, message", [
    ("file", "is a file; give the run folder that `benzarr train --out` wrote"),
    ("loop", "symlink loop (too many levels of symbolic links); fix or remove the link"),
    ("dangling", "a symbolic link to {target}, which is not there"),
], ids=["file", "link-loop", "dangling-link"])
def test_a_path_that_is_no_run_folder_says_what_it_is(tmp_path: Path, what: str, message: str) -> None:
    """report said "no such run folder" of a file, and report, evaluate and show --run said it
    of a symbolic link that loops or leads nowhere: of a name the user sees there."""
    path, target = tmp_path / "run", tmp_path / "gone"
    if what == "file":
        path.write_text("notes")
    else:
        path.symlink_to(path if what == "loop" else target)
    for command in ("report", "evaluate"):
        done = run_cli(command, path, "--out", tmp_path / "out")
        assert (done.returncode, done.stderr) == (1, f"error: {path}: {message.format(target=target)}\n"), command
    assert not (tmp_path / "out").exists()


def test_report_command_prints_the_summary(runs: dict[str, Path], tmp_path: Path) -> None:
    from benzarr_cli.main import app

    result = CliRunner().invoke(app, ["report", str(runs["strat"]), str(runs["rand"]), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert "3 run(s)" in result.output and "curves.png" in result.output
    inside = runs["root"] / "store.zarr" / "report"
    result = CliRunner().invoke(app, ["report", str(runs["strat"]), "--out", str(inside)])
    assert "--out lies inside the benzarr store" in str(result.exception) and not inside.exists()


def test_runs_that_differ_in_more_than_their_seed_are_never_averaged(runs: dict[str, Path], tmp_path: Path) -> None:
    import json

    mixed = tmp_path / "mixed"
    for seed, lr, workers in ((0, 0.001, 0), (1, 0.001, 2), (0, 0.01, 0)):
        run = copy_tree(runs["strat"] / f"seed-{seed}", mixed / f"lr{lr}-s{seed}")
        config = json.loads((run / "config.json").read_text())
        config["settings"].update(lr=lr, workers=workers)  # as if trained so: workers change no result
        if lr == 0.01:
            del config["settings"]["augment"]  # a run that predates a setting counts as its default
        (run / "config.json").write_text(json.dumps(config))
    report = write_report([mixed], tmp_path / "out")
    assert list(report.summary.columns[:6]) == ["model", "split", "labels", "bands", "lr", "n_runs"]
    by_lr = report.summary.set_index("lr")
    assert by_lr.loc["0.001", "n_runs"] == 2 and by_lr.loc["0.01", "n_runs"] == 1
    assert "| lr |" in report.summary_md and "workers" not in report.summary.columns
    assert sorted(report.runs["lr"]) == ["0.001", "0.001", "0.01"]
    # curves.png: one line per configuration of the folder, not the mean of all three runs
    from benzarr.report import curve_groups

    lines = curve_groups(find_runs([mixed, runs["strat"]]))
    assert {label: [r.path.name for r in members] for label, members in lines.items()} == {
        "mixed (shortcnn-rgb, strat, lr 0.001, 2 seeds)": ["lr0.001-s0", "lr0.001-s1"],
        "mixed (shortcnn-rgb, strat, lr 0.01)": ["lr0.01-s0"],
        "strat (shortcnn-rgb, strat, 2 seeds)": ["seed-0", "seed-1"]}


def test_runs_are_grouped_by_their_epochs_setting_not_the_epochs_they_trained(runs: dict[str, Path],
                                                                              tmp_path: Path) -> None:
    """With runs differing in --epochs, the epochs each run trained (metrics.json) replaced the
    setting in the table's "epochs" column: --epochs 3 runs stopped at epoch 2 (--max-steps, an
    early stop) were averaged with a --epochs 2 run, as seeds of one configuration."""
    import json

    for seed, epochs in ((0, 3), (1, 3), (0, 2)):
        run = copy_tree(runs["strat"] / f"seed-{seed}", tmp_path / "runs" / f"e{epochs}-s{seed}")
        config = json.loads((run / "config.json").read_text())
        config["settings"]["epochs"] = epochs  # as if trained so, each stopped by --max-steps in epoch 2
        (run / "config.json").write_text(json.dumps(config))
    from benzarr.report import _summary, runs_table

    found = find_runs([tmp_path / "runs"], scalars=False)
    summary, notes = _summary(found)
    assert list(summary["epochs"]) == ["2", "3"] and list(summary["n_runs"]) == [1, 2]
    assert notes == []  # no "share seed 0" of runs of two configurations
    per_run = runs_table(found)
    assert list(per_run["epochs"]) == ["2", "3", "3"] and list(per_run["epochs_trained"]) == [2, 2, 2]


def test_a_model_name_typed_in_other_case_is_one_model(runs: dict[str, Path], tmp_path: Path) -> None:
    """A run whose config.json says "ShortCNN-RGB" (as train kept `--model ShortCNN-RGB`) was
    summarised as another model than its seed's "shortcnn-rgb"."""
    import json

    run = copy_tree(runs["strat"] / "seed-1", tmp_path / "runs" / "upper")
    copy_tree(runs["strat"] / "seed-0", tmp_path / "runs" / "lower")
    config = json.loads((run / "config.json").read_text())
    config["settings"]["model"] = "ShortCNN-RGB"
    (run / "config.json").write_text(json.dumps(config))
    report = write_report([tmp_path / "runs"], tmp_path / "out")
    assert list(report.summary["model"]) == ["shortcnn-rgb"] and list(report.summary["n_runs"]) == [2]


def test_runs_on_different_data_are_never_averaged_and_a_repeated_seed_counts_once(
        runs: dict[str, Path], tmp_path: Path) -> None:
    """Runs on two stores (or on one split rewritten between them) were averaged as seeds of one
    configuration, since the store path is no setting compared; two runs of seed 0 were two seeds."""
    import json

    from benzarr.report import summary_table
    from benzarr_cli.main import app

    def copy(seed: int, name: str, **store: str) -> Path:
        run = copy_tree(runs["strat"] / f"seed-{seed}", tmp_path / "data" / name)
        config = json.loads((run / "config.json").read_text())
        config["store"].update(store)
        (run / "config.json").write_text(json.dumps(config))
        return run

    copy(0, "other-s0", path="/elsewhere/other.zarr")  # the same split codes of another store
    copy(1, "other-s1", path="/elsewhere/other.zarr")
    copy(0, "rewritten-s0", split_sha256="f" * 64)  # the store's split made again (split --overwrite)
    copy(1, "staged-s1", path="/scratch/job7/store.zarr")  # the same store, staged to a job's disk
    summary = summary_table(find_runs([runs["strat"], tmp_path / "data"], scalars=False)).set_index("store")
    own = json.loads((runs["strat"] / "seed-0" / "config.json").read_text())["store"]["split_sha256"][:12]
    assert list(summary.index) == [f"store.zarr (split {own})", "other.zarr", "store.zarr (split ffffffffffff)"]
    assert list(summary["n_runs"]) == [2, 2, 1] and summary["seeds"].iloc[0] == "0,1,1"
    plain = summary_table(find_runs([runs["strat"], runs["rand"]], scalars=False))
    assert "store" not in plain.columns  # one store: the tables are as before

    again = copy_tree(runs["strat"] / "seed-0", tmp_path / "again")  # seed 0 a second time
    result = CliRunner().invoke(app, ["report", str(runs["strat"]), str(again), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    summary = pd.read_csv(tmp_path / "r" / "summary.csv")
    assert list(summary["n_runs"]) == [2] and summary.loc[0, "seeds"] == "0,1,0"
    per_run = pd.read_csv(tmp_path / "r" / "runs.csv").drop_duplicates("seed")["macro_f1"]
    assert summary.loc[0, "macro_f1_mean"] == pytest.approx(per_run.mean())  # seed 0 weighs as much as seed 1
    note = (f"model shortcnn-rgb, split strat, labels clc43, bands rgb: {runs['strat'] / 'seed-0'} and {again} "
            "share seed 0: not independent runs; each seed counts once (the mean of its runs) in n_runs and the "
            "95% interval")
    assert f"warning: {note}" in result.output.replace("\n", "")
    assert f"Note: {note}." in (tmp_path / "r" / "summary.md").read_text()


def test_a_run_that_did_not_finish_is_named_on_stderr_also_when_quiet(runs: dict[str, Path], tmp_path: Path) -> None:
    """A run stopped before its test metrics (Ctrl-C) used to give a row of None without a word
    (and runs.md showed the word: ``| None | None |`` where it has no epochs or test size yet)."""
    import shutil
    import warnings

    stopped = copy_tree(runs["rand"], tmp_path / "stopped")
    (stopped / "metrics.json").unlink()
    failed = copy_tree(stopped, tmp_path / "failed")  # failed before its first checkpoint: --resume refuses it
    shutil.rmtree(failed / "checkpoints")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no matplotlib legend warning for curves without data
        report = write_report([runs["rand"], stopped], tmp_path / "r")
    assert report.unfinished == [str(stopped)]
    write_report([stopped], tmp_path / "alone")  # its columns all None: pandas keeps them as objects
    assert "None" not in (tmp_path / "alone" / "runs.md").read_text()
    result = run_cli("report", runs["rand"], stopped, failed, "--out", tmp_path / "r2", "--quiet")
    assert result.returncode == 0 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"warning: {stopped}: no metrics.json, the run did not finish: its row has no test metrics "
        "(benzarr train --resume --out RUN finishes it)",
        f"warning: {failed}: no metrics.json and no checkpoint: the run failed before its first checkpoint, so its "
        "row has no test metrics and --resume cannot finish it; delete the folder and train again"]


def test_a_finished_run_without_test_metrics_is_named_on_stderr(runs: dict[str, Path], tmp_path: Path) -> None:
    """A run on a split without a test subset (``"test": null``) was left out of the summary in
    silence: "2 run(s)" above a table of one row, exit 0, nothing on stderr."""
    import json

    untested = copy_tree(runs["rand"], tmp_path / "untested")
    metrics = json.loads((untested / "metrics.json").read_text())
    (untested / "metrics.json").write_text(json.dumps({**metrics, "test": None}))
    result = run_cli("report", runs["rand"], untested, "--out", tmp_path / "r", "--quiet")
    assert result.returncode == 0 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"warning: {untested}: its metrics.json has no test metrics (split rand has no test subset?), so the summary "
        f"has no row for it; score it with `benzarr evaluate {untested} --split OTHER` and report with --evaluation"]


def test_a_run_still_training_is_named_as_such_not_sent_to_resume(runs: dict[str, Path], tmp_path: Path) -> None:
    """report during a run said "the run did not finish ... train --resume finishes it", and
    --resume would have met the run's lock."""
    import os

    from benzarr.lock import run_lock
    from benzarr.report import unfinished_warning

    training = copy_tree(runs["rand"], tmp_path / "training")
    (training / "metrics.json").unlink()
    with run_lock(training):  # as the running train holds it
        said = unfinished_warning(training)
    assert said.startswith(f"{training}: no metrics.json yet, the run is still training (pid {os.getpid()} on ")
    assert "--resume" not in said and "--resume" in unfinished_warning(training)  # once it is not


def test_a_run_named_twice_is_one_run_and_an_evaluation_name_is_no_path(runs: dict[str, Path], tmp_path: Path) -> None:
    """`report r1 r1` gave n_runs 2 with a zero interval; `--evaluation ../../x` read another run's file."""
    rand = runs["rand"]
    assert len(find_runs([rand, f"{rand}/", rand.parent / "." / rand.name])) == 1
    with pytest.raises(InvalidArgumentError, match="not a path"):
        find_runs([rand], evaluations=["../../strat/seed-0/evaluations/x"])


def test_an_evaluation_named_twice_is_read_and_named_once(runs: dict[str, Path], tmp_path: Path) -> None:
    """`--evaluation e --evaluation e` gave one row per run (find_runs reads a name once), but the
    summary line and summary.md said "the evaluations e, e"."""
    import json
    import shutil

    run = shutil.copytree(runs["rand"], tmp_path / "run")
    test = json.loads((run / "metrics.json").read_text())["test"]
    (run / "evaluations" / "e").mkdir(parents=True)
    (run / "evaluations" / "e" / "metrics.json").write_text(json.dumps({"metrics": test, "split": "rand",
                                                                        "subset": "test"}))
    done = run_cli("report", run, "--evaluation", "e", "--evaluation", "e", "--out", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    assert "1 row(s) (runs x evaluations); metrics of the evaluations e, mean" in done.stdout
    assert (tmp_path / "out" / "summary.md").read_text().startswith("Metrics of the evaluations e (benzarr evaluate)")


def test_an_out_named_like_a_file_is_refused(runs: dict[str, Path], tmp_path: Path) -> None:
    """`report --out summary.csv` made a folder named summary.csv."""
    done = run_cli("report", runs["rand"], "--out", tmp_path / "summary.csv", "-q")
    assert done.returncode == 1 and f"summary.csv: a .csv file's name given for the report (--out)" in done.stderr
    assert not (tmp_path / "summary.csv").exists()


def test_a_damaged_metrics_json_is_named_and_lost_curves_are_a_warning(runs: dict[str, Path], tmp_path: Path) -> None:
    """A metrics.json with a string for a metric ended the report with "could not convert string
    to float: 'abc'", naming no file; event files cut short gave empty curves without a word."""
    import json
    import shutil

    run = shutil.copytree(runs["rand"], tmp_path / "run")
    metrics = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps({**metrics, "test": {**metrics["test"], "micro_f1": "abc"}}))
    with pytest.raises(InvalidArgumentError, match=f"{run}/metrics.json: 'test.micro_f1' is 'abc', not a number"):
        write_report([run], tmp_path / "out")
    (run / "metrics.json").write_text(json.dumps(metrics))
    for events in run.glob("events.out.tfevents.*"):
        events.write_bytes(events.read_bytes()[:100])
    report = write_report([run], tmp_path / "out")
    assert report.warnings == [f"{run}: its 1 event file(s) hold no scalar (damaged or cut short?), so curves.png "
                               "has no curves for it; its test metrics are in the tables"]
    assert report.runs["micro_f1"].tolist() == [metrics["test"]["micro_f1"]]


def test_a_metrics_json_without_its_test_block_is_named_as_damaged(runs: dict[str, Path], tmp_path: Path) -> None:
    """A metrics.json of `{}` was read as a run without a test subset ("test": null, which train
    writes for one): a warning to score it with evaluate, exit 0. train always writes the key."""
    import shutil

    run = shutil.copytree(runs["rand"], tmp_path / "run")
    (run / "metrics.json").write_text("{}")
    done = run_cli("report", run, "--out", tmp_path / "out", "-q")
    assert done.returncode == 1 and done.stderr == (f"error: {run / 'metrics.json'}: not the metrics.json benzarr "
                                                    "train writes (no 'test' block of metrics)\n"), done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["metrics.json", "evaluations/e/metrics.json"])
def test_a_metrics_json_of_bytes_that_are_no_text_is_named(runs: dict[str, Path], tmp_path: Path, name: str) -> None:
    """A metrics.json of binary garbage ended the report with 'unexpected UnicodeDecodeError'."""
    import shutil

    run = shutil.copytree(runs["rand"], tmp_path / "run")
    (run / name).parent.mkdir(parents=True, exist_ok=True)
    (run / name).write_bytes(b"\x80\xa2\xff garbage")
    with pytest.raises(InvalidArgumentError, match=rf"{run / name}: not valid JSON \('utf-8' codec can't decode"):
        write_report([run], tmp_path / "out", evaluations=["e"] if "/" in name else ())
    assert not (tmp_path / "out").exists()


def test_a_run_resumed_from_before_an_epoch_it_logged_reads_without_tensorboards_log(
        runs: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """report printed TensorBoard's "Detected out of order event.step likely caused by a
    TensorFlow restart. Purging expired events ..." on stderr for such a run (killed after
    logging epoch 2 and before its checkpoint, then resumed): the purge is what purge_step asks."""
    import logging
    import shutil

    from benzarr.tb import RunWriter, read_scalars

    run = shutil.copytree(runs["rand"], tmp_path / "run")
    writer = RunWriter(run, purge_step=2)  # the resumed attempt logs epoch 2 again
    writer.scalars(2, {"train/loss": 0.5})
    writer.close()
    with caplog.at_level(logging.WARNING):  # what a command shows on stderr
        assert read_scalars(run)["train/loss"][2] == 0.5  # the later value wins
    assert [r.getMessage() for r in caplog.records if r.name.startswith("tensorboard")] == []


def test_an_event_file_cut_short_mid_record_is_a_warning(runs: dict[str, Path], tmp_path: Path) -> None:
    """An event file cut inside epoch 2's first record gave curves of epoch 1 alone, without a word."""
    import shutil
    import struct

    from tensorboard.compat.proto.event_pb2 import Event

    run = shutil.copytree(runs["rand"], tmp_path / "run")
    (events,) = run.glob("events.out.tfevents.*")
    data, pos = events.read_bytes(), 0
    while True:  # records: the event's length, its CRC, the event, its CRC
        size = struct.unpack("<Q", data[pos:pos + 8])[0]
        if Event.FromString(data[pos + 12:pos + 12 + size]).step == 2:
            break
        pos += 12 + size + 4
    events.write_bytes(data[:pos + 12 + size // 2])  # cut inside epoch 2's first record
    report = write_report([run], tmp_path / "out")
    assert report.warnings == [f"{run}: its event files end at epoch 1 of its 2 (damaged or cut short?), so its "
                               "curves in curves.png stop there; its test metrics are in the tables"]


def test_an_event_file_that_is_a_folder_is_named_as_a_path(runs: dict[str, Path], tmp_path: Path) -> None:
    """The line read "error: b'runs/a/events.out.tfevents.1.x': is a folder, not a file": the
    path as the bytes TensorBoard's reader opened."""
    import shutil

    run = shutil.copytree(runs["rand"], tmp_path / "run")
    (run / "events.out.tfevents.1.x").mkdir()
    done = run_cli("report", run, "--out", tmp_path / "out")
    assert (done.returncode, done.stderr) == (1, f"error: {run / 'events.out.tfevents.1.x'}: is a folder, not a file\n")


@pytest.mark.parametrize("key, value, named", [
    ("n_samples", None, "'test.n_samples' is None"),  # the run left out of the summary, its row in runs.csv
    ("epochs", "x", "'epochs' is 'x'"),  # tabulated as it came
], ids=["n_samples-null", "epochs-string"])
def test_a_damaged_count_in_metrics_json_is_named(runs: dict[str, Path], tmp_path: Path, key: str, value: object,
                                                  named: str) -> None:
    """A metrics.json without its patch count, or with a word for its epochs, was read as it came."""
    import json
    import shutil

    run = shutil.copytree(runs["rand"], tmp_path / "run")
    metrics = json.loads((run / "metrics.json").read_text())
    (metrics["test"] if key == "n_samples" else metrics)[key] = value
    (run / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(InvalidArgumentError, match=f"{run}/metrics.json: {named}, not a whole number: the file is damaged"):
        find_runs([run], scalars=False)


def test_an_evaluation_folder_holding_a_runs_own_metrics_json_is_named(runs: dict[str, Path], tmp_path: Path) -> None:
    """evaluations/NAME/metrics.json copied from the run (no 'metrics' block) gave a row without
    metrics, "test of rand", and an empty summary, exit 0."""
    import shutil

    run = shutil.copytree(runs["rand"], tmp_path / "run")
    (run / "evaluations" / "x").mkdir(parents=True)
    shutil.copy(run / "metrics.json", run / "evaluations" / "x")
    with pytest.raises(InvalidArgumentError, match=f"{run}/evaluations/x/metrics.json: not the metrics.json benzarr "
                                                   r"evaluate writes \(no 'metrics' block of metrics\)"):
        find_runs([run], scalars=False, evaluations=["x"])


def test_report_replaces_only_its_own_files(runs: dict[str, Path], tmp_path: Path) -> None:
    """`--out myrep` holding the user's summary.md replaced it (rc 0): a file of a name the report
    writes that no report wrote stops it before anything is written; an earlier report's files
    (also one from before curves.png carried benzarr's marker) are replaced."""
    from benzarr.errors import UnsafeOverwriteError

    out = tmp_path / "myrep"
    out.mkdir()
    (out / "summary.md").write_text("my notes\n")
    with pytest.raises(UnsafeOverwriteError, match="summary.md: exists and is not the summary.md of a report"):
        write_report([runs["rand"]], out)
    assert (out / "summary.md").read_text() == "my notes\n" and sorted(p.name for p in out.iterdir()) == ["summary.md"]
    (out / "summary.md").unlink()
    (out / "curves.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")  # another program's image
    with pytest.raises(UnsafeOverwriteError, match="curves.png: exists"):
        write_report([runs["rand"]], out)
    (out / "curves.png").unlink()
    write_report([runs["rand"]], out)
    write_report([runs["rand"]], out)  # a rerun replaces the earlier report
    from PIL import Image
    from matplotlib.figure import Figure

    Figure().savefig(out / "curves.png")  # a report's curves from before the marker: matplotlib's own metadata
    with Image.open(out / "curves.png") as image:
        assert image.info["Software"].startswith("Matplotlib")
    write_report([runs["rand"]], out)
    with Image.open(out / "curves.png") as image:
        assert image.info["Software"].startswith("benzarr ")
    (out / "runs.csv").write_text("my,own,table\n")
    with pytest.raises(UnsafeOverwriteError, match="runs.csv"):
        write_report([runs["rand"]], out)
    assert (out / "runs.csv").read_text() == "my,own,table\n"


def test_report_files_are_utf8_under_an_ascii_locale(runs: dict[str, Path], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """summary.md says "mean ± half-width": written in the locale's encoding, ``LC_ALL=C``
    without Python's UTF-8 coercion (PYTHONCOERCECLOCALE=0) stopped the report with a
    UnicodeEncodeError, and a Latin-1 locale wrote a Markdown file no UTF-8 reader shows
    right. Every text file benzarr writes is UTF-8. (The locale is simulated: a file opened
    without an encoding gets ASCII, as under that C locale.)"""
    import io
    import pathlib

    monkeypatch.setattr(pathlib.io, "text_encoding", lambda encoding, stacklevel=2: encoding or "ascii")
    write_report([runs["strat"]], tmp_path / "r")
    assert "mean ± half-width" in (tmp_path / "r" / "summary.md").read_text(encoding="utf-8")
    assert io.text_encoding(None) == "ascii"  # the simulation was in force
