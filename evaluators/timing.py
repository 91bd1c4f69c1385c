"""The latency protocol every local device follows.

1. Take the host's lock (`device_lock`): an exclusive `fcntl` lock on a file in a
   machine-wide directory, so only one measurement times on a host at a time, whatever
   process or checkout it comes from. CPU devices share the key "cpu" (they share cores).
2. Reset the peak-memory mark, load the artifact into the runtime (fixed threads, set by
   the device), feed it fixed synthetic inputs.
3. Warm up until stable: stop when the median of the last `warmup_window` runs differs
   from the median of the window before it by less than `warmup_tolerance`, or at the
   caps (`warmup_max_runs`, `warmup_max_seconds`), whichever comes first.
4. Timed runs until BOTH floors are met (`min_runs` runs and `min_seconds` of timing), or
   `max_runs`. Each run is timed with `time.perf_counter_ns` (GPU devices pass their own
   clock, e.g. CUDA events). The garbage collector is paused while timing.
5. Report the median (p50), p90, IQR, mean, and the peak resident memory added.
6. Sustained mode (`sustained_seconds > 0`): run back to back for that long and report the
   throughput and the drift between the first and last fifth of the runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import hashlib
import json
import os
import re
import statistics
import tempfile
import time
from abc import abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from evaluators.base import Device, Fingerprint, LatencyMeasurement
from evaluators.exceptions import UserError


@dataclass(frozen=True)
class TimingSettings:
    """How long and how often to time. Seconds are wall-clock; tolerance is a ratio in [0, 1)."""

    warmup_min_runs: int = 5
    warmup_max_runs: int = 200
    warmup_max_seconds: float = 10.0
    warmup_window: int = 5
    warmup_tolerance: float = 0.02
    min_runs: int = 30
    min_seconds: float = 2.0
    max_runs: int = 5000
    sustained_seconds: float = 0.0

    def __post_init__(self):
        if self.min_runs < 1 or self.max_runs < self.min_runs:
            raise UserError(f"timing needs 1 <= min_runs <= max_runs, got {self.min_runs} and {self.max_runs}.")
        if self.warmup_window < 1 or self.warmup_max_runs < 0 or not 0 <= self.warmup_tolerance < 1:
            raise UserError("timing needs warmup_window >= 1, warmup_max_runs >= 0 and 0 <= warmup_tolerance < 1.")
        if self.min_seconds < 0 or self.sustained_seconds < 0 or self.warmup_max_seconds < 0:
            raise UserError("timing durations must not be negative.")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TimingSettings":
        return cls(**data)

    def key(self) -> str:
        """Stable hash of the settings, part of the cache key."""
        canonical = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------
# One measurement at a time per host.


def lock_dir() -> Path:
    """Machine-wide lock directory: `SQUEEZEFIT_LOCK_DIR`, else <tmp>/squeezefit-locks."""
    path = Path(os.environ.get("SQUEEZEFIT_LOCK_DIR") or Path(tempfile.gettempdir()) / "squeezefit-locks")
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def device_lock(host: str, timeout_s: float | None = None):
    """Hold the exclusive lock of `host` ("cpu", "cuda:0"); wait for it, at most `timeout_s`.

    Works across processes and across threads of one process (each call opens its own
    file description). Raises `TimeoutError` when the wait exceeds `timeout_s`.
    """
    path = lock_dir() / (re.sub(r"[^A-Za-z0-9_.-]", "_", host) + ".lock")
    with open(path, "a+") as handle:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | (0 if deadline is None else fcntl.LOCK_NB))
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"the {host} measurement lock ({path}) is held by another measurement") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------
# Peak memory.


class MemoryWatch:
    """Peak resident memory added inside a `with` block, in MB (`peak_mb` after exit).

    On Linux the kernel's high-water mark is reset on entry (/proc/self/clear_refs), so
    short peaks are seen; elsewhere the RSS after the block is used.
    """

    peak_mb: float = 0.0

    def __enter__(self):
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")
        self._start = _status_kb("VmRSS")
        return self

    def __exit__(self, *exc):
        end = _status_kb("VmHWM") or _status_kb("VmRSS")
        self.peak_mb = max(end - self._start, 0) / 1024 if self._start else 0.0
        return False


def _status_kb(field: str) -> int:
    try:
        match = re.search(rf"^{field}:\s+(\d+)", Path("/proc/self/status").read_text(), re.M)
        if match:
            return int(match.group(1))
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss if field == "VmHWM" else 0


# --------------------------------------------------------------------------------------
# Inputs.

# onnx.TensorProto element types -> numpy dtypes of the inputs we can synthesise.
_NUMPY_TYPES = {1: np.float32, 10: np.float16, 11: np.float64, 2: np.uint8, 3: np.int8, 6: np.int32, 7: np.int64,
                9: np.bool_}


def input_specs(model) -> list[tuple[str, tuple[int, ...], type]]:
    """(name, static shape, numpy dtype) of each graph input of an `onnx.ModelProto`.

    A symbolic batch dimension becomes 1; symbolic spatial dimensions come from the
    Ultralytics `imgsz` metadata. Anything else still symbolic raises `UserError`.
    """
    initializers = {init.name for init in model.graph.initializer}
    imgsz = _metadata_imgsz(model)
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        if dims and dims[0] is None:
            dims[0] = 1
        if len(dims) == 4 and None in dims[2:] and imgsz:
            dims[2:] = imgsz
        if None in dims or tensor.elem_type not in _NUMPY_TYPES:
            raise UserError(f"input {value.name!r} has no fixed shape or type; "
                            "export the artifact with a static shape.")
        specs.append((value.name, tuple(dims), _NUMPY_TYPES[tensor.elem_type]))
    return specs


def _metadata_imgsz(model) -> list[int] | None:
    for prop in model.metadata_props:
        if prop.key == "imgsz":
            numbers = [int(n) for n in re.findall(r"\d+", prop.value)][:2]
            return numbers * 2 if len(numbers) == 1 else numbers or None
    return None


def synthetic_inputs(model, seed: int = 0) -> dict[str, np.ndarray]:
    """Fixed pseudo-random inputs for the graph (images in [0, 1)); values don't change timing of a CNN."""
    rng = np.random.default_rng(seed)
    return {name: rng.random(shape).astype(dtype) for name, shape, dtype in input_specs(model)}


# --------------------------------------------------------------------------------------
# The protocol.


def wall_clock(run: Callable[[], object]) -> Callable[[], float]:
    """Wrap a blocking inference call into a clock that returns its duration in ms."""

    def timed() -> float:
        start = time.perf_counter_ns()
        run()
        return (time.perf_counter_ns() - start) / 1e6

    return timed


@dataclass(frozen=True)
class TimingStats:
    """Statistics of one protocol run; times in ms."""

    p50_ms: float
    p90_ms: float
    iqr_ms: float
    mean_ms: float
    runs: int
    warmup_runs: int
    sustained_seconds: float | None = None
    sustained_throughput_ips: float | None = None
    sustained_drift: float | None = None

    def measurement(self, device: str, fingerprint: Fingerprint, peak_memory_mb: float) -> LatencyMeasurement:
        return LatencyMeasurement(device=device, fingerprint=fingerprint, peak_memory_mb=round(peak_memory_mb, 3),
                                  cached=False, **asdict(self))


def run_protocol(timed_run: Callable[[], float], settings: TimingSettings) -> TimingStats:
    """Warm up, time and (optionally) sustain `timed_run`, which returns one run's ms."""
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        warmup_runs = _warm_up(timed_run, settings)
        times = _timed_runs(timed_run, settings)
        sustained = _sustain(timed_run, settings.sustained_seconds) if settings.sustained_seconds > 0 else {}
    finally:
        if gc_was_enabled:
            gc.enable()
    q25, p50, q75, p90 = np.percentile(times, [25, 50, 75, 90])
    return TimingStats(p50_ms=float(p50), p90_ms=float(p90), iqr_ms=float(q75 - q25), mean_ms=float(np.mean(times)),
                       runs=len(times), warmup_runs=warmup_runs, **sustained)


def _warm_up(timed_run: Callable[[], float], s: TimingSettings) -> int:
    times: list[float] = []
    deadline = time.monotonic() + s.warmup_max_seconds
    while len(times) < s.warmup_max_runs and time.monotonic() < deadline:
        times.append(timed_run())
        w = s.warmup_window
        if len(times) >= max(s.warmup_min_runs, 2 * w):
            last, before = statistics.median(times[-w:]), statistics.median(times[-2 * w:-w])
            if before > 0 and abs(last / before - 1) < s.warmup_tolerance:
                break
    return len(times)


def _timed_runs(timed_run: Callable[[], float], s: TimingSettings) -> list[float]:
    times: list[float] = []
    start = time.perf_counter_ns()
    while len(times) < s.max_runs:
        times.append(timed_run())
        if len(times) >= s.min_runs and (time.perf_counter_ns() - start) / 1e9 >= s.min_seconds:
            break
    return times


def _sustain(timed_run: Callable[[], float], seconds: float) -> dict:
    times: list[float] = []
    start = time.perf_counter_ns()
    while (elapsed := (time.perf_counter_ns() - start) / 1e9) < seconds or len(times) < 2:
        times.append(timed_run())
    window = max(1, len(times) // 5)
    first, last = statistics.median(times[:window]), statistics.median(times[-window:])
    return {"sustained_seconds": round(elapsed, 3), "sustained_throughput_ips": len(times) / elapsed,
            "sustained_drift": last / first - 1 if first > 0 else 0.0}


def measure_locally(host: str, load: Callable[[], Callable[[], float]], settings: TimingSettings,
                    device: str, fingerprint: Fingerprint) -> LatencyMeasurement:
    """The whole protocol for a local device.

    load() builds the runtime session for the artifact and returns its timed run (ms);
    it is called under the host lock and inside the memory watch, so the reported
    peak memory includes loading and compiling the artifact.
    """
    with device_lock(host):
        with MemoryWatch() as memory:
            timed_run = load()
            stats = run_protocol(timed_run, settings)
            del timed_run
    return stats.measurement(device, fingerprint, memory.peak_mb)


class LocalDevice(Device):
    """A device whose runtime lives in this process: it opens an artifact into a timed run.

    Subclasses set `host` (the lock key: "cpu" for every CPU device, since they share
    cores; "cuda:N" for a GPU) and implement `open()`; `measure()` then follows this
    module's protocol. `open()` is public so a benchmark can hold one loaded artifact and
    time it in several protocol runs (e.g. interleaved with other processes).
    """

    host: str = "cpu"

    @abstractmethod
    def open(self, artifact_path: Path, inputs: dict) -> Callable[[], float]:
        """Load a checked artifact into the runtime; return a clock that runs it once and returns ms.

        inputs: fixed input arrays by graph input name (`synthetic_inputs`). A file the
        runtime cannot load raises `UserError`. The clock keeps the session alive.
        """

    def _measure(self, artifact_path: Path, settings: TimingSettings, inputs: dict) -> LatencyMeasurement:
        return measure_locally(self.host, lambda: self.open(artifact_path, inputs), settings, self.name,
                               self.fingerprint())
