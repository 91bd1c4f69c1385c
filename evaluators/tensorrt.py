"""Native TensorRT device: `tensorrt[:gpu]` (NVIDIA GPU machines only).

UNVERIFIED: written against the documented TensorRT 10/11 Python API (Builder,
OnnxParser, IBuilderConfig timing cache, execute_async_v3) and never run on the
machines squeezefit is developed on, which have no GPU. Treat its first run on a GPU
box as its test; the conformance suite picks it up automatically where it is usable.

The engine is built from the ONNX artifact as a strongly typed network: the precision
is the one written in the graph (Q/DQ for INT8, FP16 tensor types for FP16), as TensorRT
11 requires and TensorRT 10 supports (`NetworkDefinitionCreationFlag.STRONGLY_TYPED`;
in 11 the flag is ignored, networks are always strongly typed). A timing cache file per
GPU and TensorRT version is reused across builds to cut build time. Each run is timed
with CUDA events around `execute_async_v3` on a private stream (device time, inputs
already on the GPU). Peak memory is the host-side resident memory, as for the CPU
devices. `tensorrt` and `torch.cuda` are imported only when a measurement runs.
"""

from __future__ import annotations

import functools
from pathlib import Path

from evaluators.base import Fingerprint
from evaluators.hardware import gpu_description
from evaluators.paths import state_dir
from evaluators.registry import parse_count, register_device
from evaluators.timing import LocalDevice
from evaluators.vocabulary import Int8Recipe, UserError


class TensorRtDevice(LocalDevice):
    """TensorRT engines built from ONNX on CUDA GPU `gpu`."""

    precisions = ("fp32", "fp16", "int8")
    # TensorRT's explicit quantization wants signed, symmetric (zero point 0) Q/DQ.
    int8_recipe = Int8Recipe(activations="int8", weights="int8", symmetric_activations=True, symmetric_weights=True)

    def __init__(self, gpu: int = 0, *, cache=None):
        super().__init__("tensorrt" if gpu == 0 else f"tensorrt:{gpu}", cache=cache)
        self.gpu = gpu
        self.host = f"cuda:{gpu}"
        self._fingerprint = None

    def fingerprint(self) -> Fingerprint:
        if self._fingerprint is None:
            import tensorrt as trt

            settings = {"gpu": self.gpu, "strongly_typed": True, "clock": "cuda-events", "io": "device"}
            self._fingerprint = Fingerprint(
                gpu_description(self.gpu) or f"cuda:{self.gpu}", "tensorrt", trt.__version__, settings
            )
        return self._fingerprint

    def timing_cache_path(self) -> Path:
        return state_dir() / f"tensorrt-timing-{self.fingerprint().hash}.cache"

    def open(self, artifact_path: Path, inputs: dict):
        return _engine_runner(build_engine(artifact_path, self.timing_cache_path()), inputs, self.gpu)


def build_engine(onnx_path: Path, timing_cache: Path) -> bytes:
    """Serialized engine of a strongly typed network parsed from `onnx_path`.

    The timing cache file is read when present and rewritten after the build. A graph
    TensorRT cannot parse or build raises `UserError` with its first error.
    """
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if strongly_typed is None else 1 << int(strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        first = parser.get_error(0) if parser.num_errors else "unknown error"
        raise UserError(f"TensorRT cannot parse {onnx_path}: {str(first).splitlines()[0][:200]}")
    config = builder.create_builder_config()
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise UserError(f"TensorRT could not build an engine from {onnx_path}; see its log above.")
    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return bytes(plan)


def _engine_runner(plan: bytes, inputs: dict, gpu: int):
    """Deserialize `plan`, bind device buffers, return a clock timing one run with CUDA events (ms)."""
    import numpy as np
    import tensorrt as trt
    import torch

    device = torch.device("cuda", gpu)
    torch.cuda.set_device(device)
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan)
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    buffers = {}  # keeps the tensors alive while the context points at them
    for name in names:
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            buffers[name] = torch.from_numpy(np.ascontiguousarray(inputs[name])).to(device)
            context.set_input_shape(name, tuple(buffers[name].shape))
    for name in names:
        if name not in buffers:
            dtype = torch.from_numpy(np.empty(0, dtype=trt.nptype(engine.get_tensor_dtype(name)))).dtype
            buffers[name] = torch.empty(tuple(context.get_tensor_shape(name)), dtype=dtype, device=device)
        context.set_tensor_address(name, buffers[name].data_ptr())
    stream = torch.cuda.Stream(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def timed() -> float:
        start.record(stream)
        if not context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        end.record(stream)
        end.synchronize()
        return start.elapsed_time(end)

    # The context holds raw pointers into `buffers`: the clock must keep them (and the engine) alive.
    timed.keep_alive = (engine, context, buffers, stream)
    return timed


@functools.lru_cache(maxsize=1)
def _available() -> tuple[bool, str]:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False, "the tensorrt package is not installed (pip install 'squeezefit[tensorrt]' on a GPU machine)."
    try:
        import torch

        if not torch.cuda.is_available():
            return False, "no CUDA GPU is visible to torch."
    except ImportError:
        return False, "torch is not installed."
    return True, ""


register_device(
    "tensorrt",
    lambda arg, **options: TensorRtDevice(parse_count(arg, what="GPU index", device="tensorrt", default=0), **options),
    _available,
    usage="tensorrt[:gpu]",
)
