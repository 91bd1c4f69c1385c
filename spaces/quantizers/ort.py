"""INT8 with ONNX Runtime's static quantizer: `quant_pre_process`, then `quantize_static`.

Writes Q/DQ pairs or QOperator nodes (`recipe.fmt`), with the recipe's activation and weight
types, symmetry, per-channel weight scales and calibration method; only `nodes` are quantized.
A timing-only graph is built the same way (its cost is the calibration, which the caller
keeps short by passing few images).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

from evaluators.vocabulary import Int8Recipe
from spaces.onnx_export import INPUT_NAME


class _Calibration:
    """ONNX Runtime's CalibrationDataReader over preprocessed images, one image per batch."""

    def __init__(self, images: np.ndarray):
        self._images = images
        self._i = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._i >= len(self._images):
            return None
        self._i += 1
        return {INPUT_NAME: self._images[self._i - 1 : self._i]}

    def rewind(self) -> None:
        self._i = 0


def quantize(
    fp32: Path,
    nodes: Sequence[str],
    calibration: np.ndarray,
    recipe: Int8Recipe,
    workdir: Path,
    *,
    timing_only: bool = False,
) -> onnx.ModelProto:
    """INT8 for `nodes` of the FP32 export `fp32` (see `spaces.quantizers` for the contract)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared, quantized = Path(workdir) / "prepared.onnx", Path(workdir) / "int8.onnx"
    quant_pre_process(str(fp32), str(prepared))
    kinds = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    quantize_static(
        str(prepared),
        str(quantized),
        _Calibration(calibration),
        quant_format=QuantFormat.QDQ if recipe.fmt == "qdq" else QuantFormat.QOperator,
        per_channel=recipe.per_channel,
        activation_type=kinds[recipe.activations],
        weight_type=kinds[recipe.weights],
        nodes_to_quantize=list(nodes),
        calibrate_method={
            "minmax": CalibrationMethod.MinMax,
            "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile,
        }[recipe.calibration],
        extra_options={
            "ActivationSymmetric": recipe.symmetric_activations,
            "WeightSymmetric": recipe.symmetric_weights,
        },
    )
    return onnx.load(str(quantized))
