"""An artifact as a measurement sees it: a checked ONNX file, and the hash of its structure.

Latency depends on an artifact's structure and precision, not on its trained weights, so
measurements are keyed by `structure_hash`: an untrained and a fine-tuned artifact of one
policy share it; a re-pruned or re-quantized one does not. How the artifact must execute
(its `metadata_props` under `EXECUTION_KEYS`, e.g. bf16 inference) is structure too: the
FP32 and bf16 artifacts of one graph time differently and hash differently.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from evaluators.vocabulary import FP32_NODES_KEY, INFERENCE_PRECISION_KEY, UserError

# metadata_props that change how a runtime executes the graph (the other metadata doesn't).
EXECUTION_KEYS = (INFERENCE_PRECISION_KEY, FP32_NODES_KEY)


def check_artifact(path: str | os.PathLike):
    """Load and check an ONNX file; return the `onnx.ModelProto` (weights included).

    Raises `UserError` when the file is missing or is not a valid ONNX model.
    """
    import onnx

    path = Path(path)
    if not path.is_file():
        raise UserError(f"ONNX file {path} does not exist.")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:  # protobuf and checker errors have no common base class
        raise UserError(f"{path} is not a valid ONNX model ({_first_line(exc)}).") from None
    if not model.graph.node:
        raise UserError(f"{path} is not a valid ONNX model (its graph has no nodes).")
    return model


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


# Inputs whose values are weights or quantization parameters: only their type and shape
# enter the structure hash (training and calibration change them, timing doesn't).
_WEIGHT_INPUTS = {
    "Conv": {1, 2},
    "ConvTranspose": {1, 2},
    "Gemm": {1, 2},
    "MatMul": {1},
    "BatchNormalization": {1, 2, 3, 4},
    "InstanceNormalization": {1, 2},
    "LayerNormalization": {1, 2},
    "PRelu": {1},
    "QuantizeLinear": {1, 2},
    "DequantizeLinear": {0, 1, 2},
    "QLinearConv": {1, 2, 3, 4, 5, 6, 7, 8},
    "QLinearMatMul": {1, 2, 3, 4, 5, 6, 7},
}
# Small constants (shapes, axes, Resize scales) are structure: their values change the work.
_MAX_STRUCTURAL_ELEMENTS = 64


def structure_hash(model_or_path) -> str:
    """16-hex-digit hash of an ONNX graph's structure, blind to weight values.

    Covers opsets, graph inputs/outputs (types and shapes), every node in order (op,
    domain, name, attributes, wiring), initializer types and shapes, and the values of
    small non-weight constants (shapes, axes, scales of Resize), and the execution metadata
    (`EXECUTION_KEYS`) when the artifact has any, so the hash of an artifact without them is
    what it always was. Tensor names enter only through the wiring, so renaming tensors does
    not change the hash.
    """
    import onnx

    model = model_or_path
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model_or_path), load_external_data=False)
    canonical = {
        "opsets": sorted((o.domain, o.version) for o in model.opset_import),
        "graph": _graph(model.graph, {}),
    }
    if execution := {p.key: p.value for p in model.metadata_props if p.key in EXECUTION_KEYS}:
        canonical["execution"] = dict(sorted(execution.items()))
    return hashlib.sha256(json.dumps(canonical, default=str).encode()).hexdigest()[:16]


def _graph(graph, ids: dict) -> dict:
    from onnx import helper

    def ref(name: str):
        return ids.setdefault(name, len(ids)) if name else None

    weights = {
        name for node in graph.node for i, name in enumerate(node.input) if i in _WEIGHT_INPUTS.get(node.op_type, ())
    }

    def tensor(t, name):
        described = [t.data_type, list(t.dims)]
        size = 1
        for d in t.dims:
            size *= d
        if size <= _MAX_STRUCTURAL_ELEMENTS and name not in weights:
            from onnx import numpy_helper

            described.append(numpy_helper.to_array(t).tolist())
        return described

    def attribute(value, outputs):
        if isinstance(value, list):
            return [attribute(v, outputs) for v in value]
        if hasattr(value, "dims") and hasattr(value, "data_type"):  # TensorProto
            return tensor(value, outputs[0] if outputs else "")
        if hasattr(value, "node") and hasattr(value, "initializer"):  # GraphProto
            return _graph(value, ids)
        if isinstance(value, bytes):
            return value.decode(errors="replace")
        return value if isinstance(value, (int, float, str)) else str(value)

    def value_info(v):
        t = v.type.tensor_type
        return [ref(v.name), t.elem_type, [d.dim_value if d.HasField("dim_value") else "?" for d in t.shape.dim]]

    initializers = {init.name for init in graph.initializer}
    inputs = [value_info(v) for v in graph.input if v.name not in initializers]
    constants = sorted(([ref(i.name), tensor(i, i.name)] for i in graph.initializer), key=lambda x: x[0])
    nodes = [
        [
            n.op_type,
            n.domain,
            n.name,
            [ref(i) for i in n.input],
            [ref(o) for o in n.output],
            sorted((a.name, attribute(helper.get_attribute_value(a), list(n.output))) for a in n.attribute),
        ]
        for n in graph.node
    ]
    outputs = [value_info(v) for v in graph.output]
    return {"inputs": inputs, "initializers": constants, "nodes": nodes, "outputs": outputs}
