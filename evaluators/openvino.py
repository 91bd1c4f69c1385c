"""OpenVINO CPU device: `openvino-cpu[:threads]`, a second real device on any x86 box.

Reads the same ONNX artifact as ONNX Runtime, compiles it once per measurement with
`INFERENCE_NUM_THREADS=threads` (default 1), the LATENCY performance hint, one stream,
and the inference precision the artifact asks for (`evaluators.openvino_ir`): f32 unless
its metadata says bf16, with the nodes it lists kept FP32. The hint is always passed:
without it OpenVINO silently runs FP32 graphs in bf16 on CPUs with AVX512-BF16/AMX, and
the latency would no longer belong to the artifact whose accuracy is measured (the
accuracy runtime compiles with the same properties). Then one infer request is timed,
inputs set once.

Precisions: fp32 and int8 everywhere; bf16 only where the CPU computes it natively
(`evaluators.openvino_ir.native_bf16`: AVX512-BF16 or AMX) and OpenVINO's CPU plugin reports
the BF16 capability. Elsewhere bf16 is emulated, pays nothing, and a bf16 artifact is
refused. fp16 is not offered: it does not pay on the CPU plugin. An FP16 file is computed in
f32 (0.997x the FP32 file, timed side by side on an AMD EPYC with AVX512-BF16, where the f16
hint runs bf16), and on an AMX Xeon the f16 hint ran 0.70x (slower than f32).

INT8 with bf16 (an NNCF graph whose float parts run bf16) compiled on that EPYC; OpenVINO
2026.4 refused a small NNCF INT8 graph with the bf16 hint on an AMX Xeon ("No suitable
implementations"). A graph the plugin refuses is a `UserError` naming the precision, so
the trial fails with that reason; an INT8 artifact without bf16 units compiles at f32.

Fastest precision: bf16 where it is offered, else int8. On an AMX Xeon (YOLO11n at 192 px,
1 thread, timed side by side) the unpruned model ran 7.04 ms in f32, 6.71 ms in NNCF INT8
(float parts f32) and 4.5 ms in bf16; pruned uniformly 0.5, 3.45 ms f32 vs 5.24 ms INT8.

INT8 pays on OpenVINO only for an NNCF-quantized graph (an ONNX Runtime Q/DQ file ran no
faster than FP32), so the recipe names quantizer="nncf"; its other fields describe NNCF's
MIXED preset (symmetric per-channel weights, asymmetric activations), the one Ultralytics'
own OpenVINO INT8 export uses. NNCF's PERFORMANCE preset (symmetric activations) cost 2 points
of mAP50-95 on the embedded baseline (all-INT8 0.3605 vs 0.3794 with MIXED, FP32 0.3803; 128
calibration images) and ran no faster (0.698x vs 0.688x FP32, side by side, AMD EPYC AVX2):
SiLU outputs dip just below zero, so a symmetric range likely spends half its codes on values that never occur.
"""

from __future__ import annotations

import functools
from pathlib import Path

from evaluators.base import Fingerprint
from evaluators.hardware import cpu_description
from evaluators.openvino_ir import Execution, compile_error, compile_properties, native_bf16, read_model, reason
from evaluators.registry import parse_count, register_device
from evaluators.timing import LocalDevice, wall_clock
from evaluators.vocabulary import Int8Recipe, UserError


class OpenVinoCpuDevice(LocalDevice):
    """OpenVINO's CPU plugin with a fixed thread count; the inference precision is the artifact's."""

    int8_recipe = Int8Recipe(quantizer="nncf")
    accuracy_runtime = "openvino"

    def __init__(self, threads: int = 1, *, cache=None):
        super().__init__("openvino-cpu" if threads == 1 else f"openvino-cpu:{threads}", cache=cache)
        self.threads = threads
        self.precisions = ("fp32", "bf16", "int8") if native_bf16() else ("fp32", "int8")
        self._fingerprint = None

    @property
    def fastest_precision(self) -> str:
        """bf16 where the CPU runs it natively (faster than INT8 here, see the module docstring), else int8."""
        return "bf16" if "bf16" in self.precisions else "int8"

    def config(self, execution: Execution = Execution()) -> dict:
        """The compile-time properties for an artifact that asks for `execution` (default: FP32)."""
        return compile_properties(
            execution, INFERENCE_NUM_THREADS=self.threads, PERFORMANCE_HINT="LATENCY", NUM_STREAMS=1
        )

    def runtime_settings(self, artifact_path) -> dict:
        """The CPU plugin's compile properties for this artifact (its own inference precision)."""
        return self.config(Execution.of(artifact_path))

    def fingerprint(self) -> Fingerprint:
        """Hardware, OpenVINO version and `config()` for an FP32 artifact.

        The inference precision is a per-artifact setting read from the artifact, so an
        artifact that asks for another one carries it in its own structure hash
        (`evaluators.artifact.EXECUTION_KEYS`); the fingerprint's "inference_precision_hint"
        is the one of artifacts that ask for none.
        """
        if self._fingerprint is None:
            import openvino as ov

            settings = {"plugin": "CPU", **{k.lower(): v for k, v in self.config().items()}}
            self._fingerprint = Fingerprint(cpu_description(), "openvino", ov.get_version(), settings)
        return self._fingerprint

    def compile(self, artifact_path: Path, shapes: dict | None = None):
        """The artifact compiled as this device times it: its execution (`evaluators.openvino_ir`), `config()`.

        shapes: input name -> shape, for artifacts with dynamic inputs. Raises `UserError` when
        the artifact asks for a precision this CPU lacks or the plugin refuses the graph.
        """
        import openvino as ov

        core, execution = ov.Core(), None
        try:
            model, execution = read_model(core, artifact_path)
            execution.check_supported(artifact_path)
            dynamic = {i.get_any_name(): i.get_partial_shape() for i in model.inputs}
            if any(shape.is_dynamic for shape in dynamic.values()):
                model.reshape({name: list(shapes[name]) for name in dynamic})
            return core.compile_model(model, "CPU", {k: str(v) for k, v in self.config(execution).items()})
        except RuntimeError as exc:
            if execution:
                raise compile_error(artifact_path, execution, exc) from None
            raise UserError(f"OpenVINO cannot read {artifact_path}: {reason(exc)}") from None

    def open_as_exported(self, model_path: Path, inputs: dict) -> tuple[object, str]:
        """(clock, inference precision) of a model file (ONNX or IR .xml) compiled the way a user's own OpenVINO
        run compiles it: this device's threads, LATENCY hint and one stream, and OpenVINO's default inference
        precision (bf16 on CPUs with AVX512-BF16 or AMX; the second value names the one it chose). `inputs` are
        set by position, in their order."""
        import openvino as ov

        core = ov.Core()
        properties = {"INFERENCE_NUM_THREADS": self.threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        try:
            compiled = core.compile_model(
                core.read_model(str(model_path)), "CPU", {k: str(v) for k, v in properties.items()}
            )
        except RuntimeError as exc:
            raise UserError(f"OpenVINO cannot compile {model_path}: {reason(exc)}") from None
        request = compiled.create_infer_request()
        for index, array in enumerate(inputs.values()):  # by position: an exporter may name the inputs its own way
            request.set_input_tensor(index, ov.Tensor(array))
        precision = compiled.get_property("INFERENCE_PRECISION_HINT")  # an ov.Type: bf16, f32, f16
        return wall_clock(request.infer), getattr(precision, "get_type_name", lambda: str(precision))()

    def open(self, artifact_path: Path, inputs: dict):
        import openvino as ov

        compiled = self.compile(artifact_path, {name: array.shape for name, array in inputs.items()})
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
