"""The six real BigEarthNet v1.0 patches (S2 and their S1 pairs) shipped by ``bigearthnet-common``.

They are the smallest real archive there is: use them to check an install against real
GeoTIFFs (``benzarr examples OUT && benzarr ingest OUT store.zarr``). The package is an
optional extra (``pip install 'benzarr[examples]'``); its archives are read as package data
with :mod:`importlib.resources`, without importing its modules.
"""

from __future__ import annotations

import os
import shutil
import tarfile
from importlib import resources
from pathlib import Path

from benzarr.errors import FileSystemError, InvalidArgumentError, missing_extra
from benzarr.fsutil import PARTIAL_TAG, archive_sources, describe, os_error
from benzarr.sources.ben_v1 import V1_S1_FOLDER, V1_S2_FOLDER

_ARCHIVES = {
    V1_S2_FOLDER: "BigEarthNet-S2-Example.tar.bz2",
    V1_S1_FOLDER: "BigEarthNet-S1-Example.tar.bz2",
}


def extract_examples(out: str | Path) -> dict[str, list[str]]:
    """Unpack the examples as the official downloads unpack: ``OUT/BigEarthNet-v1.0/`` (6 S2
    patches) and ``OUT/BigEarthNet-S1-v1.0/`` (their 6 S1 patches).

    Returns:
        folder name -> sorted patch names.

    Raises:
        MissingDependencyError: ``bigearthnet-common`` is not installed.
        InvalidArgumentError: ``out`` already holds one of the two folders (nothing is replaced).
        FileSystemError: ``out`` is a file, or the disk is full or read-only (naming the path).
    """
    try:
        package = resources.files("bigearthnet_common")
    except ModuleNotFoundError:
        raise missing_extra("bigearthnet_common", "the real example patches") from None
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileSystemError(f"{out}: is a file, not a folder; choose a folder to unpack into", str(out))
    for folder in _ARCHIVES:  # both checked before anything is written
        if os.path.lexists(out / folder):
            raise InvalidArgumentError(f"{out / folder}: exists; choose an empty folder (nothing was replaced)")
    if out.is_dir():
        # unpacked into a synthetic archive (or a store), the real patches made one folder of
        # two archives: ingest took the synthetic patches at its top, paired them with the real
        # S1 folder, called every one bad and left the six real ones out
        if (out / "zarr.json").is_file() or archive_sources(out):
            raise InvalidArgumentError(f"{out}: holds {describe(out)}; the examples unpacked into it would make one "
                                       "folder of two datasets: choose an empty or new folder (nothing was written)")
    written: dict[str, list[str]] = {}
    for folder, member in _ARCHIVES.items():
        target = out / folder
        # unpacked beside the target and renamed into place: a failure (a full disk) leaves no
        # half-filled folder that the next run would refuse
        partial = out / f".{folder}{PARTIAL_TAG}{os.getpid()}"
        try:
            partial.mkdir(parents=True)
            with resources.as_file(package.joinpath(member)) as path, tarfile.open(path, "r:bz2") as tar:
                top = member.removesuffix(".tar.bz2") + "/"
                for item in tar.getmembers():
                    if not item.name.startswith(top) or item.name == top.rstrip("/"):
                        continue
                    item.name = item.name[len(top):]
                    tar.extract(item, partial, filter="data")
            os.rename(partial, target)
        except OSError as exc:
            shutil.rmtree(partial, ignore_errors=True)
            raise os_error(exc, target, "unpacking the examples into") from None
        written[folder] = sorted(p.name for p in target.iterdir() if p.is_dir())
    return written
