"""Which INT8 recipe and which precisions pay on this CPU under ONNX Runtime: a short measured probe.

ONNX Runtime's CPU kernels follow the ISA, and so does the INT8 recipe that pays. On an
AVX2 CPU without VNNI, signed S8S8 Q/DQ ran 1.4-1.7x slower than FP32 while U8 activations
with S8 weights ran faster; on an AMX Xeon U8S8 ran 1.21-1.58x faster than FP32 and
Ultralytics' S8S8 export 0.5x. On x86 ONNX Runtime fuses Q/DQ convs with signed
activations only when told to (its default on ARM), so S8S8 runs FP32 convs plus the Q/DQ
ops (2.0-2.2x FP32 on an AVX512-VNNI EPYC). Without FP16 kernels it strips an FP16 graph's
Casts and runs FP32 kernels: FP16 then costs accuracy and gains nothing. So nothing is
assumed: the probe times each candidate against FP32.

The probe graph is a small YOLO-like conv net written here with `onnx.helper` (strided 3x3
convs, a C2f-like block with 1x1 and 3x3 convs, a residual Add and a Concat, SiLU as
Sigmoid + Mul, a float 1x1 output conv), 3x160x160 input. Each INT8 candidate
(`CANDIDATES`) is quantized from it by `onnxruntime.quantization.quantize_static`
(random calibration images, fixed seed), and an FP16 variant converts every node with the
graph's inputs and outputs kept FP32. All variants are loaded together and timed run by
run in turn against FP32 (`evaluators.timing.run_alternating`), under the host's lock.

Decision (`decide`): INT8 is offered wherever a recipe builds and loads, with the fastest
recipe. Whether INT8 pays is a property of the model and its input size, which the probe
graph only hints at: on one EPYC the probe's U8S8 ran 0.76x FP32 one day and 1.05x another
while the embedded YOLO11n at 640 px ran 0.64x; the search times every INT8 policy on the
device and its all-INT8 reference shows what INT8 alone pays. Which recipe is fastest is
what the probe does decide (S8S8 Q/DQ 2.0-2.6x on x86 ONNX Runtime): the candidate with the
lowest ratio, except that an earlier candidate of `CANDIDATES` whose interval reaches the
best one's is preferred (a tie is not decided by noise). FP16 is offered only where it is
shown faster: its interval lies below 1 - `MIN_GAIN` (where ONNX Runtime runs an FP16 graph
with FP32 kernels the ratio sits at 1, and "not slower" would be decided by noise). "fp32"
is always offered. A variant that fails to quantize or load is reported under `failed` and
never chosen.

The probe runs at one thread (`PROBE_THREADS`) whatever the device's count: which kernels
exist is a property of the ISA and the runtime, not of the thread count, and one decision
per CPU keeps the artifacts of `ort-cpu` and `ort-cpu:4` alike (a trial's mAP carries over).
One thread is also the steadiest to time on a shared host: two threads on two busy cores
gave intervals too wide to decide anything.

`cached_probe(cpu, onnxruntime, measure)` keeps one JSON report per CPU description, ONNX
Runtime version and `PROBE_VERSION` under `evaluators.paths.state_dir()/probes`, so a later
process reads the decision instead of timing again; `SQUEEZEFIT_REPROBE=1` measures anew.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from evaluators.base import TimingSettings
from evaluators.host_lock import device_lock
from evaluators.paired import ratio_interval
from evaluators.paths import state_dir
from evaluators.timing import run_alternating
from evaluators.vocabulary import Int8Recipe

# Bump when the graph, the candidates or the decision change: older reports are then ignored.
PROBE_VERSION = 2
REPROBE_ENV = "SQUEEZEFIT_REPROBE"
INPUT_NAME, OUTPUT_NAME = "images", "output0"
INPUT_SIZE = 160
PROBE_THREADS = 1

# In order of preference: a later candidate is chosen only when it is measurably faster.
# U8S8 Q/DQ first (the quantizer's usual output, which other runtimes read too); S8S8 Q/DQ
# for CPUs where ONNX Runtime fuses signed Q/DQ (ARM); QOperator U8S8 writes the fused
# kernels into the file.
CANDIDATES: dict[str, Int8Recipe] = {
    "u8s8-qdq": Int8Recipe(),
    "s8s8-qdq": Int8Recipe(activations="int8"),
    "u8s8-qoperator": Int8Recipe(fmt="qoperator"),
}
FP16 = "fp16"
# FP16 costs accuracy: it is offered only where its ratio's whole interval lies below
# 1 - MIN_GAIN. Where ONNX Runtime strips FP16's Casts and runs FP32 kernels (x86 without
# FP16 kernels), the ratio sits at 1 and "not slower" would be decided by noise.
MIN_GAIN = 0.02

# At least 100 alternated rounds and 2.5 s after a short warm-up of each variant: about 4-5 s in all.
PROBE_TIMING = TimingSettings(
    warmup_min_runs=3,
    warmup_max_runs=40,
    warmup_max_seconds=0.4,
    warmup_window=3,
    warmup_tolerance=0.05,
    min_runs=100,
    min_seconds=2.5,
    max_runs=5000,
)


@dataclass(frozen=True)
class Ratio:
    """One variant timed against FP32: median ratio and its bootstrap 95% interval; p50_ms its own median."""

    ratio: float
    low: float
    high: float
    p50_ms: float


@dataclass(frozen=True)
class ProbeReport:
    """What the probe measured and decided on one CPU and ONNX Runtime version.

    threads: the intra-op threads it timed at (`PROBE_THREADS`).
    ratios: variant name (a `CANDIDATES` key or "fp16") -> `Ratio` vs FP32 (below 1: faster).
    failed: variant name -> why it could not be built or loaded.
    int8_recipe: the chosen `CANDIDATES` key, or None when no INT8 recipe could be built and loaded.
    precisions: the precisions offered, fastest first ("int8", "fp16", "fp32").
    fp32_p50_ms: FP32's median in the same session; rounds: alternated rounds timed;
    wall_s: seconds the whole probe took (building included); load_average: the host's
    1-minute load when it began (a busy host widens the intervals).
    """

    cpu: str
    onnxruntime: str
    threads: int
    ratios: dict[str, Ratio]
    int8_recipe: str | None
    precisions: tuple[str, ...]
    fp32_p50_ms: float
    rounds: int
    wall_s: float
    failed: dict[str, str] = field(default_factory=dict)
    load_average: float = 0.0
    probe_version: int = PROBE_VERSION

    @property
    def recipe(self) -> Int8Recipe | None:
        """The chosen INT8 recipe, or None when "int8" is not offered."""
        return CANDIDATES[self.int8_recipe] if self.int8_recipe else None

    def to_dict(self) -> dict:
        out = asdict(self)
        out["precisions"] = list(self.precisions)
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> ProbeReport:
        data = dict(data)
        data["ratios"] = {k: Ratio(**v) for k, v in data["ratios"].items()}
        data["precisions"] = tuple(data["precisions"])
        return cls(**data)


def decide(ratios: Mapping[str, Ratio]) -> tuple[str | None, tuple[str, ...]]:
    """(INT8 candidate or None, offered precisions) from measured ratios; see the module docstring."""
    int8 = {name: ratios[name] for name in CANDIDATES if name in ratios}  # in order of preference
    best = min(int8.values(), key=lambda r: r.ratio, default=None)
    chosen = None if best is None else next(n for n, r in int8.items() if r.low <= best.high)
    fp16 = FP16 in ratios and ratios[FP16].high < 1 - MIN_GAIN
    offered = ("int8",) * (chosen is not None) + ("fp16",) * fp16 + ("fp32",)
    return chosen, offered


Opener = Callable[[Path, dict], Callable[[], float]]


def run_probe(
    open_artifact: Opener,
    *,
    cpu: str,
    onnxruntime: str,
    threads: int,
    host: str = "cpu",
    settings: TimingSettings = PROBE_TIMING,
) -> ProbeReport:
    """Build the probe's variants, time them against FP32 under `host`'s lock, and decide.

    open_artifact(path, inputs) loads an ONNX file into the runtime at `threads` threads and
    returns a clock (ms per run), e.g. `OrtDevice.open`; it raises for a file it cannot load.
    """
    start, load = time.perf_counter(), os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    inputs = {INPUT_NAME: np.random.default_rng(0).random((1, 3, INPUT_SIZE, INPUT_SIZE), dtype=np.float32)}
    failed: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="ort-probe-") as tmp:
        paths = _build_variants(Path(tmp), failed)
        with device_lock(host):
            clocks = {}
            for name, path in paths.items():
                try:
                    clocks[name] = open_artifact(path, inputs)
                except Exception as exc:  # a variant the runtime refuses is reported, not chosen
                    failed[name] = _first_line(exc)
            if "fp32" not in clocks:
                raise RuntimeError(f"the probe's FP32 graph does not run: {failed.get('fp32')}")
            names = list(clocks)
            times = dict(zip(names, run_alternating([clocks[n] for n in names], settings), strict=True))
            del clocks
    reference = times.pop("fp32")
    ratios = {}
    for name, mine in times.items():
        ratio, low, high = ratio_interval(mine, reference)
        ratios[name] = Ratio(ratio, low, high, float(np.median(mine)))
    chosen, offered = decide(ratios)
    return ProbeReport(
        cpu=cpu,
        onnxruntime=onnxruntime,
        threads=threads,
        ratios=ratios,
        int8_recipe=chosen,
        precisions=offered,
        fp32_p50_ms=float(np.median(reference)),
        rounds=len(reference),
        wall_s=round(time.perf_counter() - start, 3),
        failed=failed,
        load_average=round(load, 2),
    )


def probe_path(cpu: str, onnxruntime: str) -> Path:
    """The JSON file that holds the report for this CPU description and ONNX Runtime version."""
    key = json.dumps([cpu, onnxruntime, PROBE_VERSION])
    return state_dir() / "probes" / f"ort-cpu-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def cached_probe(cpu: str, onnxruntime: str, measure: Callable[[], ProbeReport]) -> ProbeReport:
    """The stored report for (cpu, onnxruntime), else `measure()`'s, stored for the next process.

    `SQUEEZEFIT_REPROBE=1` ignores the stored report. Concurrent first callers wait on a
    lock of their own and read what the first one stored, so all of them decide alike.
    """
    path = probe_path(cpu, onnxruntime)
    reprobe = os.environ.get(REPROBE_ENV, "") not in ("", "0")
    if not reprobe and (report := _read(path)) is not None:
        return report
    with device_lock(f"probe-{path.stem}"):  # not the host's lock: `measure` takes that one to time
        if not reprobe and (report := _read(path)) is not None:
            return report  # another process probed while this one waited
        report = measure()
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as handle:
            json.dump(report.to_dict(), handle, indent=1)
        os.chmod(handle.name, 0o644)  # NamedTemporaryFile makes it private; it is a shared fact
        os.replace(handle.name, path)
    return report


def _read(path: Path) -> ProbeReport | None:
    try:
        report = ProbeReport.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # absent, or written by another version: measure again
    return report if report.probe_version == PROBE_VERSION else None


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


# --- the variants ----------------------------------------------------------------------


def _build_variants(folder: Path, failed: dict[str, str]) -> dict[str, Path]:
    """FP32, each INT8 candidate and FP16, written to `folder`; a variant that fails goes to `failed`."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32, prepared = folder / "fp32.onnx", folder / "prepared.onnx"
    onnx.save(probe_graph(), str(fp32))
    # As `spaces.quantizers.ort` does; the shapes are static, so the slow symbolic pass is skipped.
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    paths = {"fp32": fp32}
    for name, recipe in CANDIDATES.items():
        try:
            paths[name] = _quantize(prepared, recipe, folder / f"{name}.onnx")
        except Exception as exc:  # one candidate the quantizer cannot write is not the probe failing
            failed[name] = _first_line(exc)
    try:
        paths[FP16] = _to_fp16(fp32, folder / "fp16.onnx")
    except Exception as exc:
        failed[FP16] = _first_line(exc)
    return paths


def probe_graph(size: int = INPUT_SIZE, seed: int = 0):
    """The probe's FP32 conv net (see the module docstring) as an `onnx.ModelProto`, weights from `seed`."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    channels = {INPUT_NAME: 3}

    def conv(x: str, out: int, k: int, stride: int = 1, act: bool = True) -> str:
        name = f"conv{len(inits) // 2}"
        fan_in = channels[x] * k * k
        w = rng.normal(0, (2 / fan_in) ** 0.5, (out, channels[x], k, k)).astype(np.float32)
        b = rng.normal(0, 0.1, out).astype(np.float32)
        inits.extend([numpy_helper.from_array(w, f"{name}.w"), numpy_helper.from_array(b, f"{name}.b")])
        y = f"{name}.y"
        pads = [k // 2] * 4
        nodes.append(
            helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [y], name, strides=[stride] * 2, pads=pads)
        )
        channels[y] = out
        if not act:
            return y
        nodes.append(helper.make_node("Sigmoid", [y], [f"{name}.s"], f"{name}.sigmoid"))
        nodes.append(helper.make_node("Mul", [y, f"{name}.s"], [f"{name}.a"], f"{name}.mul"))
        channels[f"{name}.a"] = out
        return f"{name}.a"

    def add(a: str, b: str) -> str:
        y = f"{a}+{b}"
        nodes.append(helper.make_node("Add", [a, b], [y], f"add{len(nodes)}"))
        channels[y] = channels[a]
        return y

    def concat(*xs: str) -> str:
        y = f"concat{len(nodes)}"
        nodes.append(helper.make_node("Concat", list(xs), [y], y, axis=1))
        channels[y] = sum(channels[x] for x in xs)
        return y

    x = conv(INPUT_NAME, 16, 3, 2)
    x = conv(x, 32, 3, 2)
    left, right = conv(x, 16, 1), conv(x, 16, 1)
    inner = add(right, conv(conv(right, 16, 3), 16, 3))
    x = conv(concat(left, right, inner), 32, 1)
    x = conv(x, 64, 3, 2)
    x = conv(x, 64, 3)
    y = conv(x, 16, 1, act=False)
    nodes[-1].output[0] = OUTPUT_NAME
    out = size // 8
    graph = helper.make_graph(
        nodes,
        "ort_probe",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [1, channels[y], out, out])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


class _Calibration:
    """Random images in [0, 1) for `quantize_static`, fixed seed."""

    def __init__(self, count: int = 4, size: int = INPUT_SIZE):
        self._images = np.random.default_rng(1).random((count, 1, 3, size, size), dtype=np.float32)
        self._i = 0

    def get_next(self) -> dict | None:
        if self._i >= len(self._images):
            return None
        self._i += 1
        return {INPUT_NAME: self._images[self._i - 1]}

    def rewind(self) -> None:
        self._i = 0


def _quantize(prepared: Path, recipe: Int8Recipe, out: Path) -> Path:
    """`prepared` quantized like `spaces.quantizers.ort` does with `recipe` (every node; MinMax calibration)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    kinds = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    quantize_static(
        str(prepared),
        str(out),
        _Calibration(),
        quant_format=QuantFormat.QDQ if recipe.fmt == "qdq" else QuantFormat.QOperator,
        per_channel=recipe.per_channel,
        activation_type=kinds[recipe.activations],
        weight_type=kinds[recipe.weights],
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={
            "ActivationSymmetric": recipe.symmetric_activations,
            "WeightSymmetric": recipe.symmetric_weights,
        },
    )
    return out


def _to_fp16(fp32: Path, out: Path) -> Path:
    """Every node in FP16, the graph's input and output kept FP32 (Casts at the border)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True), str(out))
    return out
