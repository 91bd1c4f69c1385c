"""What a device is, what a latency measurement is, and the registry of devices by name.

A `Device` is a runtime on a piece of hardware with fixed settings (threads, execution
provider, precision hints). It measures the latency of an ONNX artifact *file*; it never
sees a policy or a model object. Its contract:

- `name` is the registry name it was built from ("ort-cpu:2", "remote:http://h:8765").
- `fingerprint()` describes everything that changes timing: hardware model, runtime and
  version, settings. It is stable for the life of the device, and two devices with equal
  fingerprints are interchangeable (their measurements may be shared through the cache).
- `precisions` are the precisions the device runs ("fp32", "fp16", "int8"); a search space
  only offers those. `int8_recipe` says how INT8 must be expressed in the ONNX for this
  device; it is None exactly when "int8" is not in `precisions`.
- `measure(path, settings=...)` returns a `LatencyMeasurement`. A missing or unreadable
  artifact raises `UserError`. A measurement already in the cache for the same artifact
  structure, fingerprint and timing settings is returned with `cached=True` and nothing
  is timed. Local devices time under the cross-process lock of their host (see
  `evaluators.timing`), so concurrent callers queue instead of disturbing each other.
  `measure` is safe to call from several threads; calls are serialised.

A new device is one file: subclass `evaluators.timing.LocalDevice` (a runtime in this
process: implement `fingerprint()` and `open()`, the protocol comes with it) or `Device`
(anything else, e.g. a remote agent: implement `fingerprint()` and `_measure()`), and
call `register_device(prefix, factory, available)` at import time.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import threading
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

from evaluators.exceptions import UserError
from evaluators.recipe import Int8Recipe

PRECISIONS = ("fp32", "fp16", "int8")


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
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return {"hardware": self.hardware, "runtime": self.runtime, "version": self.version,
                "settings": dict(self.settings)}

    @classmethod
    def from_dict(cls, data: dict) -> "Fingerprint":
        return cls(data["hardware"], data["runtime"], data["version"], dict(data.get("settings", {})))


@dataclass(frozen=True)
class LatencyMeasurement:
    """Latency of one artifact on one device. Times in ms, memory in MB.

    p50_ms / p90_ms / iqr_ms / mean_ms: statistics of the timed runs (one inference each,
        batch as exported). runs: timed runs; warmup_runs: untimed runs before them.
    peak_memory_mb: peak resident memory added by loading and running the artifact.
    cached: True when the numbers come from the cache and nothing was timed now.
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
    peak_memory_mb: float
    device: str
    fingerprint: Fingerprint
    cached: bool = False
    sustained_seconds: float | None = None
    sustained_throughput_ips: float | None = None
    sustained_drift: float | None = None

    def to_dict(self) -> dict:
        data = asdict(self)
        data["fingerprint"] = self.fingerprint.to_dict()
        data["fingerprint_hash"] = self.fingerprint.hash
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "LatencyMeasurement":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        fp = values["fingerprint"]
        values["fingerprint"] = fp if isinstance(fp, Fingerprint) else Fingerprint.from_dict(fp)
        return cls(**values)


def check_artifact(path: str | os.PathLike):
    """Load and check an ONNX file; return the `onnx.ModelProto` (weights included).

    Raises `UserError` when the file is missing or is not a valid ONNX model.
    """
    import onnx

    path = Path(path)
    if not path.is_file():
        raise UserError(f"ONNX file {path} does not exist.")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:  # protobuf and checker errors have no common base class
        raise UserError(f"{path} is not a valid ONNX model ({_first_line(exc)}).") from None
    if not model.graph.node:
        raise UserError(f"{path} is not a valid ONNX model (its graph has no nodes).")
    return model


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


class Device(ABC):
    """A runtime on a piece of hardware with fixed settings; see the module docstring.

    cache: a `LatencyCache`, or None for the default cache file, or False for no cache.
    """

    name: str
    precisions: tuple[str, ...] = ("fp32",)
    int8_recipe: Int8Recipe | None = None

    def __init__(self, name: str, *, cache=None):
        self.name = name
        self._cache_arg = cache
        self._serial = threading.Lock()

    @abstractmethod
    def fingerprint(self) -> Fingerprint:
        """Describe the hardware, runtime and settings; stable for the device's life."""

    @abstractmethod
    def _measure(self, artifact_path: Path, settings, inputs: dict) -> LatencyMeasurement:
        """Time a checked artifact, uncached, holding the host lock.

        inputs: fixed synthetic input arrays by graph input name (`timing.synthetic_inputs`).
        """

    def measure(self, artifact_path: str | os.PathLike, *, settings=None) -> LatencyMeasurement:
        """Latency of the ONNX file at `artifact_path`, from the cache when known.

        settings: a `TimingSettings` (None: the defaults). Raises `UserError` for a
        missing or invalid artifact.
        """
        from evaluators.cache import LatencyCache, structure_hash
        from evaluators.timing import TimingSettings, synthetic_inputs

        settings = settings or TimingSettings()
        path = Path(artifact_path)
        model = check_artifact(path)
        cache = self._cache_arg
        if cache is None:
            cache = self._cache_arg = LatencyCache()
        elif cache is False:
            cache = None
        with self._serial:
            fingerprint = self.fingerprint()
            key = (structure_hash(model), fingerprint.hash, settings.key())
            if cache is not None and (hit := cache.get(*key)) is not None:
                return hit
            inputs = synthetic_inputs(model)
            del model  # the runtime reloads the file; don't keep a second copy in memory
            result = self._measure(path, settings, inputs)
            if cache is not None and not result.cached:
                cache.put(*key, result)
            return result

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


# ---------------------------------------------------------------------------------------
# Hardware descriptions shared by the device implementations.

_ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16",
              "avx512_fp16", "asimd", "asimddp", "i8mm", "sve")


def cpu_description() -> str:
    """CPU model string plus the ISA features that select int8/fp16 kernels."""
    model, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            if key in ("model name", "Hardware") and not model:
                model = value
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    model = model or platform.processor() or platform.machine()
    isa = ",".join(f for f in _ISA_FLAGS if f in flags)
    return f"{model} ({isa})" if isa else model


def gpu_description(index: int = 0) -> str | None:
    """Name of CUDA GPU `index` (via torch when it has CUDA, else nvidia-smi), or None."""
    try:
        import torch

        if torch.cuda.is_available() and index < torch.cuda.device_count():
            return torch.cuda.get_device_name(index)
    except Exception:
        pass
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", f"--id={index}"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


# ---------------------------------------------------------------------------------------
# Registry by name: "ort-cpu", "ort-cpu:2", "remote:http://host:port", ...


@dataclass(frozen=True)
class DeviceStatus:
    """One registered device kind: its name prefix, how to name it, whether it is usable here and why not."""

    prefix: str
    usage: str
    usable: bool
    reason: str = ""


@dataclass(frozen=True)
class _Entry:
    factory: Callable[..., Device]
    available: Callable[[], tuple[bool, str]]
    usage: str


_REGISTRY: dict[str, _Entry] = {}


def register_device(prefix: str, factory: Callable[..., Device],
                    available: Callable[[], tuple[bool, str]] | None = None, *, usage: str | None = None) -> None:
    """Register a device kind.

    factory(arg, **options) -> Device, where arg is the text after the first ":" of the
    name (None without one) and options are `get_device`'s keyword arguments.
    available() -> (usable, reason): cheap to call; reason says what is missing.
    """
    _REGISTRY[prefix] = _Entry(factory, available or (lambda: (True, "")), usage or prefix)


def known_devices() -> tuple[str, ...]:
    """Usage strings of every registered device kind, e.g. "ort-cpu[:threads]"."""
    return tuple(entry.usage for entry in _REGISTRY.values())


def get_device(name: str, **options) -> Device:
    """Build the device `name`, e.g. "ort-cpu", "ort-cpu:2", "openvino-cpu", "remote:http://h:p".

    options are passed to the factory (e.g. cache=...). An unknown name, a bad argument
    or a device not usable on this machine raises `UserError`.
    """
    prefix, _, arg = name.partition(":")
    entry = _REGISTRY.get(prefix)
    if entry is None:
        raise UserError(f"unknown device {name!r}; known devices: {', '.join(known_devices())}.")
    usable, reason = entry.available()
    if not usable:
        raise UserError(f"device {name!r} is not usable on this machine: {reason}")
    return entry.factory(arg or None, **options)


def available_devices() -> tuple[DeviceStatus, ...]:
    """Every registered device kind, with whether it is usable here and why not."""
    statuses = []
    for prefix, entry in _REGISTRY.items():
        usable, reason = entry.available()
        statuses.append(DeviceStatus(prefix, entry.usage, usable, reason))
    return tuple(statuses)


def parse_count(arg: str | None, *, what: str, device: str, default: int) -> int:
    """The positive integer after the colon of a device name (threads, GPU index)."""
    if arg is None:
        return default
    if not arg.isdigit() or (what == "threads" and int(arg) < 1):
        raise UserError(f"device {device}:{arg} needs a positive integer {what} after the colon.")
    return int(arg)
