"""The latency protocol every local device follows.

1. Take the host's lock (`evaluators.host_lock`), so only one measurement times on a host
   at a time, whatever process or checkout it comes from.
2. Reset the peak-memory mark, load the artifact into the runtime (fixed threads, set by
   the device), feed it fixed synthetic inputs.
3. Warm up until stable: stop when the median of the last `warmup_window` runs differs
   from the median of the window before it by less than `warmup_tolerance`, or at the
   caps (`warmup_max_runs`, `warmup_max_seconds`), whichever comes first.
4. Timed runs until BOTH floors are met (`min_runs` runs and `min_seconds` of timing), or
   `max_runs`. Each run is timed with `time.perf_counter_ns` (GPU devices pass their own
   clock, e.g. CUDA events). The garbage collector is paused while timing.
5. Report the median (p50), p90, IQR, mean (`TimingStats`), and the peak resident memory
   added (`evaluators.memory`).
6. Sustained mode (`sustained_seconds > 0`): run back to back for that long and report the
   throughput and the drift between the first and last fifth of the runs.
7. Side by side (`run_alternating`, `LocalDevice._measure_together`): several artifacts
   loaded at once, each warmed up, then run in turn round by round; the ratios of their
   medians come from `evaluators.paired`. `time_together` does the same for clocks that
   different devices of one host opened. After the timed artifacts, one more copy of the
   first is loaded and never run (the ballast): on ONNX Runtime the session loaded last runs
   3-7% faster than its identical twins loaded before it (five copies of one INT8 model, one
   session: 1.00 / 0.99 / 0.98 / 0.97 / 0.92 by load order; a pair 1.00 / 0.97, with the
   ballast 1.00 / 0.99), which would favour whichever artifact a caller happens to list last.
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import time
from abc import abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from evaluators.base import Device, Fingerprint, LatencyMeasurement, PairedMeasurement, TimingSettings, TimingStats
from evaluators.host_lock import device_lock
from evaluators.memory import MemoryWatch
from evaluators.paired import host_drift, ratio_interval


def wall_clock(run: Callable[[], object]) -> Callable[[], float]:
    """Wrap a blocking inference call into a clock that returns its duration in ms."""

    def timed() -> float:
        start = time.perf_counter_ns()
        run()
        return (time.perf_counter_ns() - start) / 1e6

    return timed


def run_protocol(timed_run: Callable[[], float], settings: TimingSettings) -> TimingStats:
    """Warm up, time and (optionally) sustain `timed_run`, which returns one run's ms."""
    with _gc_paused():
        warmup_runs = warm_up(timed_run, settings)
        times = _timed_runs(timed_run, settings)
        sustained = _sustain(timed_run, settings.sustained_seconds) if settings.sustained_seconds > 0 else {}
    return summarize(times, warmup_runs=warmup_runs, **sustained)


def run_alternating(clocks: Sequence[Callable[[], float]], settings: TimingSettings) -> list[list[float]]:
    """Side-by-side timing: warm each clock up (step 3), then run them in turn, one run each per round, the
    order reversed every other round (A B, B A, ...), until both floors hold (`min_runs` rounds and
    `min_seconds`) or `max_runs` rounds; the garbage collector paused. Returns ms per clock per round."""
    if not clocks:
        return []
    with _gc_paused():
        for clock in clocks:
            warm_up(clock, settings)
        times: list[list[float]] = [[] for _ in clocks]
        order = list(range(len(clocks)))
        start = time.perf_counter_ns()
        rounds = 0
        while rounds < settings.max_runs:
            for index in order if rounds % 2 == 0 else reversed(order):
                times[index].append(clocks[index]())
            rounds += 1
            if rounds >= settings.min_runs and (time.perf_counter_ns() - start) / 1e9 >= settings.min_seconds:
                break
    return times


def time_together(clocks: Sequence[Callable[[], float]], settings: TimingSettings, *, host: str = "cpu"):
    """`run_alternating` under the host's lock: clocks opened by different devices (e.g. ONNX Runtime and
    OpenVINO on one CPU) timed in one round-robin session. Returns ms per clock per round."""
    with device_lock(host):
        return run_alternating(clocks, settings)


@contextlib.contextmanager
def _gc_paused():
    """Collect once, then keep the garbage collector off while timing (restored after)."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def summarize(times: list[float], *, warmup_runs: int, **sustained) -> TimingStats:
    """TimingStats of timed runs (ms): p50, p90, IQR, mean, count."""
    q25, p50, q75, p90 = np.percentile(times, [25, 50, 75, 90])
    return TimingStats(
        p50_ms=float(p50),
        p90_ms=float(p90),
        iqr_ms=float(q75 - q25),
        mean_ms=float(np.mean(times)),
        runs=len(times),
        warmup_runs=warmup_runs,
        **sustained,
    )


def warm_up(timed_run: Callable[[], float], s: TimingSettings) -> int:
    """Run `timed_run` until its window medians settle (step 3 of the protocol); returns the runs spent."""
    times: list[float] = []
    deadline = time.monotonic() + s.warmup_max_seconds
    while len(times) < s.warmup_max_runs and time.monotonic() < deadline:
        times.append(timed_run())
        w = s.warmup_window
        if len(times) >= max(s.warmup_min_runs, 2 * w):
            last, before = statistics.median(times[-w:]), statistics.median(times[-2 * w : -w])
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
    return {
        "sustained_seconds": round(elapsed, 3),
        "sustained_throughput_ips": len(times) / elapsed,
        "sustained_drift": last / first - 1 if first > 0 else 0.0,
    }


def measure_locally(
    host: str, load: Callable[[], Callable[[], float]], settings: TimingSettings, device: str, fingerprint: Fingerprint
) -> LatencyMeasurement:
    """The whole protocol for a local device.

    load() builds the runtime session for the artifact and returns its timed run (ms);
    it is called under the host lock and inside the memory watch, so the reported
    peak memory includes loading and compiling the artifact.
    """
    with device_lock(host), MemoryWatch() as memory:
        timed_run = load()
        stats = run_protocol(timed_run, settings)
        del timed_run
    return LatencyMeasurement(stats, round(memory.peak_mb, 3), device, fingerprint)


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

        inputs: fixed input arrays by graph input name (`evaluators.inputs`). A file the
        runtime cannot load raises `UserError`. The clock keeps the session alive.
        """

    def _measure(self, artifact_path: Path, settings: TimingSettings, inputs: dict) -> LatencyMeasurement:
        return measure_locally(
            self.host, lambda: self.open(artifact_path, inputs), settings, self.name, self.fingerprint()
        )

    def _measure_together(
        self, paths: list[Path], settings: TimingSettings, inputs: dict, reference_structure: str
    ) -> list[PairedMeasurement]:
        with device_lock(self.host), MemoryWatch() as memory:
            clocks = [self.open(path, inputs) for path in paths]
            ballast = self.open(paths[0], inputs)  # loaded last, never run (step 7)
            times = run_alternating(clocks, settings)
            del clocks, ballast
        reference = times[0]
        ref_p50 = float(np.median(reference))
        drift = host_drift(reference)
        fingerprint = self.fingerprint()
        results = []
        for mine in times:
            ratio, low, high = ratio_interval(mine, reference)
            results.append(
                PairedMeasurement(
                    ratio=ratio,
                    ratio_low=low,
                    ratio_high=high,
                    stats=summarize(mine, warmup_runs=0),
                    reference_p50_ms=ref_p50,
                    host_drift=drift,
                    reference_structure=reference_structure,
                    peak_memory_mb=round(memory.peak_mb, 3),
                    device=self.name,
                    fingerprint=fingerprint,
                )
            )
        return results
