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
