"""mAP of an ONNX artifact through Ultralytics' validator, on ONNX Runtime and OpenVINO."""

import pytest

from evaluators.accuracy import measure_accuracy
from evaluators.vocabulary import UserError
from search.embedded.baseline import REPO_BASELINE, validate
from spaces.onnx_export import export_onnx


@pytest.fixture(scope="module")
def baseline(embedded, tmp_path_factory):
    from ultralytics.nn.tasks import load_checkpoint

    model, _ = load_checkpoint(embedded.checkpoint)
    folder = tmp_path_factory.mktemp("acc")
    onnx_path = export_onnx(model, folder / "baseline.onnx", imgsz=embedded.record.imgsz, names=model.names)
    return embedded.record, embedded.data_yaml, onnx_path


def test_fp32_artifact_matches_pytorch(baseline, tmp_path):
    record, data_yaml, onnx_path = baseline
    torch_map, torch_map50 = validate(REPO_BASELINE, data_yaml, record.imgsz)
    acc = measure_accuracy(onnx_path, data_yaml, imgsz=record.imgsz, workdir=tmp_path)
    assert acc.images == 300 and acc.runtime == "onnxruntime"
    assert abs(acc.map50_95 - torch_map) <= 0.005
    assert abs(acc.map50 - torch_map50) <= 0.005
    assert 0 < acc.precision <= 1 and 0 < acc.recall <= 1


def test_openvino_and_subset(baseline, tmp_path):
    record, data_yaml, onnx_path = baseline
    ort = measure_accuracy(onnx_path, data_yaml, imgsz=record.imgsz, max_images=48, workdir=tmp_path)
    ov = measure_accuracy(onnx_path, data_yaml, imgsz=record.imgsz, max_images=48, runtime="openvino", workdir=tmp_path)
    assert ort.images == ov.images == 48 and ov.runtime == "openvino"
    assert abs(ort.map50_95 - ov.map50_95) <= 0.01  # same FP32 graph, two runtimes


def test_bad_inputs_are_user_errors(baseline, tmp_path):
    _, data_yaml, onnx_path = baseline
    with pytest.raises(UserError, match="does not exist"):
        measure_accuracy(tmp_path / "missing.onnx", data_yaml)
    with pytest.raises(UserError, match="runtime"):
        measure_accuracy(onnx_path, data_yaml, runtime="tflite")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not a model")
    with pytest.raises(UserError, match="not a valid ONNX model"):
        measure_accuracy(corrupt, data_yaml, max_images=4, workdir=tmp_path)
