"""mAP of a deployable artifact, measured on the runtime that will run it.

`measure_accuracy` validates the ONNX file itself — not a fake-quantized PyTorch stand-in —
through Ultralytics' validator, so the numbers match what a user sees from `yolo val`.
With `runtime="openvino"` the same ONNX is converted to OpenVINO IR (beside it, in a
`*_openvino_model/` directory with Ultralytics' metadata, `evaluators.openvino_ir`) and
validated by OpenVINO, compiled with the inference precision the artifact asks for (f32
unless it says bf16; its FP32 nodes kept FP32): the properties the `openvino-cpu` device
times it with. Ultralytics' own OpenVINO backend compiles at OpenVINO's default precision
(bf16 on CPUs with AVX512-BF16 or AMX) and takes no precision setting, so the compiled
model is handed to its validator as a module instead (`_CompiledDetector`); with the f32
hint that gives ONNX Runtime's FP32 mAP to 1e-5 on the embedded baseline.

Fidelity knob: `max_images` validates on the first N images of the split (sorted by file
name), which is a fixed subset, so two artifacts compared at the same N see the same
images; the full split is the default.
"""

from __future__ import annotations

import ast
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from evaluators.artifact import check_artifact
from evaluators.datasets import split_images, subset_data_yaml
from evaluators.openvino_ir import Execution, compile_error, compile_properties, write_openvino_ir
from evaluators.paths import runs_dir
from evaluators.vocabulary import UserError

RUNTIMES = ("onnxruntime", "openvino")
# Arguments every validation of squeezefit passes: no plots (they fetch a font), quiet.
VAL_DEFAULTS: dict = {"plots": False, "verbose": False}


@dataclass(frozen=True)
class AccuracyMeasurement:
    """Detection accuracy of one artifact on one split; mAPs, precision, recall in [0, 1]."""

    map50_95: float
    map50: float
    precision: float
    recall: float
    images: int
    split: str
    runtime: str
    seconds: float
    inference_precision: str | None = None  # OpenVINO's compiled INFERENCE_PRECISION_HINT; None on ONNX Runtime

    def to_dict(self) -> dict:
        return asdict(self)


def openvino_model_dir(onnx_path: Path) -> Path:
    """The OpenVINO IR of an ONNX artifact beside it, as `write_openvino_ir` writes it (reused if newer)."""
    out = onnx_path.with_name(f"{onnx_path.stem}_openvino_model")
    xml = out / f"{onnx_path.stem}.xml"
    if not xml.is_file() or xml.stat().st_mtime < onnx_path.stat().st_mtime:
        write_openvino_ir(onnx_path, out)
    return out


class _CompiledDetector(torch.nn.Module):
    """An OpenVINO `CompiledModel` as the module Ultralytics' validator runs (a foreign module: no fusing, no
    augment). Input: the letterboxed batch (1, 3, H, W) in [0, 1]; output: the raw prediction tensor.
    Deep copies share the compiled model (the validator copies its model; inference only reads it)."""

    def __init__(self, compiled, names: dict, stride: int):
        super().__init__()
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.names = names
        self.stride = torch.tensor([float(stride)])

    def forward(self, im: torch.Tensor, **_) -> torch.Tensor:
        out = self.request.infer({0: im.numpy().astype(np.float32, copy=False)})
        return torch.from_numpy(out[0].copy())

    def __deepcopy__(self, memo) -> _CompiledDetector:
        return self


def compile_for_accuracy(artifact: Path):
    """The artifact's IR (`openvino_model_dir`) compiled on the CPU with the properties its execution asks for."""
    import openvino as ov

    execution = Execution.of(artifact).check_supported(artifact)
    xml = openvino_model_dir(artifact) / f"{artifact.stem}.xml"
    try:
        return ov.Core().compile_model(str(xml), "CPU", compile_properties(execution, PERFORMANCE_HINT="LATENCY"))
    except RuntimeError as exc:
        raise compile_error(artifact, execution, exc) from None


def measure_accuracy(
    artifact: Path,
    data_yaml: Path,
    *,
    split: str = "val",
    imgsz: int | None = None,
    runtime: str = "onnxruntime",
    max_images: int | None = None,
    workdir: Path | None = None,
) -> AccuracyMeasurement:
    """Validate the ONNX `artifact` on `split` of `data_yaml` with `runtime`; never trains.

    `imgsz` defaults to the artifact's own (its metadata). `workdir` receives the subset
    listing and the validator's output (default: the runs directory).
    """
    from ultralytics import YOLO

    artifact = Path(artifact)
    check_artifact(artifact)  # a missing or corrupt file is a UserError before any runtime loads it
    if runtime not in RUNTIMES:
        raise UserError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}.")
    workdir = Path(workdir or runs_dir() / "accuracy")
    workdir.mkdir(parents=True, exist_ok=True)
    data_yaml = Path(data_yaml)
    data_yaml = subset_data_yaml(data_yaml, split, max_images, workdir)
    _, images = split_images(data_yaml, split)
    start = time.perf_counter()
    args = {
        "data": str(data_yaml),
        "split": split,
        "batch": 1,
        "device": "cpu",
        "workers": 0,
        "project": str(workdir),
        "name": "val",
        "exist_ok": True,
        **VAL_DEFAULTS,
    }
    hint = None
    if runtime == "openvino":
        compiled = compile_for_accuracy(artifact)
        hint = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        metrics = _validate_compiled(compiled, artifact, imgsz, args)
    else:
        metrics = YOLO(str(artifact), task="detect").val(**({"imgsz": imgsz} if imgsz else {}), **args)
    return AccuracyMeasurement(
        map50_95=float(metrics.box.map),
        map50=float(metrics.box.map50),
        precision=float(metrics.box.mp),
        recall=float(metrics.box.mr),
        images=len(images),
        split=split,
        runtime=runtime,
        seconds=time.perf_counter() - start,
        inference_precision=hint,
    )


def _validate_compiled(compiled, artifact: Path, imgsz: int | None, args: dict):
    """Ultralytics' detection validator over a compiled model, letterboxed like the static ONNX (no rect batches)."""
    from ultralytics.models.yolo.detect import DetectionValidator
    from ultralytics.nn.backends.base import BaseBackend

    meta = BaseBackend.read_metadata(artifact)
    names = ast.literal_eval(meta["names"]) if isinstance(meta.get("names"), str) else meta.get("names", {})
    size = imgsz or (ast.literal_eval(meta["imgsz"]) if isinstance(meta.get("imgsz"), str) else meta["imgsz"])
    validator = DetectionValidator(args={**args, "task": "detect", "mode": "val", "imgsz": size, "rect": False})
    validator(model=_CompiledDetector(compiled, names, int(meta.get("stride", 32))))
    return validator.metrics
