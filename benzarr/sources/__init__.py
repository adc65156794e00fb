"""Archive sources: each kind of archive benzarr ingests is one registered source (timm style).

A source recognises a folder, lists its patches in sorted order, reads one patch into a
:class:`Patch`, and names its label sets, its recorded store attributes and its official
split (:class:`ArchiveSource`). BigEarthNet v1.0 (:mod:`.ben_v1`) and v2.0 / reBEN
(:mod:`.ben_v2`) are the two built in. Adding another source is one module with a class
decorated ``@register_source`` (imported here, or by the user before ingesting); nothing
outside this package knows a source's folders, names or version::

    from benzarr.sources import Archive, Patch, PatchRef, register_source

    @register_source
    class MySource:
        name, aliases, title = "mine", (), "My dataset"
        store_source = {"dataset": "Mine", "version": "1"}
        looks_for = "labels.csv"
        def detect(self, path): ...
        def open(self, path) -> Archive: ...
        def read(self, ref, modalities) -> Patch: ...
        def label_sets(self, modalities): return ["clc43", "clc19"]
        def official_split(self): return None

``ingest(archive, store)`` then detects it (or takes ``source="mine"``); ingest workers
receive the source object itself, so a source used with several workers must be importable
(a module-level class). A source that reads its files through :mod:`benzarr.sources._files`
(``is_dir``, ``listdir``, ``read_bytes``, ``open_raster``) reads archives packed in
uncompressed ``.tar`` files too, as the built-in ones do.
"""

from __future__ import annotations

from benzarr.sources._common import GDAL_ENV, MODALITIES, Archive, Patch, PatchRef, band_file, read_band
from benzarr.sources._registry import (
    ArchiveSource,
    OfficialSplit,
    detect_source,
    get_source,
    list_sources,
    matching_sources,
    open_archive,
    register_source,
    source_of_store,
    unregister_source,
)

# Imported for their registrations (v1 first: the order of --source choices and messages).
from benzarr.sources import ben_v1, ben_v2  # noqa: E402,F401  isort: skip

__all__ = [
    "GDAL_ENV",
    "MODALITIES",
    "Archive",
    "ArchiveSource",
    "OfficialSplit",
    "Patch",
    "PatchRef",
    "band_file",
    "detect_source",
    "get_source",
    "list_sources",
    "matching_sources",
    "open_archive",
    "read_band",
    "register_source",
    "source_of_store",
    "unregister_source",
]
