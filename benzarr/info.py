"""The store's data sheet: everything ``benzarr info`` shows, as one JSON-ready dict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import zarr

from benzarr.shards import parse_layout
from benzarr.store import DONE_ARRAY, REFERENCE_MAP_ARRAY, S1_ARRAY, S2_ARRAYS, Store, is_url, open_store
from benzarr.synth.sizes import tree_footprint
from benzarr.verify import last_verified


def _codec_names(array: zarr.Array) -> list[str]:
    names = []
    for codec in array.metadata.to_dict()["codecs"]:
        if codec["name"] == "sharding_indexed":
            inner = codec["configuration"]["codecs"]
            names.append("sharding[" + ", ".join(_describe_codec(c) for c in inner) + "]")
        else:
            names.append(_describe_codec(codec))
    return names


def _describe_codec(codec: dict[str, Any]) -> str:
    config = codec.get("configuration") or {}
    if codec["name"] == "blosc":
        return f"blosc({config.get('cname')}, {config.get('shuffle')}, clevel={config.get('clevel')})"
    if codec["name"] == "bytes":
        return "bytes"
    return codec["name"]


def _label_summary(store: Store, nomenclature: str, valid: np.ndarray, top_classes: int) -> dict[str, Any]:
    """The ``top_classes`` most frequent classes of the valid patches (class, count, share)
    and the number of classes without any example."""
    counts = store.labels(nomenclature)[valid].sum(axis=0, dtype=np.int64)
    classes = store.class_names(nomenclature)
    order = np.argsort(-counts, kind="stable")
    n_valid = max(int(valid.sum()), 1)
    return {
        "top": [{"class": classes[i], "count": int(counts[i]), "share": float(counts[i] / n_valid)}
                for i in order[:top_classes]],
        "classes_without_examples": int((counts == 0).sum()),
    }


def describe_store(path: str | Path, top_classes: int = 10,
                   storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Summarise a store, complete or not.

    Returns a dict with: path, format_version, checksums (True: every band chunk carries a
    crc32c, store format 2; False: format 1, without chunk checksums; None: no band arrays),
    verified (the last ``benzarr verify``: at, ok, chunks, problems, bad_patches; None if
    never), complete, n_patches, shards (total, done),
    arrays (path, shape, dtype, chunks, shards, codecs, bytes), bytes_total, labels (per
    nomenclature: the most frequent classes with count and share, patches without any
    19-class label), band statistics, splits (name -> method, counts), ingest parameters,
    and failed patches (name -> reason).
    """
    from benzarr.ingest import missing_parts

    store: Store = open_store(path, require_complete=False, storage_options=storage_options)
    attrs = store.attrs
    local = not is_url(store.path)
    arrays = []
    band_layouts = []
    for name, array in store.arrays():  # a damaged zarr.json: one StoreCorruptError naming it
        if name in (*S2_ARRAYS.values(), S1_ARRAY, REFERENCE_MAP_ARRAY):
            band_layouts.append(parse_layout(array.metadata.to_dict()))
        shards = array.shards
        arrays.append({
            "path": name,
            "shape": list(array.shape),
            "dtype": "string" if array.metadata.to_dict()["data_type"] == "string" else str(array.dtype),
            "chunks": list(array.chunks),
            "shards": list(shards) if shards else None,
            "codecs": _codec_names(array),
            "bytes": tree_footprint(Path(store.path) / name)[1] if local else None,
        })
    done = np.asarray(store.array(DONE_ARRAY)[:], dtype=bool) if store.has_array(DONE_ARRAY) else np.zeros(0, bool)
    info: dict[str, Any] = {
        "path": store.path,
        "format_version": store.format_version,
        "checksums": all(layout is not None and layout.checksum for layout in band_layouts) if band_layouts else None,
        "verified": last_verified(attrs),
        "package_version": attrs.get("package_version"),
        "complete": store.complete,
        "n_patches": store.n_patches,
        "shard_size": store.shard_size,
        "compression": attrs.get("compression"),
        "modalities": attrs.get("modalities"),
        "source": attrs.get("source"),
        "shards": {"total": store.n_shards, "done": int(done.sum())},
        "parts": {"planned": attrs.get("parts"), "missing": missing_parts(store)} if attrs.get("parts") else None,
        "arrays": arrays,
        "bytes_total": tree_footprint(Path(store.path))[1] if local else None,
        "ingest": attrs.get("ingest"),
        "band_stats": attrs.get("stats", {}).get("s2", {}),
        "s1_stats": attrs.get("stats", {}).get("s1", {}),
        "label_sets": attrs.get("label_sets", ["clc43", "clc19"]),
        "splits": {},
        "failed": {},
        "labels": {},
    }
    if not store.complete:
        return info
    valid = store.valid_mask()
    info["labels"] = {name: _label_summary(store, name, valid, top_classes) for name in info["label_sets"]}
    info["labels"]["n_without_clc19"] = attrs.get("n_without_clc19", 0)
    info["n_valid"] = int(valid.sum())
    for name in store.split_names():
        _, split_attrs = store.read_split(name)
        info["splits"][name] = {
            "method": split_attrs.get("method"),
            "counts": split_attrs.get("counts"),
            "created": split_attrs.get("created"),
        }
    info["failed"] = store.failed()
    return info
