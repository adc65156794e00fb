#!/usr/bin/env bash
# One device call for a GPU session (issue #10), on an offline node with Python 3.12 and torch
# preinstalled (../shared/gpu-node.md): install the carried wheels, then run
#   1. benchmarks/gpu_ring_check.py  (the ring's batches against the DataLoader's on CUDA, CUDA
#      graph replays against eager batches; no sync in training steps), 22 s in session 6,
#      more since session 9 added the graph cases;
#   2. benchmarks/gpu_feed.py        (every table of issue #10, transformed rows, a 3-step
#      profiler trace), budgeted to BUDGET_S seconds, with CUDA graphs on (--graphs) once
#      step 1 has found their batches equal to eager ones;
# writing JSON, logs and the trace under $OUT (what the device tool brings back). Each step's
# output is kept even when a later one fails or the call runs out of time.
#
#   run: bash benchmarks/gpu_session.sh        carry: [".whl"]       timeout_s: 560
#
# Session 6's full run took 400 s of command time (683 s of device time held, start and
# transfers included) on an H200 with 16 cores; PHASE=diagnose, the shorter first run of
# that session (deterministic mode, 4/8/12 workers, profiles), took 221 s.
#
# BUDGET_S (default 420) bounds gpu_feed.py, its store build included. QUICK=1 runs tiny
# sizes on any machine (CPU fallback, no wheels installed, PYTHON=python3 by default): a check
# of this script before spending GPU time, e.g. QUICK=1 PYTHON=.venv/bin/python bash benchmarks/gpu_session.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-session-out}
BUDGET_S=${BUDGET_S:-420}
mkdir -p "$OUT"
started=$(date +%s)
say() { echo "[gpu_session +$(( $(date +%s) - started ))s] $*" | tee -a "$OUT/session.log"; }

PY=${PYTHON:-python3}
site=""
if [ "${QUICK:-0}" != 1 ] && [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  rm -rf /tmp/site
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
    >>"$OUT/session.log" 2>&1 || say "wheel install failed (see session.log)"
  site=/tmp/site:
fi
rm -rf /tmp/src && mkdir -p /tmp/src && cp -r benzarr /tmp/src/benzarr && cp -r cli /tmp/src/benzarr_cli
export PYTHONPATH=${site}/tmp/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
"$PY" - <<'EOF' >"$OUT/environment.txt" 2>&1
import os, platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", "cores", os.cpu_count())
EOF
say "$(cat "$OUT/environment.txt")"
command -v nvidia-smi >/dev/null && nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
command -v lscpu >/dev/null && lscpu >"$OUT/lscpu.txt" 2>&1

if [ "${QUICK:-0}" = 1 ]; then
  ring_args=(--device cpu)
  feed_args=(--cpu --patches 96 --batch-size 16 --workers 0,1 --fed-workers 1 --models shortcnn-all --seconds 0.3
             --warmup 1 --trainer-model shortcnn-all --trainer-workers 1 --trainer-epochs 1 --h2d-copies 2
             --profile-steps 2 --variants no-overlap,thread,nchw-upsample,unfused,session6,no-graph,per-key-copy --cpu-ring-workers 1
             --augment-workers 1)
elif [ "${PHASE:-full}" = diagnose ]; then
  # session 6's first run: where the fed/ceiling gap and the 4 -> 8 worker scaling come
  # from (deterministic mode, decoding alone on the CPU, profiles of fed and ceiling steps)
  ring_args=()
  feed_args=(--patches 20000 --build-workers "$(nproc)" --seconds 2.5 --warmup 5 --budget-s "$BUDGET_S"
             --modes deterministic --workers 4,8,12 --ring-workers 12 --cpu-ring-workers 1,4,8,12
             --variants thread --trainer-model none --profile-steps 3)
else
  # every table of issue #10: loader alone with 0/4/8/12 workers, fed rows at 4/8/12 (fed
  # and ceiling interleaved), and at 12 workers in both modes two A/B variants in the same
  # rows: every batch transformed eagerly instead of by CUDA graph replays (session 9), and
  # the transform session 6's last run measured (no fused passes, bilinear on the NCHW
  # batch: both changes came after it); the trainer in both modes; augmentation's cost on
  # the GPU (issue #13) at 12 workers
  ring_args=()
  feed_args=(--patches 20000 --build-workers "$(nproc)" --seconds 2.4 --rounds 3 --warmup 5 --budget-s "$BUDGET_S"
             --workers 0,4,8,12 --fed-workers 4,8,12 --ring-workers 12 --cpu-ring-workers 4,8,12 --augment-workers 12
             --variants no-graph,session6 --trainer-modes deterministic,fast --profile-steps 3)
fi

say "gpu_ring_check.py"
BENZARR_CUDA_GRAPHS=1 timeout 120 "$PY" benchmarks/gpu_ring_check.py "${ring_args[@]}" --workdir /tmp/gpu-ring-check \
  --out "$OUT/gpu_ring_check.json" >"$OUT/gpu_ring_check.log" 2>&1
say "gpu_ring_check.py exit $?"

# the loader's CUDA graphs (session 9, off by default until measured) feed every row of this
# run once the ring check has found their batches equal to eager ones; variant no-graph then
# measures the eager way in the same rows (gpu_feed.py skips it when graphs stay off)
if "$PY" - "$OUT/gpu_ring_check.json" <<'EOF' >>"$OUT/session.log" 2>&1
import json, sys
try:
    cases = [c for c in json.load(open(sys.argv[1]))["cases"] if c["case"].startswith("graphs:")]
except Exception as exc:  # no JSON: the check crashed or timed out
    sys.exit(f"no ring check result ({exc})")
bad = [c["case"] for c in cases if not c.get("equal")]
print("graph cases:", len(cases), "differ:", bad)
sys.exit(1 if bad or not cases else 0)
EOF
then
  say "gpu_ring_check confirmed the graphs: gpu_feed.py runs with --graphs"
  feed_args+=(--graphs)
else
  say "graphs not confirmed by gpu_ring_check: gpu_feed.py runs without them"
fi

say "gpu_feed.py"
timeout $(( BUDGET_S + 60 )) "$PY" benchmarks/gpu_feed.py "${feed_args[@]}" --workdir /tmp/gpu-feed \
  --out "$OUT/gpu_feed.json" >"$OUT/gpu_feed.log" 2>&1
say "gpu_feed.py exit $?"
tail -n 60 "$OUT/gpu_feed.log"
ls -la "$OUT" | tee -a "$OUT/session.log"
