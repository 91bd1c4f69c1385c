"""bf16 units: an FP32 graph that says how it must run (metadata), on a real YOLO11n (nc=10, 64 px)."""

import json
from dataclasses import replace

import onnx
import pytest
import torch
from ultralytics.nn.tasks import DetectionModel

from evaluators.artifact import structure_hash
from evaluators.vocabulary import FP32_NODES_KEY, INFERENCE_PRECISION_KEY, PRECISIONS
from spaces.onnx_export import metadata, precision_units
from spaces.precision import build_artifact, precision_params
from spaces.pruning import PruningUnit
from spaces.space import SearchSpace

IMGSZ = 64
NAMES = {i: f"class{i}" for i in range(10)}
KEPT = ("model.0", "model.23")  # fp32 units inside a bf16 model


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return DetectionModel("yolo11n.yaml", nc=10, verbose=False)


@pytest.fixture(scope="module")
def artifacts(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bf16")
    fp32 = build_artifact(model, {}, folder / "fp32.onnx", imgsz=IMGSZ, names=NAMES)
    units = list(fp32.precisions)
    bf16 = build_artifact(model, {}, folder / "bf16.onnx", imgsz=IMGSZ, names=NAMES, default="bf16")
    mixed_map = {u: "fp32" if u in KEPT else "bf16" for u in units}
    mixed = build_artifact(model, mixed_map, folder / "mixed.onnx", imgsz=IMGSZ, names=NAMES)
    return fp32, bf16, mixed


def test_bf16_is_a_precision_between_int8_and_fp16():
    assert PRECISIONS == ("int8", "bf16", "fp16", "fp32")
    (param,) = precision_params(["model.0"], ["fp32", "bf16"])
    assert param.search.choices == ("fp32", "bf16")


def test_bf16_units_stay_fp32_in_the_file_and_the_file_says_how_to_run(artifacts):
    fp32, bf16, mixed = artifacts
    graphs = [onnx.load(str(a.path)) for a in artifacts]
    assert len({len(g.graph.node) for g in graphs}) == 1  # the same graph: bf16 is an execution precision
    types = [sorted((t.name, t.data_type) for t in g.graph.initializer) for g in graphs]
    assert types[0] == types[1] == types[2] and onnx.TensorProto.FLOAT16 not in {d for _, d in types[0]}
    assert INFERENCE_PRECISION_KEY not in metadata(graphs[0]) and FP32_NODES_KEY not in metadata(graphs[0])
    assert (
        metadata(graphs[1])[INFERENCE_PRECISION_KEY] == "bf16" and json.loads(metadata(graphs[1])[FP32_NODES_KEY]) == []
    )
    props = metadata(graphs[2])
    units = precision_units(graphs[2])
    assert props[INFERENCE_PRECISION_KEY] == "bf16"
    assert json.loads(props[FP32_NODES_KEY]) == [n for u in KEPT for n in units[u]]
    assert props["stride"] and props["names"]  # Ultralytics' metadata is kept beside
    assert bf16.lowest_precision == mixed.lowest_precision == "bf16" and fp32.lowest_precision == "fp32"


def test_structure_hash_tells_fp32_and_bf16_apart(artifacts):
    fp32, bf16, mixed = (structure_hash(a.path) for a in artifacts)
    assert len({fp32, bf16, mixed}) == 3  # the latency cache must not serve one for another


def test_reference_policies_include_all_bf16_when_offered():
    units = (PruningUnit("model.1", 64, "backbone", ("model.1.conv",)),)
    space = SearchSpace(pruning_units=units, precision_units=("model.0", "model.1"), offered=("fp32", "bf16"))
    refs = space.reference_policies()
    assert space.fastest_precision() == "bf16"
    assert set(refs["all-bf16"].precision.values()) == {"bf16"}
    assert "prune-0.5-bf16" in refs
    with_int8 = SearchSpace(pruning_units=units, precision_units=("model.0",), offered=("fp32", "bf16", "fp16", "int8"))
    assert with_int8.fastest_precision() == "int8"
    # a device that runs bf16 faster than INT8 (OpenVINO on a bf16 CPU) names it: the pruned references follow
    ranked = replace(with_int8, fastest="bf16")
    assert ranked.fastest_precision() == "bf16" and "prune-0.5-bf16" in ranked.reference_policies()
    assert "all-int8" in ranked.reference_policies()  # every offered precision keeps its all-<p> reference
    assert replace(with_int8, fastest="fp16", offered=("fp32", "int8")).fastest_precision() == "int8"
