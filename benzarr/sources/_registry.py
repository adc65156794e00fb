"""The archive-source seam: what a source must do, and the registry that finds one.

A source is an object with a few attributes and five methods (:class:`ArchiveSource`);
registering it (``@register_source`` on its class, timm style) is all it takes for
``benzarr ingest`` (``--source NAME`` or detection), the store's recorded source and
``benzarr split --method official`` to know it. Nothing outside ``benzarr.sources`` knows
a source's name, folders or version.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

from benzarr.errors import InvalidArgumentError, NotAnArchiveError
from benzarr.sources import _files
from benzarr.sources._common import Archive, Patch, PatchRef, check_archive_folder


@dataclass(frozen=True)
class OfficialSplit:
    """A source's own train/val/test split, as :func:`benzarr.split.make_split` uses it.

    Either ``lists`` (subset -> patch names, matched with the store's names) or ``column``
    (a stored row array, e.g. ``meta/official_split``, whose value ``values[subset]`` puts a
    row in that subset).

    Attributes:
        description: recorded as the split's ``parameters.source``.
        lists: ``{"train": names, "val": names, "test": names}``, or None.
        column: path of a string row array of the store, or None.
        values: subset (``train``, ``val``, ``test``) -> the column value meaning it.
    """

    description: str
    lists: Mapping[str, Sequence[str]] | None = None
    column: str | None = None
    values: Mapping[str, str] = field(default_factory=dict)


@runtime_checkable
class ArchiveSource(Protocol):
    """What an archive source is.

    Attributes:
        name: registry key, the ``--source`` value and the store's ``ingest.source``
            parameter (``"v1"``).
        aliases: other names ``--source`` accepts (``("1",)``).
        title: how messages name such an archive (``"BigEarthNet v1"``).
        store_source: the store's ``source`` attribute (``{"dataset": "BigEarthNet",
            "version": "1.0"}``; ingest adds ``modality``); :func:`source_of_store` matches it.
        looks_for: what :meth:`detect` looks for, for the message when no source knows a folder.
    """

    name: str
    aliases: tuple[str, ...]
    title: str
    store_source: Mapping[str, str]
    looks_for: str

    def detect(self, path: Path) -> bool:
        """True when the folder ``path`` is an archive of this source (cheap: a few stats)."""

    def open(self, path: Path) -> Archive:
        """Discover the archive at ``path``: every patch as a :class:`PatchRef`, sorted by name.

        Raises:
            NotAnArchiveError: ``path`` is not such an archive, or its tables are damaged.
        """

    def read(self, ref: PatchRef, modalities: Sequence[str]) -> Patch:
        """Read and validate one patch (``s2`` always; ``s1``, ``reference-map`` when asked).

        Raises:
            BadPatchError: naming the file and the problem.
        """

    def label_sets(self, modalities: Sequence[str]) -> list[str]:
        """The label sets (``clc43``, ``clc19``) a store of these modalities holds."""

    def official_split(self) -> OfficialSplit | None:
        """The source's official split, or None when it has none."""


_SOURCES: dict[str, ArchiveSource] = {}
S = TypeVar("S")


def register_source(source: S) -> S:
    """Register an archive source: a class (instantiated with no arguments; use it as a
    decorator) or an instance. Returns its argument.

    Raises:
        InvalidArgumentError: the name or an alias is taken, or the object lacks part of
            :class:`ArchiveSource`.
    """
    instance = source() if isinstance(source, type) else source
    if not isinstance(instance, ArchiveSource):
        raise InvalidArgumentError(f"{source!r} is not an archive source (see benzarr.sources.ArchiveSource)")
    for key in (instance.name, *instance.aliases):
        if key in _SOURCES:
            raise InvalidArgumentError(f"archive source {key!r} is already registered")
    for key in (instance.name, *instance.aliases):
        _SOURCES[key] = instance
    return source


def unregister_source(name: str) -> None:
    """Remove the source ``name`` and its aliases (for tests that register a toy source)."""
    source = _SOURCES.get(name)
    for key in [k for k, v in _SOURCES.items() if v is source]:
        del _SOURCES[key]


def list_sources() -> list[str]:
    """Registered source names (aliases left out), in registration order."""
    return list(dict.fromkeys(source.name for source in _SOURCES.values()))


def get_source(name: str) -> ArchiveSource:
    """The source registered as ``name`` (or with that alias).

    Raises:
        InvalidArgumentError: unknown name; the message lists the known ones.
    """
    source = _SOURCES.get(str(name))
    if source is None:
        raise InvalidArgumentError(f"unknown --source {name!r}: choose {' or '.join(list_sources())}")
    return source


def matching_sources(path: str | Path) -> list[ArchiveSource]:
    """Every registered source that recognises the folder ``path``, in registration order:
    none, one, or two for a folder that holds both layouts (v1 patch folders beside a v2
    ``BigEarthNet-S2`` folder)."""
    path = Path(path)
    return [get_source(name) for name in list_sources() if get_source(name).detect(path)]


def detect_source(path: str | Path) -> ArchiveSource | None:
    """The one source that recognises the folder ``path``, or None.

    Raises:
        NotAnArchiveError: more than one source claims it (pass ``source`` to choose).
    """
    path = Path(path)
    found = matching_sources(path)
    if len(found) > 1:
        raise NotAnArchiveError(f"{path}: reads as {' and as '.join(s.title for s in found)} archive; "
                                f"choose one with --source {' or '.join(s.name for s in found)}")
    return found[0] if found else None


def open_archive(path: str | Path, source: str | None = None) -> Archive:
    """Discover an archive of any registered source.

    Args:
        path: the archive folder.
        source: a registered source name or alias to force it; None detects it.

    Raises:
        ArchiveNotFoundError, NotAnArchiveError, InvalidArgumentError (unknown ``source``).
    """
    path = Path(path)
    check_archive_folder(path)
    chosen = get_source(source) if source else detect_source(path)
    if chosen is None:
        wanted = ", no ".join(get_source(name).looks_for for name in list_sources())
        packed = _files.compressed_tarballs(path)
        hint = (f"; it holds compressed tarballs ({', '.join(packed)}): decompress them (gunzip -k, zstd -d), "
                "and benzarr reads each .tar in place, without unpacking it") if packed else _what_it_is_hint(path)
        raise NotAnArchiveError(f"{path}: not a BigEarthNet archive (no {wanted}){hint}")
    return chosen.open(path)


def _what_it_is_hint(path: Path) -> str:
    """What ``path``, which reads as no archive, is when benzarr knows it: a benzarr store (the
    arguments swapped, ``benzarr ingest s.zarr archive``), a folder inside an archive (a patch
    folder), or a folder holding the archive (:func:`_inner_archive_hint`); else "". The line
    said only "not a BigEarthNet archive", which sent the user to look at the wrong folder."""
    from benzarr.fsutil import is_benzarr_store

    if is_benzarr_store(path):
        return "; it is a benzarr store: the archive comes first, then the store (benzarr ingest ARCHIVE STORE)"
    parent = path.parent if path.name not in ("", ".", "..") else None
    try:
        inside = parent is not None and detect_source(parent) is not None
    except NotAnArchiveError:  # read as two sources: an archive all the same
        inside = True
    if inside:
        return f"; it is inside the archive {parent}: give that folder"
    return _inner_archive_hint(path)


def _inner_archive_hint(path: Path) -> str:
    """``; the archive is its folder X: give PATH/X`` when ``path`` (a folder or a tar) holds
    one folder and that reads as an archive (a tar packed with its top folder, as the
    examples and ``tar cf reben.tar reben`` are), else ""."""
    try:
        entries = _files.listdir(path)
    except OSError:
        return ""
    folders = [name for name, folder in entries if folder]
    if len(folders) != 1 or len(entries) != 1 or detect_source(path / folders[0]) is None:
        return ""
    return f"; the archive is its folder {folders[0]}: give {path / folders[0]}"


def source_of_store(attrs: Mapping[str, Any]) -> ArchiveSource:
    """The source whose ``store_source`` a store's attributes record (``attrs["source"]``).

    Raises:
        InvalidArgumentError: no registered source wrote such a store.
    """
    recorded = attrs.get("source") or {}
    for name in list_sources():
        source = get_source(name)
        if all(recorded.get(key) == value for key, value in source.store_source.items()):
            return source
    raise InvalidArgumentError(
        f"the store's source {dict(recorded)} is not a registered archive source ({', '.join(list_sources())})"
    )

