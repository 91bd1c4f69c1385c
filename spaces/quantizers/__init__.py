"""INT8 quantizers by name: one file each, behind one signature.

A quantizer writes INT8 into an FP32 ONNX export for exactly the named nodes and leaves
every other node as it is:

    quantize(fp32: Path, nodes: Sequence[str], calibration: np.ndarray, recipe: Int8Recipe,
             workdir: Path, *, timing_only: bool = False) -> onnx.ModelProto

fp32: the FP32 export (`spaces.onnx_export.export_onnx`). nodes: names of the nodes to run in
INT8. calibration: preprocessed images, float32 (N, 3, H, W) in [0, 1], one per calibration
batch. recipe: how the device wants INT8 expressed (the quantizer honours its format, types,
symmetry, per-channel and calibration fields as far as its library can). workdir: a scratch
folder the caller removes. timing_only: the graph is built only to be timed; the quantizer
may skip any step that changes values but never the graph's structure (NNCF skips its bias
correction), so the graph has the `evaluators.artifact.structure_hash` (hence the latency) of
the full quantization, with rougher values; such a graph must never be validated or deployed.
Returns the quantized graph; its `metadata_props` may be lost.

`recipe.quantizer` names the quantizer (`get_quantizer`); a new one is a new file here and
one line in QUANTIZERS. Each imports its library inside `quantize`, so importing this
package never needs NNCF.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import onnx

from evaluators.vocabulary import Int8Recipe, UserError
from spaces.quantizers import nncf, ort


class Quantizer(Protocol):
    """The signature every quantizer implements (see the module docstring)."""

    def __call__(
        self,
        fp32: Path,
        nodes: Sequence[str],
        calibration: np.ndarray,
        recipe: Int8Recipe,
        workdir: Path,
        *,
        timing_only: bool = False,
    ) -> onnx.ModelProto: ...


QUANTIZERS: dict[str, Quantizer] = {
    "ort": ort.quantize,
    "nncf": nncf.quantize,
}


def get_quantizer(name: str) -> Quantizer:
    """The quantizer registered as `name` (an `Int8Recipe.quantizer`); UserError for an unknown one."""
    if name not in QUANTIZERS:
        raise UserError(f"Unknown INT8 quantizer {name!r}; choose one of {', '.join(QUANTIZERS)}.")
    return QUANTIZERS[name]
