"""benzarr evaluate: a run's checkpoint scored on any split and subset, read as the run read it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benzarr.errors import InvalidArgumentError, SplitNotFoundError, StoreNotFoundError, UnsafeOverwriteError
from benzarr.evaluate import evaluate_run
from benzarr.split import make_split
from benzarr.store import open_store
from benzarr.train import TrainConfig, train
from tests.conftest import copy_tree

CLI = [sys.executable, "-m", "benzarr_cli"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, synth_store_64: Path) -> Path:
    """A short shortcnn-rgb run on an iterative split 'strat' of a store that also has a random split 'rand'."""
    root = tmp_path_factory.mktemp("evaluate")
    store = copy_tree(synth_store_64, root / "store.zarr")
    opened = open_store(store, mode="r+")
    make_split(opened, "strat", "iterative", fractions=(0.6, 0.2, 0.2), seed=0)
    make_split(opened, "rand", "random", fractions=(0.5, 0.25, 0.25), seed=1)
    cfg = TrainConfig(store=str(store), split="strat", model="shortcnn-rgb", epochs=2, batch_size=8, max_steps=6,
                      device="cpu", out=str(root / "run"))
    train(cfg)
    return root / "run"


def test_an_out_named_like_a_file_is_refused_before_scoring(run: Path, tmp_path: Path) -> None:
    """`evaluate --out dir/metrics.json` made a folder named metrics.json (a file as --out was refused)."""
    from tests.conftest import run_cli

    done = run_cli("evaluate", run, "--out", tmp_path / "d" / "metrics.json", "--device", "cpu", "-q")
    assert done.returncode == 1 and done.stderr == (f"error: {tmp_path / 'd' / 'metrics.json'}: a .json file's name "
                                                    "given for the evaluation (--out), a folder: give the folder the "
                                                    f"files go into, such as {tmp_path / 'd'}\n"), done.stderr
    assert not (tmp_path / "d").exists()
    (tmp_path / "scores.csv").write_text("mine\n")  # an existing file: refused as before
    done = run_cli("evaluate", run, "--out", tmp_path / "scores.csv", "--device", "cpu", "-q")
    assert done.returncode == 1 and "scores.csv: is a file, not a folder" in done.stderr


def test_the_runs_own_test_subset_gives_its_metrics_and_scores_csv_byte_for_byte(run: Path, tmp_path: Path) -> None:
    result = evaluate_run(run, out_dir=tmp_path / "eval")
    recorded = json.loads((run / "metrics.json").read_text())["test"]
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert written["metrics"]["n_samples"] == recorded["n_samples"] == result.n_patches
    for key in ("micro_f1", "macro_f1", "micro_f2", "macro_map", "loss", "per_class"):
        assert written["metrics"][key] == recorded[key], key
    assert (tmp_path / "eval" / "scores.csv").read_bytes() == (run / "scores.csv").read_bytes()
    assert result.seen_in_training == 0 and written["seen_in_training"] == 0
    assert "split strat train" in result.normalization


def test_worker_processes_give_the_same_scores(run: Path, tmp_path: Path) -> None:
    alone = evaluate_run(run, split="rand", out_dir=tmp_path / "w0", predictions=True)
    ring = evaluate_run(run, split="rand", out_dir=tmp_path / "w2", workers=2, predictions=True)
    assert ring.metrics["per_class"] == alone.metrics["per_class"]
    assert (tmp_path / "w2" / "scores.csv").read_bytes() == (tmp_path / "w0" / "scores.csv").read_bytes()
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "w2" / "predictions.parquet"),
                                  pd.read_parquet(tmp_path / "w0" / "predictions.parquet"))


def test_an_evaluation_without_predictions_leaves_no_earlier_ones_behind(run: Path, tmp_path: Path) -> None:
    """`evaluate --subset val --out E --predictions` then `--subset test --out E` left the val
    predictions beside the test metrics; a predictions.parquet evaluate did not write stays."""
    from benzarr.evaluate import _stale_predictions

    out = tmp_path / "e"
    evaluate_run(run, split="rand", subset="val", out_dir=out, predictions=True)
    earlier = json.loads((out / "metrics.json").read_text())
    assert earlier["predictions"] == "predictions.parquet"
    del earlier["predictions"]  # as evaluations before the record: a file with evaluate's columns is theirs
    assert _stale_predictions(out, earlier) and not _stale_predictions(out, {**earlier, "predictions": None})
    again = evaluate_run(run, split="rand", subset="test", out_dir=out)
    assert not (out / "predictions.parquet").exists() and again.warnings == []
    assert json.loads((out / "metrics.json").read_text())["predictions"] is None
    (out / "predictions.parquet").write_text("the user's")  # not evaluate's: left, and said so
    kept = evaluate_run(run, split="rand", subset="test", out_dir=out)
    assert (out / "predictions.parquet").read_text() == "the user's"
    assert kept.warnings == [f"{out / 'predictions.parquet'}: left as it was (benzarr evaluate did not write it); "
                             "it holds no predictions of this evaluation"]


def test_two_evaluations_into_one_folder_at_once_leave_one_evaluations_files(run: Path, tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Two evaluations writing one --out at once (two jobs of a sweep) left one's scores.csv
    beside the other's metrics.json. The first is held after its scores.csv while the second
    runs; the folder then holds the second evaluation's files, both of them."""
    import threading

    import benzarr.train as train_module  # evaluate imports its table writer from there, when it runs

    reference = evaluate_run(run, split="rand", subset="test", out_dir=tmp_path / "test")
    first_wrote, second_done = threading.Event(), threading.Event()
    write_scores_csv = train_module.write_scores_csv

    def held_after_the_first_table(path: Path, metrics: dict) -> Path:
        written = write_scores_csv(path, metrics)
        if not first_wrote.is_set():
            first_wrote.set()
            second_done.wait(0.5)  # unlocked, the second writes its files in this gap
        return written

    monkeypatch.setattr(train_module, "write_scores_csv", held_after_the_first_table)
    out = tmp_path / "both"
    first = threading.Thread(target=evaluate_run, args=(run,), kwargs={"split": "rand", "subset": "val", "out_dir": out})
    first.start()
    assert first_wrote.wait(60)
    evaluate_run(run, split="rand", subset="test", out_dir=out)
    second_done.set()
    first.join(60)
    assert json.loads((out / "metrics.json").read_text())["subset"] == "test"  # the second waited, then replaced
    assert (out / "scores.csv").read_bytes() == (reference.out_dir / "scores.csv").read_bytes()  # both files
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".")) == []  # no lock file left


def test_the_last_checkpoint_gets_its_own_folder(run: Path) -> None:
    best = evaluate_run(run, split="rand")
    last = evaluate_run(run, split="rand", checkpoint="last")
    assert best.out_dir == run / "evaluations" / "rand-test" and last.out_dir == run / "evaluations" / "rand-test-last"
    assert json.loads((last.out_dir / "metrics.json").read_text())["checkpoint"] == "checkpoints/last.pt"
    assert json.loads((best.out_dir / "metrics.json").read_text())["checkpoint"] == "checkpoints/best.pt"


def test_bootstrap_intervals_go_into_metrics_json(run: Path, tmp_path: Path) -> None:
    result = evaluate_run(run, split="rand", out_dir=tmp_path / "b", bootstrap=200)
    written = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert written["bootstrap"] == {"resamples": 200, "seed": 0, "unit": "patch", "method": "percentile"}
    low, high = written["ci95"]["micro_f1"]
    assert low <= result.metrics["micro_f1"] <= high
    assert result.intervals is not None and list(result.intervals["micro_f1"]) == [low, high]
    again = evaluate_run(run, split="rand", out_dir=tmp_path / "c", bootstrap=200)
    assert again.intervals == result.intervals  # seeded


def test_another_split_counts_the_patches_the_run_trained_on(run: Path) -> None:
    store = open_store(run.parent / "store.zarr")
    trained = store.subset_rows("strat", "train")
    evaluated = store.subset_rows("rand", "test")
    result = evaluate_run(run, split="rand", predictions=True)
    assert result.out_dir == run / "evaluations" / "rand-test"
    assert result.n_patches == evaluated.size
    assert result.seen_in_training == np.isin(evaluated, trained).sum() > 0

    frame = pd.read_parquet(result.out_dir / "predictions.parquet")
    classes = store.class_names("clc43")
    logit_columns = [f"{c} (logit)" for c in classes]
    assert list(frame.columns) == ["patch", *classes, *logit_columns, "labels"]
    assert list(frame["patch"]) == list(store.patch_names()[evaluated])
    scores, logits = frame[classes].to_numpy(), frame[logit_columns].to_numpy()
    assert scores.dtype == np.float32 and ((scores >= 0) & (scores <= 1)).all() and logits.dtype == np.float32
    np.testing.assert_allclose(scores, 1 / (1 + np.exp(-logits.astype(np.float64))), rtol=1e-6)
    truth = store.labels("clc43")[evaluated].astype(bool)
    assert list(frame["labels"]) == ["; ".join(np.asarray(classes)[t]) for t in truth]
    # the reported metrics come back from the file: mAP from the logits it holds (the float32
    # sigmoid ties at 0 and 1 for large logits), the thresholded ones from either column set
    from sklearn.metrics import average_precision_score, f1_score

    present = truth.any(axis=0)
    assert average_precision_score(truth, logits, average="micro") == pytest.approx(result.metrics["micro_map"])
    assert average_precision_score(truth[:, present], logits[:, present], average="macro") == pytest.approx(
        result.metrics["macro_map"])
    assert f1_score(truth, scores > 0.5, average="micro") == pytest.approx(result.metrics["micro_f1"])
    assert f1_score(truth, logits > 0, average="micro") == pytest.approx(result.metrics["micro_f1"])


def test_a_split_rewritten_since_training_counts_nothing_as_seen(run: Path, tmp_path: Path) -> None:
    changed = copy_tree(run, tmp_path / "changed")
    config = json.loads((changed / "config.json").read_text())
    config["store"]["split_sha256"] = "0" * 64  # as if `strat` had been made again after the run
    (changed / "config.json").write_text(json.dumps(config))
    other = evaluate_run(changed, split="rand")
    assert other.seen_in_training is None  # unknown, not zero
    assert other.warnings == [f"the run's split 'strat' of {config['settings']['store']} was rewritten or deleted "
                              "since the run trained on it: the evaluated patches it trained on, whose scores are "
                              "optimistic, cannot be counted"]
    # its own split, rewritten (`split --overwrite`): the test patches may be training patches
    with pytest.raises(InvalidArgumentError, match=r"split 'strat' of .*store\.zarr was rewritten since the run "
                       r"trained on it \(split codes: '000000000000' -> '[0-9a-f]{12}'\)"):
        evaluate_run(changed, out_dir=tmp_path / "own")
    assert not (tmp_path / "own").exists()


def test_a_run_without_recorded_statistics_recomputes_them_from_its_store(run: Path, tmp_path: Path) -> None:
    old = copy_tree(run, tmp_path / "old-run")
    config = json.loads((old / "config.json").read_text())
    del config["normalization"]  # as runs before the statistics were recorded
    (old / "config.json").write_text(json.dumps(config))
    recomputed = evaluate_run(old, out_dir=tmp_path / "a")
    recorded = evaluate_run(run, out_dir=tmp_path / "b")
    assert recomputed.normalization.startswith("recomputed")
    assert recomputed.metrics["per_class"] == recorded.metrics["per_class"]


def test_another_store_is_read_with_the_runs_statistics(run: Path, tmp_path: Path) -> None:
    other = copy_tree(run.parent / "store.zarr", tmp_path / "copy.zarr")
    result = evaluate_run(run, store=str(other), split="rand", subset="val")
    same = evaluate_run(run, split="rand", subset="val", out_dir=tmp_path / "own")
    assert result.out_dir == run / "evaluations" / "rand-val-copy"
    assert result.seen_in_training is None  # not the run's store: unknown
    assert result.metrics["micro_f1"] == same.metrics["micro_f1"]
    assert result.normalization == same.normalization


def test_an_evaluation_of_another_store_of_the_same_name_replaces_nothing(run: Path, tmp_path: Path) -> None:
    """a/twin.zarr and b/twin.zarr both map to evaluations/rand-val-twin: the second silently
    replaced the first, though no evaluation may replace another's."""
    import shutil

    first = copy_tree(run.parent / "store.zarr", tmp_path / "a" / "twin.zarr")
    second = copy_tree(run.parent / "store.zarr", tmp_path / "b" / "twin.zarr")
    try:
        done = evaluate_run(run, store=str(first), split="rand", subset="val")
        with pytest.raises(InvalidArgumentError, match="another store of the same name; pass --out"):
            evaluate_run(run, store=str(second), split="rand", subset="val")
        assert json.loads((done.out_dir / "metrics.json").read_text())["store_resolved"] == str(first.resolve())
        evaluate_run(run, store=str(first), split="rand", subset="val")  # the same question again: replaced
        evaluate_run(run, store=str(second), split="rand", subset="val", out_dir=tmp_path / "elsewhere")
    finally:
        shutil.rmtree(run / "evaluations" / "rand-val-twin", ignore_errors=True)


def test_a_bad_run_folder_or_output_is_named_before_anything_is_replaced(run: Path, tmp_path: Path) -> None:
    """A `{}` config said "('settings')"; predictions.parquet as a folder failed naming no path,
    after metrics.json and scores.csv had been replaced."""
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "config.json").write_text("{}")
    with pytest.raises(InvalidArgumentError, match=r"not a benzarr run configuration \(no 'settings' in it\)"):
        evaluate_run(fake)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(InvalidArgumentError, match="afile: is a file"):
        evaluate_run(tmp_path / "afile")
    out = tmp_path / "out"
    (out / "predictions.parquet").mkdir(parents=True)
    (out / "metrics.json").write_text("earlier")
    with pytest.raises(InvalidArgumentError, match=r"predictions\.parquet: is a folder where the evaluation writes"):
        evaluate_run(run, split="rand", subset="val", out_dir=out, predictions=True)
    assert (out / "metrics.json").read_text() == "earlier"
    with pytest.raises(UnsafeOverwriteError, match=r"out/metrics\.json: not the metrics\.json of an evaluation"):
        evaluate_run(run, split="rand", subset="val", out_dir=out)  # "earlier" is no evaluation's
    assert (out / "metrics.json").read_text() == "earlier"


@pytest.mark.parametrize("where, key, value, message", [
    ("settings", "amp", "no", "'settings.amp' is 'no', not bool"),  # a string is true: scored with autocast on
    ("settings", "bands", 5, "'settings.bands' is 5, not a list of band names"),  # a bare TypeError
    ("settings", "batch_size", "x", "'settings.batch_size' is 'x', not int"),  # a bare ValueError
    ("settings", "epochs", "3", "'settings.epochs' is '3', not int"),  # tabulated by report as it was
    ("config", "labels", "clc99", "'labels' is 'clc99', not one of clc43, clc19"),
    ("config", "classes", ["Forests"], "'classes' is not a list of the 43 class names of clc43"),
    ("normalization", "mean", [0.0], "'normalization.mean' holds 1 values, not one per band of 'settings.bands' (3)"),
    ("normalization", "std", [1.0, float("nan"), 1.0], "'normalization.std' holds nan, not a finite number"),
], ids=["amp-string", "bands-number", "batch-size-string", "epochs-string", "labels-unknown", "classes-short",
        "mean-short", "std-nan"])
def test_a_damaged_config_json_is_named_with_its_value(run: Path, tmp_path: Path, where: str, key: str,
                                                       value: object, message: str) -> None:
    """A config.json value of the wrong type was used as it came (or named without the file)."""
    import re
    import shutil

    from benzarr.report import write_report

    damaged = shutil.copytree(run, tmp_path / "run", ignore=shutil.ignore_patterns("evaluations"))
    config = json.loads((damaged / "config.json").read_text())
    {"config": config, "settings": config["settings"], "normalization": config["normalization"]}[where][key] = value
    (damaged / "config.json").write_text(json.dumps(config))
    expected = re.escape(f"{damaged / 'config.json'}: {message}: the file is damaged or was edited by hand")
    with pytest.raises(InvalidArgumentError, match=expected):
        evaluate_run(damaged, out_dir=tmp_path / "out")
    with pytest.raises(InvalidArgumentError, match=expected):
        write_report([damaged], tmp_path / "report")
    assert not (tmp_path / "out").exists() and not (tmp_path / "report").exists()
    with pytest.raises(InvalidArgumentError, match="holds a run already: pass --resume"):  # still a run's folder
        train(TrainConfig(store=str(run.parent / "store.zarr"), split="strat", device="cpu", out=str(damaged)))


@pytest.mark.parametrize("key, value, message", [
    ("model", "nosuchnet", "'settings.model': unknown model 'nosuchnet'"),
    ("modalities", "s3", "'settings.modalities': unknown modality 's3'"),
    ("bands", ["BXX", "B03", "B02"], "'settings.bands': band list: unknown or unavailable band 'BXX'"),
    ("resample", "cubic", "'settings.resample': unknown resampling 'cubic'"),
    ("loss", {"nam": "bce"}, "'loss': no 'name' in it"),  # a bare KeyError
    ("loss", {"name": "nope"}, "'loss': unknown --loss 'nope'"),
], ids=["model", "modality", "band", "resample", "loss-without-name", "loss-unknown"])
def test_a_name_this_benzarr_does_not_know_names_the_config_json(run: Path, tmp_path: Path, key: str, value: object,
                                                                 message: str) -> None:
    """A model, loss, modality, band or resampling in config.json that this benzarr does not
    know was refused as if typed on the command line, without the file."""
    import re
    import shutil

    from benzarr.show import run_predictions

    damaged = shutil.copytree(run, tmp_path / "run", ignore=shutil.ignore_patterns("evaluations"))
    config = json.loads((damaged / "config.json").read_text())
    (config if key == "loss" else config["settings"])[key] = value
    (damaged / "config.json").write_text(json.dumps(config))
    expected = re.escape(f"{damaged / 'config.json'}: {message}")
    with pytest.raises(InvalidArgumentError, match=expected):
        evaluate_run(damaged, out_dir=tmp_path / "out")
    with pytest.raises(InvalidArgumentError, match=expected):
        run_predictions(run.parent / "store.zarr", [0], damaged)  # show --run
    assert not (tmp_path / "out").exists()


def test_a_users_tables_in_a_new_output_folder_are_never_replaced(run: Path, tmp_path: Path) -> None:
    """With no metrics.json in --out, a user's scores.csv and predictions.parquet were replaced."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "scores.csv").write_text("my,own\n1,2\n")
    with pytest.raises(UnsafeOverwriteError, match=r"mine/scores\.csv: exists and is not a scores table that benzarr wrote"):
        evaluate_run(run, split="rand", subset="val", out_dir=out)
    (out / "scores.csv").unlink()
    (out / "predictions.parquet").write_bytes(b"not parquet")
    with pytest.raises(UnsafeOverwriteError, match=r"mine/predictions\.parquet: exists and is not a predictions table"):
        evaluate_run(run, split="rand", subset="val", out_dir=out, predictions=True)
    assert (out / "predictions.parquet").read_bytes() == b"not parquet" and not (out / "metrics.json").exists()
    first = evaluate_run(run, split="rand", subset="val", out_dir=tmp_path / "new", predictions=True)
    (first.out_dir / "metrics.json").unlink()  # an evaluation's own tables, even without its metrics.json
    evaluate_run(run, split="rand", subset="val", out_dir=first.out_dir, predictions=True)


def test_the_run_folder_itself_is_no_output(run: Path, tmp_path: Path) -> None:
    """`evaluate RUN --out RUN` replaced the run's metrics.json and scores.csv with the val
    scores, which `report` then showed as the run's test metrics."""
    own = {name: (run / name).read_bytes() for name in ("metrics.json", "scores.csv")}
    with pytest.raises(InvalidArgumentError, match=r"is a training run's folder \(config\.json, checkpoints/\)"):
        evaluate_run(run, subset="val", out_dir=run)
    assert {name: (run / name).read_bytes() for name in own} == own
    trained = tmp_path / "metrics-only"  # a run's metrics.json alone: still no evaluation's to replace
    trained.mkdir()
    (trained / "metrics.json").write_bytes(own["metrics.json"])
    with pytest.raises(UnsafeOverwriteError, match="not the metrics.json of an evaluation"):
        evaluate_run(run, subset="val", out_dir=trained)
    assert (trained / "metrics.json").read_bytes() == own["metrics.json"]
    from benzarr.errors import PathConflictError

    store = Path(json.loads((run / "config.json").read_text())["store"]["path"])
    with pytest.raises(PathConflictError, match=r"--out lies inside the benzarr store .*; write the evaluation outside it"):
        evaluate_run(run, subset="val", out_dir=store / "evaluations")
    assert not (store / "evaluations").exists()


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": 2.5}, "--batch-size must be a whole number, got 2.5"),  # ran with 2
    ({"batch_size": True}, "--batch-size must be a whole number, got True"),  # ran with 1
    ({"workers": "2"}, "--workers must be a whole number, got '2'"),  # TypeError
    ({"bootstrap": 2.5}, "--bootstrap must be a whole number, got 2.5"),  # TypeError after scoring
    ({"predictions": "no"}, "--predictions must be True or False, got 'no'"),  # wrote predictions.parquet
    ({"progress": 5}, "progress must be a function taking (patches done, patches in all), got 5"),  # TypeError
])
def test_arguments_of_the_wrong_type_are_refused_before_scoring(run: Path, tmp_path: Path, kwargs: dict,
                                                                message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=re.escape(message)):
        evaluate_run(run, out_dir=tmp_path / "e", **kwargs)
    assert not (tmp_path / "e").exists()


def test_bad_requests_raise_one_clear_error(run: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="no config.json"):
        evaluate_run(tmp_path)
    with pytest.raises(InvalidArgumentError, match="unknown subset 'holdout'"):
        evaluate_run(run, subset="holdout")
    with pytest.raises(InvalidArgumentError, match="unknown checkpoint 'first'"):
        evaluate_run(run, checkpoint="first")
    with pytest.raises(InvalidArgumentError, match="--batch-size must be at least 1"):
        evaluate_run(run, batch_size=0)
    with pytest.raises(SplitNotFoundError, match="nope"):
        evaluate_run(run, split="nope")
    bare = copy_tree(run, tmp_path / "bare")
    (bare / "checkpoints" / "best.pt").unlink()
    with pytest.raises(InvalidArgumentError, match=r"bare: no checkpoints/best.pt; the run has checkpoints/last.pt: "
                                                   r"evaluate that one \(--checkpoint last\)$"):
        evaluate_run(bare)  # said what was missing, not what to do
    (bare / "checkpoints" / "last.pt").unlink()
    with pytest.raises(InvalidArgumentError, match=r"no checkpoints/last.pt; the run holds no checkpoint: train it"):
        evaluate_run(bare, checkpoint="last")
    moved = copy_tree(run, tmp_path / "moved")
    config = json.loads((moved / "config.json").read_text())
    config["settings"]["store"] = config["store"]["path"] = str(tmp_path / "gone.zarr")  # the store was moved
    (moved / "config.json").write_text(json.dumps(config))
    with pytest.raises(StoreNotFoundError, match="gone.zarr: the run's store is not there .* --store"):
        evaluate_run(moved)
    assert evaluate_run(moved, store=str(run.parent / "store.zarr"), out_dir=tmp_path / "m").n_patches > 0


def test_cli_prints_the_scores_and_warns_about_seen_patches(run: Path, tmp_path: Path) -> None:
    done = subprocess.run([*CLI, "evaluate", str(run), "--split", "rand", "--out", str(tmp_path / "e"), "--workers", "1"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "test of split rand" in done.stdout and "micro P" in done.stdout and "macro P" in done.stdout
    assert "warning:" in done.stderr and "training subset" in done.stderr
    assert (tmp_path / "e" / "metrics.json").is_file() and (tmp_path / "e" / "scores.csv").is_file()
    missing = subprocess.run([*CLI, "evaluate", str(tmp_path / "nowhere")], capture_output=True, text=True)
    assert missing.returncode == 1
    assert missing.stderr.strip().count("\n") == 0 and "nowhere: no such run folder" in missing.stderr


def test_show_predicts_what_evaluate_predicts(run: Path) -> None:
    from benzarr.show import run_predictions

    result = evaluate_run(run, split="rand", subset="val", predictions=True)
    frame = pd.read_parquet(result.out_dir / "predictions.parquet")
    store = open_store(run.parent / "store.zarr")
    rows = store.subset_rows("rand", "val")[:3]  # trained-on or not, one normalisation: the run's
    classes, scores = run_predictions(run.parent / "store.zarr", rows, run)
    np.testing.assert_allclose(scores, frame[classes].to_numpy()[:3], atol=1e-5)


def test_a_seeds_folder_evaluates_every_seed(run: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from benzarr.evaluate import run_folders
    from benzarr.train import train_seeds
    from benzarr_cli.main import app

    cfg = TrainConfig(store=str(run.parent / "store.zarr"), split="strat", model="shortcnn-rgb", epochs=1,
                      batch_size=8, max_steps=2, device="cpu", out=str(tmp_path / "seeds"))
    train_seeds(cfg, [2, 10])
    assert [p.name for p in run_folders(tmp_path / "seeds")] == ["seed-2", "seed-10"]
    result = CliRunner().invoke(app, ["evaluate", str(tmp_path / "seeds"), "--out", str(tmp_path / "e")])
    assert result.exit_code == 0, result.output
    assert "seed-2: test of split strat" in result.output and "seed-10: test of split strat" in result.output
    for seed in ("seed-2", "seed-10"):
        assert (tmp_path / "e" / seed / "metrics.json").is_file()
    with pytest.raises(InvalidArgumentError, match="no config.json"):
        run_folders(tmp_path / "e")
    from benzarr.show import run_predictions

    with pytest.raises(InvalidArgumentError, match=r"holds 2 runs \(seed-2, seed-10\): give one of them"):
        run_predictions(run.parent / "store.zarr", [0], tmp_path / "seeds")  # show --run needs one run


def test_report_tabulates_evaluations_side_by_side(run: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from benzarr.report import write_report
    from benzarr_cli.main import app

    evaluate_run(run)                       # evaluations/strat-test: the run's own test subset
    evaluate_run(run, split="rand")         # evaluations/rand-test
    report = write_report([run], tmp_path / "r", evaluations=["strat-test", "rand-test"])
    rows = report.runs.set_index("evaluated_on")
    own = json.loads((run / "metrics.json").read_text())["test"]
    assert rows.loc["test of strat", "micro_f1"] == own["micro_f1"]
    assert rows.loc["test of rand", "n_test"] == open_store(run.parent / "store.zarr").subset_rows("rand", "test").size
    assert rows.loc["test of rand", "seen_in_training"] > 0 and rows.loc["test of strat", "seen_in_training"] == 0
    assert list(report.summary["evaluated_on"]) == ["test of strat", "test of rand"]
    assert "evaluated_on" in report.summary_md

    plain = write_report([run], tmp_path / "p")
    assert "evaluated_on" not in plain.summary.columns  # without evaluations the tables are as before
    missing = CliRunner().invoke(app, ["report", str(run), "--evaluation", "nope-test", "--out", str(tmp_path / "x")])
    assert missing.exit_code == 1 and isinstance(missing.exception, InvalidArgumentError)
    message = str(missing.exception)
    assert "no evaluations/nope-test/metrics.json (it has: " in message and "strat-test" in message


def test_subset_all_scores_every_valid_patch_whatever_the_split(run: Path) -> None:
    store = open_store(run.parent / "store.zarr")
    result = evaluate_run(run, subset="all", predictions=True)
    assert result.split is None and result.out_dir == run / "evaluations" / "all"
    assert result.n_patches == store.subset_rows(None, None).size == 64
    trained = store.subset_rows("strat", "train")
    assert result.seen_in_training == trained.size
    frame = pd.read_parquet(result.out_dir / "predictions.parquet")
    assert sorted(frame["patch"]) == sorted(store.patch_names())


def test_a_split_with_subset_all_is_refused(run: Path) -> None:
    """``--subset all --split nope`` scored the whole store, exit 0: the split, even a missing
    one, was dropped in silence."""
    from tests.conftest import run_cli

    done = run_cli("evaluate", run, "--subset", "all", "--split", "nope")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip() == ("error: --split nope with --subset all: all scores every valid patch of the store, "
                                   "whatever its split; drop --split, or give --subset train, val or test of it")


def test_report_names_another_store_in_evaluated_on(run: Path, tmp_path: Path) -> None:
    from benzarr.report import write_report

    other = copy_tree(run.parent / "store.zarr", tmp_path / "elsewhere.zarr")
    evaluate_run(run, store=str(other), split="rand", out_dir=run / "evaluations" / "rand-test-elsewhere")
    report = write_report([run], tmp_path / "r", evaluations=["rand-test-elsewhere"])
    assert list(report.runs["evaluated_on"]) == ["test of rand in elsewhere.zarr"]


def test_a_mistyped_split_is_answered_before_torch_loads(run: Path) -> None:
    """It waited four seconds for torch and torchvision to import before saying so."""
    import subprocess
    import sys

    probe = ("import sys; from typer.testing import CliRunner; from benzarr_cli.main import app; "
             "r = CliRunner().invoke(app, sys.argv[1:]); print(type(r.exception).__name__, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe, "evaluate", str(run), "--split", "nope"],
                          capture_output=True, text=True)
    assert done.stdout.split() == ["SplitNotFoundError", "False"], done.stdout + done.stderr


def test_a_checkpoint_that_does_not_fit_the_runs_model_is_refused(run: Path, tmp_path: Path) -> None:
    """A run folder holding another run's checkpoint (12 bands against its 3) was scored with a
    warning and exit 0: the first convolution stayed random, and the metrics read as the run's."""
    import shutil

    import torch

    from benzarr.models import create_model

    mixed = tmp_path / "mixed"
    shutil.copytree(run, mixed, ignore=shutil.ignore_patterns("evaluations"))
    other = create_model("shortcnn-all", num_classes=43).state_dict()
    torch.save({"model": other}, mixed / "checkpoints" / "best.pt")
    with pytest.raises(InvalidArgumentError, match=r"best.pt does not fit shortcnn-rgb with 3 bands and 43 classes "
                                                   r"exactly \(skipped 1 of another shape \(conv1.weight"):
        evaluate_run(mixed, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("change, differ", [
    ({"seed": 1}, "seed 1 against 0"),  # another seed's best.pt: the same model and bands, it fits exactly
    ({}, "started 2001-01-01T00:00:00+00:00 against "),  # the same settings, trained again
], ids=["other-seed", "other-start"])
def test_another_runs_checkpoint_that_fits_is_refused(run: Path, tmp_path: Path, change: dict, differ: str) -> None:
    """Another run's best.pt of the same model and bands was scored (and drawn by show --run) as
    this run's, exit 0."""
    import re
    import shutil

    import torch

    from benzarr.show import run_predictions

    mixed = shutil.copytree(run, tmp_path / "mixed", ignore=shutil.ignore_patterns("evaluations"))
    payload = torch.load(mixed / "checkpoints" / "best.pt", weights_only=True)
    payload["config"]["settings"].update(change)
    if not change:
        payload["config"]["created"] = "2001-01-01T00:00:00+00:00"
    torch.save(payload, mixed / "checkpoints" / "best.pt")
    message = re.escape(f"best.pt: written by another run than the config.json beside it ({differ}")
    with pytest.raises(InvalidArgumentError, match=message):
        evaluate_run(mixed, out_dir=tmp_path / "out")
    with pytest.raises(InvalidArgumentError, match=message):
        run_predictions(run.parent / "store.zarr", [0], mixed)
    assert not (tmp_path / "out").exists()
    assert evaluate_run(mixed, checkpoint="last", out_dir=tmp_path / "last").n_patches > 0  # its own last.pt


def test_a_store_given_as_the_run_says_so(synth_store_64: Path) -> None:
    """`benzarr evaluate s.zarr` said only "no config.json here"."""
    from tests.conftest import run_cli

    done = run_cli("evaluate", synth_store_64)
    assert done.returncode == 1 and done.stderr == (f"error: {synth_store_64}: is a benzarr store, not a run folder; "
                                                    "give a run folder (the --out of `benzarr train`)\n")


def test_score_batches_keeps_nothing_of_a_batch_past_the_next() -> None:
    """The scoring pass kept every batch's logits, labels and rows in lists joined at the end:
    small tensors allocated between each batch's large temporary ones, which pinned the C
    heap, so `benzarr evaluate` grew by about 10 MB of resident memory a batch (2.1 GB after
    6,000 patches). Each batch's outputs are now copied into tensors allocated once, and no
    tensor of batch k is alive while batch k + 2 is scored; the results are what torch.cat
    of the batches gives."""
    import weakref

    import torch

    from benzarr.evaluate import score_batches

    made: list[weakref.ref] = []

    def net(x: torch.Tensor) -> torch.Tensor:
        assert all(ref() is None for ref in made[:-1]), "an earlier batch's logits are still held"
        out = x.flatten(1)[:, :3] * 2.0
        made.append(weakref.ref(out))
        return out

    rng = torch.Generator().manual_seed(0)
    batches = [{"image": torch.randn(n, 1, 2, 2, generator=rng), "label": (torch.rand(n, 3, generator=rng) > 0.5).float(),
                "index": torch.arange(start, start + n)} for start, n in ((0, 4), (4, 4), (8, 4), (12, 2))]
    expect_logits = torch.cat([b["image"].flatten(1)[:, :3] * 2.0 for b in batches])
    logits, labels, rows, loss = score_batches(net, iter(batches), torch.device("cpu"), torch.contiguous_format, False,
                                               torch.nn.BCEWithLogitsLoss())
    assert len(made) == 4
    torch.testing.assert_close(logits, expect_logits, rtol=0, atol=0)
    assert torch.equal(labels, torch.cat([b["label"].bool() for b in batches]))
    assert torch.equal(rows, torch.arange(14))
