"""ONNX Runtime devices: `ort-cpu[:threads]`, and `ort-cuda[:gpu]` / `ort-trt[:gpu]` where
the installed onnxruntime has the CUDA / TensorRT execution provider.

ort-cpu runs with `threads` intra-op threads (default 1: a fixed, reproducible setting;
name the count of the target, e.g. "ort-cpu:4"), one inter-op thread, sequential
execution and all graph optimizations. Its INT8 recipe is Q/DQ with U8 activations and
S8 per-channel symmetric weights: on x86 CPUs without VNNI signed S8S8 ran slower than
FP32, while U8S8 ran faster (see `evaluators.recipe`). FP16 is offered because the
measurement, not an assumption, decides whether it pays on a CPU (it runs through Casts).

On the GPU providers a run is one blocking `session.run` with host inputs and outputs
(copies included); a session that silently fell back to the CPU is refused.
"""

from __future__ import annotations

import re
from pathlib import Path

from evaluators.base import Fingerprint
from evaluators.hardware import cpu_description, gpu_description
from evaluators.registry import parse_count, register_device
from evaluators.timing import LocalDevice, wall_clock
from evaluators.vocabulary import Int8Recipe, UserError

_PROVIDERS = {
    "ort-cpu": "CPUExecutionProvider",
    "ort-cuda": "CUDAExecutionProvider",
    "ort-trt": "TensorrtExecutionProvider",
}


class OrtDevice(LocalDevice):
    """One ONNX Runtime execution provider with fixed settings."""

    def __init__(self, kind: str = "ort-cpu", *, threads: int = 1, gpu: int = 0, cache=None):
        self.kind, self.provider, self.threads, self.gpu = kind, _PROVIDERS[kind], threads, gpu
        if kind == "ort-cpu":
            name = kind if threads == 1 else f"{kind}:{threads}"
            self.precisions, self.int8_recipe = ("fp32", "fp16", "int8"), Int8Recipe()
        else:
            name = kind if gpu == 0 else f"{kind}:{gpu}"
            # The CUDA EP has no INT8 kernels; TensorRT wants symmetric signed Q/DQ.
            self.precisions = ("fp32", "fp16") if kind == "ort-cuda" else ("fp32", "fp16", "int8")
            signed = Int8Recipe(activations="int8", symmetric_activations=True)
            self.int8_recipe = None if kind == "ort-cuda" else signed
        super().__init__(name, cache=cache)
        self.host = "cpu" if kind == "ort-cpu" else f"cuda:{gpu}"
        self._fingerprint = None

    def fingerprint(self) -> Fingerprint:
        if self._fingerprint is None:
            import onnxruntime as ort

            settings = {"provider": self.provider, "graph_optimization": "all", "execution": "sequential"}
            if self.kind == "ort-cpu":
                hardware = cpu_description()
                settings.update(intra_op_threads=self.threads, inter_op_threads=1)
            else:
                hardware = gpu_description(self.gpu) or f"cuda:{self.gpu}"
                settings.update(gpu=self.gpu, host_io=True)
            self._fingerprint = Fingerprint(hardware, "onnxruntime", ort.__version__, settings)
        return self._fingerprint

    def _session(self, path: Path):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        providers = ["CPUExecutionProvider"]
        if self.kind != "ort-cpu":  # CPU stays as the fallback ORT needs for unsupported nodes
            providers.insert(0, (self.provider, {"device_id": self.gpu}))
        try:
            session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/NotImplemented types
            raise UserError(f"onnxruntime cannot load {path}: {_ort_reason(exc)}") from None
        if session.get_providers()[0] != self.provider:
            raise UserError(f"onnxruntime fell back from {self.provider} to the CPU; check the CUDA/TensorRT install.")
        return session

    def open(self, artifact_path: Path, inputs: dict):
        session = self._session(artifact_path)
        return wall_clock(lambda: session.run(None, inputs))


def _ort_reason(exc: Exception) -> str:
    # "[ONNXRuntimeError] : 1 : FAIL : Load model from X failed:/onnxruntime_src/...cc:256 fn(...) <reason>"
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", str(exc).strip().splitlines()[0])
    text = re.sub(r"/\S*onnxruntime_src/\S+ (\S+\(.*?\) )?", " ", text)
    return text[-300:]


def _provider_available(kind: str):
    def available() -> tuple[bool, str]:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            return False, f"onnxruntime is not installed ({exc})."
        if _PROVIDERS[kind] not in ort.get_available_providers():
            return False, f"this onnxruntime ({ort.__version__}) has no {_PROVIDERS[kind]}."
        if kind != "ort-cpu" and gpu_description(0) is None:
            return False, "no CUDA GPU is visible."
        return True, ""

    return available


def _cpu_factory(arg, **options):
    return OrtDevice("ort-cpu", threads=parse_count(arg, what="threads", device="ort-cpu", default=1), **options)


def _gpu_factory(kind):
    return lambda arg, **options: OrtDevice(
        kind, gpu=parse_count(arg, what="GPU index", device=kind, default=0), **options
    )


register_device("ort-cpu", _cpu_factory, _provider_available("ort-cpu"), usage="ort-cpu[:threads]")
register_device("ort-cuda", _gpu_factory("ort-cuda"), _provider_available("ort-cuda"), usage="ort-cuda[:gpu]")
register_device("ort-trt", _gpu_factory("ort-trt"), _provider_available("ort-trt"), usage="ort-trt[:gpu]")
