"""What the machine was doing during a timed slice: the GPU's clocks, power and throttling, the
host's steal time and busy cores, and the main process's CPU time.

Why (issue #10): in session 20's H200 run the ceilings of resnet18, resnet50 and inception-v3
(the same training step on a batch already on the GPU, no loader) moved by 20-70% from one
0.8 s slice to the next within a row, and stood 25-40% below the same steps timed alone a
few minutes earlier, while shortcnn-all's stayed within 0.01% in every slice. So whether
those models reach 0.95 of their ceiling could not be told from the noise. Two causes fit
what was seen, and each leaves a trace this module reads:

* the GPU's SM clock held down under its power or thermal limit (a memory-bound
  shortcnn-all would hardly feel it): the driver's violation counters, the SM clock at both
  ends of the slice, the mean board power from the energy counter, the clock-event reasons;
* the host slowed (the node is a virtual machine: a hypervisor that takes its vCPUs away
  shows as steal time; or the loader's workers crowding the cores), which a step whose
  kernel launches are a large part of it feels first: steal share and busy cores from
  ``/proc/stat``, the main process's own CPU time.

The GPU is read through NVIDIA's management library (NVML, ``libnvidia-ml.so.1``, which every
NVIDIA driver installs; no Python package needed) with ctypes, by counters read before and after
the slice, outside its clock: no sampling thread competes with the step for the GIL. A wrong
ctypes call can crash the process that makes it, so :class:`SliceConditions` first makes the
same reads in a child process, and reads the GPU in this one only when the child succeeded.
Where NVML is missing (no NVIDIA driver, the CPU fallback) the GPU readings are left out with
the reason.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

#: NVML's enums, as nvml.h numbers them.
NVML_CLOCK_SM = 1
NVML_TEMPERATURE_GPU = 0
NVML_PERF_POLICY_POWER = 0
NVML_PERF_POLICY_THERMAL = 1
#: Clock-event (formerly "throttle") reason bits, as nvml.h names them.
CLOCK_EVENT_REASONS = {
    0x1: "gpu_idle", 0x2: "applications_clocks_setting", 0x4: "sw_power_cap", 0x8: "hw_slowdown",
    0x10: "sync_boost", 0x20: "sw_thermal_slowdown", 0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown", 0x100: "display_clock_setting",
}


class NvmlUnavailable(Exception):
    """NVML cannot be read here (the reason is the message)."""


class _ViolationTime(ctypes.Structure):
    # nvmlViolationTime_t: referenceTime (a CPU timestamp, us), violationTime (ns, cumulative)
    _fields_ = [("referenceTime", ctypes.c_ulonglong), ("violationTime", ctypes.c_ulonglong)]


class Nvml:
    """One GPU's counters through NVML (:meth:`open`), each read on its own: a reading the
    GPU does not support is None, not an error."""

    def __init__(self, lib: Any, handle: ctypes.c_void_p) -> None:
        self._lib, self._handle = lib, handle

    @classmethod
    def open(cls, uuid: str | None = None) -> Nvml:
        """NVML initialised, on the GPU with CUDA UUID ``uuid`` (``torch.cuda.get_device_properties(i).uuid``
        as text), or on the node's only GPU when ``uuid`` is None or unknown to NVML.

        Raises:
            NvmlUnavailable: no library, an initialisation error, or no such GPU.
        """
        try:
            lib = ctypes.CDLL("libnvidia-ml.so.1")
        except OSError as exc:
            raise NvmlUnavailable(f"no libnvidia-ml.so.1 ({exc})") from None
        for name, restype, argtypes in (
            ("nvmlInit_v2", ctypes.c_int, []),
            ("nvmlErrorString", ctypes.c_char_p, [ctypes.c_int]),
            ("nvmlDeviceGetCount_v2", ctypes.c_int, [ctypes.POINTER(ctypes.c_uint)]),
            ("nvmlDeviceGetHandleByIndex_v2", ctypes.c_int, [ctypes.c_uint, ctypes.POINTER(ctypes.c_void_p)]),
            ("nvmlDeviceGetHandleByUUID", ctypes.c_int, [ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]),
            ("nvmlDeviceGetClockInfo", ctypes.c_int, [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_uint)]),
            ("nvmlDeviceGetTotalEnergyConsumption", ctypes.c_int,
             [ctypes.c_void_p, ctypes.POINTER(ctypes.c_ulonglong)]),
            ("nvmlDeviceGetViolationStatus", ctypes.c_int,
             [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(_ViolationTime)]),
            ("nvmlDeviceGetTemperature", ctypes.c_int, [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_uint)]),
            ("nvmlDeviceGetCurrentClocksEventReasons", ctypes.c_int,
             [ctypes.c_void_p, ctypes.POINTER(ctypes.c_ulonglong)]),
            ("nvmlDeviceGetCurrentClocksThrottleReasons", ctypes.c_int,
             [ctypes.c_void_p, ctypes.POINTER(ctypes.c_ulonglong)]),
        ):
            fn = getattr(lib, name, None)  # an older driver lacks the newest names
            if fn is not None:
                fn.restype, fn.argtypes = restype, argtypes
        if getattr(lib, "nvmlInit_v2", None) is None:
            raise NvmlUnavailable("libnvidia-ml.so.1 has no nvmlInit_v2")
        rc = lib.nvmlInit_v2()
        if rc != 0:
            raise NvmlUnavailable(f"nvmlInit_v2: {cls._error(lib, rc)}")
        handle = ctypes.c_void_p()
        missing = None
        if uuid is not None:
            key = uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"
            rc = lib.nvmlDeviceGetHandleByUUID(key.encode(), ctypes.byref(handle))
            if rc == 0:
                return cls(lib, handle)
            missing = f"no GPU {key} ({cls._error(lib, rc)})"
        # no UUID, or one NVML does not know (another spelling of it): the node's only GPU is CUDA's
        count = ctypes.c_uint()
        rc = lib.nvmlDeviceGetCount_v2(ctypes.byref(count))
        if rc != 0 or count.value != 1:
            why = (f"nvmlDeviceGetCount_v2: {cls._error(lib, rc)}" if rc != 0
                   else f"{count.value} GPUs and no UUID to pick one")
            raise NvmlUnavailable(missing or why)
        rc = lib.nvmlDeviceGetHandleByIndex_v2(0, ctypes.byref(handle))
        if rc != 0:
            raise NvmlUnavailable(f"nvmlDeviceGetHandleByIndex_v2: {cls._error(lib, rc)}")
        return cls(lib, handle)

    @staticmethod
    def _error(lib: Any, rc: int) -> str:
        text = lib.nvmlErrorString(rc) if getattr(lib, "nvmlErrorString", None) is not None else None
        return f"NVML error {rc}" + (f": {text.decode(errors='replace')}" if text else "")

    def _read(self, name: str, *args: Any, kind: Any = ctypes.c_uint) -> Any:
        fn = getattr(self._lib, name, None)
        if fn is None:
            return None
        value = kind()
        return value if fn(self._handle, *args, ctypes.byref(value)) == 0 else None

    def snapshot(self) -> dict[str, Any]:
        """The counters now: ``sm_mhz``, ``energy_mj`` (since the driver loaded), ``power_violation_ns``
        and ``thermal_violation_ns`` (time spent below the application clocks for each cause, since
        the driver loaded), ``reasons`` (clock-event bits) and ``temperature_c``; None where the GPU
        does not give one."""
        sm = self._read("nvmlDeviceGetClockInfo", NVML_CLOCK_SM)
        energy = self._read("nvmlDeviceGetTotalEnergyConsumption", kind=ctypes.c_ulonglong)
        power = self._read("nvmlDeviceGetViolationStatus", NVML_PERF_POLICY_POWER, kind=_ViolationTime)
        thermal = self._read("nvmlDeviceGetViolationStatus", NVML_PERF_POLICY_THERMAL, kind=_ViolationTime)
        temperature = self._read("nvmlDeviceGetTemperature", NVML_TEMPERATURE_GPU)
        reasons = self._read("nvmlDeviceGetCurrentClocksEventReasons", kind=ctypes.c_ulonglong)
        if reasons is None:  # drivers before 535 have only the older name
            reasons = self._read("nvmlDeviceGetCurrentClocksThrottleReasons", kind=ctypes.c_ulonglong)
        return {"sm_mhz": None if sm is None else sm.value,
                "energy_mj": None if energy is None else energy.value,
                "power_violation_ns": None if power is None else power.violationTime,
                "thermal_violation_ns": None if thermal is None else thermal.violationTime,
                "reasons": None if reasons is None else reasons.value,
                "temperature_c": None if temperature is None else temperature.value}


def reason_names(bits: int | None) -> list[str] | None:
    """Clock-event reason ``bits`` as names (unknown bits as hex)."""
    if bits is None:
        return None
    names = [name for bit, name in CLOCK_EVENT_REASONS.items() if bits & bit]
    rest = bits & ~sum(CLOCK_EVENT_REASONS)
    return names + ([hex(rest)] if rest else [])


def cpu_times(path: str | Path = "/proc/stat") -> dict[str, int] | None:
    """The node's CPU time so far from ``path``'s first line, in clock ticks: ``busy`` (user,
    nice, system, irq, softirq), ``idle`` (idle, iowait), ``steal`` and ``total``; None where
    there is no such file (not Linux)."""
    try:
        with open(path) as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice: already in user and nice]
    values = [int(v) for v in fields[1:9]] + [0] * max(0, 9 - len(fields))
    user, nice, system, idle, iowait, irq, softirq, steal = values[:8]
    busy = user + nice + system + irq + softirq
    return {"busy": busy, "idle": idle + iowait, "steal": steal, "total": busy + idle + iowait + steal}


def _share(part: float, whole: float) -> float | None:
    return None if whole <= 0 else round(min(max(part / whole, 0.0), 1.0), 4)


class SliceConditions:
    """:meth:`begin` before a timed slice and :meth:`end` after it give what the machine did in
    between (see the module's docstring). ``info`` says what could be read and, where NVML
    could not, why.

    Args:
        cuda: whether the slices run on a CUDA device (False: no GPU readings, the CPU fallback).
        cuda_uuid: that device's UUID as text (``torch.cuda.get_device_properties(i).uuid``), to
            read the same GPU through NVML; None: the node's only GPU.
        probe: first make the NVML reads in a child process (True; False only for tests that
            probe by other means).
    """

    def __init__(self, cuda: bool, cuda_uuid: str | None = None, probe: bool = True) -> None:
        self.nvml: Nvml | None = None
        self.info: dict[str, Any] = {"cpus": os.cpu_count(), "proc_stat": cpu_times() is not None}
        if not cuda:
            self.info["nvml"] = "not read: no CUDA device"
            return
        if probe:
            failure = probe_nvml(cuda_uuid)
            if failure is not None:
                self.info["nvml"] = f"not read: {failure}"
                return
        try:
            self.nvml = Nvml.open(cuda_uuid)
        except NvmlUnavailable as exc:
            self.info["nvml"] = f"not read: {exc}"
            return
        self.info["nvml"] = "read"

    def begin(self) -> dict[str, Any]:
        """The counters at the start of a slice (call just before its clock starts)."""
        return {"wall": time.time(), "process_s": time.process_time(), "cpu": cpu_times(),
                "gpu": self.nvml.snapshot() if self.nvml is not None else None}

    def end(self, begun: dict[str, Any], seconds: float) -> dict[str, Any]:
        """What happened since ``begun`` over a slice of ``seconds``: ``t0`` (Unix time of its
        start, to line it up with ``nvidia-smi`` logs), ``main_cpu_share`` (the main process's
        CPU seconds over the slice's, all its threads: 1.0 is one core busy throughout),
        ``steal_share`` and ``cores_busy`` (the node's, from ``/proc/stat``), ``loadavg_1m``;
        with NVML, ``sm_mhz`` (at the start and the end), ``power_w`` (mean board power),
        ``power_capped_share`` and ``thermal_capped_share`` (of the slice held below the
        application clocks for each cause), ``reasons`` (at the end) and ``temperature_c``."""
        seconds = max(seconds, 1e-9)
        out: dict[str, Any] = {"t0": round(begun["wall"], 3),
                               "main_cpu_share": round((time.process_time() - begun["process_s"]) / seconds, 3)}
        cpu, before = cpu_times(), begun["cpu"]
        if cpu is not None and before is not None:
            total = cpu["total"] - before["total"]
            out["steal_share"] = _share(cpu["steal"] - before["steal"], total)
            share = _share(cpu["busy"] - before["busy"], total)
            out["cores_busy"] = None if share is None else round(share * (os.cpu_count() or 1), 2)
        out["loadavg_1m"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
        if self.nvml is not None and begun["gpu"] is not None:
            now, then = self.nvml.snapshot(), begun["gpu"]

            def delta(key: str) -> float | None:
                return None if now[key] is None or then[key] is None else now[key] - then[key]

            energy = delta("energy_mj")
            power_ns, thermal_ns = delta("power_violation_ns"), delta("thermal_violation_ns")
            out.update({
                "sm_mhz": [then["sm_mhz"], now["sm_mhz"]],
                "power_w": None if energy is None else round(energy / 1e3 / seconds, 1),
                "power_capped_share": None if power_ns is None else _share(power_ns / 1e9, seconds),
                "thermal_capped_share": None if thermal_ns is None else _share(thermal_ns / 1e9, seconds),
                "reasons": reason_names(now["reasons"]),
                "temperature_c": now["temperature_c"],
            })
        return out


def probe_nvml(cuda_uuid: str | None, timeout_s: float = 30.0) -> str | None:
    """Open NVML on ``cuda_uuid`` (None: the only GPU) and take two snapshots in a child
    process: None when that worked, else why not (the child's error, its crash, or its silence)."""
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); import _conditions as c; "
            "n = c.Nvml.open(sys.argv[2] or None); n.snapshot(); print(json.dumps(n.snapshot()))")
    try:
        proc = subprocess.run([sys.executable, "-c", code, str(Path(__file__).resolve().parent), cuda_uuid or ""],
                              capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return f"the NVML probe did not answer in {timeout_s:.0f} s"
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        last = lines[-1] if lines else f"exit code {proc.returncode}"
        return f"the NVML probe failed: {last[:300]}"
    try:
        json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return f"the NVML probe printed no reading: {proc.stdout.strip()[:200]!r}"
    return None


def summary(slices: list[dict[str, Any] | None]) -> dict[str, Any]:
    """The range of each reading over ``slices`` (their :meth:`SliceConditions.end` dicts):
    ``{reading: [least, most]}``, the SM clock over both ends of every slice; readings no
    slice has are left out."""
    out: dict[str, Any] = {}
    for key in ("sm_mhz", "power_w", "power_capped_share", "thermal_capped_share", "steal_share", "cores_busy",
                "main_cpu_share"):
        values: list[float] = []
        for s in slices:
            value = None if s is None else s.get(key)
            if isinstance(value, list):
                values.extend(v for v in value if v is not None)
            elif value is not None:
                values.append(value)
        if values:
            out[key] = [min(values), max(values)]
    return out
