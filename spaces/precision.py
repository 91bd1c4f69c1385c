"""The precision knob: a precision per block, and the one ONNX artifact that realizes it.

Units are the model's `model.<i>` blocks (the same units pruning uses). A precision map
says, per unit, "int8", "fp16" or "fp32"; `build_artifact` turns a (pruned or not)
`DetectionModel` and a map into ONE ONNX file:

1. FP32 export with module-path node names and Ultralytics metadata (`spaces.onnx_export`);
2. INT8 for the int8 units, expressed in the graph as the device's `Int8Recipe` asks:
   ONNX Runtime's `quant_pre_process` + `quantize_static` (Q/DQ or QOperator, per-channel
   weights, calibrated on letterboxed images), or NNCF with every non-INT8 node in its
   ignored scope;
3. FP16 for the fp16 units' nodes, the graph's inputs and outputs kept FP32, one Cast per
   tensor that crosses a border (see `_to_fp16` for why not ORT's block-list converter).

INT8 and FP16 mix in one graph: quantization runs first, then FP16 converts only the
fp16 units' original nodes; Q/DQ pairs, QOperator nodes and int8 weights are left alone.
By default the head's final prediction convs (the last conv of each box/class branch),
its DFL and its box decoding stay out of INT8, because one scale over box pixels and class
scores rounds small scores to zero; `keep_head_float=False` quantizes them too. Nodes are
selected by name, never by op type (SiLU exports as Sigmoid + Mul, so excluding the op type
Sigmoid would unquantize every activation).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch

from evaluators.vocabulary import PRECISIONS, Int8Recipe, UserError
from spaces.onnx_export import (
    INPUT_NAME,
    detection_model,
    export_onnx,
    load,
    metadata,
    module_path,
    precision_units,
    preprocess_images,
    set_metadata,
    unit_of,
)

# --- the knob and its range -------------------------------------------------------------


def suggest_precisions(trial, units: Sequence[str], offered: Sequence[str]) -> dict[str, str]:
    """Sample one precision per unit from `offered` (define-by-run, parameters `precision.<unit>`)."""
    choices = _offered(offered)
    return {unit: trial.suggest_categorical(f"precision.{unit}", choices) for unit in units}


def uniform_precisions(units: Sequence[str], precision: str) -> dict[str, str]:
    """The same precision for every unit."""
    (choice,) = _offered([precision])
    return {unit: choice for unit in units}


def _offered(offered: Sequence[str]) -> list[str]:
    choices = list(dict.fromkeys(offered))
    if not choices or any(p not in PRECISIONS for p in choices):
        raise UserError(f"Precisions {list(offered)} must be a non-empty subset of {list(PRECISIONS)}.")
    return choices


# --- the artifact -----------------------------------------------------------------------


@dataclass(frozen=True)
class NodeCounts:
    """What a precision map turned into: numbers of nodes and initializers in the artifact."""

    quantize_linear: int  # QuantizeLinear nodes
    dequantize_linear: int  # DequantizeLinear nodes
    qlinear_ops: int  # QOperator nodes: QLinearConv, QLinearMul, ConvInteger, ...
    int8_weights: int  # 8-bit initializers of rank >= 2: quantized weights (zero points are rank <= 1)
    fp16_initializers: int  # float16 initializers (converted weights and constants)
    casts: int  # Cast nodes, at the FP16 borders


@dataclass(frozen=True)
class Artifact:
    """One ONNX file with per-unit precision.

    path: the ONNX file. precisions: the precision of every unit of the graph (unset units
    got the default). counts: what the graph contains. recipe: the INT8 recipe used (also
    when no unit is INT8). build_s: wall time of the build in seconds.
    """

    path: Path
    precisions: dict[str, str]
    counts: NodeCounts
    recipe: Int8Recipe
    build_s: float = field(default=0.0, compare=False)

    @property
    def lowest_precision(self) -> str:
        """int8 if any unit is INT8, else fp16 if any is FP16, else fp32 (picks the output bound)."""
        return next((p for p in PRECISIONS if p in self.precisions.values()), "fp32")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["path"] = str(self.path)
        return out


def build_artifact(
    model,
    precisions: Mapping[str, str],
    out_path: str | Path,
    *,
    imgsz: int | Sequence[int],
    names: Mapping[int, str] | Sequence[str],
    calibration_images: Sequence[str | Path] = (),
    recipe: Int8Recipe = Int8Recipe(),
    default: str = "fp32",
    keep_head_float: bool = True,
) -> Artifact:
    """Write one ONNX file realizing `precisions` (unit -> "int8" | "fp16" | "fp32") for `model`.

    Units not in the map get `default`. `calibration_images` (files, preprocessed like
    Ultralytics' predictor) calibrate INT8 and are required when any unit is INT8; how many
    to use is the caller's choice (32 is a fair start). The model is not modified.
    Raises `UserError` for an unknown unit or precision, or INT8 without images.
    """
    start = time.perf_counter()
    if "int8" in (default, *precisions.values()) and not calibration_images:
        raise UserError("INT8 units need calibration images; pass at least one image file.")
    out = Path(out_path)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(model, Path(tmp) / "fp32.onnx", imgsz=imgsz, names=names)
        graph = onnx.load(str(fp32))
        props = metadata(graph)
        units = precision_units(graph)
        per_unit = _resolve(precisions, units, default)
        float_head = _float_head_nodes(model, graph) if keep_head_float else set()
        int8 = [n for u, p in per_unit.items() if p == "int8" for n in units[u] if n not in float_head]
        fp16 = {n for u, p in per_unit.items() if p == "fp16" for n in units[u]}
        if int8:
            calib = preprocess_images(calibration_images, imgsz, stride=int(props["stride"]))
            if recipe.quantizer == "nncf":
                graph = _quantize_nncf(graph, int8, calib, recipe)
            else:
                graph = _quantize_ort(fp32, Path(tmp), int8, calib, recipe)
        if fp16:
            graph = _to_fp16(graph, fp16)
        set_metadata(graph, props)  # quantizers and converters drop metadata_props
        out.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(graph, str(out))
    return Artifact(
        path=out,
        precisions=per_unit,
        counts=count_nodes(graph),
        recipe=recipe,
        build_s=time.perf_counter() - start,
    )


def _resolve(precisions: Mapping[str, str], units: Mapping[str, list[str]], default: str) -> dict[str, str]:
    unknown = sorted(set(precisions) - set(units))
    if unknown:
        raise UserError(
            f"Units {unknown} are not in the model; its units are {next(iter(units))} .. {list(units)[-1]}."
        )
    per_unit = {u: precisions.get(u, default) for u in units}
    bad = sorted({p for p in per_unit.values() if p not in PRECISIONS})
    if bad:
        raise UserError(f"Precisions {bad} are not among {list(PRECISIONS)}.")
    return per_unit


def _float_head_nodes(model, graph: onnx.ModelProto) -> set[str]:
    """Head nodes that stay out of INT8: final branch convs, DFL, and the decoding after them.

    The branch convs before the final ones (e.g. `model.23.cv3.0.0`) are quantizable like
    any other conv; everything else in the head unit is kept float.
    """
    layers = detection_model(model).model
    head, unit = layers[-1], f"model.{len(layers) - 1}"
    branches, finals = [], [f"{unit}.dfl"]
    for attr in ("cv2", "cv3", "one2one_cv2", "one2one_cv3"):
        for j, branch in enumerate(getattr(head, attr, None) or []):
            prefix = f"{unit}.{attr}.{j}"
            convs = [name for name, m in branch.named_modules() if isinstance(m, torch.nn.Conv2d)]
            branches.append(prefix)
            finals.append(f"{prefix}.{convs[-1]}")

    def inside(path: str, scopes: list[str]) -> bool:
        return any(path == s or path.startswith(s + ".") for s in scopes)

    keep = set()
    for node in graph.graph.node:
        if unit_of(node.name) != unit:
            continue
        path = module_path(node.name)
        if inside(path, finals) or not inside(path, branches):
            keep.add(node.name)
    return keep


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


def _quantize_ort(fp32: Path, tmp: Path, nodes: list[str], calib: np.ndarray, recipe: Int8Recipe) -> onnx.ModelProto:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared, quantized = tmp / "prepared.onnx", tmp / "int8.onnx"
    quant_pre_process(str(fp32), str(prepared))
    kinds = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    quantize_static(
        str(prepared),
        str(quantized),
        _Calibration(calib),
        quant_format=QuantFormat.QDQ if recipe.fmt == "qdq" else QuantFormat.QOperator,
        per_channel=recipe.per_channel,
        activation_type=kinds[recipe.activations],
        weight_type=kinds[recipe.weights],
        nodes_to_quantize=nodes,
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


def _quantize_nncf(graph: onnx.ModelProto, nodes: list[str], calib: np.ndarray, recipe: Int8Recipe) -> onnx.ModelProto:
    import nncf

    nncf.set_log_level(logging.ERROR)  # otherwise one INFO line per ignored node

    wanted = set(nodes)
    ignored = [n.name for n in graph.graph.node if n.name not in wanted]
    preset = nncf.QuantizationPreset.PERFORMANCE if recipe.symmetric_activations else nncf.QuantizationPreset.MIXED
    return nncf.quantize(
        graph,
        nncf.Dataset([{INPUT_NAME: calib[i : i + 1]} for i in range(len(calib))]),
        preset=preset,
        subset_size=len(calib),
        ignored_scope=nncf.IgnoredScope(names=ignored) if ignored else None,
    )


def _to_fp16(model: onnx.ModelProto, nodes: set[str]) -> onnx.ModelProto:
    """Run `nodes` in FP16 and everything else as it is, with one Cast per crossing tensor.

    `convert_float_to_float16(keep_io_types=True, node_block_list=...)` handles a graph that is
    FP16 all through, but with a block list it wraps every blocked node in a Cast pair and, when
    a tensor feeds two blocked nodes, emits two Casts of the same name (615 Casts and an invalid
    model on YOLO11n). So the border is drawn here, with ORT's tensor conversion (clamped to the
    FP16 range) and its list of inputs that must stay FP32 (Resize scales).
    """
    from onnxruntime.transformers.float16 import ALWAYS_FLOAT_INPUTS, convert_tensor_float_to_float16

    FLOAT, HALF = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    graph = model.graph
    typed = onnx.shape_inference.infer_shapes(model).graph
    dtype = {v.name: v.type.tensor_type.elem_type for v in [*typed.value_info, *typed.input, *typed.output]}
    dtype.update({t.name: t.data_type for t in graph.initializer})

    def stays_float(node: onnx.NodeProto, i: int) -> bool:
        return node.name not in nodes or i in ALWAYS_FLOAT_INPUTS.get(node.op_type, ())

    users: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for i, x in enumerate(node.input):
            users.setdefault(x, []).append((node, i))
    half = set()
    for init in graph.initializer:  # weights used only by FP16 nodes become FP16
        if init.data_type == FLOAT and all(not stays_float(n, i) for n, i in users.get(init.name, [])):
            init.CopyFrom(convert_tensor_float_to_float16(init))
            half.add(init.name)
    for node in graph.node:
        if node.name not in nodes:
            continue
        half.update(y for y in node.output if dtype.get(y) == FLOAT)
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == FLOAT:
                attr.i = HALF
            elif attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == FLOAT:
                attr.t.CopyFrom(convert_tensor_float_to_float16(attr.t))

    outputs = {o.name for o in graph.output}
    casts: dict[str, onnx.NodeProto] = {}
    rewired: list[onnx.NodeProto] = []

    def cast(x: str, to: int) -> str:
        y = f"{x}_{'fp16' if to == HALF else 'fp32'}"
        if y not in casts:
            casts[y] = onnx.helper.make_node("Cast", [x], [y], name=f"{y}_cast", to=to)
            rewired.append(casts[y])
        return y

    for node in list(graph.node):
        for i, x in enumerate(node.input):
            if x in half and stays_float(node, i):
                node.input[i] = cast(x, FLOAT)
            elif x not in half and dtype.get(x) == FLOAT and not stays_float(node, i):
                node.input[i] = cast(x, HALF)
        rewired.append(node)
        for j, y in enumerate(node.output):
            if y in half and y in outputs:  # the graph's outputs stay FP32
                node.output[j] = f"{y}_fp16"
                rewired.append(onnx.helper.make_node("Cast", [node.output[j]], [y], name=f"{y}_cast", to=FLOAT))
    del graph.node[:]
    graph.node.extend(rewired)
    del graph.value_info[:]  # stale types; ONNX Runtime infers them again
    return model


def count_nodes(graph_or_path: onnx.ModelProto | str | Path) -> NodeCounts:
    """Count Q/DQ nodes, QOperator nodes, 8-bit weights, FP16 initializers and Casts."""
    graph = load(graph_or_path).graph
    ops = Counter(n.op_type for n in graph.node)
    eight_bit = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
    return NodeCounts(
        quantize_linear=ops["QuantizeLinear"],
        dequantize_linear=ops["DequantizeLinear"],
        qlinear_ops=sum(c for op, c in ops.items() if op.startswith("QLinear") or op.endswith("Integer")),
        int8_weights=sum(1 for t in graph.initializer if t.data_type in eight_bit and len(t.dims) >= 2),
        fp16_initializers=sum(1 for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT16),
        casts=ops["Cast"],
    )
