"""An ONNX artifact as OpenVINO must run it: its inference precision, its FP32 nodes, its IR.

An artifact that must not run at OpenVINO's FP32 says so in its own `metadata_props`
(`INFERENCE_PRECISION_KEY`, `FP32_NODES_KEY` in `evaluators.vocabulary`). `Execution.of`
reads them; `read_model` gives the OpenVINO model with the FP32 nodes marked, and its execution;
`compile_properties` gives the compile properties; `write_openvino_ir` writes the IR a user
runs (what an export bundle ships for an OpenVINO device). The latency device
(`evaluators.openvino`) and the accuracy runtime (`evaluators.accuracy`) both go through
here, so the mAP and the latency of an artifact belong to the same execution.

How each setting is carried, as measured on OpenVINO 2026.4's CPU plugin (AMD EPYC with
AVX512-BF16):

- The inference precision is a compile property, `INFERENCE_PRECISION_HINT`, passed on every
  compile. Without it OpenVINO runs FP32 graphs in bf16 on CPUs with AVX512-BF16 or AMX; and
  the plugin ignores the hint in a model's `runtime_options` rt_info (it is written into the
  IR all the same, as the record of how the IR must be compiled).
- A node stays FP32 inside a bf16 model through the rt_info attribute
  `DisablePrecisionConversion` (written "dynamic:bf16,f16") on its operations: the CPU plugin
  keeps the original precision of a node whose conversion to f16 is disabled and skips it
  when it enforces bf16. Python can only put strings and ints into rt_info, so the attribute
  is written into the IR's XML and the IR read back; the legacy `disable_fp16_compression` /
  `precise` keys set from Python have no effect. Only operations whose outputs are all FP32
  are marked (a marked integer op keeps i64, which the CPU plugin cannot run).
- The attribute is not copied when a plugin transformation replaces an operation. A marked
  SoftMax-8 would still run bf16, so it is written as the equal SoftMax-1, which the plugin
  keeps; a marked Resize (Interpolate-11, nearest: it only moves values) still runs bf16.
  Convolutions with their fused activations, element-wise ops, concats, MatMuls and
  SoftMax keep FP32 (`runtime_layers` shows it; tests/evaluators/test_openvino_bf16.py).
"""

from __future__ import annotations

import functools
import json
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from evaluators.hardware import cpu_has_bf16
from evaluators.vocabulary import FP32_NODES_KEY, INFERENCE_PRECISION_KEY, UserError

# Artifact precision name -> OpenVINO's INFERENCE_PRECISION_HINT.
_HINTS = {"fp32": "f32", "bf16": "bf16"}
_KEEP_FP32 = {"name": "DisablePrecisionConversion", "version": "0", "value": "dynamic:bf16,f16"}


@dataclass(frozen=True)
class Execution:
    """How an artifact must execute on OpenVINO.

    inference_precision: OpenVINO's INFERENCE_PRECISION_HINT, "f32" or "bf16".
    fp32_nodes: ONNX node names kept FP32 when the inference precision is lower; an
        OpenVINO operation is one of a node's when its name is the node's or starts with it
        followed by "/" (the ONNX front end names the parts of a node so, e.g.
        "/model.0/conv/Conv/WithoutBiases").
    """

    inference_precision: str = "f32"
    fp32_nodes: tuple[str, ...] = ()

    @classmethod
    def of(cls, model_or_path) -> Execution:
        """The execution an ONNX artifact (path or `onnx.ModelProto`) asks for; FP32 when it names none.

        Raises `UserError` for a precision OpenVINO cannot be asked for or a malformed node list.
        """
        import onnx

        model = model_or_path
        if not isinstance(model, onnx.ModelProto):
            model = onnx.load(str(model_or_path), load_external_data=False)
        return cls.from_metadata({p.key: p.value for p in model.metadata_props})

    @classmethod
    def of_openvino(cls, model) -> Execution:
        """The execution of an `ov.Model` read from an ONNX artifact: its front end keeps the
        artifact's metadata_props in the model's rt_info under "framework"."""
        keys = (INFERENCE_PRECISION_KEY, FP32_NODES_KEY)
        props = {
            k: model.get_rt_info(["framework", k]).astype(str) for k in keys if model.has_rt_info(["framework", k])
        }
        return cls.from_metadata(props)

    @classmethod
    def from_metadata(cls, props: Mapping[str, str]) -> Execution:
        """The execution named by an artifact's metadata (key -> value); see `of`."""
        precision = props.get(INFERENCE_PRECISION_KEY, "fp32")
        if precision not in _HINTS:
            raise UserError(
                f"the artifact asks for inference precision {precision!r}; OpenVINO runs {', '.join(_HINTS)}."
            )
        try:
            nodes = json.loads(props.get(FP32_NODES_KEY, "[]"))
        except json.JSONDecodeError:
            nodes = None
        if not isinstance(nodes, list) or not all(isinstance(n, str) for n in nodes):
            raise UserError(f"the artifact's {FP32_NODES_KEY} must be a JSON list of node names.")
        return cls(_HINTS[precision], tuple(nodes))

    def check_supported(self, artifact) -> Execution:
        """Return self, or raise `UserError` when this CPU cannot run the inference precision natively."""
        if self.inference_precision == "bf16" and not native_bf16():
            raise UserError(
                f"{artifact} runs in bf16, which this CPU does not compute natively "
                "(no avx512_bf16 or amx_bf16); rebuild it without bf16 units."
            )
        return self

    def owns(self, op_name: str) -> bool:
        """Whether the OpenVINO operation `op_name` belongs to one of the FP32 nodes."""
        parts = op_name.split("/")
        return any("/".join(parts[:i]) in self._nodes for i in range(1, len(parts) + 1))

    @functools.cached_property
    def _nodes(self) -> frozenset[str]:
        return frozenset(self.fp32_nodes)


@functools.lru_cache(maxsize=1)
def native_bf16() -> bool:
    """Whether bf16 pays here: the CPU computes it natively and OpenVINO's CPU plugin reports BF16."""
    if not cpu_has_bf16():
        return False
    try:
        import openvino as ov
    except ImportError:
        return False
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def compile_error(artifact, execution: Execution, exc: Exception) -> UserError:
    """The one sentence for an artifact the CPU plugin refuses to compile at its inference precision."""
    return UserError(
        f"OpenVINO cannot compile {artifact} at inference precision {execution.inference_precision}: {reason(exc)}"
    )


def reason(exc: Exception) -> str:
    """OpenVINO's message in one line (at most 200 characters): its errors open with "Exception from <source
    file>:<line>:" lines, one per layer the error passed, and say what went wrong after them."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    said = [line for line in lines if not line.startswith("Exception from ")]
    return " ".join(said or lines or [type(exc).__name__])[:200]


def compile_properties(execution: Execution, **properties) -> dict:
    """The CPU compile properties for `execution`: `properties` plus its INFERENCE_PRECISION_HINT."""
    return {**properties, "INFERENCE_PRECISION_HINT": execution.inference_precision}


def read_model(core, onnx_path: str | Path) -> tuple[object, Execution]:
    """The OpenVINO model of the ONNX file with its FP32 nodes marked, and the execution it asks for."""
    model = core.read_model(str(onnx_path))
    execution = Execution.of_openvino(model)
    if not execution.fp32_nodes:
        return model, execution
    import numpy as np
    import openvino as ov

    with tempfile.TemporaryDirectory() as tmp:
        xml = _convert(onnx_path, Path(tmp) / "model.xml", execution)
        weights = ov.Tensor(np.fromfile(xml.with_suffix(".bin"), dtype=np.uint8))
        return core.read_model(xml.read_text(), weights), execution


def write_openvino_ir(onnx_path: str | Path, out_dir: str | Path) -> Path:
    """Write the OpenVINO IR of an ONNX artifact into `out_dir`, as a user runs it; return the .xml.

    The directory holds `<stem>.xml`/`.bin` with the FP32 nodes marked and the inference
    precision in the model's rt_info (`runtime_options/INFERENCE_PRECISION_HINT`), and
    Ultralytics' `metadata.yaml` (so `YOLO(out_dir)` loads it). The CPU plugin does not read
    the hint from rt_info: compile with `compile_properties(Execution.of(onnx_path))`, e.g.
    `core.compile_model(xml, "CPU", {"INFERENCE_PRECISION_HINT": "bf16"})`.
    """
    import yaml
    from ultralytics.nn.backends.base import BaseBackend

    onnx_path, out = Path(onnx_path), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    xml = _convert(onnx_path, out / f"{onnx_path.stem}.xml", Execution.of(onnx_path))
    (out / "metadata.yaml").write_text(yaml.safe_dump(BaseBackend.read_metadata(onnx_path), sort_keys=False))
    return xml


def _convert(onnx_path: str | Path, xml: Path, execution: Execution) -> Path:
    import openvino as ov

    model = ov.convert_model(str(onnx_path))
    model.set_rt_info(execution.inference_precision, ["runtime_options", "INFERENCE_PRECISION_HINT"])
    ov.save_model(model, str(xml), compress_to_fp16=False)
    if execution.fp32_nodes:
        _mark_fp32(xml, execution)
    return xml


def _mark_fp32(xml: Path, execution: Execution) -> None:
    """Add the keep-FP32 attribute to every operation of the FP32 nodes whose outputs are all FP32."""
    tree = ET.parse(xml)
    for layer in tree.getroot().find("layers"):
        outputs = layer.find("output")
        if (
            layer.get("type") in ("Const", "Parameter", "Result")
            or outputs is None
            or any(port.get("precision") != "FP32" for port in outputs)
            or not execution.owns(layer.get("name", ""))
        ):
            continue
        if layer.get("type") == "SoftMax" and layer.get("version") == "opset8":
            _as_softmax1(layer)
        rt_info = layer.find("rt_info")
        if rt_info is None:
            rt_info = ET.Element("rt_info")
            layer.insert(1 if len(layer) and layer[0].tag == "data" else 0, rt_info)
        ET.SubElement(rt_info, "attribute", _KEEP_FP32)
    tree.write(xml)


def _as_softmax1(layer: ET.Element) -> None:
    """Rewrite a SoftMax-8 layer as the equal SoftMax-1 (non-negative axis): the plugin's own
    8-to-1 conversion would replace the operation and drop its keep-FP32 attribute."""
    rank = len(layer.find("input")[0].findall("dim"))
    data = layer.find("data")
    data.set("axis", str(int(data.get("axis", "1")) % rank))
    layer.set("version", "opset1")


@dataclass(frozen=True)
class RuntimeLayer:
    """One layer of a compiled model as the plugin runs it: type, precision, the operations it fused."""

    name: str
    type: str
    precision: str
    original: tuple[str, ...]


def runtime_layers(compiled) -> list[RuntimeLayer]:
    """The layers of an OpenVINO `CompiledModel` with the precision each runs in (e.g. "bf16", "f32", "u8")."""
    layers = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()

        def get(key: str, info=info) -> str:
            return info[key].astype(str) if key in info else ""

        original = tuple(n for n in get("originalLayersNames").split(",") if n)
        layers.append(RuntimeLayer(op.get_friendly_name(), get("layerType"), get("runtimePrecision"), original))
    return layers
