"""FP32 ONNX export of a (possibly pruned) Ultralytics detector, and how to read the graph back.

The export is the starting point of every precision artifact (`spaces.precision`): static
batch 1, the TorchScript exporter (`dynamo=False`) so that node names are module paths
such as `/model.2/cv1/conv/Conv`, simplified by onnxslim (which keeps those names), and
Ultralytics' `metadata_props` (names, stride, imgsz, task, ...) so that `YOLO("x.onnx")`
validates and predicts it. Node names are what ties a graph back to the model's blocks:
`precision_units` groups nodes by their `model.<i>` block, the same units pruning uses.

Also here, because they read a graph against its model: `preprocess_images` (Ultralytics'
letterbox, for calibration and checks) and `compare_outputs`, the check of an export (FP32
before quantizing, or any artifact after) against PyTorch, with documented bounds.
"""

from __future__ import annotations

import copy
import re
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import onnx
import torch
from ultralytics import __version__ as ultralytics_version
from ultralytics.engine.model import Model as YOLOWrapper
from ultralytics.nn.modules import C2f, Detect
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
    """A deep copy of `model` as it is exported: FP32, eval, Conv+BN fused, raw head output.

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
    with torch.no_grad():
        deploy(torch.zeros(1, 3, *_imgsz(imgsz)))  # dry run: builds the anchors for this input size
    return deploy


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


# Bounds of `OutputDiff.within`, from measurement: YOLO11n after 20 epochs on a 10-class set,
# 192 px, ORT 1.31 CPU, 32 calibration and 32 compared images.
#   FP32: max_rel 1.5e-6 (bound 1e-4).
#   FP16: max_rel 3.9e-3, score 0.002, box_px 0.07 (bounds 2e-2, 0.01, 1% of imgsz).
#   INT8 (default recipe, head float): score_p99 0.008, score 0.07, box_px 17 px = 9% of imgsz
#   (bounds: score_p99 0.05, box_px 15% of imgsz). With the head quantized too, score_p99 0.068
#   and score 0.53: out of bounds. The INT8 bound catches a broken graph (wrong inputs, a
#   quantized head), not an accuracy loss: mAP measures that.
BOUNDS: dict[str, dict[str, float]] = {
    "fp32": {"max_rel": 1e-4},
    "fp16": {"max_rel": 2e-2, "score": 0.01, "box_fraction": 0.01},
    "int8": {"score_p99": 0.05, "box_fraction": 0.15},
}
CONFIDENT = 0.25  # Ultralytics' default predict conf: anchors whose boxes would be reported


@dataclass(frozen=True)
class OutputDiff:
    """How far an artifact's raw prediction tensor is from PyTorch's on the same inputs.

    The tensor is (1, 4 + classes, anchors): boxes as xywh in input pixels, then class
    probabilities in [0, 1]. max_abs: largest absolute difference over the whole tensor, all
    images. max_rel: max_abs over the largest reference magnitude. score: largest class
    probability difference. score_p99: 99th percentile over anchors of each anchor's largest
    probability difference. box_px: largest box difference in pixels over the anchors that
    would be reported (reference top probability >= 0.25) and each image's best anchor;
    background anchors' boxes are noise. confident: how many anchors box_px looked at.
    imgsz: the larger input side in pixels.
    """

    max_abs: float
    max_rel: float
    score: float
    score_p99: float
    box_px: float
    confident: int
    images: int
    imgsz: int

    def within(self, precision: str) -> bool:
        """Whether the difference is inside BOUNDS for `precision`: a mixed artifact's lowest one."""
        bound = BOUNDS[precision]
        checks = {
            "max_rel": self.max_rel,
            "score": self.score,
            "score_p99": self.score_p99,
            "box_fraction": self.box_px / self.imgsz,
        }
        return all(checks[k] <= limit for k, limit in bound.items())


def compare_outputs(model, artifact_path: str | Path, images: Sequence[str | Path]) -> OutputDiff:
    """Run `model` in PyTorch and the artifact in ONNX Runtime (CPU, 1 thread) on `images`.

    This is the check of an export before (and after) quantizing: inputs are preprocessed once,
    like Ultralytics' predictor, at the artifact's imgsz, and both raw tensors are compared.
    """
    import onnxruntime as ort

    props = metadata(load(artifact_path))
    imgsz = [int(s) for s in props["imgsz"].strip("[]").split(",")]
    batch = preprocess_images(images, imgsz, stride=int(props["stride"]))
    reference = deploy_copy(model, imgsz)
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(artifact_path), options, providers=["CPUExecutionProvider"])
    refs, gots = [], []
    for x in batch:
        with torch.no_grad():
            refs.append(reference(torch.from_numpy(x[None])).numpy()[0])
        gots.append(session.run(None, {INPUT_NAME: x[None]})[0][0].astype(np.float32))
    ref, diff = np.stack(refs), np.abs(np.stack(gots) - np.stack(refs))  # (N, 4 + classes, anchors)
    top = ref[:, 4:].max(axis=1)  # (N, anchors)
    confident = (top >= CONFIDENT) | (top == top.max(axis=1, keepdims=True))  # at least one per image
    per_anchor_score = diff[:, 4:].max(axis=1)
    return OutputDiff(
        max_abs=float(diff.max()),
        max_rel=float(diff.max() / max(float(np.abs(ref).max()), 1e-12)),
        score=float(per_anchor_score.max()),
        score_p99=float(np.percentile(per_anchor_score, 99)),
        box_px=float(diff[:, :4].max(axis=1)[confident].max()),
        confident=int(confident.sum()),
        images=len(batch),
        imgsz=max(imgsz),
    )


def _imgsz(imgsz: int | Sequence[int]) -> list[int]:
    size = [int(imgsz)] * 2 if isinstance(imgsz, (int, np.integer)) else [int(s) for s in imgsz]
    if len(size) != 2 or min(size) < 32 or any(s % 32 for s in size):
        raise UserError(f"Image size {imgsz} must be one or two positive multiples of 32.")
    return size
