"""Peak memory: what a measurement reports is the memory that loading and running the artifact added."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from evaluators import LatencyCache, TimingSettings, get_device
from evaluators.memory import MemoryWatch

TINY = TimingSettings(warmup_min_runs=1, warmup_max_runs=2, min_runs=3, min_seconds=0.0, max_runs=3)
WEIGHTS_MB = 32  # a 2048 x 4096 float32 MatMul weight


def test_memory_watch_sees_a_fresh_allocation():
    with MemoryWatch() as watch:
        block = np.ones(64 * 2**20 // 8)  # 64 MB, touched
        del block
    assert watch.peak_mb >= 48


@pytest.fixture(scope="module")
def heavy(tmp_path_factory):
    """A MatMul with a 32 MB weight: loading it must add at least that much resident memory."""
    weight = numpy_helper.from_array(np.random.default_rng(0).random((2048, 4096), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "heavy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2048])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4096])],
        [weight],
    )
    path = tmp_path_factory.mktemp("heavy") / "heavy.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    return path


@pytest.mark.parametrize("name", ["ort-cpu", "openvino-cpu"])
def test_a_measurement_reports_the_memory_its_artifact_adds(name, heavy, tmp_path):
    measured = get_device(name, cache=LatencyCache(tmp_path / "cache.sqlite")).measure(heavy, settings=TINY)
    assert measured.peak_memory_mb >= WEIGHTS_MB * 0.75
