"""The synthetic archive: real v1.0 layout, determinism, label skew, a learnable signal."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from typer.testing import CliRunner

from benzarr.bigearthnet import BAND_GROUPS, BANDS, CLC43, CLC43_FREQUENCY, band_side, parse_patch_name
from benzarr.errors import InvalidArgumentError
from benzarr.synth import (
    MAX_LABELS,
    class_signatures,
    synth_archive,
    synth_labels,
    synth_patch_bands,
    synth_patch_names,
)

N_LAYOUT = 10


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    out = tmp_path_factory.mktemp("synth") / "archive"
    names = synth_archive(out, N_LAYOUT, seed=5, workers=1)
    return out, names


def _read_tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- layout -------------------------------------------------------------------------------------


def test_archive_has_one_folder_per_patch_with_12_bands_and_a_json(archive: tuple[Path, list[str]]) -> None:
    out, names = archive
    assert names == sorted(names) == synth_patch_names(N_LAYOUT, 5)
    assert sorted(p.name for p in out.iterdir()) == [".benzarr", *names]  # .benzarr: synth's marker
    for name in names:
        expected = {f"{name}_{band}.tif" for band in BANDS} | {f"{name}_labels_metadata.json"}
        assert {p.name for p in (out / name).iterdir()} == expected


def test_bands_are_uint16_geotiffs_covering_the_json_square(archive: tuple[Path, list[str]]) -> None:
    out, names = archive
    for name in names:
        meta = json.loads((out / name / f"{name}_labels_metadata.json").read_text())
        box = meta["coordinates"]
        assert all(isinstance(box[k], int) for k in ("ulx", "uly", "lrx", "lry"))
        assert box["lrx"] - box["ulx"] == 1200 and box["uly"] - box["lry"] == 1200
        json_epsg = rasterio.crs.CRS.from_wkt(meta["projection"]).to_epsg()
        assert 32601 <= json_epsg <= 32660
        for band in BANDS:
            with rasterio.open(out / name / f"{name}_{band}.tif") as ds:
                side = band_side(band)
                pixel = 1200 // side
                assert ds.count == 1 and ds.dtypes == ("uint16",)
                assert ds.shape == (side, side)
                assert ds.crs.to_epsg() == json_epsg
                assert ds.transform == Affine(pixel, 0, box["ulx"], 0, -pixel, box["uly"])
                assert ds.nodata is None and ds.compression is None
                pixels = ds.read(1)
                assert 0 < pixels.min() and pixels.max() < 20000


def test_json_has_the_real_keys_and_valid_labels(archive: tuple[Path, list[str]]) -> None:
    out, names = archive
    labels = synth_labels(N_LAYOUT, 5)
    for i, name in enumerate(names):
        meta = json.loads((out / name / f"{name}_labels_metadata.json").read_text())
        assert list(meta) == ["labels", "coordinates", "projection", "tile_source", "acquisition_date"]
        assert 1 <= len(meta["labels"]) <= MAX_LABELS
        assert meta["labels"] == [CLC43[c] for c in np.flatnonzero(labels[i])]  # official order
        parts = parse_patch_name(name)
        assert re.fullmatch(r"S2[AB]_MSIL1C_\d{8}T\d{5,6}_N020[56]_R\d{3}_T\d\d[A-Z]{3}_\d{8}T\d{6}\.SAFE", meta["tile_source"])
        assert meta["tile_source"].startswith(f"{parts.satellite}_MSIL1C_{parts.date}T{parts.time}_")
        date = f"{parts.date[:4]}-{parts.date[4:6]}-{parts.date[6:]}"
        assert re.fullmatch(rf"{date} \d\d:\d\d:\d\d", meta["acquisition_date"])
        assert meta["acquisition_date"][11:].replace(":", "").lstrip("0") == parts.time.lstrip("0")


def test_names_are_unique_real_style_with_a_few_acquisitions() -> None:
    names = synth_patch_names(3000, seed=1)
    assert len(set(names)) == 3000 and names == sorted(names)
    parsed = [parse_patch_name(n) for n in names]
    acquisitions = {(p.satellite, p.date, p.time) for p in parsed}
    assert 2 <= len(acquisitions) <= 5
    assert all(0 <= p.row < 91 and 0 <= p.col < 91 for p in parsed)
    assert synth_patch_names(3000, seed=2) != names


# --- determinism --------------------------------------------------------------------------------


def test_same_seed_gives_same_bytes_whatever_the_workers(tmp_path: Path) -> None:
    one = synth_archive(tmp_path / "one", 20, seed=7, workers=1)
    two = synth_archive(tmp_path / "two", 20, seed=7, workers=2)
    assert one == two
    assert _read_tree(tmp_path / "one") == _read_tree(tmp_path / "two")


def test_different_seeds_give_different_archives(tmp_path: Path) -> None:
    a = synth_archive(tmp_path / "a", 4, seed=1, workers=1)
    b = synth_archive(tmp_path / "b", 4, seed=2, workers=1)
    assert a != b
    band_a = (tmp_path / "a" / a[0] / f"{a[0]}_B02.tif").read_bytes()
    band_b = (tmp_path / "b" / b[0] / f"{b[0]}_B02.tif").read_bytes()
    assert band_a != band_b


def test_non_empty_output_needs_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "archive"
    synth_archive(out, 3, seed=0, workers=1)
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(InvalidArgumentError, match="a synthetic archive is already there; pass --overwrite"):
        synth_archive(out, 2, seed=1, workers=1)
    names = synth_archive(out, 2, seed=1, workers=1, overwrite=True)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == names
    assert (out / "notes.txt").read_text() == "keep me"


def test_progress_counts_every_patch(tmp_path: Path) -> None:
    seen: list[int] = []
    synth_archive(tmp_path / "a", 30, seed=0, workers=2, progress=seen.append)
    assert sum(seen) == 30


@pytest.mark.parametrize("bad", [dict(n_patches=-1), dict(seed=-3), dict(workers=0), dict(n_patches=10**14),
                                 dict(n_patches=0)])  # 0 made an empty folder, as the CLI's --patches 0 does not
@pytest.mark.parametrize("version", [1, 2])
def test_bad_arguments_are_refused_before_the_folder_is_made(tmp_path: Path, bad: dict, version: int) -> None:
    from benzarr.synth import synth_archive_v2

    args = dict(n_patches=2, seed=0, workers=1) | bad
    with pytest.raises(InvalidArgumentError):
        (synth_archive if version == 1 else synth_archive_v2)(tmp_path / "x", **args)
    assert not (tmp_path / "x").exists()


# --- labels -------------------------------------------------------------------------------------


def test_labels_follow_bigearthnets_skew() -> None:
    labels = synth_labels(2000, seed=0)
    assert labels.shape == (2000, 43) and labels.dtype == np.uint8
    per_patch = labels.sum(axis=1)
    assert per_patch.min() >= 1 and per_patch.max() <= MAX_LABELS
    share = labels.mean(axis=0)
    target = np.asarray(CLC43_FREQUENCY)
    frequent = target > 0.3
    assert frequent.sum() >= 3
    assert np.all((share[frequent] > 0.28) & (share[frequent] < 0.45))
    assert (share < 0.005).sum() >= 5
    assert np.abs(share - target).max() < 0.04


def test_labels_are_deterministic_and_extend_with_more_patches() -> None:
    assert np.array_equal(synth_labels(500, 3), synth_labels(1500, 3)[:500])
    assert not np.array_equal(synth_labels(500, 3), synth_labels(500, 4))


# --- signal -------------------------------------------------------------------------------------


def test_class_signatures_are_plausible_and_distinct() -> None:
    sig = class_signatures()
    assert sig.shape == (43, 12)
    assert sig.min() >= 100 and sig.max() <= 6000
    logs = np.log(sig)
    dist = np.sqrt(((logs[:, None] - logs[None]) ** 2).sum(-1))
    np.fill_diagonal(dist, np.inf)
    assert dist.min() > 0.5  # every pair differs by far more than the noise (a few %)


def test_band_means_predict_labels_far_above_the_prior() -> None:
    """A linear model on 12 per-band means beats the best constant prediction by a wide margin."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.multiclass import OneVsRestClassifier

    n, seed = 500, 11
    labels = synth_labels(n, seed)
    features = np.empty((n, len(BANDS)))
    for i in range(n):
        rng = np.random.default_rng(np.random.SeedSequence([seed, i]))  # as the archive does
        bands = synth_patch_bands(np.flatnonzero(labels[i]), rng)
        features[i] = [bands[b].mean() for b in BANDS]
    features = np.log(features)
    features = (features - features.mean(0)) / features.std(0)
    train, test = slice(0, 375), slice(375, n)
    seen = labels[train].sum(0) >= 2
    model = OneVsRestClassifier(LogisticRegression(C=10.0, max_iter=2000))
    model.fit(features[train], labels[train][:, seen])
    predicted = np.zeros_like(labels[test])
    predicted[:, seen] = model.predict(features[test])
    learned = f1_score(labels[test], predicted, average="micro")

    order = np.argsort(-labels[train].mean(0))
    prior = 0.0
    for m in range(1, 8):  # the best "always predict the m most frequent classes"
        constant = np.zeros_like(labels[test])
        constant[:, order[:m]] = 1
        prior = max(prior, f1_score(labels[test], constant, average="micro"))
    assert learned > prior + 0.2, (learned, prior)


def test_patch_bands_have_native_shapes() -> None:
    bands = synth_patch_bands([11, 23], np.random.default_rng(0))
    assert list(bands) == [b for names, _, _ in BAND_GROUPS.values() for b in names]
    for band, pixels in bands.items():
        assert pixels.dtype == np.uint16 and pixels.shape == (band_side(band),) * 2


# --- CLI ----------------------------------------------------------------------------------------


def test_cli_summary_of_one_patch_says_patch(tmp_path: Path) -> None:
    """`synth OUT --patches 1` said "wrote 1 patches"; so did `--labels-only`."""
    from tests.conftest import run_cli

    result = run_cli("synth", tmp_path / "one", "--patches", "1", "--workers", "1")
    assert result.returncode == 0 and result.stdout.startswith("wrote 1 patch (13 files"), result.stdout
    result = run_cli("synth", tmp_path / "one.zarr", "--labels-only", "--patches", "1")
    assert result.returncode == 0 and result.stdout.startswith("wrote a labels-only store of 1 patch to"), result.stdout


def test_cli_seed_outside_every_commands_range_is_refused_as_they_refuse_it(tmp_path: Path) -> None:
    """`synth --seed 4294967296` wrote an archive that split, train and demo could not reproduce
    with that seed (they refuse it); -1 was click's usage error rather than the other commands' line."""
    from tests.conftest import run_cli

    for seed in (2**32, -1):
        result = run_cli("synth", tmp_path / "a", "--patches", "1", "--seed", seed)
        assert result.returncode == 1 and result.stderr == f"error: --seed must be between 0 and 4294967295, got {seed}\n"
    assert not (tmp_path / "a").exists()


def test_cli_writes_the_archive_and_a_summary(tmp_path: Path) -> None:
    from benzarr_cli.main import app

    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["synth", str(out), "--patches", "3", "--seed", "2", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [".benzarr", *synth_patch_names(3, 2)]
    assert "3 patches (39 files" in result.output
    quiet = CliRunner().invoke(app, ["synth", str(tmp_path / "q"), "--patches", "2", "--workers", "1", "--quiet"])
    assert quiet.exit_code == 0 and quiet.output == ""  # --quiet: nothing but errors


def test_cli_help_is_paragraphs_of_sentences_and_synth_needs_a_patch(tmp_path: Path) -> None:
    """Typer kept the docstrings' source line breaks ("run the same" / "command again" on lines
    of their own once rich wrapped them again); --patches 0 wrote an archive ingest refuses."""
    from benzarr_cli.main import app

    for command in app.registered_commands:
        assert all("\n" not in paragraph for paragraph in command.help.split("\n\n")), command.name
    ingest = next(c for c in app.registered_commands if c.name == "ingest").help
    assert "run the same command again after an interruption" in ingest
    verify = next(c for c in app.registered_commands if c.name == "verify").help
    assert "1 when no store opens at STORE" in verify
    result = CliRunner().invoke(app, ["synth", str(tmp_path / "none"), "--patches", "0"])
    assert result.exit_code == 2 and not (tmp_path / "none").exists()


def test_help_shows_flags_without_a_value_and_arguments_in_capitals() -> None:
    """typer 0.29 labels a flag ``--quiet <bool>`` (as if it took a value) and writes arguments
    as ``{store}``, where the help texts say STORE: the CLI's help shows neither."""
    from benzarr_cli.main import COMMANDS, app

    for argv in (["--help"], *([name, "--help"] for name in COMMANDS)):
        result = CliRunner().invoke(app, argv, terminal_width=200)
        assert result.exit_code == 0, argv
        assert "<bool>" not in result.output, argv
        assert not any(f"{{{word}}}" in result.output for word in ("store", "archive", "run", "out")), argv
    ingest = CliRunner().invoke(app, ["ingest", "--help"], terminal_width=200).output
    usage = next(line for line in ingest.splitlines() if "Usage:" in line)
    assert "ARCHIVE" in usage and "STORE" in usage and "--overwrite " in ingest
    assert "<int>" in ingest  # a value's type is still shown


def test_version_names_benzarr_python_zarr_and_torch() -> None:
    """``benzarr --version``: one line for a bug report, read from package metadata."""
    import platform
    from importlib.metadata import version

    from benzarr import __version__
    from benzarr_cli.main import app

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output == (f"benzarr {__version__} (Python {platform.python_version()}, zarr {version('zarr')}, "
                             f"torch {version('torch')})\n")


def test_archive_files_follow_the_umask(tmp_path: Path) -> None:
    """The GeoTIFFs and JSON files were made 0644 whatever the umask: a lab's shared archive
    (umask 002) could not be fixed up or replaced by the group. The umask decides now."""
    import os

    previous = os.umask(0o002)
    try:
        synth_archive(tmp_path / "a", 1, seed=0, workers=1)
    finally:
        os.umask(previous)
    modes = {p.stat().st_mode & 0o777 for p in (tmp_path / "a").rglob("*") if p.is_file()}
    assert modes == {0o664}, modes
