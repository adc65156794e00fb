"""GPU copy probe: is the batch ring's memory really page-locked for the copy engine?

Bandwidth to the GPU of one 256-patch native batch (41 MB), 20 non-blocking copies each,
from: an anonymous shared mapping before and after ``cudaHostRegister`` (what
:class:`benzarr.ring.RingLoader` copies from), torch's own pinned memory, and pageable
memory; plus the CPU time of issuing one non-blocking copy. Needs CUDA.

Usage::

    python benchmarks/gpu_copy_probe.py [OUT_DIR]     # writes OUT_DIR/gpu_copy_probe.json
"""

from __future__ import annotations

import json
import mmap
import sys
import time
from pathlib import Path

import torch

NBYTES = 256 * 160_000


def rate(src: torch.Tensor, label: str, device: torch.device) -> dict:
    dst = torch.empty(NBYTES, dtype=torch.uint8, device=device)
    for _ in range(3):
        dst.copy_(src, non_blocking=True)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(20):
        dst.copy_(src, non_blocking=True)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    dst.copy_(src, non_blocking=True)
    issue = time.perf_counter() - start
    torch.cuda.synchronize()
    return {"what": label, "gb_per_s": round(20 * NBYTES / seconds / 1e9, 2), "issue_ms": round(issue * 1e3, 3),
            "is_pinned": bool(src.is_pinned())}


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "results")
    device = torch.device("cuda")
    buffer = mmap.mmap(-1, 2 * NBYTES)
    host = torch.frombuffer(buffer, dtype=torch.uint8)
    rows = [rate(host[NBYTES:], "anonymous mmap, not registered", device)]
    rc = torch.cuda.cudart().cudaHostRegister(host.data_ptr(), host.numel(), 0)
    rows.append(rate(host[NBYTES:], "anonymous mmap, cudaHostRegister", device))
    rows.append(rate(torch.empty(NBYTES, dtype=torch.uint8).pin_memory(), "torch pin_memory", device))
    rows.append(rate(torch.empty(NBYTES, dtype=torch.uint8), "pageable", device))
    pinned = rows[2]["gb_per_s"]
    print(f"{'source':36} {'GB/s':>7} {'x pinned':>9} {'issue ms':>9}")
    for row in rows:
        print(f"{row['what']:36} {row['gb_per_s']:7.2f} {row['gb_per_s'] / pinned:9.2f} {row['issue_ms']:9.3f}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_copy_probe.json").write_text(json.dumps(
        {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "register_rc": str(rc), "rows": rows},
        indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
