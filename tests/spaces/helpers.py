"""Checks the spaces tests share: an artifact's raw output against PyTorch's, with documented bounds."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from spaces.onnx_export import INPUT_NAME, deploy_copy, load, metadata, preprocess_images

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


def write_photos(folder: Path) -> list[Path]:
    """Four of scikit-image's photographs as 96x80 JPEGs in `folder` (calibration and comparison images)."""
    import cv2
    from skimage import data

    paths = []
    for i, photo in enumerate([data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]):
        path = Path(folder) / f"{i}.jpg"
        cv2.imwrite(str(path), cv2.cvtColor(cv2.resize(photo, (96, 80)), cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths
