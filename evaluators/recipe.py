"""How INT8 must be expressed in an ONNX artifact to run fast on one device.

A recipe belongs to the device (an `evaluators` concept) and is consumed by the artifact
builder in `spaces.precision`. Measured on an AVX2 CPU without VNNI: signed S8S8 Q/DQ ran
1.4-1.7x slower than FP32 under ONNX Runtime while U8 activations with S8 per-channel
weights ran faster; OpenVINO only gains from an NNCF-quantized graph. So each device names
its own recipe, and where the best one is not known the search may vary these fields.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal


@dataclass(frozen=True)
class Int8Recipe:
    """The INT8 expression a device wants.

    quantizer: "ort" (onnxruntime.quantization.quantize_static) or "nncf" (NNCF's ONNX
        quantizer, the float nodes in its ignored scope).
    fmt: "qdq" (QuantizeLinear/DequantizeLinear pairs) or "qoperator" (QLinearConv, ...).
    activations / weights: "uint8" or "int8".
    per_channel: per-output-channel weight scales.
    symmetric_activations / symmetric_weights: zero point fixed at 0 (or 128 for uint8).
    calibration: "minmax", "entropy" or "percentile".
    """

    quantizer: Literal["ort", "nncf"] = "ort"
    fmt: Literal["qdq", "qoperator"] = "qdq"
    activations: Literal["uint8", "int8"] = "uint8"
    weights: Literal["uint8", "int8"] = "int8"
    per_channel: bool = True
    symmetric_activations: bool = False
    symmetric_weights: bool = True
    calibration: Literal["minmax", "entropy", "percentile"] = "minmax"

    def to_dict(self) -> dict:
        return asdict(self)
