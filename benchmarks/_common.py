"""Helpers shared by the benchmarks: machine description, package versions, timing, tables, JSON.

Run benchmarks as scripts (``python benchmarks/NAME.py``); they import this module as
``_common`` (the script's folder is on ``sys.path``).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine_info() -> dict[str, Any]:
    """CPU model, logical cores, memory, OS, Python and the load average at the call.

    ``loadavg`` lets a reader see whether other work shared the machine during the run.
    """
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory_gb = round(int(line.split()[1]) / 1024**2, 1)
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "memory_gb": memory_gb,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "loadavg": load_average(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (None where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def versions(packages: Iterable[str]) -> dict[str, str | None]:
    """Installed version of each distribution (None when missing)."""
    out: dict[str, str | None] = {}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def rate(call: Callable[[], int], min_seconds: float, repeats: int = 3) -> dict[str, Any]:
    """Throughput of ``call`` (returns items done per call).

    Each repeat calls until ``min_seconds`` pass; the best repeat is the figure (the least
    disturbed by other work on a shared machine), all repeats are kept.

    Returns:
        ``{"per_s": best items/s, "runs": [items/s of each repeat], "items": total items}``
    """
    runs: list[float] = []
    total = 0
    for _ in range(repeats):
        items = 0
        start = time.perf_counter()
        while True:
            items += call()
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                break
        runs.append(items / elapsed)
        total += items
    return {"per_s": max(runs), "runs": [round(r, 1) for r in runs], "items": total}


def endless(loader: Any) -> Iterator[Any]:
    """Batches of ``loader`` over epochs 0, 1, 2, ... (``set_epoch`` before each, where it has one).

    Holds no reference to a batch once the caller asks for the next one, so a loader that
    reuses a batch's memory (the ring's slots) gets it back as soon as the caller drops it.
    """
    epoch = 0
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        it = iter(loader)
        yielded = False
        while True:
            try:
                batch = next(it)
            except StopIteration:
                break
            yielded = True
            yield batch
            del batch
        del it
        if not yielded:
            raise RuntimeError("the loader yields no batches")
        epoch += 1


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> None:
    """Print ``rows`` as a fixed-width table; ``columns`` are (key, header, format spec)."""
    cells = [[("-" if row.get(key) is None else format(row[key], spec)) for key, _, spec in columns] for row in rows]
    widths = [max(len(header), *(len(c[i]) for c in cells)) if cells else len(header)
              for i, (_, header, _) in enumerate(columns)]
    print("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, ((_, h, _), w) in enumerate(zip(columns, widths))))
    for row in cells:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))


def write_json(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` as indented JSON (creating folders); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    return path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: Any, what: str, timeout: float = 60.0) -> None:
    """Return once ``port`` on 127.0.0.1 accepts connections; raise if ``process`` exits first or time runs out."""
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout:.0f} s")


@contextlib.contextmanager
def latency_proxy(endpoint: str, delay_ms: float) -> Iterator[str]:
    """``latency_proxy.py`` in front of ``endpoint``, adding ``delay_ms`` to every request: its endpoint."""
    import subprocess

    target = endpoint.rsplit("//", 1)[1]
    process = subprocess.Popen([sys.executable, str(Path(__file__).resolve().parent / "latency_proxy.py"),
                                "--target", target, "--delay-ms", str(delay_ms)], stdout=subprocess.PIPE, text=True)
    try:
        port = int(process.stdout.readline())
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


@contextlib.contextmanager
def s3_copy(store: Path, log: Callable[[str], None]) -> Iterator[dict[str, Any]]:
    """``store`` uploaded to a moto S3 server on 127.0.0.1, run as its own process (``moto_server``;
    started here, stopped on exit) so that it does not share the client's GIL.

    Yields ``{"url": "s3://bench/<name>", "options": storage_options, "endpoint": ...}``.
    """
    import subprocess

    import boto3

    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", "import sys; from moto.server import main; sys.exit(main())",
                               "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_for_port(port, server, "moto_server")
        client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                              aws_secret_access_key="testing", region_name="us-east-1")
        bucket = "bench"
        client.create_bucket(Bucket=bucket)
        files = [f for f in sorted(store.rglob("*")) if f.is_file()]
        log(f"uploading {store.name} to moto S3 at {endpoint} ({len(files)} files, {sum(f.stat().st_size for f in files) / 1e6:,.0f} MB)")
        for f in files:
            client.upload_file(str(f), bucket, f"{store.name}/{f.relative_to(store).as_posix()}")
        options = {"key": "testing", "secret": "testing", "anon": False,
                   "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}
        yield {"url": f"s3://{bucket}/{store.name}", "options": options, "endpoint": endpoint}
    finally:
        server.terminate()
        server.wait(timeout=10)
