"""FP32 ONNX export of a (possibly pruned) Ultralytics detector, and how to read the graph back.

The export is the starting point of every precision artifact (`spaces.precision`): static
batch 1, the TorchScript exporter (`dynamo=False`) so that node names are module paths
such as `/model.2/cv1/conv/Conv`, simplified by onnxslim (which keeps those names), and
Ultralytics' `metadata_props` (names, stride, imgsz, task, ...) so that `YOLO("x.onnx")`
validates and predicts it. Node names are what ties a graph back to the model's blocks:
`precision_units` groups nodes by their `model.<i>` block, the same units pruning uses.

Also here, because it prepares inputs the way the graph expects them: `preprocess_images`
(Ultralytics' letterbox, for calibration and checks).
"""

from __future__ import annotations

import copy
import re
import tempfile
import types
import warnings
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path

import numpy as np
import onnx
import torch
from ultralytics import __version__ as ultralytics_version
from ultralytics.engine.model import Model as YOLOWrapper
from ultralytics.nn.modules import DFL, C2f, Detect
from ultralytics.nn.tasks import BaseModel

from evaluators.vocabulary import UserError

# ORT's static quantizer rejects opset >= 21, and Resize-19 has no CUDA kernel; 17 suits every runtime here.
DEFAULT_OPSET = 17
INPUT_NAME = "images"
OUTPUT_NAME = "output0"

_UNIT = re.compile(r"^/(model\.\d+)/")


def export_onnx(
    model: torch.nn.Module,
    path: str | Path,
    *,
    imgsz: int | Sequence[int],
    names: Mapping[int, str] | Sequence[str],
    stride: int | None = None,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Write an FP32 ONNX of `model` (an Ultralytics `DetectionModel`) to `path` and return it.

    imgsz: input size in pixels, one int (square) or (height, width); the batch is static 1.
    names: class names, index -> name (or a sequence in index order), stored for Ultralytics.
    stride: the model's largest stride in pixels (default: read from the model).
    The model is deep-copied, so the caller's module (training state, BatchNorms, dtype) is
    never touched; Conv+BN are fused on the copy, as Ultralytics does for deployment.
    """
    size = _imgsz(imgsz)
    deploy = deploy_copy(model, size)
    head = deploy.model[-1]
    im = torch.zeros(1, 3, *size)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated, but it names nodes by module
        raw = Path(tmp) / "raw.onnx"
        torch.onnx.export(
            deploy,
            im,
            str(raw),
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamo=False,
        )
        graph = onnx.load(str(raw))
    import onnxslim

    # Weight tying merges initializers that happen to be equal (zero biases of an untrained model),
    # which would make the structure depend on weight values.
    graph = onnxslim.slim(graph, skip_optimizations=["weight_tying"])
    graph.ir_version = min(graph.ir_version, 10)  # older ONNX Runtime builds read IR <= 10
    props = ultralytics_metadata(deploy, imgsz=size, names=names, stride=stride, head=type(head).__name__, opset=opset)
    set_metadata(graph, props)
    onnx.checker.check_model(graph)
    onnx.save(graph, str(out))
    return out


def detection_model(model) -> BaseModel:
    """The Ultralytics `DetectionModel` itself, unwrapped from a `YOLO` object if need be."""
    module = model.model if isinstance(model, YOLOWrapper) else model
    if not isinstance(module, BaseModel):
        raise TypeError(f"expected an Ultralytics DetectionModel, got {type(model).__name__}")
    return module


def deploy_copy(model, imgsz: int | Sequence[int]) -> BaseModel:
    """A deep copy of `model` as it is exported: FP32, eval, Conv+BN fused, raw head output, the DFL's softmax
    over the last axis (`dfl_last_axis`).

    Calling it returns the tensor the ONNX graph outputs, (1, 4 + classes, anchors) for a
    YOLO11 detector: boxes as xywh in input pixels, then class probabilities.
    """
    deploy = copy.deepcopy(detection_model(model)).cpu().float().eval()
    for p in deploy.parameters():
        p.requires_grad_(False)
    deploy = deploy.fuse(verbose=False)
    for m in deploy.modules():
        if isinstance(m, Detect):
            m.dynamic, m.export, m.format = False, True, "onnx"
            m.shape = None  # anchors are cached per input shape
        elif isinstance(m, C2f) and hasattr(m, "forward_split"):
            m.forward = m.forward_split  # Split reads cleaner than chunk in ONNX (Ultralytics does the same)
        elif isinstance(m, DFL):
            m.forward = types.MethodType(dfl_last_axis, m)
    with torch.no_grad():
        deploy(torch.zeros(1, 3, *_imgsz(imgsz)))  # dry run: builds the anchors for this input size
    return deploy


def dfl_last_axis(dfl: DFL, x: torch.Tensor) -> torch.Tensor:
    """Ultralytics' `DFL.forward` with its softmax over the last axis and its integral as a MatMul: equal up to
    float rounding, (B, 4 * bins, anchors) -> (B, 4, anchors) expected box distances in bins.

    Ultralytics transposes the bins to axis 1 and takes the softmax there; ONNX Runtime's CPU
    Softmax off the last axis transposes internally, and that one node cost 0.38 ms of a
    pruned 192 px YOLO11n's 2.6 ms of kernels. Timed side by side on ONNX Runtime (1 thread,
    Xeon): FP32 baseline 4.82 -> 4.49 ms, a 0.5-pruned ReLU INT8 policy 1.90 -> 1.60 ms;
    OpenVINO bf16 unchanged within noise. Only the exported copy runs it (the tracer of
    `spaces.pruning` and training see Ultralytics' own forward).
    """
    b, _, a = x.shape
    bins = x.view(b, 4, dfl.c1, a).transpose(2, 3).softmax(-1)  # (B, 4, anchors, bins)
    return torch.matmul(bins, dfl.conv.weight.view(dfl.c1, 1)).view(b, 4, a)


def ultralytics_metadata(
    model: torch.nn.Module,
    *,
    imgsz: list[int],
    names: Mapping[int, str] | Sequence[str],
    stride: int | None,
    head: str,
    opset: int,
) -> dict[str, str]:
    """The `metadata_props` Ultralytics' own ONNX export writes, as strings (AutoBackend parses them)."""
    names = dict(names) if isinstance(names, Mapping) else dict(enumerate(names))
    stride = int(stride) if stride is not None else int(max(model.stride))
    yaml_file = Path(str(getattr(model, "yaml", {}).get("yaml_file", "model"))).stem
    meta = {
        "description": f"Ultralytics {yaml_file} model compressed by squeezefit",
        "author": "Ultralytics",
        "date": datetime.now().astimezone().isoformat(),
        "version": ultralytics_version,
        "license": "AGPL-3.0 License (https://ultralytics.com/license)",
        "docs": "https://docs.ultralytics.com",
        "stride": stride,
        "task": getattr(model, "task", "detect"),
        "head": head,
        "batch": 1,
        "imgsz": list(imgsz),
        "names": {int(k): str(v) for k, v in names.items()},
        "args": {"batch": 1, "dynamic": False, "opset": opset, "simplify": True, "nms": False},
        "channels": int(getattr(model, "yaml", {}).get("channels", 3)),
        "end2end": bool(getattr(model, "end2end", False)),
    }
    return {k: str(v) for k, v in meta.items()}


def metadata(graph: onnx.ModelProto) -> dict[str, str]:
    """The graph's `metadata_props` as a dict."""
    return {p.key: p.value for p in graph.metadata_props}


def set_metadata(graph: onnx.ModelProto, props: Mapping[str, str]) -> None:
    """Replace the graph's `metadata_props` with `props` (rewriting tools tend to drop them)."""
    del graph.metadata_props[:]
    for key, value in props.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, str(value)


def load(graph_or_path: onnx.ModelProto | str | Path) -> onnx.ModelProto:
    """An ONNX model from a path, or the model itself."""
    if isinstance(graph_or_path, onnx.ModelProto):
        return graph_or_path
    path = Path(graph_or_path)
    if not path.is_file():
        raise UserError(f"ONNX file {path} does not exist.")
    return onnx.load(str(path))


def unit_of(node_name: str) -> str | None:
    """The `model.<i>` block a node belongs to (`/model.2/cv1/conv/Conv` -> `model.2`), else None."""
    match = _UNIT.match(node_name)
    return match.group(1) if match else None


def module_path(node_name: str) -> str:
    """The dotted module path of the module that emitted a node.

    `/model.23/cv3.0/cv3.0.2/Conv` -> `model.23.cv3.0.2`, `/model.6/m.0/m/m.0/cv1/conv/Conv` ->
    `model.6.m.0.m.0.cv1.conv`. The TorchScript exporter names each scope relative to the nearest
    called parent, so an indexed child of a container repeats the container's prefix
    (`cv3.0` then `cv3.0.2`); such a scope replaces its parent rather than extending it.
    A module called more than once (SPPF's max-pool) gets `_1`, `_2` on its later scopes.
    """
    parts: list[str] = []
    for scope in node_name.strip("/").split("/")[:-1]:  # the last piece is the op (Conv, Mul_1)
        if parts and scope.startswith(parts[-1] + "."):
            parts[-1] = scope
        else:
            parts.append(scope)
    return ".".join(parts)


def precision_units(graph_or_path: onnx.ModelProto | str | Path) -> dict[str, list[str]]:
    """Map each `model.<i>` block (the unit pruning uses too) to the names of its ONNX nodes.

    Units are ordered by block index, nodes by graph order. Nodes outside any block (none in an
    `export_onnx` graph) are left out.
    """
    units: dict[str, list[str]] = {}
    for node in load(graph_or_path).graph.node:
        if unit := unit_of(node.name):
            units.setdefault(unit, []).append(node.name)
    return dict(sorted(units.items(), key=lambda kv: int(kv[0].split(".")[1])))


def preprocess_images(images: Sequence[str | Path], imgsz: int | Sequence[int], stride: int = 32) -> np.ndarray:
    """Images as the model sees them, exactly as Ultralytics' predictor prepares them.

    Letterbox to `imgsz` (gray 114 padding, centered), BGR -> RGB, HWC -> CHW, /255.
    Returns float32 of shape (N, 3, H, W) with values in [0, 1].
    """
    import cv2
    from ultralytics.data.augment import LetterBox

    size = _imgsz(imgsz)
    letterbox = LetterBox(tuple(size), auto=False, stride=stride)
    batch = []
    for path in images:
        bgr = cv2.imread(str(path))
        if bgr is None:
            raise UserError(f"Cannot read image {path}; pass readable image files.")
        rgb = letterbox(image=bgr)[..., ::-1]
        batch.append(np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32) / 255.0)
    if not batch:
        raise UserError("No images were given; pass at least one image file.")
    return np.stack(batch)


def _imgsz(imgsz: int | Sequence[int]) -> list[int]:
    size = [int(imgsz)] * 2 if isinstance(imgsz, (int, np.integer)) else [int(s) for s in imgsz]
    if len(size) != 2 or min(size) < 32 or any(s % 32 for s in size):
        raise UserError(f"Image size {imgsz} must be one or two positive multiples of 32.")
    return size
