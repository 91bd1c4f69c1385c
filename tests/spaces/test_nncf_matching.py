"""NNCF's pattern matching remembered per topology: a pruned variant reuses the match, and the
quantized graph is the one a fresh match gives (nodes and values)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from ultralytics.nn.tasks import DetectionModel

from evaluators.vocabulary import Int8Recipe
from spaces.onnx_export import export_onnx, precision_units
from spaces.pruning import apply_pruning, pruning_units, uniform_ratios
from spaces.quantizers import nncf_matching
from spaces.quantizers.nncf import quantize

pytest.importorskip("nncf")

IMGSZ = 64
NAMES = {i: f"class{i}" for i in range(10)}


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """FP32 exports of one tiny YOLO11n pruned by 0.25 and by 0.5 everywhere: one topology (pruning splits
    every C3k2's Split into two convs, whatever the ratios), other channel counts."""
    torch.manual_seed(0)
    model = DetectionModel("yolo11n.yaml", nc=10, verbose=False)
    folder = tmp_path_factory.mktemp("exports")
    return tuple(
        export_onnx(
            apply_pruning(model, uniform_ratios(pruning_units(model), ratio), imgsz=IMGSZ).model,
            folder / f"{ratio}.onnx",
            imgsz=IMGSZ,
            names=NAMES,
        )
        for ratio in (0.25, 0.5)
    )


def _quantize(path, tmp_path):
    graph = onnx.load(str(path))
    units = precision_units(graph)
    nodes = [n for unit in ("model.2", "model.4", "model.6") for n in units[unit]]
    calibration = np.random.default_rng(0).random((2, 3, IMGSZ, IMGSZ), dtype=np.float32)
    return quantize(path, nodes, calibration, Int8Recipe(quantizer="nncf", symmetric_activations=True), tmp_path)


def _content(graph: onnx.ModelProto):
    nodes = [(n.op_type, list(n.input), list(n.output)) for n in graph.graph.node]
    values = {i.name: numpy_helper.to_array(i) for i in graph.graph.initializer}
    return nodes, values


def test_a_pruned_variant_reuses_the_match_and_quantizes_as_a_fresh_match_would(exports, tmp_path, monkeypatch):
    quarter, pruned = exports
    assert onnx.load(str(quarter)).graph.initializer[0].dims != onnx.load(str(pruned)).graph.initializer[0].dims
    monkeypatch.setattr(nncf_matching, "_table", {})
    _quantize(quarter, tmp_path)
    entries = dict(nncf_matching._table)
    assert entries, "NNCF matched its patterns through the remembered function"
    remembered = _quantize(pruned, tmp_path)
    assert nncf_matching._table == entries, "the pruned variant matched nothing anew"

    monkeypatch.setattr(nncf_matching, "_table", {})
    fresh = _quantize(pruned, tmp_path)
    assert nncf_matching._table.keys() == entries.keys()
    (nodes, values), (fresh_nodes, fresh_values) = _content(remembered), _content(fresh)
    assert nodes == fresh_nodes and values.keys() == fresh_values.keys()
    assert all(np.array_equal(values[k], fresh_values[k]) for k in values)


def test_another_topology_is_matched_afresh(exports, tmp_path, monkeypatch):
    quarter, _ = exports
    monkeypatch.setattr(nncf_matching, "_table", {})
    _quantize(quarter, tmp_path)
    before = set(nncf_matching._table)
    torch.manual_seed(0)
    other = DetectionModel("yolov8n.yaml", nc=10, verbose=False)  # C2f blocks where YOLO11n has C3k2
    _quantize(export_onnx(other, tmp_path / "v8.onnx", imgsz=IMGSZ, names=NAMES), tmp_path)
    assert set(nncf_matching._table) - before, "a graph of another topology is matched again"
