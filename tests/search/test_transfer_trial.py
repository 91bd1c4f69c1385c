"""One carried trial (`search.transfer_trial`) on a real YOLO11n at 64 px: the artifact is copied or
re-built (INT8: timing-only), timed in one session with the study's reference on its L0 scale, and
its mAP reused, validated again (after the full build) or carried exactly as documented; nothing is
fine-tuned."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from evaluators.accuracy import measure_accuracy
from evaluators.artifact import structure_hash
from evaluators.datasets import split_images
from evaluators.vocabulary import Int8Recipe
from search.transfer_trial import (
    CARRIED_FILE,
    build_carried,
    settle_carried,
    time_together,
)
from search.trial import TrialContext, build_deployed, evaluate_policy
from search.trial_result import TrialResult
from spaces.policy import Policy
from spaces.pruning import apply_pruning
from spaces.space import SearchSpace
from tests.search.conftest import FAST_TIMING, IMGSZ, L0

RATIOS = {"model.2": 0.5, "model.4": 0.3}
SOURCE_MAP = (0.1234, 0.5678)  # no validation of an untrained model scores these: a reused mAP is recognisable


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SQUEEZEFIT_HOME", str(tmp_path / "home"))  # its own latency cache


@pytest.fixture(scope="module")
def source(model, checkpoint, data_yaml, tmp_path_factory) -> TrialResult:
    """A "complete" trial as another device recorded it: fine-tuned weights (here: the pruned model), its artifact."""
    out = tmp_path_factory.mktemp("source")
    policy = Policy(pruning=RATIOS)
    pruned = apply_pruning(model, RATIOS, imgsz=IMGSZ)
    pruned.model.names = model.names
    torch.save(pruned.model, out / "model.pt")
    ctx = TrialContext(
        checkpoint=str(checkpoint),
        data_yaml=str(data_yaml),
        imgsz=IMGSZ,
        device="ort-cpu",
        budget_ms=math.inf,
        space=SearchSpace(pruning_units=(), precision_units=(), offered=("fp32",), max_epochs=0),
        calibration_images=(),
        outdir=str(out),
    )
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


def _timed(source, ctx, policy=None, **options):
    """Pass 1 for one trial (built, then timed alone with the reference)."""
    settings = {"folder": "carried", "rebuild": True, "source_runtime": "onnxruntime", **options}
    (timed,) = time_together([build_carried(source, policy or Policy.from_dict(source.policy), ctx, **settings)], ctx)
    return timed


def _remeasure(source, ctx, **options):
    """Both passes for one trial, validating whenever its mAP cannot be reused (a transfer without lazy validation)."""
    settings = {"folder": "carried", "rebuild": False, "source_runtime": "onnxruntime", **options}
    built = build_carried(source, Policy.from_dict(source.policy), ctx, **settings)
    (timed,) = time_together([built], ctx)
    return settle_carried(timed, ctx, validate=True, origin="from trial 3")


def test_unchanged_trial_copies_its_artifact_and_reuses_its_map(source, context, tmp_path):
    ctx = context()
    measured = _remeasure(source, ctx, folder=source.policy_id)
    r = measured.result
    assert measured.map_source == "reused" and measured.map_reused and measured.left_out == ""
    assert Path(r.artifact) == tmp_path / source.policy_id / "model.onnx"
    assert Path(r.artifact).read_bytes() == Path(source.artifact).read_bytes()
    assert (r.map50_95, r.map50) == SOURCE_MAP and r.latency_ms != source.latency_ms
    # timed side by side with the reference, on the study's scale
    assert r.timing["ratio"] > 0 and r.latency_ms == pytest.approx(r.timing["ratio"] * L0)
    assert r.timing["session"] == "together (1 artifact)" and not r.timing["cached"]
    assert r.fingerprint["runtime"] == "onnxruntime" and list(r.seconds) == ["artifact", "latency"]
    assert (r.status, r.weights, r.macs, r.epoch_maps) == ("complete", source.weights, source.macs, (0.1, 0.12))
    assert r.reason == "from trial 3; no fine-tuning spent"
    saved = tmp_path / source.policy_id / "result.json"
    assert TrialResult.from_dict(json.loads(saved.read_text())) == r
    assert sorted(p.name for p in saved.parent.iterdir()) == ["model.onnx", "result.json"]  # no .tmp left
    # the trial flow finds it: the same policy is not evaluated again in this study (else: infeasible at budget 0)
    assert evaluate_policy(Policy.from_dict(source.policy), replace(ctx, budget_ms=0.0)) == r


def test_another_runtime_a_change_or_an_unmeasured_source_map_validates_again(source, context, data_yaml, tmp_path):
    ctx = context()
    other_runtime = _remeasure(source, ctx, folder="runtime", source_runtime="openvino")
    assert other_runtime.map_source == "revalidated"
    assert Path(other_runtime.result.artifact).read_bytes() == Path(source.artifact).read_bytes()  # still the copy
    unmeasured = _remeasure(source, ctx, folder="unmeasured", source_runtime=None)  # the source carried its mAP
    assert unmeasured.map_source == "revalidated"
    rebuilt = _remeasure(source, ctx, folder="rebuilt", rebuild=True)
    assert rebuilt.map_source == "revalidated" and list(rebuilt.result.seconds) == ["artifact", "latency", "validate"]
    for measured in (other_runtime, unmeasured, rebuilt):
        r = measured.result
        acc = measure_accuracy(Path(r.artifact), data_yaml, imgsz=IMGSZ, max_images=4, workdir=tmp_path / "check")
        assert (r.map50_95, r.map50) == (acc.map50_95, acc.map50)


def test_a_map_not_validated_is_carried_and_never_reused_by_the_trial_flow(source, context, tmp_path):
    ctx = context()
    timed = _timed(source, ctx, folder=source.policy_id)
    assert not timed.timing_only, "an fp32 policy's build is the full build"
    assert timed.feasible(ctx.budget_ms) and not timed.map_reusable and timed.latency.latency_ms > 0
    assert not timed.feasible(timed.latency.latency_ms / 2)
    settled = settle_carried(timed, ctx, validate=False, origin="from trial 3")
    r = settled.result
    assert settled.map_source == "carried" and (r.map50_95, r.map50) == SOURCE_MAP
    assert r.reason == "from trial 3; no fine-tuning spent; mAP not measured here (the source's, carried)"
    assert list(r.seconds) == ["artifact", "latency"] and r.latency_ms == timed.latency.latency_ms
    folder = tmp_path / source.policy_id
    assert TrialResult.from_dict(json.loads((folder / CARRIED_FILE).read_text())) == r
    assert not (folder / "result.json").exists(), "the trial flow must not find a mAP nobody measured"
    # a reusable mAP is reused whatever the transfer decides
    copied = _timed(source, ctx, folder="copied", rebuild=False)
    assert settle_carried(copied, ctx, validate=False, origin="x").map_source == "reused"


def test_gone_artifact_is_rebuilt_from_the_weights(source, context, tmp_path):
    gone = replace(source, artifact=str(tmp_path / "deleted.onnx"))
    measured = _remeasure(gone, context())
    assert measured.map_source == "revalidated" and Path(measured.result.artifact).is_file()


def test_untuned_trial_is_kept_only_while_over_the_budget(source, context, tmp_path):
    untuned = replace(source, status="infeasible", weights="", epoch_maps=())
    fits = _remeasure(untuned, context(), folder="fits", rebuild=True)
    assert fits.result is None and not (tmp_path / "fits" / "result.json").exists()
    assert fits.left_out.startswith("untuned, and it fits the budget on ort-cpu (")
    assert fits.left_out.endswith(" ms): left to the search to fine-tune")
    slow = _remeasure(untuned, context(budget_ms=0.0), folder="slow", rebuild=True)
    r = slow.result
    assert r.status == "infeasible" and Path(r.artifact).name == "screen.onnx" and r.weights == ""
    assert r.reason == f"p50 {r.latency_ms:.2f} ms is over the 0.00 ms budget; from trial 3; no fine-tuning spent"
    timed = _timed(untuned, context(budget_ms=0.0), folder="s2", source_runtime="")
    assert not timed.feasible(0.0)  # over the budget: never a candidate for the front


def test_a_rebuilt_int8_trial_is_timed_timing_only_and_built_in_full_only_to_validate(source, context, data_yaml):
    """Two INT8 trials (NNCF, the policy's own recipe) timed in one session; the one validated is built in full
    (bias correction, every calibration image) with the structure it was timed with; the other keeps its
    timing-only artifact and the source's mAP."""
    _, train = split_images(data_yaml, "train")
    ctx = context(calibration_images=tuple(str(p) for p in train))
    nncf = Int8Recipe(quantizer="nncf", symmetric_activations=True)
    policy = Policy(pruning=RATIOS, precision={"model.2": "int8", "model.4": "int8"}, recipe=nncf)
    built = [
        build_carried(source, policy, ctx, folder=folder, rebuild=True, source_runtime="onnxruntime")
        for folder in ("validated", "carried")
    ]
    assert all(b.timing_only and b.artifact.name == "model-timing.onnx" and b.latency is None for b in built)
    hashes = [structure_hash(b.artifact) for b in built]
    timed = time_together(built, ctx)
    for one in timed:
        t = one.latency.timing
        assert t["session"] == "together (2 artifacts)" and t["runs"] >= FAST_TIMING.min_runs and not t["cached"]
        assert one.latency.latency_ms == pytest.approx(t["ratio"] * L0) and list(one.seconds) == ["artifact", "latency"]
    assert timed[0].latency.timing["reference_p50_ms"] == timed[1].latency.timing["reference_p50_ms"]  # one session

    validated = settle_carried(timed[0], ctx, validate=True, origin="from trial 3").result
    assert Path(validated.artifact).name == "model.onnx" and not timed[0].artifact.exists()
    assert structure_hash(validated.artifact) == hashes[0], "the latency of the session is the deployed artifact's"
    assert validated.latency_ms == timed[0].latency.latency_ms
    assert list(validated.seconds) == ["artifact", "latency", "deploy", "validate"]
    acc = measure_accuracy(Path(validated.artifact), data_yaml, imgsz=IMGSZ, max_images=4, workdir=timed[0].folder)
    assert (validated.map50_95, validated.map50) == (acc.map50_95, acc.map50)

    carried = settle_carried(timed[1], ctx, validate=False, origin="from trial 3")
    assert carried.map_source == "carried" and Path(carried.result.artifact) == timed[1].artifact
    assert timed[1].artifact.is_file() and (carried.result.map50_95, carried.result.map50) == SOURCE_MAP


def test_a_full_build_of_another_structure_than_the_timed_one_is_a_bug(source, context, reference, tmp_path):
    ctx = context()
    timed = _timed(source, ctx, folder="swapped", rebuild=False)
    other = tmp_path / "other.onnx"
    shutil.copyfile(reference, other)  # the unpruned model: another structure than the trial's
    with pytest.raises(RuntimeError, match="differs in structure"):
        settle_carried(
            replace(timed, artifact=other, timing_only=True, map_reusable=False), ctx, validate=True, origin="x"
        )
