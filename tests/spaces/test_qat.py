"""Quantization-aware training on a real YOLO11n (nc=10, 64 px): the simulated convs are the artifact's INT8 convs."""

import copy
import pickle

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn
from ultralytics.nn.tasks import DetectionModel

from evaluators.vocabulary import Int8Recipe
from spaces.onnx_export import module_path, preprocess_images
from spaces.precision import build_artifact
from spaces.qat import FakeQuantConv2d, QuantizationAware, fake_quantize, strip_fake_quant
from tests.spaces.helpers import write_photos

IMGSZ = 64
NAMES = {i: f"class{i}" for i in range(10)}
UNITS = [f"model.{i}" for i in range(24)]
PER_CHANNEL = Int8Recipe()  # ONNX Runtime's default: per-channel symmetric int8 weights, asymmetric uint8 inputs


@pytest.fixture(scope="module")
def model():
    """A YOLO11n whose BatchNorms flip the sign of some channels: fusion must not move the weight grid."""
    torch.manual_seed(0)
    m = DetectionModel("yolo11n.yaml", nc=10, verbose=False)
    generator = torch.Generator().manual_seed(1)
    for bn in (x for x in m.modules() if isinstance(x, nn.BatchNorm2d)):
        signs = torch.where(torch.rand(bn.num_features, generator=generator) < 0.3, -1.0, 1.0)
        bn.weight.data *= signs * (0.5 + torch.rand(bn.num_features, generator=generator))
    return m.eval()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_photos(tmp_path_factory.mktemp("images"))


def _int8_conv_weights(path) -> dict[str, np.ndarray]:
    """Module path of every Conv with an 8-bit weight -> that weight's integer levels."""
    graph = onnx.load(str(path)).graph
    inits = {t.name: t for t in graph.initializer}
    producer = {y: n for n in graph.node for y in n.output}
    out = {}
    for node in graph.node:
        dq = producer.get(node.input[1]) if node.op_type == "Conv" else None
        if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in inits:
            levels = numpy_helper.to_array(inits[dq.input[0]]).astype(np.int32)
            zero = numpy_helper.to_array(inits[dq.input[2]]).astype(np.int32) if len(dq.input) > 2 else 0
            out[module_path(node.name)] = levels - np.reshape(zero, (-1,) + (1,) * (levels.ndim - 1))
    return out


def test_the_simulated_convs_are_the_artifacts_int8_convs(model, images, tmp_path):
    """Where the artifact stores INT8 weights the simulation rounds the same convs, to the same levels
    (per output channel up to the sign a fused BatchNorm gives it); FP32 units and the float head stay plain."""
    precisions = {u: "int8" for u in UNITS[:12]} | {u: "fp32" for u in UNITS[12:]}
    artifact = build_artifact(
        model, precisions, tmp_path / "m.onnx", imgsz=IMGSZ, names=NAMES, calibration_images=images, recipe=PER_CHANNEL
    )
    stored = _int8_conv_weights(artifact.path)
    assert stored and all(path.split(".")[1] in {str(i) for i in range(12)} for path in stored)

    student = copy.deepcopy(model)
    calibration = preprocess_images(images, IMGSZ)
    swapped = QuantizationAware(precisions, PER_CHANNEL, calibration).apply(student)
    simulated = {path: m for path, m in student.named_modules() if isinstance(m, FakeQuantConv2d)}
    # the export names a Conv module's conv `model.i...conv`; the module paths agree
    assert swapped == len(simulated) == len(stored)
    assert set(simulated) == set(stored)

    agree = total = 0
    for path, conv in simulated.items():
        w = conv.weight.detach()
        scale = w.abs().amax(dim=(1, 2, 3), keepdim=True) / 127
        levels = torch.round(w / scale).numpy().astype(np.int32)
        agree += int((np.abs(levels) == np.abs(stored[path])).sum())
        total += levels.size
        assert conv.input_high > conv.input_low, f"{path}: calibration set no input range"
    assert agree / total > 0.999, f"only {agree / total:.4%} of the weight levels agree with the artifact's"

    # the head's final convs and the FP32 units were left alone
    head_finals = [f"model.23.{b}.{i}.2" for b in ("cv2", "cv3") for i in range(3)]
    assert all(type(student.get_submodule(p)) is nn.Conv2d for p in head_finals)
    assert all(type(student.get_submodule(p)) is nn.Conv2d for p in ("model.13.cv1.conv", "model.16.cv2.conv"))


def test_rounding_gradients_ranges_and_strip():
    torch.manual_seed(0)
    x = torch.linspace(-1, 1, 100, requires_grad=True)
    y = fake_quantize(x, torch.tensor(0.1), torch.tensor(0.0), -5, 5)
    assert torch.allclose(y, torch.round(x.detach() / 0.1).clamp(-5, 5) * 0.1)
    y.sum().backward()
    inside = (torch.round(x.detach() / 0.1).abs() <= 5).float()  # the grid's levels -5..5: clipped ones get none
    assert torch.equal(x.grad, inside)

    conv = nn.Conv2d(3, 4, 3, padding=1)
    fq = FakeQuantConv2d.from_conv(conv, Int8Recipe(symmetric_activations=False))
    assert fq.weight is conv.weight and fq.bias is conv.bias
    levels = torch.round(fq.quantized_weight() / (conv.weight.abs().amax(dim=(1, 2, 3), keepdim=True) / 127))
    assert levels.abs().max() <= 127 and len(torch.unique(fq.quantized_weight())) <= 4 * 255

    fq.train()
    batch = torch.rand(2, 3, 8, 8) * 4 - 1  # inputs in [-1, 3]
    fq(batch)
    assert fq.input_low.item() == pytest.approx(batch.min().item() * 0.01, abs=1e-6)
    assert fq.input_high.item() == pytest.approx(batch.max().item() * 0.01, abs=1e-6)
    for _ in range(2000):
        fq(batch)
    assert fq.input_low.item() == pytest.approx(batch.min().item(), rel=1e-3)
    assert fq.input_high.item() == pytest.approx(batch.max().item(), rel=1e-3)
    fq.eval()
    frozen = (fq.input_low.clone(), fq.input_high.clone())
    out = fq(batch * 10)  # eval: ranges frozen, inputs beyond them clipped
    assert (fq.input_low, fq.input_high) == frozen
    assert not torch.allclose(out, conv(batch * 10), atol=1e-3)
    assert torch.allclose(fq(batch), conv(batch), atol=0.1), "8-bit rounding moved the output by more than its steps"

    wrapper = nn.Sequential(nn.Sequential(fq))
    restored = pickle.loads(pickle.dumps(wrapper))  # Ultralytics saves checkpoints by pickling the module
    assert torch.equal(restored[0][0].input_high, fq.input_high)
    assert strip_fake_quant(restored) == 1
    plain = restored[0][0]
    assert type(plain) is nn.Conv2d and torch.equal(plain(batch), conv(batch))
