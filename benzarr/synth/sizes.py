"""Size helpers: files and bytes of an archive or a store on disk."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from benzarr.fsutil import MARKER


def tree_footprint(root: str | Path) -> tuple[int, int]:
    """(files, bytes) of everything under ``root`` but benzarr's marker files (``.benzarr``);
    a file removed while walking (a running ingest renames its temporary files) is left out."""
    files = size = 0
    for folder, _, names in os.walk(root):
        for name in names:
            if name == MARKER:
                continue
            try:
                size += os.stat(os.path.join(folder, name)).st_size
            except FileNotFoundError:
                continue
            files += 1
    return files, size


def archive_footprint(out: str | Path, names: Sequence[str]) -> tuple[int, int]:
    """(files, bytes) of the patch folders ``names`` under ``out``."""
    files = size = 0
    for name in names:
        with os.scandir(os.path.join(out, name)) as entries:
            for entry in entries:
                files += 1
                size += entry.stat().st_size
    return files, size
