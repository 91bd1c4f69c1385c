"""The trial flow's shared parts on a real YOLO11n at 64 px: the study's pruning options reach
`apply_pruning`, and a trial's latency is its ratio to the study's reference times L0.
(What a transfer runs per carried trial is tested in test_transfer_trial.py.)"""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch
from ultralytics.nn.tasks import DetectionModel

from evaluators.base import TimingSettings
from evaluators.registry import get_device
from evaluators.vocabulary import Int8Recipe
from search.embedded.data import DatasetSpec, generate_dataset
from search.trial import (
    TrialContext,
    build_screen,
    time_artifact,
)
from search.trial_result import Stopwatch
from spaces.onnx_export import export_onnx
from spaces.policy import Policy
from spaces.pruning import apply_pruning
from spaces.space import SearchSpace

IMGSZ = 64
RATIOS = {"model.2": 0.5, "model.4": 0.3}
FAST_TIMING = TimingSettings(warmup_min_runs=1, warmup_max_runs=2, min_runs=3, min_seconds=0.0, max_runs=3)
REFERENCE_MS = 5.0  # L0 of the tests' study scale


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SQUEEZEFIT_HOME", str(tmp_path / "home"))  # its own latency cache


@pytest.fixture(scope="module")
def model() -> DetectionModel:
    torch.manual_seed(0)
    return DetectionModel("yolo11n.yaml", nc=10, verbose=False).eval()


@pytest.fixture(scope="module")
def data_yaml(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("data"), DatasetSpec(train=2, val=4, imgsz=IMGSZ))


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    torch.save({"model": model}, path)  # the layout Ultralytics' load_checkpoint reads
    export_onnx(model, path.parent / "baseline-fp32.onnx", imgsz=IMGSZ, names=model.names)  # the study's reference
    return path


def _context(checkpoint, data_yaml, outdir, **options) -> TrialContext:
    """Every policy fits (budget inf) unless `options` say otherwise; fp32 only, so no calibration."""
    settings = {
        "checkpoint": str(checkpoint),
        "data_yaml": str(data_yaml),
        "imgsz": IMGSZ,
        "device": "ort-cpu",
        "budget_ms": math.inf,
        "space": SearchSpace(pruning_units=(), precision_units=(), offered=("fp32",), max_epochs=0),
        "calibration_images": (),
        "outdir": str(outdir),
        "timing": FAST_TIMING,
        "val_images": 4,
        "reference_artifact": str(Path(checkpoint).parent / "baseline-fp32.onnx"),
        "reference_ms": REFERENCE_MS,
    }
    return TrialContext(**{**settings, **options})


def test_stopwatch_laps_are_consecutive():
    watch = Stopwatch()
    time.sleep(0.05)
    watch.lap("first")
    watch.lap("second")
    assert list(watch.seconds) == ["first", "second"]
    assert 0.05 <= watch.seconds["first"] < 1.0 and watch.seconds["second"] < 0.05


@pytest.mark.parametrize("importance, round_to", [("lamp", 8), ("taylor", 4), ("magnitude", None)])
def test_the_studys_pruning_options_reach_apply_pruning(model, checkpoint, data_yaml, tmp_path, importance, round_to):
    ctx = _context(checkpoint, data_yaml, tmp_path, pruning_importance=importance, pruning_round_to=round_to)
    pruned, names, screen = build_screen(Policy(pruning=RATIOS), ctx, Int8Recipe(), tmp_path / "screen.onnx")
    expected = apply_pruning(model, RATIOS, imgsz=IMGSZ, importance=importance, round_to=round_to)
    assert pruned.channels == expected.channels and names == model.names and screen.path.is_file()
    ours, theirs = pruned.model.state_dict(), expected.model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_round_to_changes_what_is_kept(checkpoint, data_yaml, tmp_path):
    kept = {}
    for round_to in (8, 1):
        ctx = _context(checkpoint, data_yaml, tmp_path, pruning_round_to=round_to)
        pruned, _, _ = build_screen(Policy(pruning=RATIOS), ctx, Int8Recipe(), tmp_path / f"s{round_to}.onnx")
        kept[round_to] = pruned.channels
    assert all(c % 8 == 0 for c in kept[8].values()) and kept[8] != kept[1]


def test_trial_latency_is_the_ratio_to_the_reference_times_l0(checkpoint, data_yaml, tmp_path):
    ctx = _context(checkpoint, data_yaml, tmp_path)
    _, _, screen = build_screen(Policy(pruning=RATIOS), ctx, Int8Recipe(), tmp_path / "screen.onnx")
    latency = time_artifact(get_device("ort-cpu"), screen.path, ctx)
    t = latency.timing
    assert latency.latency_ms == pytest.approx(t["ratio"] * REFERENCE_MS)
    assert t["ratio"] == pytest.approx(t["p50_ms"] / t["reference_p50_ms"])
    assert t["ratio_low"] <= t["ratio"] <= t["ratio_high"] and t["runs"] >= FAST_TIMING.min_runs
    assert latency.latency_p90_ms >= latency.latency_ms and not t["cached"]
    again = time_artifact(get_device("ort-cpu"), screen.path, ctx)  # same structure and reference: the cache
    assert again.timing["cached"] and again.latency_ms == latency.latency_ms
