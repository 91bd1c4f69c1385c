"""Sensitivity analysis on a real YOLO11n (from YAML, nc=10, 64 px) and a tiny generated data set."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from ultralytics.nn.tasks import DetectionModel

from evaluators.vocabulary import Int8Recipe, UserError
from search.embedded.data import DatasetSpec, generate_dataset
from search.sensitivity import analyze_sensitivity
from spaces.pruning import MAX_RATIO, pruning_units
from spaces.sensitivity import (
    MIN_HIGH,
    Sensitivity,
    SensitivitySettings,
    int8_sensitive_units,
    model_fingerprint,
    ratio_ranges_from,
    sensitivity_path,
)

IMGSZ = 64
UNITS = ("model.2", "model.9")


@pytest.fixture(scope="module")
def model() -> DetectionModel:
    torch.manual_seed(0)
    return DetectionModel("yolo11n.yaml", nc=10, verbose=False)


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


def settings(ratios=(0.25, 0.5, 0.75)) -> SensitivitySettings:
    return SensitivitySettings(
        imgsz=IMGSZ,
        ratios=ratios,
        int8=True,
        max_images=8,
        split="val",
        calibration_images=4,
        recipe=Int8Recipe(),
        importance="magnitude",
        round_to=8,
        runtime="onnxruntime",
        data="data.yaml",
    )


def hand_built() -> Sensitivity:
    """base 0.50; drops: a 0.01/0.03/0.10, b 0.00/0.01/0.02 (all pass at 0.02), c 0.05 already at 0.25,
    d passes 0.25, fails 0.5, passes 0.75 again (noise must not reopen the range)."""
    return Sensitivity(
        base_map=0.5,
        pruning={
            "a": {0.25: 0.49, 0.5: 0.47, 0.75: 0.40},
            "b": {0.25: 0.50, 0.5: 0.49, 0.75: 0.48},
            "c": {0.25: 0.45, 0.5: 0.30, 0.75: 0.10},
            "d": {0.25: 0.495, 0.5: 0.46, 0.75: 0.499},
        },
        int8={"a": 0.499, "b": 0.45, "c": 0.48, "d": 0.5},
        settings=settings(),
        fingerprint="0" * 16,
    )


def test_real_run_fills_structure(measured, model):
    assert set(measured.pruning) == set(UNITS)
    assert set(measured.int8) == set(UNITS)
    for unit in UNITS:
        assert list(measured.pruning[unit]) == [0.5]
        assert 0.0 <= measured.pruning[unit][0.5] <= 1.0
        assert 0.0 <= measured.int8[unit] <= 1.0
    assert 0.0 <= measured.base_map <= 1.0
    assert measured.settings.ratios == (0.5,) and measured.settings.max_images == 8
    assert measured.settings.calibration_images == 4
    assert measured.fingerprint == model_fingerprint(model)
    assert measured.seconds > 0
    assert "model.2" in measured.table()


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
    )
    assert result.int8 == {} and list(result.pruning) == ["model.2"]
    assert sorted(p.name for p in tmp_path.glob("*.onnx")) == ["base.onnx"]


def test_round_trip(measured, tmp_path, model):
    path = measured.save(sensitivity_path(tmp_path / "yolo11n-digits.pt"))
    assert path.name == "yolo11n-digits.sensitivity.json"
    assert Sensitivity.load(path) == measured
    assert Sensitivity.load(path, model=model) == measured
    assert Sensitivity.from_dict(json.loads(json.dumps(hand_built().to_dict()))) == hand_built()


def test_load_rejects_other_weights_and_bad_files(measured, model, tmp_path):
    path = measured.save(tmp_path / "s.json")
    other = copy.deepcopy(model)
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    with pytest.raises(UserError, match="other weights"):
        Sensitivity.load(path, model=other)
    with pytest.raises(UserError, match="does not exist"):
        Sensitivity.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(UserError, match="not valid JSON"):
        Sensitivity.load(tmp_path / "bad.json")
    (tmp_path / "short.json").write_text("{}")
    with pytest.raises(UserError):
        Sensitivity.load(tmp_path / "short.json")


def test_fingerprint(model):
    assert model_fingerprint(model) == model_fingerprint(copy.deepcopy(model))
    half = copy.deepcopy(model).half()
    assert model_fingerprint(half) == model_fingerprint(copy.deepcopy(half).float())


def test_ranges_from_real_run_respect_bounds(measured, model):
    ranges = ratio_ranges_from(measured, max_drop=0.02, high=0.75, step=0.05)
    assert set(ranges) == set(UNITS)
    for low, high, step in ranges.values():
        assert low == 0.0 and step == 0.05
        assert MIN_HIGH <= high <= 0.75 < MAX_RATIO
    # usable directly as the pruning ranges of a search
    import optuna

    from spaces.pruning import suggest_ratios

    trial = optuna.create_study().ask()
    ratios = suggest_ratios(trial, pruning_units(model), ranges=ranges)
    assert all(ratios[u] <= ranges[u][1] for u in UNITS)


def test_narrowing_rule_exactly():
    ranges = ratio_ranges_from(hand_built(), max_drop=0.02, high=0.75, step=0.05)
    assert ranges == {
        "a": (0.0, 0.25, 0.05),  # 0.25 passes (0.01), 0.5 fails (0.03)
        "b": (0.0, 0.75, 0.05),  # every measured ratio passes: full range
        "c": (0.0, MIN_HIGH, 0.05),  # none passes: the minimum keeps it searchable
        "d": (0.0, 0.25, 0.05),  # fails at 0.5; the later pass at 0.75 is not trusted
    }
    loose = ratio_ranges_from(hand_built(), max_drop=0.05, high=0.6, step=0.1)
    assert loose["a"] == (0.0, 0.5, 0.1) and loose["b"] == (0.0, 0.6, 0.1) and loose["c"] == (0.0, 0.2, 0.1)
    # the minimum and `high` are rounded down onto the grid, never below low
    strict = ratio_ranges_from(hand_built(), max_drop=0.0, low=0.05, high=0.72, step=0.1, min_high=0.12)
    assert strict["c"] == (0.05, 0.05, 0.1) and strict["b"] == (0.05, 0.25, 0.1)
    assert ratio_ranges_from(hand_built(), max_drop=0.1, low=0.05, high=0.72, step=0.1)["b"] == (0.05, 0.65, 0.1)
    assert ratio_ranges_from(hand_built(), max_drop=0.02, step=None)["a"] == (0.0, 0.25, None)


def test_int8_sensitive_units():
    assert int8_sensitive_units(hand_built(), max_drop=0.01) == ["b", "c"]
    assert int8_sensitive_units(hand_built(), max_drop=0.03) == ["b"]
    assert int8_sensitive_units(hand_built(), max_drop=0.1) == []
    with pytest.raises(UserError):
        int8_sensitive_units(hand_built(), max_drop=-0.1)


def test_drops_and_table():
    s = hand_built()
    assert s.drop("a", 0.5) == pytest.approx(0.03)
    assert s.int8_drop("b") == pytest.approx(0.05)
    table = s.table().splitlines()
    assert len(table) == 2 + 4 and "prune 0.25" in table[1] and "int8" in table[1]


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
    with pytest.raises(UserError):
        ratio_ranges_from(hand_built(), max_drop=-1)
    with pytest.raises(UserError):
        ratio_ranges_from(hand_built(), high=MAX_RATIO)
