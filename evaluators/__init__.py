"""How good and how fast a candidate artifact is, measured on real runtimes.

Latency: `get_device("ort-cpu:2").measure("model.onnx")` -> `LatencyMeasurement`. The
device implementations register themselves here by name; their runtimes (onnxruntime,
openvino, tensorrt) are imported only when a device measures, so `import evaluators` is
cheap on any machine. Accuracy: `measure_accuracy` (from `evaluators.accuracy`).
"""

from evaluators.base import (
    Device,
    DeviceStatus,
    Fingerprint,
    LatencyMeasurement,
    available_devices,
    check_artifact,
    get_device,
    known_devices,
    register_device,
)
from evaluators.cache import LatencyCache, structure_hash
from evaluators.exceptions import UserError
from evaluators.recipe import Int8Recipe
from evaluators.timing import LocalDevice, TimingSettings, device_lock

# Built-in devices register on import (order = the order `known_devices()` lists them in).
from evaluators import ort as _ort  # noqa: E402,F401  isort: skip
from evaluators import openvino as _openvino  # noqa: E402,F401  isort: skip
from evaluators import tensorrt as _tensorrt  # noqa: E402,F401  isort: skip
from evaluators import remote as _remote  # noqa: E402,F401  isort: skip

__all__ = [
    "Device", "DeviceStatus", "Fingerprint", "Int8Recipe", "LatencyCache", "LatencyMeasurement", "LocalDevice",
    "TimingSettings", "UserError", "available_devices", "check_artifact", "device_lock", "get_device", "known_devices",
    "register_device", "structure_hash",
]


def __getattr__(name: str):
    # evaluators.accuracy pulls in Ultralytics: load it only when asked for.
    if name in ("measure_accuracy", "AccuracyMeasurement"):
        from evaluators import accuracy

        return getattr(accuracy, name)
    raise AttributeError(f"module 'evaluators' has no attribute {name!r}")
