"""How good and how fast a candidate artifact is, measured on real runtimes.

Latency: `get_device("ort-cpu:2").measure("model.onnx")` -> `LatencyMeasurement`. The
device implementations register themselves by name when this package is imported; their
runtimes (onnxruntime, openvino, tensorrt) are imported only when a device measures, so
`import evaluators` is cheap on any machine. Accuracy: `evaluators.accuracy.measure_accuracy`
(it imports Ultralytics, so it is not re-exported here).

Where things are: `base` (the contracts), `vocabulary` (what other layers may use),
`registry`, `timing` (the protocol) with `host_lock`, `memory`, `inputs`; `artifact`
(check, structure hash), `cache`, `hardware`; one file per device kind (`ort`, `openvino`,
`tensorrt`, `remote`, `ray_device`; the last two through `reported`); `accuracy` with `datasets`; `paths` and `environment`.
"""

import importlib

from evaluators.artifact import check_artifact, structure_hash
from evaluators.base import Device, Fingerprint, LatencyMeasurement, TimingSettings, TimingStats
from evaluators.cache import LatencyCache
from evaluators.host_lock import device_lock
from evaluators.registry import DeviceStatus, available_devices, get_device, known_devices, register_device
from evaluators.timing import LocalDevice
from evaluators.vocabulary import PRECISIONS, Int8Recipe, UserError

# Built-in devices register themselves on import; `known_devices()` lists them in this order.
BUILT_IN_DEVICES = ("ort", "openvino", "tensorrt", "remote", "ray_device")
for _module in BUILT_IN_DEVICES:
    importlib.import_module(f"evaluators.{_module}")

__all__ = [
    "PRECISIONS",
    "Device",
    "DeviceStatus",
    "Fingerprint",
    "Int8Recipe",
    "LatencyCache",
    "LatencyMeasurement",
    "LocalDevice",
    "TimingSettings",
    "TimingStats",
    "UserError",
    "available_devices",
    "check_artifact",
    "device_lock",
    "get_device",
    "known_devices",
    "register_device",
    "structure_hash",
]
