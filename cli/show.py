"""``benzarr show``: draw patches (composites, reference maps, labels, predictions) and split maps."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from benzarr.errors import InvalidArgumentError
from benzarr.leakage import DEFAULT_KM
from benzarr.show import pick_rows, plot_patches, plot_split_map
from benzarr.store import open_store
from benzarr_cli._common import console, count


def command(
    store: str = typer.Argument(..., help="Path of a benzarr store."),
    patch: Optional[list[str]] = typer.Option(None, "--patch", help="Patch name to draw (repeat for more)."),
    index: Optional[list[int]] = typer.Option(None, "--index", help="Store row to draw (repeat for more)."),
    random: Optional[int] = typer.Option(None, "--random", help="Draw N random patches (of --split/--subset)."),
    split: Optional[str] = typer.Option(None, "--split", help="--random: choose among this split's patches; --map: "
                                        "the split to map."),
    subset: Optional[str] = typer.Option(None, "--subset", help="--random: train | val | test of --split."),
    seed: Optional[int] = typer.Option(None, "--seed", help="--random: seed of the draw (default 0)."),
    out: Optional[Path] = typer.Option(None, "--out", help="PNG to write the patch grid to."),
    bands: Optional[str] = typer.Option(None, "--bands", help="One image panel: rgb | false-color | swir | VV,VH "
                                        "(default: true and false colour, and S1 when the store has it)."),
    labels: Optional[str] = typer.Option(None, "--labels", help="Label set of the titles (default: the store's own)."),
    run: Optional[Path] = typer.Option(None, "--run", help="A `benzarr train` run folder: add its model's top "
                                       "predictions, true positives green, false positives red."),
    map_: Optional[Path] = typer.Option(None, "--map", help="Also write a lon/lat map of --split's patches coloured "
                                        "by subset to this PNG."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors and warnings."),
) -> None:
    """Draw patches as a PNG grid: true and false colour, S1, reference map, labels (and a run's
    predictions); with --map, a map of a split's patches coloured by subset."""
    selected = bool(patch) or bool(index) or random is not None
    if not selected and map_ is None:
        raise InvalidArgumentError("choose patches (--patch NAME, --index I or --random N) with --out FILE.png, "
                                   "or --split NAME --map FILE.png")
    if not selected:  # --map alone: these drew nothing, and the command said nothing of them
        unused = [flag for flag, value in (("--out", out), ("--bands", bands), ("--labels", labels), ("--run", run),
                                           ("--subset", subset), ("--seed", seed)) if value is not None]
        if unused:
            raise InvalidArgumentError(f"{', '.join(unused)} {'is' if len(unused) == 1 else 'are'} for the patch grid: "
                                       "choose patches with --patch NAME, --index I or --random N (--map draws every "
                                       "patch of --split)")
    if map_ is not None:  # before the grid is drawn: a bad --map once failed after the grid was written
        from benzarr.show import check_image_path

        if split is None:
            raise InvalidArgumentError("--map needs --split NAME")
        check_image_path(map_, "--map")
        if out is not None and Path(out).resolve() == Path(map_).resolve():
            raise InvalidArgumentError(f"{out}: given as both --out and --map; the map would replace the patch grid: "
                                       "give each its own file")
    opened = open_store(store)
    if map_ is not None and selected:
        opened.read_split(split)  # an unknown split: one error before the grid is written, not after
    if selected:
        if out is None:
            raise InvalidArgumentError("pass --out FILE.png for the patch grid")
        # with --map and without --random, --split names the split to map, not a pool to draw from
        rows = pick_rows(opened, patches=patch or (), indices=index or (), random=random,
                         split=split if random is not None or map_ is None else None, subset=subset, seed=seed)
        shown = plot_patches(opened, rows, out, composites=[bands] if bands else None, labels=labels, run=run)
        if not quiet:
            console.print(f"wrote {shown.path}: {len(shown.rows)} patch(es) x {count(len(shown.panels), 'panel')} "
                          f"({', '.join(shown.panels)}), {shown.size[0]} x {shown.size[1]} px", markup=False)
    if map_ is not None:
        mapped = plot_split_map(opened, split, map_, leakage_km=DEFAULT_KM)
        if not quiet:
            console.print(f"wrote {mapped.path}: split {split} on a lon/lat map, {mapped.size[0]} x {mapped.size[1]} px",
                          markup=False)
