"""The device-side words the other layers may use: the user-error type, precision names, the INT8 recipe.

This is the only module of `evaluators` that `spaces` imports (the import contract in
pyproject.toml holds it): a knob in `spaces` needs to know which precisions exist and how
a device wants INT8 written into an ONNX graph, and nothing else about how it is measured.

- `UserError`: an input a user can fix. Its message is one clear sentence; the CLI prints
  it and exits with code 2 instead of showing a traceback. Anything else is a bug.
- `PRECISIONS`: the precisions a policy may ask for, fastest first on hardware that runs
  them natively (the order the search uses to pick a "fastest" reference). "bf16" is an
  execution precision of the runtime, not a tensor type in the file: a bf16 unit is stored
  in FP32 and the artifact says how it must run (the two keys below).
- `INFERENCE_PRECISION_KEY`, `FP32_NODES_KEY`: ONNX `metadata_props` an artifact carries when
  it must not run at its runtime's default: the inference precision ("bf16"; absent means
  FP32) and a JSON list of the node names kept FP32 inside it. `spaces` writes them, a
  device and the accuracy runtime read them, and the structure hash covers them.
- `Int8Recipe`: how INT8 must be expressed for one device. Measured on an AVX2 CPU
  without VNNI: signed S8S8 Q/DQ ran 1.4-1.7x slower than FP32 under ONNX Runtime while
  U8 activations with S8 per-channel weights ran faster; OpenVINO only gains from an
  NNCF-quantized graph. So each device names its own recipe.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Literal, get_args, get_type_hints


class UserError(Exception):
    """An input a user can fix; the message is one sentence that says what to change."""


class DeviceUnavailable(UserError):
    """The device can no longer be reached (its node left the cluster, its agent stopped): no measurement
    after this one can succeed, so a search stops rather than fail every trial that follows."""


PRECISIONS: tuple[str, ...] = ("int8", "bf16", "fp16", "fp32")
INFERENCE_PRECISION_KEY = "squeezefit.inference_precision"
FP32_NODES_KEY = "squeezefit.fp32_nodes"


@dataclass(frozen=True)
class Int8Recipe:
    """The INT8 expression a device wants; every field is checked on construction.

    quantizer: "ort" (onnxruntime.quantization.quantize_static) or "nncf" (NNCF's ONNX
        quantizer, the float nodes in its ignored scope; writes Q/DQ only).
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

    def __post_init__(self) -> None:
        for name, allowed in self.choices().items():
            value = getattr(self, name)
            if value not in allowed or isinstance(value, bool) != isinstance(allowed[0], bool):
                raise UserError(f"INT8 recipe {name} {value!r} must be one of {list(allowed)}.")
        if self.quantizer == "nncf" and self.fmt != "qdq":
            raise UserError("The NNCF quantizer writes Q/DQ only; use fmt 'qdq' with quantizer 'nncf'.")

    @classmethod
    def choices(cls) -> dict[str, tuple]:
        """Every field's allowed values, read from its annotation (a `Literal` or bool)."""
        hints = get_type_hints(cls)
        return {f.name: (True, False) if hints[f.name] is bool else get_args(hints[f.name]) for f in fields(cls)}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Int8Recipe:
        """The recipe of `to_dict`'s output; an unknown field or value raises `UserError`."""
        known = {f.name for f in fields(cls)}
        if unknown := sorted(set(data) - known):
            raise UserError(f"INT8 recipe has an unknown field {unknown[0]!r}.")
        return cls(**data)
