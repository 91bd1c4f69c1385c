"""ONNX Runtime devices: `ort-cpu[:threads]`, and `ort-cuda[:gpu]` / `ort-trt[:gpu]` where
the installed onnxruntime has the CUDA / TensorRT execution provider.

ort-cpu runs with `threads` intra-op threads (default 1: a fixed, reproducible setting;
name the count of the target, e.g. "ort-cpu:4"), one inter-op thread, sequential
execution and all graph optimizations.

Its INT8 recipe and its precisions follow the CPU, because ONNX Runtime's kernels do: on
an AVX2 CPU without VNNI signed S8S8 Q/DQ ran 1.4-1.7x slower than FP32 while U8
activations with S8 weights ran faster; on an AMX Xeon U8S8 all-INT8 ran 1.21-1.58x faster
than FP32 and Ultralytics' S8S8 export 0.5x; on x86 ONNX Runtime fuses signed Q/DQ convs
only where told to (ARM's default), and it runs an FP16 graph through FP32 kernels where
it has no FP16 ones. So they are measured, not assumed: the first time the device's
`precisions`, `int8_recipe` or `fingerprint()` are needed, a few-second probe
(`evaluators.ort_probe`) times INT8 candidates and FP16 against FP32 on a small conv net
at one thread, under the host's lock, and keeps its report in the state directory for
later processes (keyed by CPU description and ONNX Runtime version; every thread count
shares it). The chosen recipe and the offered precisions are part of the fingerprint.
`OrtDevice(..., precisions=..., int8_recipe=...)` pins them instead (no probe), for tests
and for targets known in advance.

ort-cuda offers fp32 and fp16 (the CUDA EP has no INT8 kernels); ort-trt adds int8 with
symmetric signed Q/DQ, which TensorRT reads. On the GPU providers a run is one blocking
`session.run` with host inputs and outputs (copies included); a session that silently
fell back to the CPU is refused.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from pathlib import Path

from evaluators.base import Fingerprint
from evaluators.hardware import cpu_description, gpu_description
from evaluators.ort_probe import PROBE_THREADS, ProbeReport, cached_probe, run_probe
from evaluators.registry import parse_count, register_device
from evaluators.timing import LocalDevice, wall_clock
from evaluators.vocabulary import PRECISIONS, Int8Recipe, UserError

# What ONNX Runtime runs as written in the file (no bf16 execution mode), in `PRECISIONS` order.
_RUNS = tuple(p for p in PRECISIONS if p in ("int8", "fp16", "fp32"))

_PROVIDERS = {
    "ort-cpu": "CPUExecutionProvider",
    "ort-cuda": "CUDAExecutionProvider",
    "ort-trt": "TensorrtExecutionProvider",
}


class OrtDevice(LocalDevice):
    """One ONNX Runtime execution provider with fixed settings.

    precisions / int8_recipe: pin what the device offers (no probe). `precisions` must
    include "fp32"; `int8_recipe` is given only with "int8" among them (default
    `Int8Recipe()`). Left out: ort-cpu probes the CPU (see the module docstring), the GPU
    providers use their fixed choice. The probe runs at most once per device, thread-safe.
    """

    def __init__(
        self,
        kind: str = "ort-cpu",
        *,
        threads: int = 1,
        gpu: int = 0,
        cache=None,
        precisions: Sequence[str] | None = None,
        int8_recipe: Int8Recipe | None = None,
    ):
        self.kind, self.provider, self.threads, self.gpu = kind, _PROVIDERS[kind], threads, gpu
        if kind == "ort-cpu":
            name = kind if threads == 1 else f"{kind}:{threads}"
        else:
            name = kind if gpu == 0 else f"{kind}:{gpu}"
        self._choice = _pinned(name, precisions, int8_recipe)
        if self._choice is None and kind != "ort-cpu":
            # The CUDA EP has no INT8 kernels; TensorRT wants symmetric signed Q/DQ.
            signed = Int8Recipe(activations="int8", symmetric_activations=True)
            self._choice = (("fp16", "fp32"), None) if kind == "ort-cuda" else (("int8", "fp16", "fp32"), signed)
        self._report: ProbeReport | None = None
        self._choosing = threading.Lock()
        super().__init__(name, cache=cache)
        self.host = "cpu" if kind == "ort-cpu" else f"cuda:{gpu}"
        self._fingerprint = None

    @property
    def precisions(self) -> tuple[str, ...]:
        return self._chosen()[0]

    @property
    def int8_recipe(self) -> Int8Recipe | None:
        return self._chosen()[1]

    def probe_report(self) -> ProbeReport | None:
        """What the CPU probe measured and decided (measured now or read from the state directory);
        None where the choice is pinned or fixed (a GPU provider)."""
        self._chosen()
        return self._report

    def _chosen(self) -> tuple[tuple[str, ...], Int8Recipe | None]:
        with self._choosing:
            if self._choice is None:
                import onnxruntime as ort

                cpu, version = cpu_description(), ort.__version__
                # The probe's own device: one thread (see `evaluators.ort_probe`), a pinned choice.
                runner = OrtDevice("ort-cpu", threads=PROBE_THREADS, precisions=("fp32",), cache=False)
                self._report = cached_probe(
                    cpu,
                    version,
                    lambda: run_probe(runner.open, cpu=cpu, onnxruntime=version, threads=PROBE_THREADS),
                )
                self._choice = (self._report.precisions, self._report.recipe)
            return self._choice

    def fingerprint(self) -> Fingerprint:
        if self._fingerprint is None:
            import onnxruntime as ort

            precisions, recipe = self._chosen()
            settings = {"provider": self.provider, "graph_optimization": "all", "execution": "sequential"}
            if self.kind == "ort-cpu":
                hardware = cpu_description()
                settings.update(intra_op_threads=self.threads, inter_op_threads=1)
            else:
                hardware = gpu_description(self.gpu) or f"cuda:{self.gpu}"
                settings.update(gpu=self.gpu, host_io=True)
            settings.update(precisions=list(precisions), int8_recipe=recipe.to_dict() if recipe else None)
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


def _pinned(
    name: str, precisions: Sequence[str] | None, recipe: Int8Recipe | None
) -> tuple[tuple[str, ...], Int8Recipe | None] | None:
    """(precisions in `PRECISIONS` order, INT8 recipe) pinned by the caller, or None to leave the choice to the device."""
    if precisions is None:
        if recipe is not None:
            raise UserError(f"device {name}: pin int8_recipe together with precisions that include int8.")
        return None
    offered = tuple(p for p in _RUNS if p in precisions)
    if "fp32" not in offered or len(offered) != len(set(precisions)):
        raise UserError(f"device {name}: precisions {list(precisions)} must include fp32 and come from {list(_RUNS)}.")
    if "int8" not in offered:
        if recipe is not None:
            raise UserError(f"device {name}: an int8_recipe is pinned but int8 is not among the precisions.")
        return offered, None
    return offered, recipe or Int8Recipe()


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
