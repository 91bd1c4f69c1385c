"""Repair: a sampled policy over the budget, shaved along the guided starts' greedy until it fits.

A sampler proposes policies near the best it has seen, and in a study the best sit at the
budget's edge: a proposal that prunes a segment less, or keeps one in FP32, lands just over
it (on the embedded default, every sampled proposal of a 16-trial search did). Scored as it
is, such a trial teaches the sampler only that it was infeasible. Repaired, the trial scores
the nearest policy that fits — the proposal's precisions and fine-tune, pruned further:

1. Each segment (`spaces.greedy.SegmentCosts.held`) starts at the least ratio among its units.
2. `spaces.greedy.greedy_path` from there: the segment with the most latency saved per mAP
   lost steps up the ratio grid, one step at a time (the study's measured savings and its
   sensitivity's losses, from the guided starts).
3. The first policy along that path whose additive estimate — the proposal's measured p50
   less the path's extra savings — fits `BUDGET_MARGIN` x the budget is built (timing only)
   and timed against the study's reference; over the budget, the estimate is corrected by
   what it missed and the next fitting point is timed, up to `ROUNDS` timings.

A unit of a stepped segment takes the larger of its own ratio and the segment's; a depth step
(`spaces.greedy.depth_step`) removes its units' inner blocks. The trial
keeps the proposal's Optuna parameters and scores the repaired policy, so to the sampler the
objective of a proposal is that of its repair: deterministic (the timings are cached by
structure), and feasible where a repair exists. References and guided starts are never
repaired (`keep`): they are what they are named. The repaired screen has the structure of
the trial's own screen, so the trial's latency check reuses its timing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from evaluators.registry import get_device
from search.guided import BUDGET_MARGIN
from search.trial import TrialContext, evaluate_policy, time_artifact, timing_screen
from search.trial_result import TrialResult
from spaces.greedy import DEPTH_SUFFIX, SegmentCosts, estimated_ms, greedy_path, policy_parts
from spaces.policy import Policy

ROUNDS = 3
"""Timed candidates at most per repair (each a timing-only build and one paired session)."""


@dataclass(frozen=True)
class Repair:
    """How a study's trials repair their policies: the segment costs measured for its guided starts, and the
    policy ids never repaired (its references and guided starts)."""

    costs: SegmentCosts
    keep: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class Repaired:
    """A repair's outcome: the policy that fits (None: none found within `ROUNDS`), and what was timed (ms)."""

    policy: Policy | None
    timed_ms: tuple[float, ...]


def segment_ratios(
    policy: Policy, held: Mapping[str, tuple[str, ...]], depth_units: Mapping[str, int]
) -> dict[str, float]:
    """segment -> the least pruning ratio among its units in `policy` (0 where one is unpruned); depth step -> 1.0
    where `policy` removes every inner block of its units (`depth_units`: their counts), else 0."""
    ratios = {}
    for step, units in held.items():
        if step.endswith(DEPTH_SUFFIX):
            ratios[step] = float(all(policy.depth.get(u, 0) >= depth_units[u] for u in units))
        else:
            ratios[step] = min((float(policy.pruning.get(u, 0.0)) for u in units), default=0.0)
    return ratios


def shaved(
    policy: Policy, held: Mapping[str, tuple[str, ...]], ratios: Mapping[str, float], depth_units: Mapping[str, int]
) -> Policy:
    """`policy` with every unit of each segment pruned at least at the segment's ratio in `ratios`, and removing at
    least the inner blocks of each depth step there (`spaces.greedy.policy_parts`)."""
    pruning, depth = dict(policy.pruning), dict(policy.depth)
    more_pruning, more_depth = policy_parts(held, ratios, depth_units)
    for unit, ratio in more_pruning.items():
        pruning[unit] = max(ratio, pruning.get(unit, 0.0))
    for unit, removed in more_depth.items():
        depth[unit] = max(removed, depth.get(unit, 0))
    return replace(policy, pruning=pruning, depth=depth)


def repair_policy(
    policy: Policy, measured_ms: float, ctx: TrialContext, costs: SegmentCosts, *, log: Callable[[str], None] = print
) -> Repaired:
    """The repair of `policy`, whose screen timed `measured_ms` (study scale) over `ctx.budget_ms` (module docstring).

    Timing-only screens are built under `<ctx.outdir>/repair/`.
    """
    start = segment_ratios(policy, costs.held, ctx.space.depth_units)
    path = greedy_path(costs.savings, costs.losses, start=start)
    if not path:
        return Repaired(None, ())
    target = ctx.budget_ms * BUDGET_MARGIN
    unpruned_ms = measured_ms - estimated_ms(0.0, costs.savings, start)  # the proposal's savings given back
    additive = [estimated_ms(unpruned_ms, costs.savings, r) for r in path]
    device = get_device(ctx.device)
    recipe = device.recipe_for(policy.recipe)
    folder = Path(ctx.outdir) / "repair"
    folder.mkdir(parents=True, exist_ok=True)
    correction, after, timed = 0.0, -1, []
    for _ in range(ROUNDS):
        estimates = [ms + correction for ms in additive]
        index = next((i for i in range(after + 1, len(path)) if estimates[i] <= target), len(path) - 1)
        if index <= after:
            break
        candidate = shaved(policy, costs.held, path[index], ctx.space.depth_units)
        ms = time_artifact(device, timing_screen(candidate, ctx, recipe, folder), ctx).latency_ms
        timed.append(round(ms, 4))
        steps = ", ".join(f"{s} {r:g}" for s, r in path[index].items() if r > start[s])
        log(f"  repair: {policy.policy_id} {measured_ms:.2f} ms -> {candidate.policy_id} {ms:.2f} ms ({steps})")
        if ms <= ctx.budget_ms:
            return Repaired(candidate, tuple(timed))
        correction += ms - estimates[index]
        after = index
    return Repaired(None, tuple(timed))


def evaluate_or_repair(policy: Policy, ctx: TrialContext, repair: Repair | None, **evaluate) -> TrialResult:
    """`search.trial.evaluate_policy(policy, ctx, **evaluate)`, or, where that is infeasible and `repair` applies
    (given, and `policy` not one it keeps), the result of the repaired policy, evaluated the same way.

    The repaired result records the proposal in `repaired_from` (policy_id, p50 latency_ms, the repair's
    timed_ms) and its cost first in `seconds` ("proposal": the proposal's screen and validation, "repair":
    the repair's builds and timings); so do the interim results handed to `report_epoch`. Where no repair
    fits, the proposal's infeasible result.
    """
    result = evaluate_policy(policy, ctx, **evaluate)
    if result.status != "infeasible" or repair is None or policy.policy_id in repair.keep:
        return result
    started = time.perf_counter()
    repaired = repair_policy(policy, result.latency_ms, ctx, repair.costs)
    if repaired.policy is None:
        return result
    spent = {"proposal": round(sum(result.seconds.values()), 2), "repair": round(time.perf_counter() - started, 2)}
    proposal = {"policy_id": policy.policy_id, "latency_ms": result.latency_ms, "timed_ms": list(repaired.timed_ms)}
    if (report := evaluate.get("report_epoch")) is not None:  # a scheduler may stop it there: say so then too
        evaluate = {
            **evaluate,
            "report_epoch": lambda e, v, interim: report(e, v, replace(interim, repaired_from=proposal)),
        }
    fixed = evaluate_policy(repaired.policy, ctx, **evaluate)
    return replace(fixed, repaired_from=proposal, seconds={**spent, **fixed.seconds})
