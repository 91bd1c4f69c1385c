"""The precision knob on a real YOLO11n (nc=10, 64 px): export, per-unit INT8/FP16/FP32, runtimes."""

import copy
from ast import literal_eval

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from ultralytics import YOLO
from ultralytics.nn.tasks import DetectionModel

from evaluators.artifact import structure_hash
from evaluators.vocabulary import Int8Recipe, UserError
from spaces.onnx_export import dfl_last_axis, export_onnx, metadata, module_path, precision_units, preprocess_images
from spaces.params import Categorical
from spaces.precision import build_artifact, precision_params, uniform_precisions
from spaces.quantizers import QUANTIZERS, get_quantizer
from tests.spaces.helpers import compare_outputs, write_photos

IMGSZ = 64
NAMES = {i: f"class{i}" for i in range(10)}
UNITS = [f"model.{i}" for i in range(24)]
HEAD_FINALS = [f"/model.23/{b}.{i}/{b}.{i}.2/Conv" for b in ("cv2", "cv3") for i in range(3)]
DFL = "/model.23/dfl/MatMul"  # the DFL's integral, exported as a MatMul (`dfl_last_axis`)
MIXED = {"model.0": "int8", "model.2": "int8", "model.6": "int8", "model.8": "fp16", "model.13": "fp16"}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return DetectionModel("yolo11n.yaml", nc=10, verbose=False)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_photos(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def fp32(model, tmp_path_factory):
    return export_onnx(model, tmp_path_factory.mktemp("fp32") / "m.onnx", imgsz=IMGSZ, names=NAMES)


@pytest.fixture(scope="module")
def mixed(model, images, tmp_path_factory):
    out = tmp_path_factory.mktemp("mixed") / "m.onnx"
    return build_artifact(model, MIXED, out, imgsz=IMGSZ, names=NAMES, calibration_images=images)


@pytest.fixture(scope="module")
def all_int8(model, images, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "m.onnx"
    return build_artifact(model, {}, out, imgsz=IMGSZ, names=NAMES, calibration_images=images, default="int8")


def weight_kinds(path) -> dict[str, str]:
    """Conv node name -> "int8" (weight dequantized from an 8-bit initializer), "fp16" or "fp32"."""
    graph = onnx.load(str(path)).graph
    inits = {t.name: t for t in graph.initializer}
    producer = {y: n for n in graph.node for y in n.output}
    kinds = {}
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        weight = node.input[1]
        if weight in producer and producer[weight].op_type == "DequantizeLinear":
            stored = inits[producer[weight].input[0]].data_type
            kinds[node.name] = "int8" if stored in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8) else "?"
        else:
            kinds[node.name] = {onnx.TensorProto.FLOAT: "fp32", onnx.TensorProto.FLOAT16: "fp16"}[
                inits[weight].data_type
            ]
    return kinds


def run_ort(path):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": np.random.default_rng(0).random((1, 3, IMGSZ, IMGSZ), np.float32)})[0]


def test_fp32_export_keeps_metadata_module_names_and_predicts(model, fp32, images):
    props = metadata(onnx.load(str(fp32)))
    assert literal_eval(props["names"]) == NAMES and literal_eval(props["imgsz"]) == [IMGSZ, IMGSZ]
    assert (props["stride"], props["task"], props["batch"]) == ("32", "detect", "1")
    graph = onnx.load(str(fp32)).graph
    assert "/model.2/cv1/conv/Conv" in {n.name for n in graph.node}
    assert list(precision_units(fp32)) == UNITS
    assert sum(map(len, precision_units(fp32).values())) == len(graph.node)  # every node in a unit
    modules = dict(model.named_modules())
    convs = [n.name for n in graph.node if n.op_type == "Conv"]
    assert all(isinstance(modules[module_path(c)], torch.nn.Conv2d) for c in convs)
    assert module_path("/model.6/m.0/m/m.0/cv1/conv/Conv") == "model.6.m.0.m.0.cv1.conv"
    assert hasattr(model.model[0], "bn") and model.model[0].conv.weight.requires_grad  # input not fused
    result = YOLO(str(fp32), task="detect").predict(str(images[0]), imgsz=IMGSZ, verbose=False)[0]
    assert result.names == NAMES and result.orig_shape == (80, 96)  # boxes are mapped back to the image
    assert result.boxes.data.shape[1] == 6


def test_fp32_outputs_match_pytorch(model, fp32, images):
    diff = compare_outputs(model, fp32, images)
    assert diff.images == len(images) and diff.within("fp32")
    assert diff.max_rel <= 1e-4


def test_dfl_exports_its_softmax_on_the_last_axis_and_equals_ultralytics(model, fp32):
    dfl = model.model[-1].dfl
    x = torch.randn(2, 4 * dfl.c1, 84) * 4
    torch.testing.assert_close(dfl_last_axis(dfl, x), dfl(x), rtol=1e-5, atol=1e-5)
    graph = onnx.load(str(fp32)).graph
    (softmax,) = [n for n in graph.node if n.name.startswith("/model.23/dfl/") and n.op_type == "Softmax"]
    assert [a.i for a in softmax.attribute if a.name == "axis"] == [-1]
    assert not any(n.name.startswith("/model.23/dfl/") and n.op_type == "Conv" for n in graph.node)
    image = torch.rand(1, 3, IMGSZ, IMGSZ)
    with torch.no_grad():
        ultralytics = copy.deepcopy(model).eval()(image)[0]  # Ultralytics' own forward, DFL included
    got = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).run(None, {"images": image.numpy()})[0]
    np.testing.assert_allclose(got, ultralytics.numpy(), rtol=1e-4, atol=1e-3)


def test_mixed_map_puts_each_unit_at_its_precision(mixed):
    kinds = weight_kinds(mixed.path)
    for conv, kind in kinds.items():
        unit = ".".join(module_path(conv).split(".")[:2])
        assert kind == MIXED.get(unit, "fp32"), (conv, kind)
    int8_convs = sum(k == "int8" for k in kinds.values())
    fp16_convs = sum(k == "fp16" for k in kinds.values())
    assert int8_convs == 1 + 4 + 9 and fp16_convs == 9 + 4  # model.0, .2, .6 / model.8, .13
    assert mixed.counts.int8_weights == int8_convs
    assert mixed.counts.fp16_initializers == 2 * fp16_convs  # weights and biases
    assert mixed.counts.quantize_linear > 0 and mixed.counts.dequantize_linear > 0
    assert mixed.precisions == {u: MIXED.get(u, "fp32") for u in UNITS}
    assert mixed.lowest_precision == "int8"
    out = run_ort(mixed.path)
    assert out.shape == (1, 14, 84) and out.dtype == np.float32 and np.isfinite(out).all()
    assert literal_eval(metadata(onnx.load(str(mixed.path)))["names"]) == NAMES


def test_yolo_predicts_with_mixed_artifact(mixed, images):
    result = YOLO(str(mixed.path), task="detect").predict(str(images[1]), imgsz=IMGSZ, verbose=False)[0]
    assert result.names == NAMES and result.orig_shape == (80, 96) and result.boxes.data.shape[1] == 6


def test_head_final_convs_and_dfl_stay_float_unless_asked(model, images, all_int8, tmp_path):
    kinds = weight_kinds(all_int8.path)
    assert all(kinds[c] == "fp32" for c in HEAD_FINALS)
    assert kinds["/model.23/cv3.0/cv3.0.0/cv3.0.0.0/conv/Conv"] == "int8"  # earlier head convs quantize
    assert sum(k == "fp32" for k in kinds.values()) == len(HEAD_FINALS)
    graph = onnx.load(str(all_int8.path)).graph
    producer = {y: n.op_type for n in graph.node for y in n.output}
    (dfl,) = [n for n in graph.node if n.name == DFL]
    assert [producer.get(x, "initializer") for x in dfl.input] == ["Softmax", "initializer"]  # float in, float bins
    whole = build_artifact(
        model,
        {},
        tmp_path / "h.onnx",
        imgsz=IMGSZ,
        names=NAMES,
        calibration_images=images[:2],
        default="int8",
        keep_head_float=False,
    )
    assert all(k == "int8" for k in weight_kinds(whole.path).values())
    assert np.isfinite(run_ort(whole.path)).all()


def test_sigmoids_of_silu_are_quantized(all_int8):
    graph = onnx.load(str(all_int8.path)).graph
    producer = {y: n for n in graph.node for y in n.output}
    sigmoids = [n for n in graph.node if n.op_type == "Sigmoid" and not n.name.startswith("/model.23/")]
    assert len(sigmoids) > 50
    assert all(producer[s.input[0]].op_type == "DequantizeLinear" for s in sigmoids)


def test_qoperator_recipe_writes_qlinearconv(model, images, tmp_path):
    art = build_artifact(
        model,
        {"model.1": "int8", "model.3": "int8"},
        tmp_path / "q.onnx",
        imgsz=IMGSZ,
        names=NAMES,
        calibration_images=images[:2],
        recipe=Int8Recipe(fmt="qoperator"),
    )
    ops = [n.op_type for n in onnx.load(str(art.path)).graph.node]
    assert ops.count("QLinearConv") == 2 and art.counts.qlinear_ops >= 2
    assert np.isfinite(run_ort(art.path)).all()


def test_nncf_recipe_is_read_by_openvino(model, images, tmp_path):
    ov = pytest.importorskip("openvino")
    art = build_artifact(
        model,
        {"model.2": "int8", "model.4": "int8", "model.8": "fp16"},
        tmp_path / "n.onnx",
        imgsz=IMGSZ,
        names=NAMES,
        calibration_images=images[:2],
        recipe=Int8Recipe(quantizer="nncf"),
    )
    kinds = weight_kinds(art.path)
    assert {kinds[c] for c in kinds if c.startswith(("/model.2/", "/model.4/"))} == {"int8"}
    assert kinds["/model.8/cv1/conv/Conv"] == "fp16" and kinds["/model.3/conv/Conv"] == "fp32"
    # Compiled as the openvino-cpu device compiles it: OpenVINO's default precision is bf16
    # on CPUs with AVX512-BF16/AMX, and it cannot compile this graph in bf16 there.
    from evaluators.openvino import OpenVinoCpuDevice

    core = ov.Core()
    config = {k: str(v) for k, v in OpenVinoCpuDevice().config().items()}
    compiled = core.compile_model(core.read_model(str(art.path)), "CPU", config)
    out = compiled(np.zeros((1, 3, IMGSZ, IMGSZ), np.float32))[0]
    assert out.shape == (1, 14, 84)


def test_structure_hash_ignores_weights_not_precisions(model, images, mixed, all_int8, tmp_path):
    other = copy.deepcopy(model)  # other weights, and no two tensors equal (the untrained model has many)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for t in [*other.parameters(), *other.buffers()]:
            if t.is_floating_point():
                t.add_(0.01 * torch.rand(t.shape, generator=generator))
    again = build_artifact(other, MIXED, tmp_path / "o.onnx", imgsz=IMGSZ, names=NAMES, calibration_images=images)
    assert structure_hash(again.path) == structure_hash(mixed.path)
    assert structure_hash(all_int8.path) != structure_hash(mixed.path)
    fp16 = build_artifact(model, {}, tmp_path / "f.onnx", imgsz=IMGSZ, names=NAMES, default="fp16")
    assert len({structure_hash(a.path) for a in (fp16, mixed, all_int8)}) == 3


def test_precision_params_and_uniform_precisions():
    params = precision_params(UNITS[:5], ["int8", "fp16", "int8"])
    assert [p.name for p in params] == [f"precision.{u}" for u in UNITS[:5]]
    assert all(p.search == Categorical(("int8", "fp16")) and p.default == "fp32" for p in params)
    assert precision_params(UNITS[:1], ["fp32"])[0].search == Categorical(("fp32",))  # asked with one choice too
    with pytest.raises(UserError):
        precision_params(UNITS, ["int4"])
    with pytest.raises(UserError):
        precision_params(UNITS, [])
    assert uniform_precisions(UNITS[:2], "fp16") == {"model.0": "fp16", "model.1": "fp16"}
    with pytest.raises(UserError):
        uniform_precisions(UNITS, "int4")


def test_every_recipe_quantizer_is_registered():
    assert set(QUANTIZERS) == set(Int8Recipe.choices()["quantizer"])
    with pytest.raises(UserError, match="ort"):
        get_quantizer("tflite")


@pytest.mark.parametrize("name", sorted(QUANTIZERS))
def test_quantizer_writes_int8_for_exactly_the_named_nodes(name, fp32, images, tmp_path):
    """The quantizer contract, for every registered quantizer: only the named nodes become INT8."""
    if name == "nncf":
        pytest.importorskip("nncf")
    graph = onnx.load(str(fp32))
    nodes = precision_units(graph)["model.2"] + precision_units(graph)["model.4"]
    calibration = preprocess_images(images[:2], IMGSZ)
    quantized = get_quantizer(name)(fp32, nodes, calibration, Int8Recipe(quantizer=name), tmp_path)
    onnx.save(quantized, str(tmp_path / "q.onnx"))
    kinds = weight_kinds(tmp_path / "q.onnx")
    int8 = {c for c, kind in kinds.items() if kind == "int8"}
    assert int8 == {c for c in kinds if c.startswith(("/model.2/", "/model.4/"))}
    assert {kinds[c] for c in kinds if c not in int8} == {"fp32"}
    assert run_ort(tmp_path / "q.onnx").shape == (1, 14, 84)


@pytest.mark.parametrize("name", sorted(QUANTIZERS))
def test_a_timing_only_build_has_the_structure_of_the_full_build(name, model, images, tmp_path):
    """Same policy, same model: the timing-only artifact (one calibration image) has the full build's
    structure hash, hence its latency; NNCF's differs in values only (no bias correction)."""
    if name == "nncf":
        pytest.importorskip("nncf")
    recipe = Int8Recipe(quantizer=name, symmetric_activations=name == "nncf")
    build = dict(imgsz=IMGSZ, names=NAMES, recipe=recipe)
    full = build_artifact(model, MIXED, tmp_path / "full.onnx", calibration_images=images, **build)
    timing = build_artifact(model, MIXED, tmp_path / "t.onnx", calibration_images=images[:1], timing_only=True, **build)
    assert structure_hash(timing.path) == structure_hash(full.path)
    assert timing.counts == full.counts and timing.counts.int8_weights > 0
    if name == "nncf":  # the same images: only the skipped bias correction can make the values differ
        same_images = build_artifact(
            model, MIXED, tmp_path / "s.onnx", calibration_images=images, timing_only=True, **build
        )
        assert structure_hash(same_images.path) == structure_hash(full.path)
        assert same_images.path.read_bytes() != full.path.read_bytes()


def test_bad_requests_are_user_errors(model, images, tmp_path):
    with pytest.raises(UserError, match="model.99"):
        build_artifact(model, {"model.99": "fp16"}, tmp_path / "x.onnx", imgsz=IMGSZ, names=NAMES)
    with pytest.raises(UserError, match="calibration images"):
        build_artifact(model, {"model.1": "int8"}, tmp_path / "x.onnx", imgsz=IMGSZ, names=NAMES)
    with pytest.raises(UserError, match="NNCF"):
        build_artifact(
            model,
            {"model.1": "int8"},
            tmp_path / "x.onnx",
            imgsz=IMGSZ,
            names=NAMES,
            calibration_images=images,
            recipe=Int8Recipe(quantizer="nncf", fmt="qoperator"),
        )
