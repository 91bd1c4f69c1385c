"""The trial flow's shared parts on a real YOLO11n at 64 px: the study's pruning options reach
`apply_pruning`, and `remeasure_policy` (what a transfer runs per trial) copies or rebuilds,
times, reuses or re-validates, and leaves out exactly as documented."""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from ultralytics.nn.tasks import DetectionModel

from evaluators.accuracy import measure_accuracy
from evaluators.base import TimingSettings
from evaluators.registry import get_device
from evaluators.vocabulary import Int8Recipe
from search.embedded.data import DatasetSpec, generate_dataset
from search.trial import (
    TrialContext,
    build_deployed,
    build_screen,
    evaluate_policy,
    remeasure_policy,
    time_artifact,
)
from search.trial_result import Stopwatch, TrialResult
from spaces.onnx_export import export_onnx
from spaces.policy import Policy
from spaces.pruning import apply_pruning
from spaces.space import SearchSpace

IMGSZ = 64
RATIOS = {"model.2": 0.5, "model.4": 0.3}
FAST_TIMING = TimingSettings(warmup_min_runs=1, warmup_max_runs=2, min_runs=3, min_seconds=0.0, max_runs=3)
REFERENCE_MS = 5.0  # L0 of the tests' study scale
SOURCE_MAP = (0.1234, 0.5678)  # no validation of an untrained model scores these: a reused mAP is recognisable


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


@pytest.fixture(scope="module")
def source(model, checkpoint, data_yaml, tmp_path_factory) -> TrialResult:
    """A "complete" trial as another device recorded it: fine-tuned weights (here: the pruned model), its artifact."""
    out = tmp_path_factory.mktemp("source")
    ctx = _context(checkpoint, data_yaml, out)
    policy = Policy(pruning=RATIOS)
    pruned = apply_pruning(model, RATIOS, imgsz=IMGSZ)
    pruned.model.names = model.names
    torch.save(pruned.model, out / "model.pt")
    artifact = build_deployed(pruned.model, policy, ctx, Int8Recipe(), out / "model.onnx")
    return TrialResult(
        status="complete",
        policy_id=policy.policy_id,
        policy=policy.to_dict(),
        map50_95=SOURCE_MAP[0],
        map50=SOURCE_MAP[1],
        latency_ms=99.0,
        latency_p90_ms=99.5,
        size_mb=1.0,
        macs=pruned.macs,
        params=pruned.params,
        fingerprint={"runtime": "elsewhere"},
        epoch_maps=(0.1, 0.12),
        artifact=str(artifact),
        weights=str(out / "model.pt"),
        seconds={"finetune": 60.0},
    )


def _remeasure(source, ctx, **options):
    settings = {"folder": "carried", "rebuild": False, "source_runtime": "onnxruntime", "origin": "from trial 3"}
    return remeasure_policy(source, Policy.from_dict(source.policy), ctx, **{**settings, **options})


def test_unchanged_trial_copies_its_artifact_and_reuses_its_map(source, checkpoint, data_yaml, tmp_path):
    ctx = _context(checkpoint, data_yaml, tmp_path)
    measured = _remeasure(source, ctx)
    r = measured.result
    assert measured.map_reused and measured.left_out == ""
    assert Path(r.artifact) == tmp_path / "carried" / "model.onnx"
    assert Path(r.artifact).read_bytes() == Path(source.artifact).read_bytes()
    assert (r.map50_95, r.map50) == SOURCE_MAP and r.latency_ms != source.latency_ms
    assert r.fingerprint["runtime"] == "onnxruntime" and list(r.seconds) == ["artifact", "latency"]
    assert (r.status, r.weights, r.macs, r.epoch_maps) == ("complete", source.weights, source.macs, (0.1, 0.12))
    assert r.reason == "from trial 3; no fine-tuning spent"
    saved = tmp_path / "carried" / "result.json"
    assert TrialResult.from_dict(json.loads(saved.read_text())) == r
    assert sorted(p.name for p in saved.parent.iterdir()) == ["model.onnx", "result.json"]  # no .tmp left
    # the trial flow finds it: the same policy is not evaluated again in this study
    reused = evaluate_policy(Policy.from_dict(source.policy), replace(ctx, outdir=str(tmp_path), budget_ms=0.0))
    assert reused == TrialResult.from_dict(json.loads((tmp_path / source.policy_id / "result.json").read_text()))


def test_another_runtime_or_a_change_validates_again(source, checkpoint, data_yaml, tmp_path):
    ctx = _context(checkpoint, data_yaml, tmp_path)
    other_runtime = _remeasure(source, ctx, folder="runtime", source_runtime="openvino")
    assert not other_runtime.map_reused
    assert Path(other_runtime.result.artifact).read_bytes() == Path(source.artifact).read_bytes()  # still the copy
    rebuilt = _remeasure(source, ctx, folder="rebuilt", rebuild=True)
    assert not rebuilt.map_reused and list(rebuilt.result.seconds) == ["artifact", "latency", "validate"]
    for measured in (other_runtime, rebuilt):
        r = measured.result
        acc = measure_accuracy(Path(r.artifact), data_yaml, imgsz=IMGSZ, max_images=4, workdir=tmp_path / "check")
        assert (r.map50_95, r.map50) == (acc.map50_95, acc.map50)


def test_gone_artifact_is_rebuilt_from_the_weights(source, checkpoint, data_yaml, tmp_path):
    gone = replace(source, artifact=str(tmp_path / "deleted.onnx"))
    measured = _remeasure(gone, _context(checkpoint, data_yaml, tmp_path))
    assert not measured.map_reused and Path(measured.result.artifact).is_file()


def test_untuned_trial_is_kept_only_while_over_the_budget(source, checkpoint, data_yaml, tmp_path):
    untuned = replace(source, status="infeasible", weights="", epoch_maps=())
    fits = _remeasure(untuned, _context(checkpoint, data_yaml, tmp_path), folder="fits", rebuild=True)
    assert fits.result is None and not (tmp_path / "fits" / "result.json").exists()
    assert fits.left_out.startswith("untuned, and it fits the budget on ort-cpu (")
    assert fits.left_out.endswith(" ms): left to the search to fine-tune")
    slow = _remeasure(untuned, _context(checkpoint, data_yaml, tmp_path, budget_ms=0.0), folder="slow", rebuild=True)
    r = slow.result
    assert r.status == "infeasible" and Path(r.artifact).name == "screen.onnx" and r.weights == ""
    assert r.reason == f"p50 {r.latency_ms:.2f} ms is over the 0.00 ms budget; from trial 3; no fine-tuning spent"
