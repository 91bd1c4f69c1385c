"""The precision knob: a precision per block, and the one ONNX artifact that realizes it.

Units are the model's `model.<i>` blocks (the same units pruning uses). A precision map
says, per unit, "int8", "bf16", "fp16" or "fp32"; `build_artifact` turns a (pruned or not)
`DetectionModel` and a map into ONE ONNX file:

1. FP32 export with module-path node names and Ultralytics metadata (`spaces.onnx_export`);
2. INT8 for the int8 units, by the quantizer the device's `Int8Recipe` names
   (`spaces.quantizers`: ONNX Runtime's static quantizer, or NNCF), calibrated on
   letterboxed images;
3. FP16 for the fp16 units' nodes, the graph's inputs and outputs kept FP32, one Cast per
   tensor that crosses a border (`spaces.fp16`);
4. bf16, an execution precision of the runtime (OpenVINO's CPU plugin on AVX512-BF16/AMX),
   not a tensor type: bf16 units stay FP32 in the file, and when any unit is bf16 the
   artifact's `metadata_props` say how it must run: `INFERENCE_PRECISION_KEY` = "bf16" and
   `FP32_NODES_KEY` = the JSON list of the fp32 units' node names (kept FP32 at run time).
   The int8 units of such an artifact run INT8 and its other float nodes bf16.

An artifact built `timing_only` has the structure (`evaluators.artifact.structure_hash`),
hence the latency, of the full build but rougher INT8 values: the quantizer skips what only
moves values (`spaces.quantizers`). It is for timing alone, never for validation or deployment.

INT8 and FP16 mix in one graph: quantization runs first, then FP16 converts only the
fp16 units' original nodes; Q/DQ pairs, QOperator nodes and int8 weights are left alone.
By default the head's final prediction convs (the last conv of each box/class branch),
its DFL and its box decoding stay out of INT8, because one scale over box pixels and class
scores rounds small scores to zero; `keep_head_float=False` quantizes them too. Nodes are
selected by name, never by op type (SiLU exports as Sigmoid + Mul, so excluding the op type
Sigmoid would unquantize every activation).

The search parameters of the knob are declared here too (`precision_params`): one
categorical `precision.<unit>` per unit over the precisions the device offers.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import onnx
import torch

from evaluators.vocabulary import FP32_NODES_KEY, INFERENCE_PRECISION_KEY, PRECISIONS, Int8Recipe, UserError
from spaces.channel_groups import HEAD_BRANCHES, within
from spaces.fp16 import to_fp16
from spaces.onnx_export import (
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
from spaces.params import Categorical, Param
from spaces.quantizers import get_quantizer

# --- the knob and its range -------------------------------------------------------------


def precision_params(units: Sequence[str], offered: Sequence[str]) -> tuple[Param, ...]:
    """The declared search parameters of precision: one `precision.<unit>` per unit, in unit order.

    Each is a categorical over `offered` (repeats dropped), asked also when only one precision
    is offered; default "fp32" (a unit a policy does not name runs in FP32). UserError unless
    `offered` is a non-empty subset of PRECISIONS.
    """
    search = Categorical(tuple(_offered(offered)))
    return tuple(Param(f"precision.{unit}", str, "fp32", search, description=f"precision of {unit}") for unit in units)


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
        """The first of PRECISIONS (int8, bf16, fp16, fp32) any unit has (picks the output bound)."""
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
    timing_only: bool = False,
) -> Artifact:
    """Write one ONNX file realizing `precisions` (unit -> "int8" | "bf16" | "fp16" | "fp32") for `model`.

    Units not in the map get `default`. `calibration_images` (files, preprocessed like
    Ultralytics' predictor) calibrate INT8 and are required when any unit is INT8; how many
    to use is the caller's choice (32 is a fair start; a timing-only build needs a few).
    timing_only: an artifact to time and nothing else (see the module docstring). The model is not modified.
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
            graph = get_quantizer(recipe.quantizer)(fp32, int8, calib, recipe, Path(tmp), timing_only=timing_only)
        if fp16:
            graph = to_fp16(graph, fp16)
        set_metadata(graph, {**props, **execution_metadata(per_unit, units, graph)})  # quantizers drop metadata_props
        out.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(graph, str(out))
    return Artifact(
        path=out,
        precisions=per_unit,
        counts=count_nodes(graph),
        recipe=recipe,
        build_s=time.perf_counter() - start,
    )


def execution_metadata(
    per_unit: Mapping[str, str], units: Mapping[str, list[str]], graph: onnx.ModelProto
) -> dict[str, str]:
    """The execution keys of an artifact: none without bf16 units; else bf16 inference and the fp32 units' nodes."""
    if "bf16" not in per_unit.values():
        return {}
    present = {n.name for n in graph.graph.node}
    fp32 = [n for u, p in per_unit.items() if p == "fp32" for n in units[u] if n in present]
    return {INFERENCE_PRECISION_KEY: "bf16", FP32_NODES_KEY: json.dumps(fp32, separators=(",", ":"))}


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


@dataclass(frozen=True)
class FloatHead:
    """The part of the detection head that stays out of INT8: its final branch convs, its DFL, and
    everything in the head unit outside the box/class branches (the decoding).

    unit: the head's `model.<i>`. branches: module paths of the box/class branches
    (`model.23.cv3.0`). finals: module paths kept float inside them (their last conv) and the DFL.
    The branch convs before the final ones (e.g. `model.23.cv3.0.0`) are quantizable like any other conv.
    """

    unit: str
    branches: tuple[str, ...]
    finals: tuple[str, ...]

    @classmethod
    def of(cls, model) -> FloatHead:
        """The float head of a DetectionModel (or an Ultralytics wrapper of one)."""
        layers = detection_model(model).model
        head, unit = layers[-1], f"model.{len(layers) - 1}"
        branches, finals = [], [f"{unit}.dfl"]
        for attr in HEAD_BRANCHES:
            for j, branch in enumerate(getattr(head, attr, None) or []):
                prefix = f"{unit}.{attr}.{j}"
                convs = [name for name, m in branch.named_modules() if isinstance(m, torch.nn.Conv2d)]
                branches.append(prefix)
                finals.append(f"{prefix}.{convs[-1]}")
        return cls(unit, tuple(branches), tuple(finals))

    def keeps(self, path: str) -> bool:
        """Whether the module at dotted `path` (or a node it emitted) stays float."""
        if not within(path, (self.unit,)):
            return False
        return within(path, self.finals) or not within(path, self.branches)


def _float_head_nodes(model, graph: onnx.ModelProto) -> set[str]:
    """The graph's nodes that `FloatHead` keeps out of INT8."""
    head = FloatHead.of(model)
    return {n.name for n in graph.graph.node if unit_of(n.name) == head.unit and head.keeps(module_path(n.name))}


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
