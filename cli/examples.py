"""``benzarr examples``: the six real BigEarthNet patches, unpacked as the downloads unpack."""

from __future__ import annotations

from pathlib import Path

import typer

from benzarr.examples import extract_examples
from benzarr_cli._common import console


def command(
    out: Path = typer.Argument(..., help="Folder to unpack into (BigEarthNet-v1.0/ and BigEarthNet-S1-v1.0/)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors and warnings."),
) -> None:
    """Unpack the six real S2 patches and their S1 pairs from bigearthnet-common (optional extra)."""
    written = extract_examples(out)
    if quiet:
        return
    for folder, names in written.items():
        console.print(f"{out / folder}: {len(names)} real patches ({', '.join(names[:2])}, ...)")
