"""Sensitivity analysis of the committed YOLO11n baseline at 64 px on a tiny generated data set.

The record it returns (storage, fingerprint, narrowing rule) is tested in tests/spaces/test_sensitivity.py.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from ultralytics.nn.tasks import DetectionModel

from evaluators.accuracy import measure_accuracy
from evaluators.vocabulary import Int8Recipe, UserError
from search.checkpoint import load_baseline
from search.embedded.baseline import REPO_BASELINE
from search.embedded.data import DatasetSpec, generate_dataset
from search.sensitivity import analyze_sensitivity
from spaces.depth import depth_units
from spaces.onnx_export import export_onnx
from spaces.precision import build_artifact
from spaces.pruning import MAX_RATIO, apply_pruning, pruning_units
from spaces.sensitivity import MIN_HIGH, Sensitivity, model_fingerprint, ratio_ranges_from
from spaces.space import SearchSpace

IMGSZ = 64
UNITS = ("model.2", "model.9")


@pytest.fixture(scope="module")
def model() -> DetectionModel:
    """Trained, so that pruning and INT8 move its mAP (an untrained model scores 0 everywhere)."""
    return load_baseline(REPO_BASELINE)


@pytest.fixture(scope="module")
def data_yaml(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("data"), DatasetSpec(train=4, val=8, imgsz=IMGSZ))


@pytest.fixture(scope="module")
def calibration(data_yaml) -> list[Path]:
    return sorted((data_yaml.parent / "images" / "train").glob("*.jpg"))


@pytest.fixture(scope="module")
def measured(model, data_yaml, calibration, tmp_path_factory) -> Sensitivity:
    return analyze_sensitivity(
        model,
        data_yaml,
        imgsz=IMGSZ,
        ratios=(0.5,),
        calibration_images=calibration,
        max_images=8,
        units=UNITS,
        workdir=tmp_path_factory.mktemp("sens"),
        progress=False,
    )


def test_real_run_fills_structure(measured, model):
    assert set(measured.pruning) == set(UNITS)
    assert set(measured.int8) == set(UNITS)
    assert set(measured.depth) == set(UNITS) & set(depth_units(model))
    for unit in UNITS:
        assert list(measured.pruning[unit]) == [0.5]
    assert measured.settings.ratios == (0.5,) and measured.settings.max_images == 8
    assert measured.settings.calibration_images == 4
    assert measured.fingerprint == model_fingerprint(model)
    assert measured.seconds > 0
    assert "model.2" in measured.table()


def test_each_point_is_the_map_of_its_own_artifact(measured, model, data_yaml, calibration, tmp_path):
    """Rebuilt here, each point's artifact scores exactly what the analysis recorded for it."""

    def score(path: Path) -> float:
        return measure_accuracy(path, data_yaml, imgsz=IMGSZ, max_images=8, workdir=tmp_path).map50_95

    base = export_onnx(model, tmp_path / "base.onnx", imgsz=IMGSZ, names=model.names)
    pruned = apply_pruning(model, {"model.2": 0.5}, imgsz=IMGSZ)
    half = export_onnx(pruned.model, tmp_path / "pruned.onnx", imgsz=IMGSZ, names=model.names)
    int8 = build_artifact(
        model,
        {"model.2": "int8"},
        tmp_path / "int8.onnx",
        imgsz=IMGSZ,
        names=model.names,
        calibration_images=calibration,
        recipe=Int8Recipe(),
    ).path
    assert measured.base_map == score(base) > 0
    assert measured.pruning["model.2"][0.5] == score(half) != measured.base_map
    assert measured.int8["model.2"] == score(int8) != measured.base_map
    shallow = apply_pruning(model, {}, imgsz=IMGSZ, depth={"model.2": 1})
    without = export_onnx(shallow.model, tmp_path / "shallow.onnx", imgsz=IMGSZ, names=model.names)
    assert measured.depth["model.2"] == score(without) != measured.base_map


def test_workdir_keeps_only_the_reference(model, data_yaml, tmp_path):
    result = analyze_sensitivity(
        model,
        data_yaml,
        imgsz=IMGSZ,
        ratios=(0.25,),
        int8=False,
        max_images=2,
        units=["model.2"],
        workdir=tmp_path,
        progress=True,
        depth=False,
    )
    assert result.int8 == {} and list(result.pruning) == ["model.2"] and result.depth == {}
    assert sorted(p.name for p in tmp_path.glob("*.onnx")) == ["base.onnx"]


def test_ranges_from_real_run_respect_bounds(measured, model):
    ranges = ratio_ranges_from(measured, max_drop=0.02, high=0.75, step=0.05)
    assert set(ranges) == set(UNITS)
    for low, high, step in ranges.values():
        assert low == 0.0 and step == 0.05
        assert MIN_HIGH <= high <= 0.75 < MAX_RATIO
    # usable directly as the pruning ranges of a search
    space = SearchSpace(
        pruning_units=tuple(pruning_units(model)), precision_units=UNITS, offered=("fp32",), ratio_ranges=ranges
    )
    policy = space.sample(optuna.create_study().ask())
    assert all(policy.pruning.get(u, 0.0) <= ranges[u][1] for u in UNITS)


def test_bad_arguments(model, data_yaml, tmp_path):
    with pytest.raises(UserError, match="ratios"):
        analyze_sensitivity(model, data_yaml, imgsz=IMGSZ, ratios=(0.95,), int8=False, workdir=tmp_path)
    with pytest.raises(UserError, match="calibration"):
        analyze_sensitivity(model, data_yaml, imgsz=IMGSZ, ratios=(0.5,), workdir=tmp_path)
    with pytest.raises(UserError, match="at least one"):
        analyze_sensitivity(model, data_yaml, imgsz=IMGSZ, ratios=(), int8=False, workdir=tmp_path)
    with pytest.raises(UserError, match="unknown unit"):
        analyze_sensitivity(
            model, data_yaml, imgsz=IMGSZ, ratios=(0.5,), int8=False, units=["model.99"], workdir=tmp_path
        )
