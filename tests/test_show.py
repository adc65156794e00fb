"""``benzarr show``: patch grids (panels per store content, predictions) and split maps are written
with the expected panels and pixel size."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from benzarr.errors import InvalidArgumentError
from benzarr.show import pick_rows, plot_patches, plot_split_map, utm_to_lonlat
from benzarr.split import make_split
from benzarr.store import open_store
from tests.conftest import copy_tree


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def test_v1_grid_has_true_and_false_colour_per_patch(synth_store_64: Path, tmp_path: Path) -> None:
    store = open_store(synth_store_64)
    shown = plot_patches(store, [0, 5, 9], tmp_path / "g.png")
    assert shown.panels == ["true colour", "false colour"]
    assert shown.n_axes == 6
    assert png_size(shown.path) == shown.size == (480, 930)


def test_v2_grid_adds_s1_and_the_reference_map(synth_v2_store: Path, tmp_path: Path) -> None:
    store = open_store(synth_v2_store)
    shown = plot_patches(store, [1, 2], tmp_path / "g.png")
    assert shown.panels == ["true colour", "false colour", "S1 VV/VH", "reference map"]
    assert shown.n_axes == 8
    assert png_size(shown.path) == shown.size


@pytest.mark.parametrize("bands, panel", [("rgb", "true colour"), ("swir", "SWIR"), ("false-color", "false colour")])
def test_bands_choose_one_image_panel(synth_store_64: Path, tmp_path: Path, bands: str, panel: str) -> None:
    shown = plot_patches(open_store(synth_store_64), [3], tmp_path / "g.png", composites=[bands])
    assert shown.panels == [panel] and shown.n_axes == 1


def test_s1_panel_needs_s1(synth_store_64: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="no Sentinel-1"):
        plot_patches(open_store(synth_store_64), [3], tmp_path / "g.png", composites=["VV,VH"])


def test_pick_rows_by_name_index_and_random_subset(synth_store_64: Path, tmp_path: Path) -> None:
    path = copy_tree(synth_store_64, tmp_path / "s.zarr")
    store = open_store(path, mode="r+")
    names = store.patch_names()
    assert pick_rows(store, patches=[names[7], names[2]]) == [7, 2]
    assert pick_rows(store, indices=[4]) == [4]
    make_split(store, "r", "random")
    test_rows = set(store.subset_rows("r", "test").tolist())
    drawn = pick_rows(store, random=5, split="r", subset="test", seed=3)
    assert len(drawn) == 5 and set(drawn) <= test_rows
    assert drawn == pick_rows(store, random=5, split="r", subset="test", seed=3)
    with pytest.raises(InvalidArgumentError, match="no patch"):
        pick_rows(store, patches=["S2A_MSIL2A_20170613T101031_0_0"])
    with pytest.raises(InvalidArgumentError, match="one way"):
        pick_rows(store, indices=[1], random=2)
    make_split(store, "t", "random", fractions=(1.0, 0.0, 0.0))
    with pytest.raises(InvalidArgumentError, match="--random: test of split t is empty: no patch to draw"):
        pick_rows(store, random=2, split="t", subset="test")  # was "needs 1 to 0 patches"


def test_a_labels_only_store_has_no_image_bands_to_show(tmp_path: Path) -> None:
    """It said "the store has no those bands"."""
    from tests.test_split import make_labels_store

    names = [f"S2A_MSIL2A_20170613T101031_{i}_0" for i in range(4)]
    store = make_labels_store(tmp_path / "l.zarr", names, np.zeros((4, 43), np.uint8))
    with pytest.raises(InvalidArgumentError, match="the store has no image bands \\(labels only\\)"):
        plot_patches(store, [0], tmp_path / "g.png")


def test_split_map_is_written(synth_store_64: Path, tmp_path: Path) -> None:
    path = copy_tree(synth_store_64, tmp_path / "s.zarr")
    store = open_store(path, mode="r+")
    make_split(store, "g", "iterative", group_by="block:10")
    shown = plot_split_map(store, "g", tmp_path / "map.png", leakage_km=1.2)
    assert png_size(shown.path) == shown.size == (800, 700)


def test_drawing_leaves_the_users_matplotlib_backend_and_figures_alone(synth_store_64: Path, tmp_path: Path) -> None:
    """The PNGs of show, the split map and the split plot are drawn outside pyplot; ds.plot's
    figure is the user's, on the user's backend. Each switched the process to Agg, and in a
    notebook the user's later pyplot figures no longer showed inline."""
    import matplotlib
    import matplotlib.pyplot as plt

    from benzarr.split import plot_quality, store_split_quality

    path = copy_tree(synth_store_64, tmp_path / "s.zarr")
    store = open_store(path, mode="r+")
    make_split(store, "g", "iterative", group_by="block:10")
    backend, figures = matplotlib.get_backend(), plt.get_fignums()
    matplotlib.use("svg")  # a backend of the user's choosing (not Agg, which pytest's machine has)
    try:
        plot_patches(store, [0, 1], tmp_path / "grid.png")
        plot_split_map(store, "g", tmp_path / "map.png")
        plot_quality(store_split_quality(store, "g"), tmp_path / "quality.png")
        assert matplotlib.get_backend() == "svg" and plt.get_fignums() == figures  # nothing left open
    finally:
        matplotlib.use(backend)
    assert all((tmp_path / name).stat().st_size > 0 for name in ("grid.png", "map.png", "quality.png"))


def test_utm_to_lonlat_on_the_central_meridian_and_equator() -> None:
    lon, lat = utm_to_lonlat(np.array([500_000.0, 500_000.0]), np.array([0.0, 10_000_000.0]), np.array([32633, 32733]))
    np.testing.assert_allclose(lon, [15.0, 15.0], atol=1e-9)
    np.testing.assert_allclose(lat, [0.0, 0.0], atol=1e-9)
    # 33UUP's upper-left corner lies near 13.63 E, 48.75 N
    lon, lat = utm_to_lonlat(np.array([399_960.0]), np.array([5_400_000.0]), np.array([32633]))
    assert 13.6 < lon[0] < 13.66 and 48.7 < lat[0] < 48.8


def test_run_predictions_panel(synth_store_64: Path, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from benzarr.models import create_model

    store = open_store(synth_store_64)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    bands = ["B04", "B03", "B02"]
    model = create_model("shortcnn-rgb", in_channels=3, num_classes=43)
    torch.save(model.state_dict(), run / "checkpoints" / "best.pt")
    from benzarr.data import BigEarthNetDataset

    stats = BigEarthNetDataset(synth_store_64, bands=bands, normalize=True)
    (run / "config.json").write_text(json.dumps({
        "settings": {"model": "shortcnn-rgb", "bands": bands, "labels": "clc43", "modalities": "s2"},
        "labels": "clc43", "classes": store.class_names("clc43"),
        "normalization": {"mean": stats.mean, "std": stats.std, "source": "store"}}))
    shown = plot_patches(store, [0, 1], tmp_path / "p.png", run=run)
    assert shown.panels[-1] == "predictions" and shown.n_axes == 6
    assert png_size(shown.path) == shown.size


def test_cli_show_writes_grid_and_map(synth_store_64: Path, tmp_path: Path) -> None:
    from benzarr_cli.main import app

    path = copy_tree(synth_store_64, tmp_path / "s.zarr")
    make_split(open_store(path, mode="r+"), "r", "random")
    result = CliRunner().invoke(app, ["show", str(path), "--random", "3", "--split", "r", "--subset", "train",
                                      "--out", str(tmp_path / "g.png"), "--map", str(tmp_path / "m.png")])
    assert result.exit_code == 0, result.output
    assert "3 patch(es) x 2 panels (true colour, false colour)" in result.output
    assert (tmp_path / "g.png").stat().st_size > 10_000 and (tmp_path / "m.png").stat().st_size > 10_000
    refused = CliRunner().invoke(app, ["show", str(path), "--index", "1"])
    assert refused.exit_code != 0 and "--out" in str(refused.exception)
    one = CliRunner().invoke(app, ["show", str(path), "--index", "1", "--bands", "swir", "--out", str(tmp_path / "s.png")])
    assert "1 patch(es) x 1 panel (SWIR)" in one.output, one.output  # was "1 panels"


def test_show_draws_each_row_through_the_dataset_plot(synth_v2_store: Path, tmp_path: Path, monkeypatch) -> None:
    # ``BigEarthNetDataset.plot`` is the library function behind ``benzarr show`` (as in
    # TorchGeo): a spy that still runs the real method sees one call per patch row.
    from benzarr.data import BigEarthNetDataset

    calls = []
    real = BigEarthNetDataset.plot

    def spy(self, sample, *args, **kwargs):
        calls.append((self.bands, sorted(sample), list(kwargs["panels"])))
        return real(self, sample, *args, **kwargs)

    monkeypatch.setattr(BigEarthNetDataset, "plot", spy)
    plot_patches(open_store(synth_v2_store), [0, 3], tmp_path / "g.png")
    assert len(calls) == 2
    bands, keys, panels = calls[0]
    assert bands == ("B04", "B03", "B02", "B08", "VV", "VH")
    assert "mask" in keys and panels == ["rgb", "false-color", "VV,VH", "reference map"]


def test_dataset_plot_draws_every_panel_of_a_sample(synth_v2_store: Path) -> None:
    torch = pytest.importorskip("torch")
    import matplotlib.pyplot as plt

    from benzarr.data import BigEarthNetDataset

    ds = BigEarthNetDataset(synth_v2_store, bands="all", modalities=["s2", "s1", "reference-map"], normalize=True)
    sample = ds[2]
    sample["prediction"] = torch.linspace(0, 1, len(ds.classes))
    figure = ds.plot(sample, suptitle="x")
    headings = [axis.get_xlabel() for axis in figure.axes]
    assert headings == ["true colour", "false colour", "S1 VV/VH", "", "reference map"]
    listed = [text.get_text() for text in figure.axes[3].texts]
    assert listed[0] == "top predictions" and listed[1].startswith("1.00 ")  # the highest score first
    assert all(ds.classes[i] in figure.axes[0].get_title().replace("\n", " ")
               for i in np.flatnonzero(sample["label"].numpy()))
    plt.close(figure)
    one_band = BigEarthNetDataset(synth_v2_store, bands=["B05"])
    figure = one_band.plot(one_band[0], show_titles=False)
    assert [axis.get_xlabel() for axis in figure.axes] == ["B05"]
    plt.close(figure)
    with pytest.raises(InvalidArgumentError, match="needs B08"):
        one_band.plot(one_band[0], panels=["false-color"])
    # a batch was an IndexError; a clc19 sample under clc43 names drew the wrong label names
    batch = {key: torch.stack([ds[0][key], ds[1][key]]) for key in ("image", "label")}
    with pytest.raises(InvalidArgumentError, match=r"^plot draws one sample of this dataset: image \(14, 120, 120\) "
                                                   r"and label \(43,\), got \(2, 14, 120, 120\) and \(2, 43\)"):
        ds.plot(batch)
    with pytest.raises(InvalidArgumentError, match=r"and label \(43,\), got \(1, 120, 120\) and \(19,\)"):
        BigEarthNetDataset(synth_v2_store, bands=["B05"], labels="clc43").plot(
            BigEarthNetDataset(synth_v2_store, bands=["B05"], labels="clc19")[0])
    with pytest.raises(InvalidArgumentError, match=r"^plot draws one sample, a dict with 'image' and 'label'"):
        one_band.plot(one_band[0]["image"])


def test_show_without_torch_names_the_extra(synth_store_64: Path, tmp_path: Path, monkeypatch) -> None:
    import sys

    from benzarr.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "benzarr.data", None)  # import benzarr.data now fails
    with pytest.raises(MissingDependencyError, match=r"benzarr\[train\]"):
        plot_patches(open_store(synth_store_64), [0], tmp_path / "g.png")


def test_run_predictions_use_the_runs_label_set(synth_v2_store: Path, tmp_path: Path) -> None:
    """A clc19 run on a store whose own default is clc43: titles and truth follow the run."""
    pytest.importorskip("torch")
    from benzarr.train import TrainConfig, train

    store_path = copy_tree(synth_v2_store, tmp_path / "s.zarr")
    store = open_store(store_path, mode="r+")
    make_split(store, "r", "random")
    train(TrainConfig(store=str(store_path), split="r", model="shortcnn-rgb", labels="clc19", epochs=1, batch_size=8,
                      max_steps=1, device="cpu", out=str(tmp_path / "run")))
    shown = plot_patches(store, [0, 1], tmp_path / "p.png", run=tmp_path / "run")
    assert "predictions" in [kind.lower() for kind in shown.panels]
    with pytest.raises(InvalidArgumentError, match="predicts clc19 classes"):
        plot_patches(store, [0], tmp_path / "q.png", run=tmp_path / "run", labels="clc43")


def test_an_out_file_of_no_image_format_is_refused_before_drawing(synth_store_64: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match=r"z\.txt: cannot draw into a \.txt file; name a \.png"):
        plot_patches(open_store(synth_store_64), [0], tmp_path / "z.txt")
    assert not (tmp_path / "z.txt").exists()


def test_an_out_path_under_a_file_is_named(synth_store_64: Path, tmp_path: Path) -> None:
    """It read "afile: File exists (while running)"."""
    (tmp_path / "afile").write_text("x")
    with pytest.raises(InvalidArgumentError, match=r"afile is a file, not a folder"):
        plot_patches(open_store(synth_store_64), [0], tmp_path / "afile" / "x.png")


@pytest.mark.parametrize("read_only", [False, True], ids=["no-permission", "read-only-mount"])
def test_an_out_folder_that_cannot_be_written_says_why(synth_store_64: Path, tmp_path: Path, read_only: bool,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only mount was reported as "no permission" (the fix is another folder, not chmod)."""
    import os
    import types

    real_access, real_statvfs = os.access, os.statvfs
    monkeypatch.setattr(os, "access", lambda path, mode: False if Path(path) == tmp_path else real_access(path, mode))
    monkeypatch.setattr(os, "statvfs", lambda path: types.SimpleNamespace(f_flag=os.ST_RDONLY if read_only else 0)
                        if Path(path) == tmp_path else real_statvfs(path))
    why = "a read-only file system" if read_only else "no permission"
    with pytest.raises(InvalidArgumentError, match=rf"x\.png: cannot write into {tmp_path} \({why}\); choose a writable"):
        plot_patches(open_store(synth_store_64), [0], tmp_path / "x.png")


def test_an_image_is_never_written_into_a_store_or_an_archive(synth_store_64: Path, synth_archive_64: Path,
                                                              tmp_path: Path) -> None:
    """`show --out s.zarr/x.png` wrote into the store (train, evaluate and report refuse an --out
    there), and ingest --overwrite then refused the store for the file it did not write."""
    from benzarr.errors import PathConflictError
    from benzarr.store import open_store
    from tests.conftest import copy_tree

    store = copy_tree(synth_store_64, tmp_path / "s.zarr")
    for out, where in ((store / "x.png", f"is the benzarr store {store}"),
                       (store / "s2" / "x.png", f"lies inside the benzarr store {store}"),
                       (synth_archive_64 / "x.png", "is the synthetic archive")):
        with pytest.raises(PathConflictError, match=f"--out {where}"):
            plot_patches(open_store(store), [0], out)
        assert not out.exists()


def test_an_image_benzarr_did_not_write_is_never_replaced(synth_store_64: Path, tmp_path: Path) -> None:
    """`show --out mine.png` (and `--map`, `split --plot`) replaced the user's file (rc 0). An image
    benzarr wrote (its PNG `Software`, PDF/SVG/EPS `Creator` or JPEG comment says so) is replaced."""
    from benzarr.errors import UnsafeOverwriteError
    from benzarr.split import plot_quality, store_split_quality
    from benzarr_cli.main import app

    path = copy_tree(synth_store_64, tmp_path / "s.zarr")
    make_split(open_store(path, mode="r+"), "r", "random")
    mine = tmp_path / "mine.png"
    mine.write_text("x\n")
    for args in (["show", str(path), "--index", "0", "--out", str(mine)],
                 ["show", str(path), "--split", "r", "--map", str(mine)],
                 ["split", str(path), "--name", "r2", "--method", "random", "--plot", str(mine)],
                 ["split", str(path), "--name", "r", "--quality", "--plot", str(mine)]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 1 and isinstance(result.exception, UnsafeOverwriteError), (args, result.output)
        assert "mine.png: exists and is not an image that benzarr wrote" in str(result.exception)
        assert mine.read_text() == "x\n"
    assert "r2" not in open_store(path).split_names()  # refused before the split was written
    with pytest.raises(UnsafeOverwriteError):
        plot_quality(store_split_quality(open_store(path), "r"), mine)
    from benzarr.show import is_benzarr_image

    for name in ("g.png", "g.pdf", "g.svg", "g.jpg", "g.eps"):  # written, recognised, replaced
        for _ in range(2):
            plot_patches(open_store(path), [0], tmp_path / name)
        assert is_benzarr_image(tmp_path / name), name
    assert not is_benzarr_image(mine)


def test_a_patch_given_as_its_folder_or_in_lower_case_names_the_patch_meant(synth_store_64: Path,
                                                                             tmp_path: Path) -> None:
    """`show --patch arch/NAME/` (a tab-completed patch folder) said only "no patch arch/NAME/"."""
    from benzarr.store import open_store
    from tests.conftest import run_cli

    name = str(open_store(synth_store_64).patch_names()[0])
    for given in (f"arch/{name}/", f"{name}/{name}_B02.tif", name.lower()):
        done = run_cli("show", synth_store_64, "--patch", given, "--out", tmp_path / "a.png")
        assert done.returncode == 1 and done.stderr == (f"error: {synth_store_64}: no patch {given}; --patch takes a "
                                                        f"patch name as the store has it: {name}\n")
    done = run_cli("show", synth_store_64, "--patch", "S2A_MSIL2A_20990101T000000_0_0", "--out", tmp_path / "a.png")
    assert done.stderr == f"error: {synth_store_64}: no patch S2A_MSIL2A_20990101T000000_0_0\n"
    assert not (tmp_path / "a.png").exists()


def test_a_bad_map_is_refused_before_the_grid_is_written(synth_store_64: Path, tmp_path: Path) -> None:
    """The grid was drawn first and --map checked after: exit 1 and `nothing was written` beside
    the grid just written."""
    from tests.conftest import run_cli

    path = copy_tree(synth_store_64, tmp_path / "s.zarr")
    make_split(open_store(path, mode="r+"), "r", "random")
    grid, mine = tmp_path / "g.png", tmp_path / "mine.png"
    mine.write_bytes(b"my own picture")
    for args, message in ((["--index", "0", "--map", tmp_path / "m.png"], "--map needs --split NAME"),
                          (["--random", "2", "--split", "r", "--map", tmp_path / "m.txt"], "cannot draw into a .txt"),
                          (["--random", "2", "--split", "r", "--map", mine], "is not an image that benzarr wrote"),
                          (["--random", "2", "--split", "r", "--map", grid], "given as both --out and --map")):
        done = run_cli("show", path, *args, "--out", grid)
        assert done.returncode == 1 and message in done.stderr, done.stderr
        assert not grid.exists(), args
    assert mine.read_bytes() == b"my own picture"


def test_map_alone_refuses_the_grids_options_and_serves_index_with_a_split(synth_store_64: Path,
                                                                            tmp_path: Path) -> None:
    """`--split r --map m.png --out g.png` wrote the map alone, exit 0, and --out, --bands,
    --subset and the like went unread; `--index 1 --split r --map m.png` was refused as though
    --split were for --random."""
    from tests.conftest import run_cli

    path = copy_tree(synth_store_64, tmp_path / "s.zarr")
    make_split(open_store(path, mode="r+"), "r", "random")
    grid, mapped = tmp_path / "g.png", tmp_path / "m.png"
    done = run_cli("show", path, "--split", "r", "--map", mapped, "--out", grid, "--subset", "val")
    assert done.returncode == 1 and "error: --out, --subset are for the patch grid" in done.stderr, done.stderr
    assert not mapped.exists() and not grid.exists()
    done = run_cli("show", path, "--index", "1", "--bands", "rgb", "--out", grid, "--split", "r", "--map", mapped)
    assert done.returncode == 0, done.stderr
    assert grid.exists() and mapped.exists()
    done = run_cli("show", path, "--index", "1", "--out", grid, "--split", "r", "--subset", "val", "--map", mapped)
    assert done.returncode == 1 and "--split/--subset choose among the patches for --random N" in done.stderr


def test_seed_without_random_is_refused_by_name(synth_store_64: Path, tmp_path: Path) -> None:
    """`show --index 1 --seed 5` drew row 1 and dropped the seed without a word (it picks --random
    patches alone); a seed out of range with --random stopped in NumPy's bare ValueError."""
    from tests.conftest import run_cli

    for args in (["--index", "1"], ["--patch", str(open_store(synth_store_64).patch_names()[0])]):
        done = run_cli("show", synth_store_64, *args, "--seed", "5", "--out", tmp_path / "a.png")
        assert done.returncode == 1 and done.stderr == ("error: --seed seeds the draw of --random N; --patch and "
                                                        "--index take no --seed\n"), done.stderr
    done = run_cli("show", synth_store_64, "--split", "r", "--map", tmp_path / "m.png", "--seed", "5")
    assert done.returncode == 1 and done.stderr.startswith("error: --seed is for the patch grid"), done.stderr
    done = run_cli("show", synth_store_64, "--random", "2", "--seed", "-1", "--out", tmp_path / "a.png")
    assert done.returncode == 1 and done.stderr == "error: --seed must be between 0 and 4294967295, got -1\n"
    assert not (tmp_path / "a.png").exists()
