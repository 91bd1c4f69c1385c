"""mAP of a deployable artifact, measured on the runtime that will run it.

`measure_accuracy` validates the ONNX file itself — not a fake-quantized PyTorch stand-in —
through Ultralytics' validator, so the numbers match what a user sees from `yolo val`.
With `runtime="openvino"` the same ONNX is converted to OpenVINO IR (beside it, in a
`*_openvino_model/` directory with Ultralytics' metadata) and validated by OpenVINO.

Fidelity knob: `max_images` validates on the first N images of the split (sorted by file
name), which is a fixed subset, so two artifacts compared at the same N see the same
images; the full split is the default.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from evaluators.artifact import check_artifact
from evaluators.datasets import split_images, subset_data_yaml
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

    def to_dict(self) -> dict:
        return asdict(self)


def openvino_model_dir(onnx_path: Path) -> Path:
    """Convert an ONNX artifact to OpenVINO IR with Ultralytics' metadata beside it (reused if present)."""
    import openvino as ov
    from ultralytics.nn.backends.base import BaseBackend

    out = onnx_path.with_name(f"{onnx_path.stem}_openvino_model")
    xml = out / f"{onnx_path.stem}.xml"
    if not xml.is_file() or xml.stat().st_mtime < onnx_path.stat().st_mtime:
        out.mkdir(exist_ok=True)
        ov.save_model(ov.convert_model(str(onnx_path)), str(xml), compress_to_fp16=False)
        (out / "metadata.yaml").write_text(yaml.safe_dump(BaseBackend.read_metadata(onnx_path), sort_keys=False))
    return out


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
    model_path = openvino_model_dir(artifact) if runtime == "openvino" else artifact
    start = time.perf_counter()
    model = YOLO(str(model_path), task="detect")
    kwargs = {"imgsz": imgsz} if imgsz else {}
    metrics = model.val(
        data=str(data_yaml),
        split=split,
        batch=1,
        device="cpu",
        workers=0,
        project=str(workdir),
        name="val",
        exist_ok=True,
        **kwargs,
        **VAL_DEFAULTS,
    )
    return AccuracyMeasurement(
        map50_95=float(metrics.box.map),
        map50=float(metrics.box.map50),
        precision=float(metrics.box.mp),
        recall=float(metrics.box.mr),
        images=len(images),
        split=split,
        runtime=runtime,
        seconds=time.perf_counter() - start,
    )
