"""The contracts of the evaluators layer: what a device is and what a latency measurement is.

A `Device` is a runtime on a piece of hardware with fixed settings (threads, execution
provider, precision hints). It measures the latency of an ONNX artifact *file*; it never
sees a policy or a model object. Its contract:

- `name` is the registry name it was built from ("ort-cpu:2", "remote:http://h:8765").
- `fingerprint()` describes everything that changes timing: hardware model, runtime and
  version, settings. It is stable for the life of the device, and two devices with equal
  fingerprints are interchangeable (their measurements may be shared through the cache).
- `precisions` are the precisions the device runs (names from `evaluators.vocabulary`); a
  search space only offers those. `int8_recipe` says how INT8 must be expressed in the ONNX
  for this device; it is None exactly when "int8" is not in `precisions`. `recipe_for()` is
  the one place where a policy's own recipe, the device's and the default are resolved.
  `fastest_precision` is the uniform precision the device runs a model fastest in, what a
  user deploys in (a search's uniform references use it): by default the first offered of
  int8, bf16, fp16, fp32; a device whose hardware ranks them otherwise says so.
- `accuracy_runtime` names the runtime the mAP of an artifact for this device is measured
  on (one of `evaluators.accuracy.RUNTIMES`).
- `measure(path, settings=...)` returns a `LatencyMeasurement`. A missing or unreadable
  artifact raises `UserError`. A measurement already in the cache for the same artifact
  structure, fingerprint and timing settings is returned with `cached=True` and nothing
  is timed. Local devices time under the cross-process lock of their host (see
  `evaluators.host_lock`), so concurrent callers queue instead of disturbing each other.
  `measure` is safe to call from several threads; calls are serialised.

A new device is one file: subclass `evaluators.timing.LocalDevice` (a runtime in this
process: implement `fingerprint()` and `open()`, the protocol comes with it) or `Device`
(anything else, e.g. a remote agent: implement `fingerprint()` and `_measure()`), and
call `evaluators.registry.register_device(prefix, factory, available)` at import time.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from evaluators.artifact import check_artifact, structure_hash
from evaluators.cache import LatencyCache
from evaluators.inputs import synthetic_inputs
from evaluators.vocabulary import PRECISIONS, Int8Recipe, UserError


@dataclass(frozen=True)
class Fingerprint:
    """What a measurement depends on besides the artifact.

    hardware: the processor model (and the ISA features that select kernels), e.g.
        "AMD EPYC (avx2,avx512f,avx512_vnni)" or "NVIDIA H100 80GB HBM3".
    runtime / version: e.g. "onnxruntime" / "1.31.1".
    settings: every runtime setting that changes timing (threads, provider, hints).
    """

    hardware: str
    runtime: str
    version: str
    settings: dict = field(default_factory=dict)

    @property
    def hash(self) -> str:
        """Stable 16-hex-digit hash of the canonical JSON form."""
        return _digest(json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")))

    def to_dict(self) -> dict:
        return {
            "hardware": self.hardware,
            "runtime": self.runtime,
            "version": self.version,
            "settings": dict(self.settings),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Fingerprint:
        return cls(data["hardware"], data["runtime"], data["version"], dict(data.get("settings", {})))


@dataclass(frozen=True)
class TimingSettings:
    """How long and how often to time (see `evaluators.timing`). Seconds are wall-clock; tolerance a ratio in [0, 1)."""

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
    def from_dict(cls, data: dict) -> TimingSettings:
        return cls(**data)

    def key(self) -> str:
        """Stable hash of the settings, part of the cache key."""
        return _digest(json.dumps(self.to_dict(), sort_keys=True))


@dataclass(frozen=True)
class TimingStats:
    """Statistics of one protocol run; times in ms.

    p50_ms / p90_ms / iqr_ms / mean_ms: statistics of the timed runs (one inference each,
        batch as exported). runs: timed runs; warmup_runs: untimed runs before them.
    sustained_*: only in sustained mode, else None: seconds run back to back, throughput
        in inferences per second, and drift = median of the last window / median of the
        first window - 1 (positive: it slowed down, e.g. thermal throttling).
    """

    p50_ms: float
    p90_ms: float
    iqr_ms: float
    mean_ms: float
    runs: int
    warmup_runs: int
    sustained_seconds: float | None = None
    sustained_throughput_ips: float | None = None
    sustained_drift: float | None = None


class _StatsView:
    """A measurement whose timing statistics read through: `m.p50_ms` is `m.stats.p50_ms`."""

    def __getattr__(self, name: str):
        if name in _STAT_FIELDS:
            return getattr(self.stats, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


@dataclass(frozen=True)
class LatencyMeasurement(_StatsView):
    """Latency of one artifact on one device: the timing statistics plus where they come from.

    stats: the protocol's statistics (its fields are also readable here: `m.p50_ms`).
    peak_memory_mb: peak resident memory (MB) added by loading and running the artifact.
    cached: True when the numbers come from the cache and nothing was timed now.
    `to_dict()` is flat: the statistics' fields, then device, fingerprint, fingerprint_hash, session.
    session: where and when it was timed (`timing_session`: host, started, ended; `node` on a Ray cluster).
    """

    stats: TimingStats
    peak_memory_mb: float
    device: str
    fingerprint: Fingerprint
    cached: bool = False
    session: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {**asdict(self.stats), **_provenance(self)}

    @classmethod
    def from_dict(cls, data: dict) -> LatencyMeasurement:
        return cls(stats=_stats_from(data), **_provenance_from(data))


_STAT_FIELDS = frozenset(f.name for f in fields(TimingStats))


@dataclass(frozen=True)
class PairedMeasurement(_StatsView):
    """A candidate timed against a reference side by side (`evaluators.paired`): their ratio is the number.

    ratio: median(candidate) / median(reference) over the alternated rounds; ratio_low /
        ratio_high: its bootstrap 95% interval. Below 1: the candidate is faster.
    stats: the candidate's own statistics in that session (p50_ms, p90_ms, ... readable
        here too: `m.p50_ms`); reference_p50_ms: the reference's median in the same window.
    host_drift: how far the reference itself moved during the session (last fifth's median
        / first fifth's - 1), i.e. how much a single-artifact number would have been off.
    reference_structure: `structure_hash` of the reference; part of the cache key.
    `latency_ms(l0)` = ratio x l0: the candidate's latency on the scale where the reference
    takes `l0` ms (a study fixes l0 once, so its trials stay comparable).
    `to_dict()` is flat: ratio fields, the candidate's statistics, reference_p50_ms,
    host_drift, reference_structure, peak_memory_mb, device, fingerprint, cached, fingerprint_hash,
    session (where and when it was timed, as for `LatencyMeasurement`).
    """

    ratio: float
    ratio_low: float
    ratio_high: float
    stats: TimingStats
    reference_p50_ms: float
    host_drift: float
    reference_structure: str
    peak_memory_mb: float
    device: str
    fingerprint: Fingerprint
    cached: bool = False
    session: dict = field(default_factory=dict)

    def latency_ms(self, reference_ms: float) -> float:
        """The candidate's latency when the reference takes `reference_ms` ms."""
        return self.ratio * reference_ms

    def to_dict(self) -> dict:
        return {
            "ratio": self.ratio,
            "ratio_low": self.ratio_low,
            "ratio_high": self.ratio_high,
            **asdict(self.stats),
            "reference_p50_ms": self.reference_p50_ms,
            "host_drift": self.host_drift,
            "reference_structure": self.reference_structure,
            **_provenance(self),
        }

    @classmethod
    def from_dict(cls, data: dict) -> PairedMeasurement:
        return cls(
            ratio=data["ratio"],
            ratio_low=data["ratio_low"],
            ratio_high=data["ratio_high"],
            stats=_stats_from(data),
            reference_p50_ms=data["reference_p50_ms"],
            host_drift=data["host_drift"],
            reference_structure=data["reference_structure"],
            **_provenance_from(data),
        )


def _stats_from(data: dict) -> TimingStats:
    return TimingStats(**{k: data[k] for k in _STAT_FIELDS if k in data})


def _provenance(m) -> dict:
    """Where a measurement comes from, as the flat dicts of `to_dict()` end."""
    return {
        "peak_memory_mb": m.peak_memory_mb,
        "device": m.device,
        "fingerprint": m.fingerprint.to_dict(),
        "cached": m.cached,
        "fingerprint_hash": m.fingerprint.hash,
        "session": dict(m.session),
    }


def _provenance_from(data: dict) -> dict:
    """The constructor arguments `_provenance` wrote."""
    fp = data["fingerprint"]
    return {
        "peak_memory_mb": data["peak_memory_mb"],
        "device": data["device"],
        "fingerprint": fp if isinstance(fp, Fingerprint) else Fingerprint.from_dict(fp),
        "cached": bool(data.get("cached", False)),
        "session": dict(data.get("session") or {}),
    }


def timing_session(started: float, ended: float) -> dict:
    """Where and when a measurement was timed: this host's name and the wall-clock window (epoch seconds).

    A device that times on another machine (a remote agent, a Ray cluster's device node) returns
    that machine's session, with its `node` where it has one."""
    return {"host": socket.gethostname(), "started": round(started, 3), "ended": round(ended, 3)}


def _stamped(result, started: float):
    """`result` (one measurement or a list) with this host's session unless the device already said where it timed."""
    ended = time.time()
    if isinstance(result, list):
        return [_stamped(one, started) for one in result]
    return result if result.session else replace(result, session=timing_session(started, ended))


class Device(ABC):
    """A runtime on a piece of hardware with fixed settings; see the module docstring.

    cache: a `LatencyCache`, or None for the default cache file, or False for no cache.
    """

    name: str
    precisions: tuple[str, ...] = ("fp32",)
    int8_recipe: Int8Recipe | None = None
    accuracy_runtime: str = "onnxruntime"

    def __init__(self, name: str, *, cache=None):
        self.name = name
        self._cache_arg = cache
        self._serial = threading.Lock()

    @property
    def fastest_precision(self) -> str:
        """The uniform precision this device runs fastest (see the module docstring)."""
        return next(p for p in PRECISIONS if p in self.precisions)

    @abstractmethod
    def fingerprint(self) -> Fingerprint:
        """Describe the hardware, runtime and settings; stable for the device's life."""

    @abstractmethod
    def _measure(self, artifact_path: Path, settings: TimingSettings, inputs: dict) -> LatencyMeasurement:
        """Time a checked artifact, uncached, holding the host lock.

        inputs: fixed synthetic input arrays by graph input name (`evaluators.inputs`).
        """

    def recipe_for(self, policy_recipe: Int8Recipe | None = None) -> Int8Recipe:
        """The INT8 recipe an artifact for this device is built with: the policy's own if it
        names one, else the device's, else the default (unused where no unit is INT8)."""
        return policy_recipe or self.int8_recipe or Int8Recipe()

    def measure(
        self, artifact_path: str | os.PathLike, *, settings: TimingSettings | None = None
    ) -> LatencyMeasurement:
        """Latency of the ONNX file at `artifact_path`, from the cache when known.

        settings: None means the defaults. Raises `UserError` for a missing or invalid artifact.
        """
        settings = settings or TimingSettings()
        path = Path(artifact_path)
        model = check_artifact(path)
        cache = self._cache()
        with self._serial:
            fingerprint = self.fingerprint()
            key = (structure_hash(model), fingerprint.hash, settings.key())
            if cache is not None and (hit := cache.get(*key)) is not None:
                return LatencyMeasurement.from_dict(hit)
            inputs = synthetic_inputs(model)
            del model  # the runtime reloads the file; don't keep a second copy in memory
            started = time.time()
            result = _stamped(self._measure(path, settings, inputs), started)
            if cache is not None and not result.cached:
                cache.put(*key, result.to_dict())
            return result

    def runtime_settings(self, artifact_path: str | os.PathLike) -> dict:
        """The runtime settings this device runs the artifact with: what a user's own run needs to reproduce it.

        Default: the fingerprint's settings. A device whose settings depend on the artifact
        (OpenVINO's inference precision) gives that artifact's.
        """
        return dict(self.fingerprint().settings)

    def measure_paired(
        self,
        artifact_path: str | os.PathLike,
        reference_path: str | os.PathLike,
        *,
        settings: TimingSettings | None = None,
    ) -> PairedMeasurement:
        """The artifact timed against `reference_path` side by side (`evaluators.paired`), from the cache when known.

        The cache key is (structure, reference structure, fingerprint, settings). Raises
        `UserError` for a missing or invalid file, or two files whose inputs differ.
        """
        settings = settings or TimingSettings()
        candidate, reference = Path(artifact_path), Path(reference_path)
        model, ref_model = check_artifact(candidate), check_artifact(reference)
        inputs, ref_inputs = synthetic_inputs(model), synthetic_inputs(ref_model)
        _check_same_inputs(candidate, inputs, reference, ref_inputs)
        structure, ref_structure = structure_hash(model), structure_hash(ref_model)
        del model, ref_model
        cache = self._cache()
        with self._serial:
            key = (structure, self.fingerprint().hash, f"{settings.key()}:vs:{ref_structure}")
            if cache is not None and (hit := cache.get(*key)) is not None:
                return PairedMeasurement.from_dict(hit)
            started = time.time()
            result = _stamped(
                self._measure_together([reference, candidate], settings, inputs, ref_structure)[1], started
            )
            if cache is not None:
                cache.put(*key, result.to_dict())
            return result

    def measure_together(
        self, paths: list[str | os.PathLike], *, settings: TimingSettings | None = None
    ) -> list[PairedMeasurement]:
        """Time all `paths` in one round-robin session; each against the first (whose ratio is 1). Never cached.

        Used where several latencies must share one moment of the host (a front re-timed
        with its baseline). Raises `UserError` for a missing or invalid file, or inputs that differ.
        """
        settings = settings or TimingSettings()
        paths = [Path(p) for p in paths]
        if not paths:
            return []
        reference = check_artifact(paths[0])
        inputs, ref_structure = synthetic_inputs(reference), structure_hash(reference)
        del reference
        for path in paths[1:]:
            _check_same_inputs(path, synthetic_inputs(check_artifact(path)), paths[0], inputs)
        with self._serial:
            started = time.time()
            return _stamped(self._measure_together(paths, settings, inputs, ref_structure), started)

    def _measure_together(
        self, paths: list[Path], settings: TimingSettings, inputs: dict, reference_structure: str
    ) -> list[PairedMeasurement]:
        """Time checked artifacts (same inputs) in one alternating session; element i is paths[i] vs paths[0].

        reference_structure: `structure_hash` of paths[0], for the results."""
        raise UserError(f"device {self.name} cannot time artifacts side by side.")

    def _cache(self) -> LatencyCache | None:
        if self._cache_arg is None:
            self._cache_arg = LatencyCache()
        return self._cache_arg if self._cache_arg is not False else None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


def _check_same_inputs(path: Path, inputs: dict, reference: Path, ref_inputs: dict) -> None:
    # The candidate's arrays feed every artifact of the session: names, shapes and types must agree.
    shapes = {k: f"{v.dtype}{list(v.shape)}" for k, v in inputs.items()}
    ref_shapes = {k: f"{v.dtype}{list(v.shape)}" for k, v in ref_inputs.items()}
    if shapes != ref_shapes:
        raise UserError(
            f"{path} takes inputs {shapes} but the reference {reference} takes {ref_shapes}; "
            "compare artifacts of the same input shape."
        )


def _digest(canonical: str) -> str:
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
