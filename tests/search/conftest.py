"""What the trial-flow tests share: a real, untrained YOLO11n at 64 px, a tiny data set, its
checkpoint, the study's reference artifact and a `TrialContext` factory over them."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from ultralytics.nn.tasks import DetectionModel

from evaluators.base import TimingSettings
from search.embedded.data import DatasetSpec, generate_dataset
from search.trial import TrialContext
from spaces.onnx_export import export_onnx
from spaces.space import SearchSpace

IMGSZ = 64
L0 = 10.0  # the study's reference latency (ms): every latency is a ratio to the reference times this
FAST_TIMING = TimingSettings(warmup_min_runs=1, warmup_max_runs=2, min_runs=3, min_seconds=0.0, max_runs=3)


@pytest.fixture(scope="module")
def model() -> DetectionModel:
    torch.manual_seed(0)
    return DetectionModel("yolo11n.yaml", nc=10, verbose=False).eval()


@pytest.fixture(scope="module")
def data_yaml(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("data"), DatasetSpec(train=2, val=4, imgsz=IMGSZ))


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    torch.save({"model": model}, path)  # the layout Ultralytics' load_checkpoint reads
    return path


@pytest.fixture(scope="module")
def reference(model, tmp_path_factory) -> Path:
    """The study's reference artifact: the unpruned model's FP32 export."""
    return export_onnx(model, tmp_path_factory.mktemp("ref") / "baseline-fp32.onnx", imgsz=IMGSZ, names=model.names)


@pytest.fixture
def context(checkpoint, data_yaml, reference, tmp_path):
    def make(**options) -> TrialContext:
        """Every policy fits (budget inf) unless `options` say otherwise; fp32 only, so no calibration."""
        settings = {
            "checkpoint": str(checkpoint),
            "data_yaml": str(data_yaml),
            "imgsz": IMGSZ,
            "device": "ort-cpu",
            "budget_ms": math.inf,
            "space": SearchSpace(pruning_units=(), precision_units=(), offered=("fp32",), max_epochs=0),
            "calibration_images": (),
            "outdir": str(tmp_path),
            "timing": FAST_TIMING,
            "val_images": 4,
            "reference_artifact": str(reference),
            "reference_ms": L0,
        }
        return TrialContext(**{**settings, **options})

    return make
