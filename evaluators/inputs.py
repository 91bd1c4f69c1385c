"""The inputs an artifact is timed with: fixed synthetic arrays of the graph's input shapes.

Values don't change the timing of a CNN, so every measurement of a graph feeds the same
pseudo-random images in [0, 1).
"""

from __future__ import annotations

import re

import numpy as np

from evaluators.vocabulary import UserError

# onnx.TensorProto element types -> numpy dtypes of the inputs we can synthesise.
_NUMPY_TYPES = {
    1: np.float32,
    10: np.float16,
    11: np.float64,
    2: np.uint8,
    3: np.int8,
    6: np.int32,
    7: np.int64,
    9: np.bool_,
}


def input_specs(model) -> list[tuple[str, tuple[int, ...], type]]:
    """(name, static shape, numpy dtype) of each graph input of an `onnx.ModelProto`.

    A symbolic batch dimension becomes 1; symbolic spatial dimensions come from the
    Ultralytics `imgsz` metadata. Anything else still symbolic raises `UserError`.
    """
    initializers = {init.name for init in model.graph.initializer}
    imgsz = _metadata_imgsz(model)
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        if dims and dims[0] is None:
            dims[0] = 1
        if len(dims) == 4 and None in dims[2:] and imgsz:
            dims[2:] = imgsz
        if None in dims or tensor.elem_type not in _NUMPY_TYPES:
            raise UserError(
                f"input {value.name!r} has no fixed shape or type; export the artifact with a static shape."
            )
        specs.append((value.name, tuple(dims), _NUMPY_TYPES[tensor.elem_type]))
    return specs


def _metadata_imgsz(model) -> list[int] | None:
    for prop in model.metadata_props:
        if prop.key == "imgsz":
            numbers = [int(n) for n in re.findall(r"\d+", prop.value)][:2]
            return numbers * 2 if len(numbers) == 1 else numbers or None
    return None


def synthetic_inputs(model, seed: int = 0) -> dict[str, np.ndarray]:
    """Fixed pseudo-random inputs for the graph (images in [0, 1))."""
    rng = np.random.default_rng(seed)
    return {name: rng.random(shape).astype(dtype) for name, shape, dtype in input_specs(model)}
