"""Look at patches (``benzarr show``): a grid of composites, reference maps, labels and predictions,
and a map of a split's patches coloured by subset.

:func:`plot_patches` draws one row per patch. Panels, left to right:

* ``true colour``: B04, B03, B02; ``false colour``: B08, B04, B03 (vegetation red);
  ``swir``: B12, B8A, B04 (only with ``composites=("swir",)``); each channel stretched
  between its own 2nd and 98th percentiles, as :meth:`benzarr.data.BigEarthNetDataset.plot`
  does. 20 m and 60 m bands are repeated to the 10 m grid (nearest), which is what the
  pixels are.
* ``S1 VV/VH`` when the store holds Sentinel-1: red VV, green VH, blue VV - VH (dB), each
  stretched the same way.
* ``reference map`` when the store holds them: CLC2018 codes in the official CORINE colours
  (:data:`CLC_COLOURS`), with a legend of the classes present.
* ``predictions`` with a training run (``run``): the model's top scores, true positives in
  green, false positives in red, and the labels it missed.

The row's title lists the patch's labels. Each row is a sample of a
:class:`benzarr.data.BigEarthNetDataset` that serves just the panels' channels at native values
(coarse bands repeated to 10 m by nearest upsampling), drawn by its
:meth:`~benzarr.data.BigEarthNetDataset.plot`, which in turn draws with :func:`draw_sample`
here. So the CLI and the library draw the same figure, and ``benzarr show`` needs torch (the
``train`` extra). Predictions load the run's model and read the patch with the run's bands and
normalisation.

:func:`plot_split_map` plots every patch of a split at its centre in longitude and latitude
(from ``meta/bounds`` in its UTM zone, converted by :func:`utm_to_lonlat`), coloured by
subset: spatial leakage shows as colours mixed at small scale. Matplotlib only, no basemap.
"""

from __future__ import annotations

import os
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from benzarr.checks import check_seed
from benzarr.errors import InvalidArgumentError, MissingDependencyError, missing_extra
from benzarr.fsutil import check_outside_datasets, check_replaceable_file

if TYPE_CHECKING:
    from benzarr.store import Store

__all__ = ["CLC_COLOURS", "COMPOSITES", "ShowResult", "default_panels", "draw_sample", "panel_image", "pick_rows",
           "plot_patches", "plot_split_map", "stretch", "utm_to_lonlat"]

#: Composite -> the bands drawn as red, green, blue.
COMPOSITES: dict[str, tuple[str, str, str]] = {
    "rgb": ("B04", "B03", "B02"),
    "false-color": ("B08", "B04", "B03"),
    "swir": ("B12", "B8A", "B04"),
}
S1_COMPOSITE = "VV,VH"
_TITLES = {"rgb": "true colour", "false-color": "false colour", "swir": "SWIR", S1_COMPOSITE: "S1 VV/VH"}

#: The official CORINE Land Cover legend colours (RGB 0-255) of the CLC2018 level-3 codes.
CLC_COLOURS: dict[int, tuple[int, int, int]] = {
    111: (230, 0, 77), 112: (255, 0, 0), 121: (204, 77, 242), 122: (204, 0, 0), 123: (230, 204, 204),
    124: (230, 204, 230), 131: (166, 0, 204), 132: (166, 77, 0), 133: (255, 77, 255), 141: (255, 166, 255),
    142: (255, 230, 255), 211: (255, 255, 168), 212: (255, 255, 0), 213: (230, 230, 0), 221: (230, 128, 0),
    222: (242, 166, 77), 223: (230, 166, 0), 231: (230, 230, 77), 241: (255, 230, 166), 242: (255, 230, 77),
    243: (230, 204, 77), 244: (242, 204, 166), 311: (128, 255, 0), 312: (0, 166, 0), 313: (77, 255, 0),
    321: (204, 242, 77), 322: (166, 255, 128), 323: (166, 230, 77), 324: (166, 242, 0), 331: (230, 230, 230),
    332: (204, 204, 204), 333: (204, 255, 204), 334: (0, 0, 0), 335: (166, 230, 204), 411: (166, 166, 255),
    412: (77, 77, 255), 421: (204, 204, 255), 422: (230, 230, 255), 423: (166, 166, 230), 511: (0, 204, 242),
    512: (128, 242, 230), 521: (0, 255, 166), 522: (166, 255, 230), 523: (230, 242, 255),
}
_SUBSET_COLOURS = {"train": "#1f77b4", "val": "#ff7f0e", "test": "#2ca02c", "excluded": "#bbbbbb"}
_PANEL_INCHES = 2.4
#: Width of the reference map's legend column, as a share of a panel's.
_LEGEND_RATIO = 0.6
_DPI = 100


def _figure_width(panels: Sequence[str]) -> float:
    """Inches for a row of ``panels``: a square panel each, and room for the reference map's
    legend when there is one."""
    return _PANEL_INCHES * len(panels) + (1.6 if "reference map" in panels else 0)


@dataclass
class ShowResult:
    """What :func:`plot_patches` or :func:`plot_split_map` wrote.

    Attributes:
        path: the PNG.
        rows: store rows drawn (patches), in figure order.
        panels: panel kinds of each patch row (``true colour``, ...), or ``["map"]``.
        n_axes: image panels drawn (patches x panels).
        size: (width, height) of the PNG in pixels.
    """

    path: Path
    rows: list[int]
    panels: list[str]
    n_axes: int
    size: tuple[int, int]
    notes: list[str] = field(default_factory=list)


def _pyplot() -> Any:
    """pyplot, for a figure handed back to the caller (``ds.plot``): it shows inline in a
    notebook, as TorchGeo's ``plot`` figures do. The backend is left as the user has it:
    ``matplotlib.use("Agg")`` here switched it for the whole process, and a notebook's later
    figures no longer showed."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - matplotlib is a dependency
        raise MissingDependencyError("plotting needs matplotlib: pip install matplotlib") from exc
    return plt


def new_figure(**kwargs: Any) -> Any:
    """A ``matplotlib.figure.Figure`` for a file benzarr writes: outside pyplot, so it needs no
    backend, changes no process state and is freed with its last reference (no ``close``)."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - matplotlib is a dependency
        raise MissingDependencyError("plotting needs matplotlib: pip install matplotlib") from exc
    return Figure(**kwargs)


# --- which patches --------------------------------------------------------------------------------


def pick_rows(
    store: Store,
    *,
    patches: Sequence[str] = (),
    indices: Sequence[int] = (),
    random: int | None = None,
    split: str | None = None,
    subset: str | None = None,
    seed: int | None = None,
) -> list[int]:
    """Store rows from patch names, row indices, or ``random`` patches of a split's subset
    (drawn with ``seed``, 0 when None; a seed is refused without ``random``).

    Raises:
        InvalidArgumentError: none or several ways given, an unknown name, a row out of range,
            or more random patches than the selection holds.
    """
    ways = sum([bool(patches), bool(indices), random is not None])
    if ways != 1:
        raise InvalidArgumentError("choose the patches one way: --patch NAME ..., --index I ... or --random N")
    if (split is not None or subset is not None) and random is None:
        raise InvalidArgumentError("--split/--subset choose among the patches for --random N")
    if seed is not None and random is None:  # it was ignored without a word
        raise InvalidArgumentError("--seed seeds the draw of --random N; --patch and --index take no --seed")
    n = store.n_patches
    if patches:
        names = store.patch_names()
        found = np.searchsorted(names, np.asarray(list(patches), dtype=str))
        rows = []
        for name, pos in zip(patches, found.tolist()):
            if pos >= n or names[pos] != name:
                raise InvalidArgumentError(f"{store.path}: no patch {name}{_patch_hint(names, name)}")
            rows.append(int(pos))
        return rows
    if indices:
        bad = [i for i in indices if not 0 <= int(i) < n]
        if bad:
            raise InvalidArgumentError(f"--index {bad[0]} is outside the store's rows 0..{n - 1}")
        return [int(i) for i in indices]
    pool = store.subset_rows(split, subset)
    where = f"{subset or 'all'} of split {split}" if split else "the valid patches"
    if pool.size == 0:  # "needs 1 to 0 patches" said it backwards
        raise InvalidArgumentError(f"--random: {where} is empty: no patch to draw")
    if random is None or random < 1 or random > pool.size:
        raise InvalidArgumentError(f"--random needs 1 to {pool.size:,} patches ({where}), got {random}")
    seed = 0 if seed is None else check_seed(seed, "--seed")  # -1 stopped in NumPy's bare ValueError
    return sorted(np.random.default_rng(seed).choice(pool, size=random, replace=False).tolist())


def _patch_hint(names: np.ndarray, given: str) -> str:
    """``; --patch takes ... NAME`` when ``given`` names a patch of ``names`` in another way: a
    patch folder's path as tab completion writes it (``arch/NAME/``), a band file in it, or the
    name in lower case; else "". The line said only "no patch arch/NAME/" of a patch that is there."""
    parts = [part for part in str(given).replace("\\", "/").split("/") if part]
    for part in reversed(parts):
        for candidate in (part, part.upper()):
            pos = int(np.searchsorted(names, candidate))
            if pos < len(names) and names[pos] == candidate:
                return f"; --patch takes a patch name as the store has it: {candidate}"
    return ""


# --- pixels ---------------------------------------------------------------------------------------


def stretch(image: np.ndarray) -> np.ndarray:
    """(3, H, W) -> (H, W, 3) in 0..1, each channel between its 2nd and 98th percentiles."""
    lo = np.percentile(image, 2, axis=(1, 2), keepdims=True)
    hi = np.percentile(image, 98, axis=(1, 2), keepdims=True)
    return np.clip((image - lo) / np.maximum(hi - lo, 1e-6), 0, 1).transpose(1, 2, 0)


def panel_bands(kind: str) -> tuple[str, ...]:
    """The channels an image panel is drawn from: a composite's three bands, ``VV``/``VH``."""
    return ("VV", "VH") if kind == S1_COMPOSITE else COMPOSITES[kind]


def panel_image(image: np.ndarray, bands: Sequence[str], kind: str) -> np.ndarray:
    """(H, W, 3) float in 0..1 of one image panel.

    Args:
        image: (C, H, W) of one patch, channels named by ``bands`` (any scale: native uint16
            values, dB or normalised; the stretch is per channel).
        kind: a :data:`COMPOSITES` key, ``VV,VH`` (red VV, green VH, blue VV - VH) or
            ``band:NAME`` (one channel as grey).
    """
    image = np.asarray(image, dtype=np.float64)
    if kind.startswith("band:"):
        plane = image[list(bands).index(kind[5:])]
        return stretch(np.stack([plane, plane, plane]))
    planes = image[[list(bands).index(b) for b in panel_bands(kind)]]
    if kind == S1_COMPOSITE:
        planes = np.stack([planes[0], planes[1], planes[0] - planes[1]])
    return stretch(planes)


def default_panels(bands: Sequence[str], *, mask: bool = False, prediction: bool = False) -> list[str]:
    """The panels :func:`draw_sample` draws for a selection of ``bands``: true colour, false
    colour and S1 VV/VH when all their channels are selected (else the first channel in
    grey), then ``predictions`` with scores and ``reference map`` with a mask."""
    kinds = [k for k in ("rgb", "false-color", S1_COMPOSITE) if set(panel_bands(k)) <= set(bands)]
    kinds = kinds or [f"band:{bands[0]}"]
    # the reference map goes last: its legend sits to the right of it, outside the panel
    return kinds + (["predictions"] if prediction else []) + (["reference map"] if mask else [])


def panel_title(kind: str) -> str:
    """The heading of a panel kind (``rgb`` -> ``true colour``)."""
    return kind[5:] if kind.startswith("band:") else _TITLES.get(kind, kind)


def reference_colours(codes: np.ndarray) -> np.ndarray:
    """(H, W) CLC codes -> (H, W, 3) float colours (unknown codes white)."""
    lut = np.ones((1000, 3))
    for code, rgb in CLC_COLOURS.items():
        lut[code] = np.asarray(rgb) / 255
    return lut[np.clip(np.asarray(codes, dtype=np.int64), 0, 999)]


def draw_sample(
    image: np.ndarray,
    bands: Sequence[str],
    label: np.ndarray,
    classes: Sequence[str],
    *,
    mask: np.ndarray | None = None,
    prediction: np.ndarray | None = None,
    panels: Sequence[str] | None = None,
    axes: Sequence[Any] | None = None,
    title: str | None = None,
    panel_titles: bool = True,
    top: int = 5,
) -> Any:
    """Draw one patch as a row of panels; the drawing behind
    :meth:`benzarr.data.BigEarthNetDataset.plot` (and so ``benzarr show``).

    Args:
        image: (C, 120, 120) float, channels named by ``bands``.
        label: (L,) multi-hot over ``classes``.
        mask: (120, 120) CLC2018 codes: the ``reference map`` panel, with a legend.
        prediction: (L,) scores in 0..1: the ``predictions`` panel (top ``top`` scores, true
            positives green, false positives red, missed labels listed).
        panels: panel kinds (:func:`default_panels` when None).
        axes: one matplotlib Axes per panel; None: a new figure of one row.
        title: set on the first panel.
        panel_titles: head each panel with its kind.

    Returns:
        the matplotlib Figure drawn on.

    Raises:
        InvalidArgumentError: a panel whose data the sample lacks.
    """
    panels = list(panels) if panels is not None else default_panels(
        bands, mask=mask is not None, prediction=prediction is not None)
    if axes is None:
        plt = _pyplot()
        figure, row = plt.subplots(1, len(panels), figsize=(_figure_width(panels), _PANEL_INCHES + 0.9), squeeze=False,
                                   layout="constrained")
        axes = list(row[0])
    if len(axes) != len(panels):
        raise InvalidArgumentError(f"{len(panels)} panels ({', '.join(panels)}) need as many axes, got {len(axes)}")
    truth = np.asarray(label) > 0.5
    for kind, axis in zip(panels, axes):
        axis.set_xticks([])
        axis.set_yticks([])
        if kind == "predictions":
            if prediction is None:
                raise InvalidArgumentError("a predictions panel needs the sample's prediction scores")
            _prediction_panel(axis, classes, np.asarray(prediction, dtype=np.float64), truth, top)
            continue
        if kind == "reference map":
            if mask is None:
                raise InvalidArgumentError("a reference map panel needs the sample's mask")
            codes = np.asarray(mask)
            axis.imshow(reference_colours(codes), interpolation="nearest")
            _reference_legend(axis, codes)
        else:
            needed = (kind[5:],) if kind.startswith("band:") else panel_bands(kind)
            missing = [b for b in needed if b not in bands]
            if missing:
                raise InvalidArgumentError(f"the {panel_title(kind)} panel needs {', '.join(missing)}, "
                                           f"which the sample lacks (it has {', '.join(bands)})")
            axis.imshow(panel_image(image, bands, kind), interpolation="nearest")
        if panel_titles:
            axis.set_xlabel(panel_title(kind), fontsize=8)
            axis.xaxis.set_label_position("top")
    if title is not None:  # a new figure's constrained layout makes room for every line
        axes[0].set_title(textwrap.fill(title, 40), fontsize=8)
    return axes[0].figure


def _panels(store: Store, composites: Sequence[str] | None) -> list[str]:
    """Panel kinds for a store: the chosen composites (checked against its bands), or true
    and false colour (and S1 when present); then the reference map when the store has one."""
    available = {b for array in ("s2/10m", "s2/20m", "s2/60m", "s1") if store.has_array(array)
                 for b in store.band_names(array)}
    if composites is None:
        kinds = ["rgb", "false-color"] + ([S1_COMPOSITE] if {"VV", "VH"} <= available else [])
    else:
        kinds = list(composites)
    for kind in kinds:
        if kind not in COMPOSITES and kind != S1_COMPOSITE:
            raise InvalidArgumentError(f"unknown --bands {kind!r}: choose rgb, false-color, swir or VV,VH")
        missing = [b for b in panel_bands(kind) if b not in available]
        if missing:
            if not available:  # a labels-only store: "the store has no those bands" said nothing
                raise InvalidArgumentError(f"{store.path}: the store has no image bands (labels only): "
                                           "nothing to show")
            lacks = " (no Sentinel-1 data)" if kind == S1_COMPOSITE else ""
            raise InvalidArgumentError(f"{store.path}: --bands {kind} needs {', '.join(missing)}, which the store "
                                       f"lacks{lacks}")
    if store.has_array("reference_map"):
        kinds.append("reference map")
    return kinds


# --- predictions ----------------------------------------------------------------------------------


def run_predictions(store_path: str | Path, rows: Sequence[int], run: str | Path) -> tuple[list[str], np.ndarray]:
    """Class names and (len(rows), L) sigmoid scores of a training run's model on store rows.

    The run's ``config.json`` gives the model, bands, label set and modalities; the weights
    are ``checkpoints/best.pt`` (else ``last.pt``). Patches are read as the run read them,
    normalised with the run's own statistics (:func:`benzarr.evaluate.run_normalization`),
    whichever split they are in.

    Raises:
        InvalidArgumentError: no config.json or checkpoint in ``run``.
        MissingDependencyError: torch is not installed.
    """
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is in the train extra
        raise MissingDependencyError("--run needs torch: pip install 'benzarr[train]'") from exc
    from benzarr.data import BigEarthNetDataset
    from benzarr.evaluate import check_run_names, check_runs_checkpoint, dataset_options, read_run_config, run_normalization
    from benzarr.models import create_model

    run = Path(run)
    config = read_run_config(run)
    settings = config["settings"]
    weights = next((p for p in (run / "checkpoints" / "best.pt", run / "checkpoints" / "last.pt") if p.is_file()), None)
    if weights is None:
        raise InvalidArgumentError(f"{run}: no checkpoints/best.pt or last.pt")
    check_run_names(config, run)
    check_runs_checkpoint(weights, config)
    options = dataset_options(config)
    whole = BigEarthNetDataset(store_path, **options)
    whole.set_normalization(*run_normalization(config, options))
    classes = list(config.get("classes") or whole.classes)
    model = create_model(settings["model"], in_channels=len(options["bands"]), num_classes=len(classes), weights=weights,
                         strict=True)
    model.eval()
    scores = []
    with torch.no_grad():
        for row in rows:
            sample = whole[int(np.searchsorted(whole.rows, row))]
            scores.append(torch.sigmoid(model(sample["image"][None].float()))[0].numpy())
    return classes, np.stack(scores)


# --- figures --------------------------------------------------------------------------------------


def plot_patches(
    store: Store,
    rows: Sequence[int],
    out: str | Path,
    *,
    composites: Sequence[str] | None = None,
    labels: str | None = None,
    run: str | Path | None = None,
    top: int = 5,
) -> ShowResult:
    """Write a PNG with one row of panels per patch (module docstring), each row drawn by
    :meth:`benzarr.data.BigEarthNetDataset.plot` on a sample read by that dataset.

    Args:
        store: an open store.
        rows: store rows to draw.
        composites: image panels (``rgb``, ``false-color``, ``swir``, ``VV,VH``); None: true
            and false colour, and S1 when the store has it.
        labels: label set of the titles (default: the run's with ``run``, else the store's own).
        run: a training run folder: add each patch's top ``top`` predictions.

    Raises:
        InvalidArgumentError: unknown composite, bands the store lacks, no rows, a patch that
            failed ingest, ``labels`` other than the run's.
        MissingDependencyError: torch is not installed (the ``train`` extra).
    """
    from benzarr.split import default_label_set

    rows = [int(r) for r in rows]
    if not rows:
        raise InvalidArgumentError("no patches to show")
    check_image_path(out)
    kinds = _panels(store, composites)
    run_labels = None
    if run is not None:  # the truth beside the predictions must be in the run's label set
        from benzarr.evaluate import read_run_config

        config = read_run_config(run)
        run_labels = config.get("labels", config["settings"].get("labels", "clc43"))
        if labels is not None and labels != run_labels:
            raise InvalidArgumentError(f"--labels {labels}: the run {run} predicts {run_labels} classes "
                                       f"(leave --labels out, or pass {run_labels})")
    label_set = labels or run_labels or default_label_set(store)
    dataset = _panel_dataset(store, kinds, label_set)
    patch_names = store.patch_names()[rows]
    positions = np.searchsorted(dataset.rows, rows)
    for row, pos, name in zip(rows, positions.tolist(), patch_names):
        if pos >= dataset.rows.size or dataset.rows[pos] != row:
            raise InvalidArgumentError(f"{store.path}: patch {name} (row {row}) failed ingest; it has no pixels to draw")
    predicted = run_predictions(store.path, rows, run) if run is not None else None
    images = [kind for kind in kinds if kind != "reference map"]
    columns = images + (["predictions"] if predicted is not None else []) + kinds[len(images):]

    # one subfigure a patch: its title (name and labels) spans the row, and constrained layout
    # sizes the panels around it and the reference map's legend
    fig = new_figure(figsize=(_figure_width(columns), (_PANEL_INCHES + 0.7) * len(rows)), layout="constrained")
    subfigures = np.atleast_1d(fig.subfigures(len(rows), 1))
    # the reference map's legend goes in a column of its own, the same in every row, so that
    # the panels line up whatever each legend holds
    legend = "reference map" in kinds
    ratios = [1.0] * len(columns) + ([_LEGEND_RATIO] if legend else [])
    axes = np.array([subfigure.subplots(1, len(ratios), squeeze=False, width_ratios=ratios)[0]
                     for subfigure in subfigures])
    if legend:
        for spare in axes[:, -1]:
            spare.axis("off")
        axes = axes[:, :-1]
    for i, pos in enumerate(positions.tolist()):
        sample = dataset[pos]
        if predicted is not None:
            sample["prediction"] = predicted[1][i]
        present = [dataset.classes[j] for j in np.flatnonzero(np.asarray(sample["label"]) > 0.5)]
        title = f"{patch_names[i]}\n" + textwrap.fill(", ".join(present) or "(no labels)", width=34 * len(columns))
        dataset.plot(sample, show_titles=False, panels=columns, axes=list(axes[i]), top=top, panel_titles=i == 0)
        subfigures[i].suptitle(title, fontsize=7, x=0.0, ha="left")
        if legend and axes[i, -1].get_legend() is not None:
            axes[i, -1].get_legend().set_in_layout(False)  # it sits in the spare column
    out, size = _save(fig, out)
    return ShowResult(out, rows, [panel_title(kind) for kind in columns], len(rows) * len(columns), size)


def _panel_dataset(store: Store, kinds: Sequence[str], label_set: str) -> Any:
    """A :class:`~benzarr.data.BigEarthNetDataset` serving exactly the panels' channels at
    native values, coarse bands repeated to 10 m (nearest: what the pixels are)."""
    try:
        from benzarr.data import BigEarthNetDataset
    except ImportError as exc:
        raise missing_extra("torch", "benzarr show") from exc
    bands = list(dict.fromkeys(b for kind in kinds if kind in COMPOSITES or kind == S1_COMPOSITE
                               for b in panel_bands(kind)))
    modalities = (["s2"] if any(b not in ("VV", "VH") for b in bands) else []) + (
        ["s1"] if "VV" in bands else []) + (["reference-map"] if "reference map" in kinds else [])
    return BigEarthNetDataset(store.path, bands=bands, labels=label_set, modalities=modalities, resample="nearest")


#: The name benzarr writes into the metadata of every figure it saves (:func:`figure_marker`):
#: how a later command knows an image it may replace (:func:`is_benzarr_image`).
FIGURE_SOFTWARE = "benzarr"
_MARKED_TEXT = {  # formats whose marker is a line of text in the file (matplotlib's "Creator")
    "pdf": re.compile(rb"/Creator \(benzarr "),
    "svg": re.compile(rb"<dc:creator>\s*<cc:Agent>\s*<dc:title>benzarr "),
    "ps": re.compile(rb"^%%Creator: benzarr ", re.MULTILINE),
    "eps": re.compile(rb"^%%Creator: benzarr ", re.MULTILINE),
}


def figure_marker(path: str | Path) -> dict[str, Any]:
    """``savefig`` keyword arguments that mark the image ``path`` as benzarr's: PNG
    ``Software``, PDF, SVG, PS and EPS ``Creator``, a JPEG comment (``benzarr <version>``).
    Other formats carry no marker: an existing file of theirs is never replaced."""
    from benzarr import __version__

    fmt = Path(path).suffix.lower().lstrip(".")
    mark = f"{FIGURE_SOFTWARE} {__version__}"
    if fmt == "png":
        return {"metadata": {"Software": mark}}
    if fmt in _MARKED_TEXT:
        return {"metadata": {"Creator": mark}}
    if fmt in ("jpg", "jpeg"):
        return {"pil_kwargs": {"comment": mark}}
    return {}


def image_note(path: str | Path, key: str = "Software") -> str:
    """The text field ``key`` of the image file ``path`` as PIL reads it (a PNG's
    ``Software``, a JPEG's ``comment``); "" when it has none or is no image."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            value = image.info.get(key)
    except (OSError, ValueError, SyntaxError):  # not an image of that format (PIL raises these)
        return ""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value if isinstance(value, str) else ""


def is_benzarr_image(path: str | Path) -> bool:
    """Whether the image file ``path`` carries benzarr's marker (:func:`figure_marker`)."""
    fmt = Path(path).suffix.lower().lstrip(".")
    if fmt in ("png", "jpg", "jpeg"):
        return image_note(path, "Software" if fmt == "png" else "comment").startswith(f"{FIGURE_SOFTWARE} ")
    if fmt in _MARKED_TEXT:
        try:
            return _MARKED_TEXT[fmt].search(Path(path).read_bytes()) is not None
        except OSError:
            return False
    return False


def check_image_path(out: str | Path, option: str = "--out", command: str = "show") -> None:
    """Raise InvalidArgumentError unless ``out``'s suffix names an image format matplotlib
    writes and its nearest existing folder is a folder this process may write in (checked
    before any drawing, and before ``split`` writes its split: ``--out z.txt`` was a bare
    ValueError at the end), that it is not in a store or an archive (``option`` and ``command``
    name it in messages), and
    that a file already there is an image benzarr wrote (:func:`is_benzarr_image`), which is
    replaced; any other file is never replaced.

    Raises:
        PathConflictError: ``out`` lies in a benzarr store or an archive.
        UnsafeOverwriteError: ``out`` is a file benzarr did not write."""
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    suffix = Path(out).suffix.lower().lstrip(".")
    check_outside_datasets(Path(out).parent, option, f"the image {Path(out).name}")  # never among a store's files
    if Path(out).is_dir():
        raise InvalidArgumentError(f"{out}: is a folder; name an image file (.png, .pdf, .svg or .jpg)")
    for parent in Path(out).parents:  # the nearest existing folder above: a folder we may write in
        if parent.exists():
            if not parent.is_dir():
                raise InvalidArgumentError(f"{out}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK):  # (a read-only mount too: said so, not "no permission")
                why = "a read-only file system" if os.statvfs(parent).f_flag & os.ST_RDONLY else "no permission"
                raise InvalidArgumentError(f"{out}: cannot write into {parent} ({why}); choose a writable location")
            break
    if suffix not in formats:
        what = f"a .{suffix} file" if suffix else "a file without a suffix"
        raise InvalidArgumentError(f"{out}: cannot draw into {what}; name a .png, .pdf, .svg or .jpg file")
    check_replaceable_file(out, owned=is_benzarr_image, what="an image", command=command)


def _save(fig: Any, out: str | Path) -> tuple[Path, tuple[int, int]]:
    """Lay out ``fig`` (a :func:`new_figure`), write it to ``out`` (its folder made) at ``_DPI``.

    Returns:
        (the path written, the image's (width, height) in pixels).
    """
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=_DPI, **figure_marker(out))
    width, height = fig.get_size_inches()
    return out, (int(round(width * _DPI)), int(round(height * _DPI)))


def _reference_legend(axis: Any, codes: np.ndarray) -> None:
    from matplotlib.patches import Patch

    from benzarr.bigearthnet import CLC43, CLC43_CODES

    present, counts = np.unique(codes, return_counts=True)
    order = np.argsort(-counts)
    name_of = dict(zip(CLC43_CODES, CLC43))
    handles = [Patch(color=np.asarray(CLC_COLOURS.get(int(c), (255, 255, 255))) / 255,
                     label=textwrap.fill(f"{int(c)} {name_of.get(int(c), '?')}", 26, subsequent_indent="     "))
               for c in present[order][:8]]
    axis.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=6, frameon=False,
                handlelength=1.0, borderaxespad=0)


def _prediction_panel(axis: Any, classes: Sequence[str], scores: np.ndarray, truth: np.ndarray, top: int) -> None:
    axis.axis("off")
    order = np.argsort(-scores)[:top]
    lines = []
    for j in order:
        mark, colour = ("TP", "#1a7f1a") if truth[j] else ("FP", "#c0392b")
        lines.append((f"{scores[j]:.2f} {mark} {classes[j][:30]}", colour if scores[j] > 0.5 else "#666666"))
    missed = [classes[j][:30] for j in np.flatnonzero(truth) if scores[j] <= 0.5]
    axis.text(0, 1, "top predictions", fontsize=7, weight="bold", va="top", transform=axis.transAxes)
    for k, (text, colour) in enumerate(lines):
        axis.text(0, 0.9 - 0.1 * k, text, fontsize=6.5, color=colour, va="top", transform=axis.transAxes)
    if missed:
        axis.text(0, 0.88 - 0.1 * len(lines), "missed: " + textwrap.fill(", ".join(missed), 40), fontsize=6,
                  color="#c0392b", va="top", transform=axis.transAxes)


def utm_to_lonlat(x: np.ndarray, y: np.ndarray, epsg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """WGS 84 / UTM (EPSG 326zz north, 327zz south) metres -> longitude, latitude in degrees.

    Snyder's inverse transverse Mercator series (Map Projections: A Working Manual, USGS
    Professional Paper 1395, 1987, pp. 60-64); well under a metre within a zone.

    Raises:
        InvalidArgumentError: a code that is not WGS 84 / UTM.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    epsg = np.asarray(epsg, dtype=np.int64)
    north = (epsg >= 32601) & (epsg <= 32660)
    south = (epsg >= 32701) & (epsg <= 32760)
    if not (north | south).all():
        bad = epsg[~(north | south)][0]
        raise InvalidArgumentError(f"EPSG {bad} is not WGS 84 / UTM: the map needs UTM patch coordinates")
    zone = np.where(north, epsg - 32600, epsg - 32700)
    a, f, k0 = 6378137.0, 1 / 298.257223563, 0.9996
    e2 = f * (2 - f)
    ep2 = e2 / (1 - e2)
    m = np.where(north, y, y - 10_000_000.0) / k0
    mu = m / (a * (1 - e2 / 4 - 3 * e2**2 / 64 - 5 * e2**3 / 256))
    e1 = (1 - np.sqrt(1 - e2)) / (1 + np.sqrt(1 - e2))
    phi1 = (mu + (3 * e1 / 2 - 27 * e1**3 / 32) * np.sin(2 * mu) + (21 * e1**2 / 16 - 55 * e1**4 / 32) * np.sin(4 * mu)
            + (151 * e1**3 / 96) * np.sin(6 * mu) + (1097 * e1**4 / 512) * np.sin(8 * mu))
    sin1, cos1, tan1 = np.sin(phi1), np.cos(phi1), np.tan(phi1)
    c1 = ep2 * cos1**2
    t1 = tan1**2
    n1 = a / np.sqrt(1 - e2 * sin1**2)
    r1 = a * (1 - e2) / (1 - e2 * sin1**2) ** 1.5
    d = (x - 500_000.0) / (n1 * k0)
    lat = phi1 - (n1 * tan1 / r1) * (d**2 / 2 - (5 + 3 * t1 + 10 * c1 - 4 * c1**2 - 9 * ep2) * d**4 / 24
                                     + (61 + 90 * t1 + 298 * c1 + 45 * t1**2 - 252 * ep2 - 3 * c1**2) * d**6 / 720)
    lon = (d - (1 + 2 * t1 + c1) * d**3 / 6 + (5 - 2 * c1 + 28 * t1 - 3 * c1**2 + 8 * ep2 + 24 * t1**2) * d**5 / 120) / cos1
    return np.degrees(lon) + (zone - 1) * 6 - 180 + 3, np.degrees(lat)


def plot_split_map(store: Store, split: str, out: str | Path, *, leakage_km: float | None = None) -> ShowResult:
    """Write a PNG of every patch of ``split`` at its centre (lon, lat), coloured by subset.

    Args:
        leakage_km: also put the split's spatial leakage at this distance in the title.

    Raises:
        InvalidArgumentError: the store has no patch geometry (labels-only stores).
    """
    from benzarr.leakage import centres, split_leakage
    from benzarr.split import store_geometry

    check_image_path(out, "--map")
    codes, attrs = store.read_split(split)
    geometry = store_geometry(store)
    if geometry is None:
        raise InvalidArgumentError(f"{store.path}: the map needs each patch's meta/bounds and meta/epsg, which this "
                                   "store lacks (a labels-only store has no geometry)")
    bounds, epsg = geometry
    valid = store.valid_mask()
    xy = centres(bounds)
    lon, lat = utm_to_lonlat(xy[valid, 0], xy[valid, 1], epsg[valid])
    subset_codes = codes[valid]
    fig = new_figure(figsize=(8, 7))
    axis = fig.subplots()
    size = max(0.2, min(6.0, 3000 / max(1, lon.size)))
    for code, subset in ((-1, "excluded"), (0, "train"), (1, "val"), (2, "test")):
        chosen = subset_codes == code
        if chosen.any():
            axis.scatter(lon[chosen], lat[chosen], s=size, c=_SUBSET_COLOURS[subset], marker="s", linewidths=0,
                         label=f"{subset} ({int(chosen.sum()):,})", rasterized=True)
    axis.set_aspect(1 / max(np.cos(np.radians(float(np.median(lat)))), 0.1))
    axis.set_xlabel("longitude (°)")
    axis.set_ylabel("latitude (°)")
    axis.grid(alpha=0.3)
    axis.legend(loc="best", markerscale=max(1.0, 4 / size), fontsize=8)
    title = f"split {split} ({attrs.get('method', '?')}"
    group_by = (attrs.get("parameters") or {}).get("group_by")
    title += f" by {group_by})" if group_by else ")"
    if leakage_km is not None:
        leak = split_leakage(codes, bounds, epsg, leakage_km)
        title += f": test patches with a train patch within {leakage_km:g} km {leak['test']:.0%}"
    axis.set_title(title, fontsize=9)
    out, size_px = _save(fig, out)
    return ShowResult(out, [], ["map"], 1, size_px)  # type: ignore[arg-type]
