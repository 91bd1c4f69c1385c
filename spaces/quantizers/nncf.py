"""INT8 with NNCF's ONNX post-training quantizer, every node not to quantize in its ignored scope.

NNCF writes Q/DQ only (`Int8Recipe` rejects "qoperator" with it) and picks types and
calibration itself; of the recipe it reads `symmetric_activations` (its PERFORMANCE preset)
or not (MIXED). OpenVINO gains from INT8 only in a graph NNCF wrote. A timing-only graph
skips the fast bias correction (about 2 s of a quantization; it corrects the values of
existing biases and adds no node). NNCF's pattern matching is remembered per graph topology
(`spaces.quantizers.nncf_matching`), so a process quantizing pruned variants of one model
matches once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

from evaluators.vocabulary import Int8Recipe
from spaces.onnx_export import INPUT_NAME
from spaces.quantizers.nncf_matching import remembered_matching


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
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

    nncf.set_log_level(logging.ERROR)  # otherwise one INFO line per ignored node

    graph = onnx.load(str(fp32))
    wanted = set(nodes)
    ignored = [n.name for n in graph.graph.node if n.name not in wanted]
    preset = nncf.QuantizationPreset.PERFORMANCE if recipe.symmetric_activations else nncf.QuantizationPreset.MIXED
    with remembered_matching():
        return nncf.quantize(
            graph,
            nncf.Dataset([{INPUT_NAME: calibration[i : i + 1]} for i in range(len(calibration))]),
            preset=preset,
            subset_size=len(calibration),
            ignored_scope=nncf.IgnoredScope(names=ignored) if ignored else None,
            advanced_parameters=AdvancedQuantizationParameters(disable_bias_correction=True) if timing_only else None,
        )
