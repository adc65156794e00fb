"""benzarr demo: the README's first command, end to end (reduced size)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from benzarr.demo import DemoConfig, run_demo
from benzarr.errors import InvalidArgumentError, UnsafeOverwriteError
from benzarr.fsutil import write_marker


def test_demo_runs_end_to_end_and_says_where_everything_is(tmp_path: Path) -> None:
    from benzarr_cli.main import app

    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--patches", "40", "--epochs", "1",
                                      "--max-steps", "2", "--workers", "1", "--batch-size", "8"])
    assert result.exit_code == 0, result.output
    for path in ("archive", "store.zarr/zarr.json", "runs/shortcnn-all/metrics.json",
                 "runs/shortcnn-all/checkpoints/best.pt", "report/curves.png", "report/summary.md"):
        assert (out / path).exists(), path
        assert str(out / path.split("/")[0]) in result.output
    metrics = json.loads((out / "runs/shortcnn-all/metrics.json").read_text())
    assert metrics["split"] == "stratified" and metrics["steps"] == 2 and metrics["test"]["n_samples"] > 0
    assert "done in" in result.output
    assert "shortcnn-all for 1 epoch\n" in result.output  # it said "1 epochs"


def test_demo_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    write_marker(earlier, "demo")  # what an earlier demo leaves
    (earlier / "store.zarr").mkdir()
    with pytest.raises(InvalidArgumentError, match="--overwrite"):
        run_demo(DemoConfig(out=str(earlier), n_patches=40))
    assert (earlier / "store.zarr").exists()


def test_demo_overwrite_never_deletes_a_folder_it_did_not_write(tmp_path: Path) -> None:
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "keep.txt").write_text("mine")
    with pytest.raises(InvalidArgumentError, match="keep.txt"):
        run_demo(DemoConfig(out=str(tmp_path / "demo"), n_patches=40))
    with pytest.raises(UnsafeOverwriteError, match="nothing was deleted"):
        run_demo(DemoConfig(out=str(tmp_path / "demo"), n_patches=40, overwrite=True))
    assert (tmp_path / "demo" / "keep.txt").read_text() == "mine"
    from benzarr_cli.main import app

    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--overwrite"])
    assert result.exit_code == 1 and (tmp_path / "demo" / "keep.txt").exists()


def test_demo_overwrite_removes_only_what_the_demo_wrote(tmp_path: Path, synth_store_64: Path) -> None:
    """`demo --overwrite` deleted the whole folder: a user's notes and the run the README's
    next step trains into it (runs/rgb) went with it."""
    from benzarr.demo import remove_demo_entries
    from benzarr.synth import synth_archive
    from tests.conftest import copy_tree

    out = tmp_path / "demo"
    synth_archive(out / "archive", 2, workers=1)
    copy_tree(synth_store_64, out / "store.zarr")
    for folder in ("runs/shortcnn-all/checkpoints", "runs/rgb", "report"):
        (out / folder).mkdir(parents=True)
    write_marker(out, "demo")
    (out / "MYNOTES.txt").write_text("mine")
    (out / "runs/rgb/config.json").write_text("{}")
    (out / "store.zarr" / "notes.md").write_text("mine")
    with pytest.raises(UnsafeOverwriteError, match=r"store.zarr/notes.md\); --overwrite replaces only what benzarr wrote"):
        remove_demo_entries(out)
    assert (out / "archive").is_dir() and (out / "store.zarr" / "zarr.json").is_file()
    (out / "store.zarr" / "notes.md").unlink()
    remove_demo_entries(out)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        ".benzarr", "MYNOTES.txt", "runs", "runs/rgb", "runs/rgb/config.json"]


_RUN_FILES = ("config.json", "metrics.json", "scores.csv", "events.out.tfevents.1795779328.vm.13117.0",
              "checkpoints/best.pt", "checkpoints/last.pt", "checkpoints/last.pt.tmp",
              "evaluations/grouped-test/metrics.json", "evaluations/grouped-test/predictions.parquet")
_REPORT_FILES = ("curves.png", "runs.csv", "runs.md", "summary.csv", "summary.md")


@pytest.mark.parametrize("where", ["report/my_notes.md", "runs/shortcnn-all/my_notes.txt",
                                   "runs/shortcnn-all/checkpoints/epoch3.pt", "runs/shortcnn-all/mine/",
                                   "runs/shortcnn-all/evaluations/grouped-test/notes.md", "report"])
def test_demo_overwrite_keeps_a_users_files_in_its_run_and_report_folders(tmp_path: Path, where: str) -> None:
    """`demo --overwrite` checked only its archive and store for a user's files: everything in
    runs/shortcnn-all/ and report/ (a user's notes, an evaluation, a file named report) went."""
    from benzarr.demo import remove_demo_entries

    out = tmp_path / "demo"
    for name in _RUN_FILES:
        (out / "runs/shortcnn-all" / name).parent.mkdir(parents=True, exist_ok=True)
        (out / "runs/shortcnn-all" / name).write_text("train's")
    (out / "report").mkdir()
    for name in _REPORT_FILES:
        (out / "report" / name).write_text("report's")
    write_marker(out, "demo")
    if where == "report":  # a user's file where the demo's report folder was
        for name in _REPORT_FILES:
            (out / "report" / name).unlink()
        (out / "report").rmdir()
    if where.endswith("/"):
        (out / where).mkdir()
    else:
        (out / where).parent.mkdir(parents=True, exist_ok=True)
        (out / where).write_text("mine")
    before = {p.relative_to(out).as_posix() for p in out.rglob("*")}
    with pytest.raises(UnsafeOverwriteError, match=rf"holds files that benzarr did not write \({where}\); "):
        remove_demo_entries(out)
    assert {p.relative_to(out).as_posix() for p in out.rglob("*")} == before


def test_demo_overwrite_replaces_what_it_wrote_and_refuses_a_users_file_in_it(tmp_path: Path) -> None:
    """The files a real demo writes pass the check of what it wrote; a user's notes in its
    report and run folders stop `--overwrite` before anything is deleted."""
    from benzarr_cli.main import app

    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--patches", "40", "--epochs", "1", "--max-steps", "2", "--workers", "1",
            "--batch-size", "8", "-q"]
    assert CliRunner().invoke(app, args).exit_code == 0
    (out / "report/my_notes.md").write_text("mine")
    (out / "runs/shortcnn-all/my_notes.txt").write_text("mine")
    before = {p.relative_to(out).as_posix() for p in out.rglob("*")}
    result = CliRunner().invoke(app, [*args, "--overwrite"])
    assert result.exit_code == 1 and isinstance(result.exception, UnsafeOverwriteError)
    assert "(runs/shortcnn-all/my_notes.txt, report/my_notes.md)" in str(result.exception)
    assert {p.relative_to(out).as_posix() for p in out.rglob("*")} == before
    (out / "report/my_notes.md").unlink()
    (out / "runs/shortcnn-all/my_notes.txt").unlink()
    result = CliRunner().invoke(app, [*args, "--overwrite"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "report").iterdir()) == sorted(_REPORT_FILES)


def test_the_readmes_python_example_runs(tmp_path: Path) -> None:
    """README "Python: the Dataset and the loader": its code block, run as written on a
    96-patch store (named as in the README, with the split it names), on the CPU."""
    import re

    from benzarr.ingest import ingest
    from benzarr.split import make_split
    from benzarr.store import open_store
    from benzarr.synth import synth_archive

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("### Python: the Dataset and the loader", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert 'BigEarthNetDataset("bigearthnet.zarr", split="stratified"' in code
    synth_archive(tmp_path / "archive", 96, seed=2, workers=1)
    ingest(tmp_path / "archive", tmp_path / "bigearthnet.zarr", workers=1, shard_size=32)
    make_split(open_store(tmp_path / "bigearthnet.zarr", mode="r+"), "stratified", "iterative",
               fractions=(0.6, 0.2, 0.2), seed=0)
    code = code.replace('"bigearthnet.zarr"', repr(str(tmp_path / "bigearthnet.zarr")))
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the README's own example
    assert scope["sample"]["image"].shape == (12, 120, 120) and scope["batch"]["image"].shape[1:] == (12, 120, 120)
    assert scope["loader"].epoch == 9


@pytest.mark.parametrize("change, message", [({"epochs": 0}, "--epochs must be at least 1"),
                                             ({"lr": -1.0}, "--lr must be a positive, finite number"),
                                             ({"workers": 0}, "--workers must be at least 1"),
                                             ({"seed": -1}, "--seed must be between 0 and 4294967295"),
                                             # failed at step 1, after the demo folder was marked
                                             ({"n_patches": 10**20}, "at most 2,920,000 patches")])
def test_demo_checks_its_settings_before_writing_anything(tmp_path: Path, change: dict, message: str) -> None:
    """A bad --epochs failed at step 4, after synth, ingest and split, and left a demo folder
    that the corrected command refused without --overwrite."""
    out = tmp_path / "demo"
    with pytest.raises(InvalidArgumentError, match=message):
        run_demo(DemoConfig(out=str(out), **({"n_patches": 40} | change)))
    assert not out.exists()
