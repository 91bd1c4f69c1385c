"""FP16 for chosen nodes of an ONNX graph, everything else left as it is.

The graph's inputs and outputs stay FP32, and one Cast is written per tensor that crosses
the border between FP16 and the rest. Weights used only by FP16 nodes become FP16; Q/DQ
pairs, QOperator nodes and 8-bit weights of a quantized graph are not touched, so FP16
converts a graph after INT8 quantization.
"""

from __future__ import annotations

import onnx


def to_fp16(model: onnx.ModelProto, nodes: set[str]) -> onnx.ModelProto:
    """Run `nodes` (node names) in FP16 and everything else as it is, with one Cast per crossing tensor.

    `model` is changed in place and returned.

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
