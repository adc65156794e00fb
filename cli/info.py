"""``benzarr info``: the store's data sheet."""

from __future__ import annotations

import json

import typer

from benzarr.errors import InvalidArgumentError

from benzarr.info import describe_store
from benzarr_cli._common import console, count, storage_options_for


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def command(
    store: str = typer.Argument(..., help="Path (or s3:// URL) of a benzarr store."),
    as_json: bool = typer.Option(False, "--json", help="Print the data sheet as JSON."),
    top: int = typer.Option(10, "--top", help="How many of the most frequent classes to list."),
    endpoint_url: str = typer.Option(None, "--endpoint-url", help="S3 endpoint for s3:// stores (default: $AWS_ENDPOINT_URL)."),
) -> None:
    """Show a store: format, patches, arrays and bytes on disk, labels, band statistics, splits, failures."""
    if top < 0:  # a negative slice listed all but the last classes
        raise InvalidArgumentError(f"--top must be 0 or more, got {top}")
    info = describe_store(store, top_classes=top, storage_options=storage_options_for(store, endpoint_url))
    if as_json:
        console.print_json(json.dumps(info), ensure_ascii=True)  # JSON whatever the output encoding
        return
    out = console.print
    parts = info.get("parts") or {}
    missing = parts.get("missing") or []
    # a store ingested in parts finishes when its missing parts run, not by rerunning any one of them
    advice = (f"run `benzarr ingest ... --part I/{parts['planned']}` for part{'s' if len(missing) > 1 else ''} "
              + ", ".join(f"{i}/{parts['planned']}" for i in missing)) if missing else \
        "run the same `benzarr ingest` command to resume"
    state = "complete" if info["complete"] else (
        f"INCOMPLETE ({info['shards']['done']}/{info['shards']['total']} shards written; {advice})"
    )
    out(f"store           {info['path']}")
    out(f"format          benzarr store v{info['format_version']} (Zarr v3), written by benzarr {info['package_version']}")
    out(f"state           {state}")
    checksums = {True: "crc32c on every band chunk", False: "without chunk checksums (format 1; re-ingest to add them)",
                 None: "no band arrays"}[info["checksums"]]
    out(f"checksums       {checksums}")
    verified = info.get("verified")
    if verified:
        result = "OK" if verified.get("ok") else (
            f"CORRUPT ({verified.get('problems')} problem(s), {verified.get('bad_patches')} patch(es); "
            "run `benzarr verify` for the list)")
        out(f"verified        last verified {verified.get('at')}: {result}, {verified.get('chunks', 0):,} chunks")
    else:
        out("verified        never verified (run `benzarr verify STORE`)")
    if parts:
        out(f"parts           {parts['planned']} planned; "
            + (f"parts missing: {', '.join(map(str, missing))}" if missing else "all done"))
    source = info.get("source") or {}
    out(f"source          {source.get('dataset', '?')} {source.get('version', '')} {source.get('modality', '')}".rstrip())
    valid = info.get("n_valid", info["n_patches"])
    out(f"modalities      {', '.join(info.get('modalities') or []) or 'labels only'}")
    out(f"patches         {info['n_patches']:,} ({valid:,} valid, {len(info['failed'])} failed)")
    out(f"shards          {info['shards']['total']} x {info['shard_size']} patches, compression {info['compression']}")
    out(f"bytes on disk   {_size(info['bytes_total'])}")
    out("")
    out("arrays")
    width = max(len(a["path"]) for a in info["arrays"])
    for a in info["arrays"]:
        shape = "x".join(map(str, a["shape"]))
        chunks = "x".join(map(str, a["chunks"]))
        shards = ("  shard " + "x".join(map(str, a["shards"]))) if a["shards"] else ""
        out(f"  {a['path']:<{width}}  {shape:<18} {a['dtype']:<8} chunk {chunks:<14}{shards:<22} "
            f"{', '.join(a['codecs']):<48} {_size(a['bytes']):>9}")
    for nomenclature, data in info["labels"].items():
        if not isinstance(data, dict):
            continue
        out("")
        out(f"labels/{nomenclature}: most frequent classes ({count(data['classes_without_examples'], 'class', 'classes')} without examples)")
        for row in data["top"]:
            out(f"  {row['count']:>9,}  {100 * row['share']:5.1f}%  {row['class']}")
    if info["labels"]:
        out(f"patches without any 19-class label: {info['labels'].get('n_without_clc19', 0)}")
    if info["band_stats"]:
        out("")
        out("band statistics (valid patches, native resolution)")
        out(f"  {'band':<5} {'mean':>9} {'std':>9} {'min':>7} {'max':>7} {'pixels':>14}")
        for band, s in info["band_stats"].items():
            if s["count"]:
                out(f"  {band:<5} {s['mean']:>9.1f} {s['std']:>9.1f} {s['min']:>7.0f} {s['max']:>7.0f} {s['count']:>14,}")
    if info.get("s1_stats"):
        out("")
        out("Sentinel-1 statistics (dB)")
        for band, s in info["s1_stats"].items():
            if s["count"]:
                out(f"  {band:<5} {s['mean']:>9.2f} {s['std']:>9.2f} {s['min']:>7.1f} {s['max']:>7.1f} {s['count']:>14,}")
    out("")
    if info["splits"]:
        out("splits")
        for name, s in info["splits"].items():
            counts = s.get("counts") or {}
            out(f"  {name:<16} {s.get('method') or '?':<10} train {counts.get('train', 0):,}  val {counts.get('val', 0):,}  "
                f"test {counts.get('test', 0):,}  excluded {counts.get('excluded', 0):,}")
    else:
        out("splits          none (make one with `benzarr split`)")
    ingest = info.get("ingest") or {}
    if ingest:
        out("")
        out("ingest parameters")
        for key, value in ingest.items():
            out(f"  {key:<14} {value}")
    if info["failed"]:
        out("")
        out(f"failed patches ({len(info['failed'])}, never served)")
        for name, reason in info["failed"].items():
            out(f"  {name}: {reason}")
