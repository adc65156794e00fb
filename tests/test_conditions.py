"""benchmarks/_conditions.py: what the GPU and the host did during a timed slice (issue #10).

The GPU side calls NVML through ctypes, and no GPU is here: a stand-in ``libnvidia-ml.so.1``
is compiled from C with NVML's signatures, so the calls go through a real shared library
(argument types, the struct NVML fills, the UUID string) exactly as on a GPU node."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import _conditions  # noqa: E402

#: A stand-in NVML: one GPU, "GPU-1234" (two with TWO_GPUS set); each snapshot adds 350 J of
#: energy and 0.5 s of power-cap violation; the SM clock 1980 MHz, 61 C, reason sw_power_cap.
#: With CRASH_INIT set, nvmlInit_v2 aborts the process (a wrong ctypes call on a real node might).
FAKE_NVML = textwrap.dedent(r"""
    #include <stdlib.h>
    #include <string.h>
    typedef struct { unsigned long long referenceTime, violationTime; } violation_t;
    static unsigned long long energy = 1000000, power_ns = 0;
    int nvmlInit_v2(void) { if (getenv("CRASH_INIT")) abort(); return 0; }
    const char *nvmlErrorString(int rc) { return rc == 13 ? "Not Found" : "Unknown Error"; }
    int nvmlDeviceGetCount_v2(unsigned int *n) { *n = getenv("TWO_GPUS") ? 2 : 1; return 0; }
    int nvmlDeviceGetHandleByIndex_v2(unsigned int i, void **h) { if (i) return 2; *h = (void *)0x1234; return 0; }
    int nvmlDeviceGetHandleByUUID(const char *uuid, void **h) {
        if (strcmp(uuid, "GPU-1234") != 0) return 13;
        *h = (void *)0x1234; return 0;
    }
    int nvmlDeviceGetClockInfo(void *h, int type, unsigned int *mhz) {
        if (h != (void *)0x1234 || type != 1) return 2;
        *mhz = 1980; return 0;
    }
    int nvmlDeviceGetTotalEnergyConsumption(void *h, unsigned long long *mj) {
        if (h != (void *)0x1234) return 2;
        energy += 350000; *mj = energy; return 0;
    }
    int nvmlDeviceGetViolationStatus(void *h, int policy, violation_t *v) {
        if (h != (void *)0x1234) return 2;
        if (policy == 0) { power_ns += 500000000ULL; v->violationTime = power_ns; }
        else if (policy == 1) v->violationTime = 0;
        else return 3;
        v->referenceTime = 42; return 0;
    }
    int nvmlDeviceGetTemperature(void *h, int sensor, unsigned int *c) { if (sensor) return 2; *c = 61; return 0; }
    int nvmlDeviceGetCurrentClocksEventReasons(void *h, unsigned long long *r) { *r = 0x4; return 0; }
""")

#: In a child with the stand-in on LD_LIBRARY_PATH (read only when a process starts): one
#: slice of 1 s, as gpu_feed's timed() reads it.
SLICE = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import _conditions
    c = _conditions.SliceConditions(True, sys.argv[2])
    out = {"info": c.info}
    if c.nvml is not None:
        begun = c.begin()
        out["end"] = c.end(begun, 1.0)
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def fake_nvml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    compiler = shutil.which("cc") or shutil.which("gcc")
    assert compiler, "a C compiler builds the stand-in NVML"
    folder = tmp_path_factory.mktemp("nvml")
    (folder / "nvml.c").write_text(FAKE_NVML)
    subprocess.run([compiler, "-shared", "-fPIC", "-o", str(folder / "libnvidia-ml.so.1"), str(folder / "nvml.c")],
                   check=True, capture_output=True)
    return folder


def slice_in_child(lib: Path, uuid: str, **env: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", SLICE, str(BENCHMARKS), uuid], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "LD_LIBRARY_PATH": str(lib), **env})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def test_a_slice_reads_the_gpus_counters_through_nvml(fake_nvml: Path) -> None:
    """The clock, the mean power (energy over the slice), the share held down by the power cap
    (its violation counter over the slice), the reasons and the temperature, for the GPU whose
    CUDA UUID is given."""
    got = slice_in_child(fake_nvml, "1234")
    assert got["info"]["nvml"] == "read", got
    end = got["end"]
    assert end["sm_mhz"] == [1980, 1980]
    assert end["power_w"] == 350.0  # one snapshot's 350 J over the 1 s slice
    assert end["power_capped_share"] == 0.5 and end["thermal_capped_share"] == 0.0
    assert end["reasons"] == ["sw_power_cap"] and end["temperature_c"] == 61


def test_another_gpus_uuid_or_a_crashing_library_leaves_the_gpu_out_with_why(fake_nvml: Path) -> None:
    """Where NVML cannot be read the run goes on without GPU readings, saying why; a library that
    crashes its caller crashes only the probe's child process. A UUID NVML does not know is
    taken as another spelling of the node's only GPU; with two GPUs it is not guessed."""
    alone = slice_in_child(fake_nvml, "9999")
    assert alone["info"]["nvml"] == "read" and alone["end"]["sm_mhz"] == [1980, 1980], alone
    other = slice_in_child(fake_nvml, "9999", TWO_GPUS="1")
    assert other["info"]["nvml"].startswith("not read:") and "GPU-9999" in other["info"]["nvml"], other
    assert "Not Found" in other["info"]["nvml"]
    crashed = slice_in_child(fake_nvml, "1234", CRASH_INIT="1")
    assert crashed["info"]["nvml"].startswith("not read: the NVML probe failed"), crashed
    assert "end" not in crashed


def test_no_nvml_here_and_the_cpu_fallback_read_the_host_alone() -> None:
    """This machine has no NVIDIA driver: a CUDA run would record why; the CPU fallback reads no GPU."""
    conditions = _conditions.SliceConditions(False)
    assert conditions.info["nvml"] == "not read: no CUDA device"
    begun = conditions.begin()
    time.sleep(0.1)  # /proc/stat counts in ticks of 10 ms
    end = conditions.end(begun, 0.1)
    assert "sm_mhz" not in end and 0.0 <= end["steal_share"] <= 1.0 and end["cores_busy"] >= 0
    if _conditions.probe_nvml(None) is None:  # a machine with a driver: NVML would be read
        return
    assert "libnvidia-ml.so.1" in _conditions.SliceConditions(True).info["nvml"]


def test_proc_stat_gives_steal_and_busy_cores(tmp_path: Path) -> None:
    """Steal (what a hypervisor took) and busy time are told apart from idle and iowait; guest
    time, already in user, is not counted twice."""
    stat = tmp_path / "stat"
    #            user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text("cpu  100 5 20 300 10 1 2 40 100 0\ncpu0 1 2 3\n")
    assert _conditions.cpu_times(stat) == {"busy": 128, "idle": 310, "steal": 40, "total": 478}
    stat.write_text("intr 1 2 3\n")
    assert _conditions.cpu_times(stat) is None
    assert _conditions.cpu_times(tmp_path / "missing") is None


def test_summary_and_reason_names() -> None:
    slices = [{"sm_mhz": [1980, 1755], "steal_share": 0.1}, None, {"sm_mhz": [1830, None], "steal_share": 0.0}]
    assert _conditions.summary(slices) == {"sm_mhz": [1755, 1980], "steal_share": [0.0, 0.1]}
    assert _conditions.reason_names(0x4 | 0x40 | 0x10000) == ["sw_power_cap", "hw_thermal_slowdown", "0x10000"]
    assert _conditions.reason_names(None) is None


def test_paired_ratio_is_the_median_of_each_rounds_pair() -> None:
    """A round where the whole machine ran slow weighs as much as any other, and a drift
    between rounds cancels in each pair."""
    import gpu_feed

    fed = {"slices": [90.0, 45.0, 95.0, 80.0]}
    ceiling = {"slices": [100.0, 50.0, 100.0, 100.0]}
    assert gpu_feed.paired_ratio(fed, ceiling) == 0.9  # pairs 0.8, 0.9, 0.9, 0.95
    assert gpu_feed.paired_ratio({"slices": [90.0, 60.0, 70.0]}, {"slices": [100.0, 100.0, 100.0]}) == 0.7
    assert gpu_feed.paired_ratio({"slices": []}, ceiling) is None


def test_paired_interval_is_the_order_statistic_interval_of_the_median() -> None:
    """20 rounds: the 6th smallest and the 6th largest ratio (the textbook 95% interval of a
    median, coverage 95.9%); 10 rounds: the 2nd of each end (97.9%); under 6 rounds no
    interval reaches 95%, so none is given rather than a narrower one that claims it."""
    import gpu_feed

    def rounds(n: int) -> tuple[dict, dict]:  # ratios 0.81, 0.82, ... in a shuffled order
        ratios = [0.80 + (7 * k % n + 1) / 100 for k in range(n)]
        return {"slices": [100 * r for r in ratios]}, {"slices": [100.0] * n}

    assert gpu_feed.paired_interval(*rounds(20)) == [0.86, 0.95]
    assert gpu_feed.paired_interval(*rounds(10)) == [0.82, 0.89]
    assert gpu_feed.paired_interval(*rounds(6)) == [0.81, 0.86]  # min-max: 96.9%
    assert gpu_feed.paired_interval(*rounds(5)) is None
    assert gpu_feed.with_interval_text({"ratio_paired_95": [0.93, 0.971]})["paired_95"] == "0.93-0.97"
    assert gpu_feed.with_interval_text({"ratio_paired_95": None})["paired_95"] is None
