"""Repair of a sampled policy over the budget (`search.repair`) on a real YOLO11n at 64 px, timed on ort-cpu:
the trial scores a policy that times within the budget, pruned no less than the proposal and otherwise the same;
a policy it keeps, or one no repair fits, stays infeasible."""

from __future__ import annotations

from pathlib import Path

import pytest

from search.repair import ROUNDS, Repair, evaluate_or_repair, repair_policy, segment_ratios, shaved
from search.trial import evaluate_policy
from spaces.distillation import DistillationSettings
from spaces.greedy import SegmentCosts, depth_step
from spaces.policy import Policy
from spaces.pruning import pruning_units
from spaces.segments import graph_segments, members
from tests.search.conftest import IMGSZ

NO_FINETUNE = DistillationSettings(enabled=False, epochs=0)


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SQUEEZEFIT_HOME", str(tmp_path / "home"))  # its own latency cache


@pytest.fixture(scope="module")
def held(model) -> dict[str, tuple[str, ...]]:
    return members(graph_segments(model, IMGSZ), [u.name for u in pruning_units(model)])


def costs(held, saving_ms: float) -> SegmentCosts:
    """Every segment promises `saving_ms` per grid step; the stem is the most sensitive, the rest cost little."""
    steps = (0.25, 0.5, 0.75)
    savings = {s: {r: saving_ms * (i + 1) for i, r in enumerate(steps)} for s in held}
    losses = {s: {r: (0.1 if s == "stem" else 0.001) * (i + 1) for i, r in enumerate(steps)} for s in held}
    return SegmentCosts(savings, losses, held)


def budget_between(context, held, tmp_path) -> float:
    """Halfway between the unpruned FP32 model's latency and the greedy path's end (everything at 0.75), timed
    in a study without a budget: the unpruned proposal is over it, the path's end within it (its timing cached)."""
    free = context(outdir=str(tmp_path / "unbounded"))
    unpruned = Policy(distillation=NO_FINETUNE)
    high = evaluate_policy(unpruned, free).latency_ms
    low = evaluate_policy(shaved(unpruned, held, {s: 0.75 for s in held}, {}), free).latency_ms
    assert low < 0.8 * high, (low, high)  # pruning must save time here for the test to say anything
    return (low + high) / 2


def test_segment_ratios_and_shaving_never_prune_a_unit_less(held):
    first, second = list(held)[:2]
    unit = held[first][0]
    policy = Policy(pruning={unit: 0.6}, distillation=NO_FINETUNE)
    ratios = segment_ratios(policy, held, {})
    assert ratios[first] == (0.6 if len(held[first]) == 1 else 0.0) and ratios[second] == 0.0
    more = shaved(policy, held, {first: 0.5, second: 0.75}, {})
    assert more.pruning[unit] == 0.6  # already beyond the segment's step
    assert all(more.pruning[u] == 0.75 for u in held[second])
    assert all(more.pruning[u] == 0.5 for u in held[first] if u != unit)
    assert more.precision == policy.precision and more.distillation == policy.distillation


def test_a_depth_step_reads_and_removes_every_inner_block_of_its_units(held):
    units = {"model.13": 1, "model.16": 2}
    deep = {**held, depth_step("neck"): ("model.13", "model.16")}
    partly = Policy(depth={"model.13": 1, "model.16": 1}, distillation=NO_FINETUNE)
    assert segment_ratios(partly, deep, units)[depth_step("neck")] == 0.0  # model.16 keeps one of its two
    more = shaved(partly, deep, {depth_step("neck"): 1.0}, units)
    assert more.depth == units and segment_ratios(more, deep, units)[depth_step("neck")] == 1.0
    assert shaved(more, deep, {depth_step("neck"): 0.0}, units).depth == units  # never less than it removed


def test_a_proposal_over_the_budget_is_scored_as_its_repair_within_it(context, held, tmp_path):
    proposal = Policy(distillation=NO_FINETUNE)  # unpruned FP32: the reference's own latency
    ctx = context(budget_ms=budget_between(context, held, tmp_path), outdir=str(tmp_path / "study"))
    # the costs promise little per step: the first candidate timed is the path's end, cached within the budget
    repair = Repair(costs(held, saving_ms=1e-3))

    result = evaluate_or_repair(proposal, ctx, repair)

    assert result.status == "complete" and result.latency_ms <= ctx.budget_ms
    assert result.repaired_from["policy_id"] == proposal.policy_id
    assert result.repaired_from["latency_ms"] > ctx.budget_ms and result.repaired_from["timed_ms"]
    assert result.repaired_from["timed_ms"][-1] == pytest.approx(result.latency_ms, abs=1e-4)  # the same timing
    repaired = Policy.from_dict(result.policy)
    assert result.policy_id == repaired.policy_id != proposal.policy_id
    assert repaired.pruning and all(repaired.pruning.get(u, 0.0) >= r for u, r in proposal.pruning.items())
    assert repaired.precision == proposal.precision and repaired.distillation == proposal.distillation
    assert {"proposal", "repair"} <= result.seconds.keys()
    assert list(Path(ctx.outdir, "repair").glob("*.onnx"))
    # the same proposal again: the same repair (timings cached), the stored results reused
    again = evaluate_or_repair(proposal, ctx, repair)
    assert again.policy_id == result.policy_id and again.latency_ms == result.latency_ms

    kept = evaluate_or_repair(proposal, ctx, Repair(repair.costs, keep=frozenset({proposal.policy_id})))
    assert kept.status == "infeasible" and not kept.repaired_from  # a reference is what it is named
    assert evaluate_or_repair(proposal, ctx, None).status == "infeasible"


def test_no_repair_fits_an_impossible_budget_within_its_rounds(context, held, tmp_path):
    proposal = Policy(distillation=NO_FINETUNE)
    ctx = context(budget_ms=1e-3, outdir=str(tmp_path / "study"))
    lines = []
    # the costs promise a lot: each round's estimate fits, each timing misses, the correction moves it on
    repaired = repair_policy(proposal, 10.0, ctx, costs(held, saving_ms=5.0), log=lines.append)
    assert repaired.policy is None and len(repaired.timed_ms) == len(lines) == ROUNDS  # a 27-step path: 3 rounds
    assert evaluate_or_repair(proposal, ctx, Repair(costs(held, saving_ms=5.0))).status == "infeasible"


def test_the_card_says_a_trial_was_found_by_repair_and_from_which_proposal():
    from search.export import _repair_lines

    proposal = {"policy_id": "4bc0304e9334", "latency_ms": 4.04, "timed_ms": [3.55]}
    (line,) = _repair_lines({"repaired_from": proposal})
    assert "found by repair" in line and "4bc0304e9334" in line and "4.04 ms" in line
    assert _repair_lines({"repaired_from": {}}) == _repair_lines({}) == []


def test_a_repaired_trial_a_scheduler_sees_after_an_epoch_names_its_proposal(context, held, tmp_path):
    """Where a scheduler ranks each epoch (`report_epoch`), the interim result it may stop the trial at is the
    repaired policy's and records the proposal too."""
    two_epochs = DistillationSettings(enabled=False, epochs=2)
    proposal = Policy(distillation=two_epochs)
    ctx = context(budget_ms=budget_between(context, held, tmp_path), outdir=str(tmp_path / "study"), train_images=2)
    seen = []
    result = evaluate_or_repair(
        proposal, ctx, Repair(costs(held, saving_ms=1e-3)), report_epoch=lambda e, v, interim: seen.append(interim)
    )
    assert result.status == "complete" and result.repaired_from["policy_id"] == proposal.policy_id
    assert len(seen) == 1 and seen[0].status == "pruned"  # after epoch 1 of 2
    assert seen[0].policy_id == result.policy_id and seen[0].repaired_from == result.repaired_from
