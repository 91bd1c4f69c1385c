"""The sensitivity record (`spaces.sensitivity`): storage, fingerprint and the range-narrowing rule.

Pure data: a hand-built record and a real YOLO11n (from YAML, nc=10) for fingerprints; the
analysis that measures a record runs evaluations and is tested in tests/search.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from ultralytics.nn.tasks import DetectionModel

from evaluators.vocabulary import Int8Recipe, UserError
from spaces.pruning import MAX_RATIO, RATIO_RANGE, pruning_units
from spaces.sensitivity import (
    DEFAULT_RATIOS,
    MIN_HIGH,
    Sensitivity,
    SensitivitySettings,
    depth_units_within,
    model_fingerprint,
    ratio_ranges_from,
    sensitivity_path,
)
from spaces.space import SearchSpace


@pytest.fixture(scope="module")
def model() -> DetectionModel:
    torch.manual_seed(0)
    return DetectionModel("yolo11n.yaml", nc=10, verbose=False)


def settings(ratios=DEFAULT_RATIOS) -> SensitivitySettings:
    return SensitivitySettings(
        imgsz=64,
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


def hand_built(fingerprint: str = "0" * 16) -> Sensitivity:
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
        fingerprint=fingerprint,
        seconds=12.5,
        depth={"a": 0.3, "c": 0.5},
    )


def test_round_trip(model, tmp_path):
    record = hand_built(model_fingerprint(model))
    path = record.save(sensitivity_path(tmp_path / "yolo11n-digits.pt"))
    assert path.name == "yolo11n-digits.sensitivity.json"
    assert Sensitivity.load(path) == record
    assert Sensitivity.load(path, model=model) == record
    assert Sensitivity.from_dict(json.loads(json.dumps(record.to_dict()))) == record
    assert json.loads(path.read_text())["pruning"]["a"] == {"0.25": 0.49, "0.5": 0.47, "0.75": 0.4}
    stored_before_depth = {k: v for k, v in record.to_dict().items() if k != "depth"}
    assert Sensitivity.from_dict(stored_before_depth).depth == {}


def test_load_rejects_other_weights_and_bad_files(model, tmp_path):
    path = hand_built(model_fingerprint(model)).save(tmp_path / "s.json")
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
    with pytest.raises(UserError, match="must hold base_map"):
        Sensitivity.load(tmp_path / "short.json")


def test_fingerprint(model):
    assert model_fingerprint(model) == model_fingerprint(copy.deepcopy(model))
    half = copy.deepcopy(model).half()
    assert model_fingerprint(half) == model_fingerprint(copy.deepcopy(half).float())
    other = copy.deepcopy(model)
    with torch.no_grad():
        next(other.parameters()).mul_(2.0)
    assert model_fingerprint(other) != model_fingerprint(model)


def test_narrowing_rule_exactly():
    ranges = ratio_ranges_from(hand_built(), max_drop=0.02, high=0.75, step=0.05)
    assert ranges == {
        "a": (0.0, 0.25, 0.05),  # 0.25 passes (0.01), 0.5 fails (0.03)
        "b": (0.0, 0.75, 0.05),  # every measured ratio passes: full range
        "c": (0.0, MIN_HIGH, 0.05),  # none passes: the minimum keeps it searchable
        "d": (0.0, 0.25, 0.05),  # fails at 0.5; the later pass at 0.75 is not trusted
    }
    assert ratio_ranges_from(hand_built(), max_drop=0.02) == ranges  # the defaults are the search's RATIO_RANGE
    assert RATIO_RANGE == (0.0, 0.75, 0.05)
    loose = ratio_ranges_from(hand_built(), max_drop=0.05, high=0.6, step=0.1)
    assert loose["a"] == (0.0, 0.5, 0.1) and loose["b"] == (0.0, 0.6, 0.1) and loose["c"] == (0.0, 0.2, 0.1)
    # the minimum and `high` are rounded down onto the grid, never below low
    strict = ratio_ranges_from(hand_built(), max_drop=0.0, low=0.05, high=0.72, step=0.1, min_high=0.12)
    assert strict["c"] == (0.05, 0.05, 0.1) and strict["b"] == (0.05, 0.25, 0.1)
    assert ratio_ranges_from(hand_built(), max_drop=0.1, low=0.05, high=0.72, step=0.1)["b"] == (0.05, 0.65, 0.1)
    assert ratio_ranges_from(hand_built(), max_drop=0.02, step=None)["a"] == (0.0, 0.25, None)


def test_narrowed_ranges_are_the_spaces_ranges(model):
    units = pruning_units(model)
    measured = Sensitivity(
        base_map=0.5,
        pruning={"model.2": {0.25: 0.49, 0.5: 0.4}, "model.9": {0.25: 0.3}},
        int8={},
        settings=settings((0.25, 0.5)),
        fingerprint=model_fingerprint(model),
    )
    ranges = ratio_ranges_from(measured, max_drop=0.02)
    assert ranges == {"model.2": (0.0, 0.25, 0.05), "model.9": (0.0, MIN_HIGH, 0.05)}
    space = SearchSpace(
        pruning_units=tuple(units), precision_units=("model.0",), offered=("fp32",), ratio_ranges=ranges
    )
    params = {p.name: p.search for p in space.parameters()}
    assert (params["prune.model.2"].high, params["prune.model.9"].high, params["prune.model.0"].high) == (
        0.25,
        MIN_HIGH,
        0.75,
    )


def test_drops_and_table():
    s = hand_built()
    assert s.drop("a", 0.5) == pytest.approx(0.03)
    assert s.drop("b", 0.25) == 0.0
    assert s.int8_drop("b") == pytest.approx(0.05)
    table = s.table().splitlines()
    assert table[0] == "base mAP50-95 0.5000; drops below (base - measured)"
    assert table[1].split() == ["unit", "prune", "0.25", "prune", "0.5", "prune", "0.75", "int8", "no", "inner"]
    assert table[2].split() == ["a", "0.0100", "0.0300", "0.1000", "0.0010", "0.2000"]
    assert table[3].split()[-1] == "-"  # b: not measured without its inner blocks
    assert len(table) == 2 + 4


def test_bad_arguments_of_ratio_ranges_from():
    with pytest.raises(UserError, match="max_drop"):
        ratio_ranges_from(hand_built(), max_drop=-1)
    with pytest.raises(UserError, match="ratio range"):
        ratio_ranges_from(hand_built(), high=MAX_RATIO)
    with pytest.raises(UserError, match="ratio range"):
        ratio_ranges_from(hand_built(), low=0.5, high=0.25)
    with pytest.raises(UserError, match="step"):
        ratio_ranges_from(hand_built(), step=0.0)


def test_only_blocks_whose_inner_blocks_cost_little_untuned_are_searched_shallower():
    s = hand_built()  # base 0.50; without their inner blocks: a 0.30 (drop 0.2), c 0.50 (drop 0)
    units = {"a": 1, "c": 2, "e": 1}  # e was never measured
    assert depth_units_within(s, units, max_drop=0.02) == {"c": 2, "e": 1}
    assert depth_units_within(s, units, max_drop=0.2) == units  # a drop of exactly max_drop passes
    with pytest.raises(UserError, match="max_drop"):
        depth_units_within(s, units, max_drop=-0.1)
