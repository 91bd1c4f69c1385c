"""OpenVINO CPU device: `openvino-cpu[:threads]`, a second real device on any x86 box.

Reads the same ONNX artifact as ONNX Runtime, compiles it once per measurement with
`INFERENCE_NUM_THREADS=threads` (default 1), the LATENCY performance hint, one stream,
and `INFERENCE_PRECISION_HINT=f32`: without that hint OpenVINO silently runs FP32 graphs
in bf16 on CPUs with AVX512-BF16/AMX, and the latency would no longer belong to the
artifact whose accuracy is measured. Then one infer request is timed, inputs set once.

INT8 pays on OpenVINO only for an NNCF-quantized graph (an ONNX Runtime Q/DQ file ran no
faster than FP32), so the recipe names quantizer="nncf"; its other fields describe NNCF's
performance preset (symmetric, per-channel weights).
"""

from __future__ import annotations

import functools
from pathlib import Path

from evaluators.base import Fingerprint
from evaluators.hardware import cpu_description
from evaluators.registry import parse_count, register_device
from evaluators.timing import LocalDevice, wall_clock
from evaluators.vocabulary import Int8Recipe, UserError


class OpenVinoCpuDevice(LocalDevice):
    """OpenVINO's CPU plugin with a fixed thread count."""

    precisions = ("fp32", "fp16", "int8")
    int8_recipe = Int8Recipe(quantizer="nncf", symmetric_activations=True)
    accuracy_runtime = "openvino"

    def __init__(self, threads: int = 1, *, cache=None):
        super().__init__("openvino-cpu" if threads == 1 else f"openvino-cpu:{threads}", cache=cache)
        self.threads = threads
        self._fingerprint = None

    def config(self) -> dict:
        """The compile-time properties; every one is part of the fingerprint."""
        return {
            "INFERENCE_NUM_THREADS": self.threads,
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
            "INFERENCE_PRECISION_HINT": "f32",
        }

    def fingerprint(self) -> Fingerprint:
        if self._fingerprint is None:
            import openvino as ov

            settings = {"plugin": "CPU", **{k.lower(): v for k, v in self.config().items()}}
            self._fingerprint = Fingerprint(cpu_description(), "openvino", ov.get_version(), settings)
        return self._fingerprint

    def open(self, artifact_path: Path, inputs: dict):
        import openvino as ov

        core = ov.Core()
        try:
            model = core.read_model(str(artifact_path))
            dynamic = {i.get_any_name(): i.get_partial_shape() for i in model.inputs}
            if any(shape.is_dynamic for shape in dynamic.values()):
                model.reshape({name: list(inputs[name].shape) for name in dynamic})
            compiled = core.compile_model(model, "CPU", {k: str(v) for k, v in self.config().items()})
        except RuntimeError as exc:
            raise UserError(f"OpenVINO cannot compile {artifact_path}: {str(exc).splitlines()[0][:200]}") from None
        request = compiled.create_infer_request()
        for name, array in inputs.items():
            request.set_tensor(name, ov.Tensor(array))
        return wall_clock(request.infer)


@functools.lru_cache(maxsize=1)
def _available() -> tuple[bool, str]:
    try:
        import openvino as ov
    except ImportError as exc:
        return False, f"openvino is not installed ({exc})."
    if "CPU" not in ov.Core().available_devices:
        return False, "OpenVINO sees no CPU plugin."
    return True, ""


register_device(
    "openvino-cpu",
    lambda arg, **options: OpenVinoCpuDevice(
        parse_count(arg, what="threads", device="openvino-cpu", default=1), **options
    ),
    _available,
    usage="openvino-cpu[:threads]",
)
