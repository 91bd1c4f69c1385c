"""bf16 on openvino-cpu: offered iff the CPU computes it natively; compiled as the artifact asks, by the
latency device and the accuracy runtime alike. Assertions on compiled precisions, never on timing."""

from collections import Counter

import pytest
import torch
from ultralytics.nn.tasks import DetectionModel

from evaluators.accuracy import compile_for_accuracy, measure_accuracy
from evaluators.hardware import cpu_model_and_flags
from evaluators.openvino import OpenVinoCpuDevice
from evaluators.openvino_ir import Execution, runtime_layers, write_openvino_ir
from evaluators.vocabulary import Int8Recipe, UserError
from spaces.precision import build_artifact

ov = pytest.importorskip("openvino")

IMGSZ = 64
NAMES = {i: f"class{i}" for i in range(10)}
KEPT = ("model.0", "model.10", "model.23")  # a stem conv, the attention block (MatMul, SoftMax), the head (DFL)
FLAGS = cpu_model_and_flags()[1]
CPU_BF16 = "avx512_bf16" in FLAGS or "amx_bf16" in FLAGS
NATIVE = CPU_BF16 and "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
needs_bf16 = pytest.mark.skipif(not NATIVE, reason="this CPU has no native bf16 (avx512_bf16 / amx_bf16)")
COMPUTE = {"Convolution", "MatMul", "Softmax", "Eltwise", "Subgraph", "Concatenation"}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return DetectionModel("yolo11n.yaml", nc=10, verbose=False)


@pytest.fixture(scope="module")
def artifacts(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ov-bf16")
    fp32 = build_artifact(model, {}, folder / "fp32.onnx", imgsz=IMGSZ, names=NAMES)
    mixed = {u: "fp32" if u in KEPT else "bf16" for u in fp32.precisions}
    bf16 = build_artifact(model, mixed, folder / "bf16.onnx", imgsz=IMGSZ, names=NAMES)
    return fp32.path, bf16.path


def compute_precisions(compiled) -> Counter:
    return Counter(layer.precision for layer in runtime_layers(compiled) if layer.type in COMPUTE)


def test_bf16_is_offered_exactly_where_the_cpu_computes_it():
    offered = OpenVinoCpuDevice().precisions
    assert ("bf16" in offered) == NATIVE
    if not CPU_BF16:
        assert "bf16" not in offered
    assert {"fp32", "int8"} <= set(offered) and "fp16" not in offered  # an FP16 file runs in f32 there
    # what a user deploys in there, and the precision of a study's uniform pruned references
    assert OpenVinoCpuDevice().fastest_precision == ("bf16" if NATIVE else "int8")


def test_the_fingerprint_describes_the_device_not_the_artifact():
    settings = OpenVinoCpuDevice().fingerprint().settings
    assert settings["inference_precision_hint"] == "f32"  # for artifacts that name none
    assert OpenVinoCpuDevice().config(Execution("bf16"))["INFERENCE_PRECISION_HINT"] == "bf16"


def test_an_fp32_artifact_runs_fp32_on_the_device_and_in_accuracy(artifacts):
    fp32, _ = artifacts
    for compiled in (OpenVinoCpuDevice().compile(fp32), compile_for_accuracy(fp32)):
        assert compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
        assert set(compute_precisions(compiled)) == {"f32"}  # also where OpenVINO's default is bf16


def test_a_file_opened_as_exported_runs_at_openvinos_default_precision(artifacts):
    """What a user's own OpenVINO run gets (the bench's peers): bf16 where the CPU computes it, else f32; the
    inputs are set by position, so an exporter's own input names do not matter."""
    import numpy as np

    fp32, _ = artifacts
    inputs = {"any-name": np.random.default_rng(0).random((1, 3, IMGSZ, IMGSZ)).astype(np.float32)}
    clock, precision = OpenVinoCpuDevice().open_as_exported(fp32, inputs)
    assert precision == ("bf16" if NATIVE else "f32")
    assert clock() > 0


@needs_bf16
def test_a_bf16_artifact_runs_bf16_with_its_fp32_nodes_kept(artifacts):
    _, bf16 = artifacts
    execution = Execution.of(bf16)
    compiled = OpenVinoCpuDevice().compile(bf16)
    assert compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.bf16
    kept, lowered = Counter(), Counter()
    for layer in runtime_layers(compiled):
        if layer.type in COMPUTE:
            owned = any(execution.owns(name) for name in layer.original)
            (kept if owned else lowered)[(layer.type, layer.precision)] += 1
    assert {p for _, p in kept} == {"f32"}
    assert {("MatMul", "f32"), ("Softmax", "f32"), ("Convolution", "f32")} <= set(kept)
    assert lowered[("Convolution", "bf16")] >= 50  # the rest of the backbone and neck runs bf16


@needs_bf16
def test_accuracy_compiles_the_artifact_as_the_device_does(artifacts):
    for path in artifacts:
        device, accuracy = OpenVinoCpuDevice().compile(path), compile_for_accuracy(path)
        assert device.get_property("INFERENCE_PRECISION_HINT") == accuracy.get_property("INFERENCE_PRECISION_HINT")
        assert compute_precisions(device) == compute_precisions(accuracy)


def test_measured_accuracy_names_the_compiled_precision(artifacts, embedded, tmp_path):
    fp32, bf16 = artifacts
    acc = measure_accuracy(fp32, embedded.data_yaml, runtime="openvino", max_images=4, workdir=tmp_path)
    assert acc.inference_precision == "f32" and acc.images == 4
    if NATIVE:
        acc = measure_accuracy(bf16, embedded.data_yaml, runtime="openvino", max_images=4, workdir=tmp_path)
        assert acc.inference_precision == "bf16"


def test_the_ir_carries_the_precision_and_the_fp32_nodes(artifacts, tmp_path):
    _, bf16 = artifacts
    xml = write_openvino_ir(bf16, tmp_path / "ir")
    assert (tmp_path / "ir" / "metadata.yaml").is_file()
    text = xml.read_text()
    assert "DisablePrecisionConversion" in text and 'INFERENCE_PRECISION_HINT value="bf16"' in text
    model = ov.Core().read_model(str(xml))
    assert model.get_rt_info(["runtime_options", "INFERENCE_PRECISION_HINT"]).astype(str) == "bf16"
    if NATIVE:  # a user's own run: the IR compiled with the hint it records
        compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "bf16"})
        execution = Execution.of(bf16)
        owned = [layer for layer in runtime_layers(compiled) if any(map(execution.owns, layer.original))]
        assert {layer.precision for layer in owned if layer.type in COMPUTE} == {"f32"}


def test_without_native_bf16_a_bf16_artifact_is_refused(artifacts):
    if NATIVE:
        pytest.skip("this CPU runs bf16 natively")
    with pytest.raises(UserError, match="natively"):
        OpenVinoCpuDevice(cache=False).measure(artifacts[1])


@needs_bf16
def test_int8_with_bf16_compiles_or_says_why(model, tmp_path):
    """OpenVINO 2026.4 compiled INT8 + bf16 on an AMD EPYC with AVX512-BF16 but refused a small NNCF
    graph with the bf16 hint on an AMX Xeon: either is acceptable, a traceback is not."""
    import cv2
    from skimage import data

    image = tmp_path / "calib.jpg"
    cv2.imwrite(str(image), cv2.resize(data.astronaut(), (96, 80)))
    art = build_artifact(
        model,
        {"model.2": "int8", "model.4": "int8", "model.6": "bf16"},
        tmp_path / "int8-bf16.onnx",
        imgsz=IMGSZ,
        names=NAMES,
        calibration_images=[image],
        recipe=Int8Recipe(quantizer="nncf", symmetric_activations=True),
    )
    try:
        compiled = OpenVinoCpuDevice().compile(art.path)
    except UserError as exc:
        assert "bf16" in str(exc)
        return
    precisions = compute_precisions(compiled)
    assert precisions["bf16"] and (precisions["u8"] or precisions["i8"])


def test_a_file_openvino_cannot_read_is_one_sentence_with_openvinos_reason(tmp_path):
    # OpenVINO's message opens with "Exception from <file>:<line>:" lines; the sentence carries what follows.
    garbage = tmp_path / "garbage.onnx"
    garbage.write_text("not a model")
    with pytest.raises(UserError) as caught:
        OpenVinoCpuDevice().compile(garbage)
    message = str(caught.value)
    assert message.startswith(f"OpenVINO cannot read {garbage}: Unable to read the model")
    assert "Exception from" not in message and "\n" not in message
