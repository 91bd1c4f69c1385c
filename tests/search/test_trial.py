"""The trial flow's shared parts on a real YOLO11n at 64 px: the study's pruning options reach
`apply_pruning`, and a trial's latency is its ratio to the study's reference times L0.
(What a transfer runs per carried trial is tested in test_transfer_trial.py.)"""

from __future__ import annotations

import time

import pytest
import torch

from evaluators.registry import get_device
from evaluators.vocabulary import Int8Recipe
from search.trial import (
    build_screen,
    time_artifact,
)
from search.trial_result import Stopwatch
from spaces.policy import Policy
from spaces.pruning import apply_pruning
from tests.search.conftest import FAST_TIMING, IMGSZ, L0

RATIOS = {"model.2": 0.5, "model.4": 0.3}


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SQUEEZEFIT_HOME", str(tmp_path / "home"))  # its own latency cache


def test_stopwatch_laps_are_consecutive():
    watch = Stopwatch()
    time.sleep(0.05)
    watch.lap("first")
    watch.lap("second")
    assert list(watch.seconds) == ["first", "second"]
    assert 0.05 <= watch.seconds["first"] < 1.0 and watch.seconds["second"] < 0.05


@pytest.mark.parametrize("importance, round_to", [("lamp", 8), ("taylor", 4), ("magnitude", None)])
def test_the_studys_pruning_options_reach_apply_pruning(model, context, tmp_path, importance, round_to):
    ctx = context(pruning_importance=importance, pruning_round_to=round_to)
    pruned, names, screen = build_screen(Policy(pruning=RATIOS), ctx, Int8Recipe(), tmp_path / "screen.onnx")
    expected = apply_pruning(model, RATIOS, imgsz=IMGSZ, importance=importance, round_to=round_to)
    assert pruned.channels == expected.channels and names == model.names and screen.path.is_file()
    ours, theirs = pruned.model.state_dict(), expected.model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_round_to_changes_what_is_kept(context, tmp_path):
    kept = {}
    for round_to in (8, 1):
        ctx = context(pruning_round_to=round_to)
        pruned, _, _ = build_screen(Policy(pruning=RATIOS), ctx, Int8Recipe(), tmp_path / f"s{round_to}.onnx")
        kept[round_to] = pruned.channels
    assert all(c % 8 == 0 for c in kept[8].values()) and kept[8] != kept[1]


def test_trial_latency_is_the_ratio_to_the_reference_times_l0(context, tmp_path):
    ctx = context()
    _, _, screen = build_screen(Policy(pruning=RATIOS), ctx, Int8Recipe(), tmp_path / "screen.onnx")
    latency = time_artifact(get_device("ort-cpu"), screen.path, ctx)
    t = latency.timing
    assert latency.latency_ms == pytest.approx(t["ratio"] * L0)
    assert t["ratio"] == pytest.approx(t["p50_ms"] / t["reference_p50_ms"])
    assert t["ratio_low"] <= t["ratio"] <= t["ratio_high"] and t["runs"] >= FAST_TIMING.min_runs
    assert latency.latency_p90_ms >= latency.latency_ms and not t["cached"]
    again = time_artifact(get_device("ort-cpu"), screen.path, ctx)  # same structure and reference: the cache
    assert again.timing["cached"] and again.latency_ms == latency.latency_ms
