"""Guided starts: policies a good engineer would try first, measured on the device, enqueued before sampling.

For a few latency targets — the study's budget and the fractions `TARGET_FRACTIONS` of L0
below it, each less `BUDGET_MARGIN` — `guided_starts` finds a policy with the NetAdapt-style
greedy of `spaces.greedy`, from measurements taken on the study's device when the study
is created:

1. The device's fastest precision: the unpruned model at every precision the device
   offers, with each activation the study offers (`spaces.activation`) and its own, timed
   side by side with the study's reference (its FP32 artifact); the fastest becomes every
   unit's precision (no precision islands: the greedy prunes only) and every start's activation.
   Then the block reading the image (`spaces.segments.precision_segments`, "input") at each
   other precision, timed side by side with the uniform model: a precision faster by
   `INPUT_GAIN` becomes that block's (on ONNX Runtime, CPU: FP32 for the 3-channel stem conv).
2. Per-segment savings: for every segment (`spaces.segments.graph_segments`) and ratio of
   `GRID`, the model at that precision with only that segment pruned, timed in one
   round-robin session per segment with the unpruned one — savings in ms on the study's scale.
   A segment holding depth units (`spaces.depth`, where the study searches depth) is timed in the
   same session without their inner blocks too: its depth step (`spaces.greedy.depth_step`).
3. Per-segment losses: from the model's stored sensitivity (`squeezefit sensitivity`,
   untuned per-unit mAP drops, `spaces.greedy.segment_losses`; a depth step's from its depth
   column, `spaces.greedy.depth_losses`, none without it). Without it, no guided
   starts (said in one line).
4. The greedy's path (`spaces.greedy.greedy_path`: its policies in order, one ratio step
   at a time), cut where the estimated loss reaches the model's mAP (`spaces.greedy.viable_prefix`:
   no fine-tune here brings such a policy back, so a target beyond gets no start), is
   searched per target by timing: a bisection for the least-pruned policy of the path that
   fits, starting where the additive estimate says, up to `VERIFY_ROUNDS` rounds (all
   targets' candidates share each round's session). Summed per-segment
   savings over-promise (neighbouring segments share a convolution) and each is measured
   with noise; the path only needs their order to be roughly right.
   A target below the budget that no timed step meets with the margin takes the last step timed
   for it if that one meets its limit (the margin keeps a start inside the budget; below the
   budget a start is fine-tuned anyway: the ORT 0.33x target missed by 0.01 ms of its margin).
   Where the fastest precisions fit the budget unpruned and no reference has them (step 1 chose
   another precision for the input block), that unpruned policy is the budget's start.

Artifacts are timing-only builds (few calibration images, no bias correction: the
structure, hence the latency, of the full build) under `<ctx.outdir>/guided/`. A start is
named `guided-<fraction>x` (its target as a fraction of L0) and fine-tuned like the
uniform pruned references. Costs one build per (segment, ratio) plus a few per target: on
YOLO11n (11 segments, 8 with depth units) 33 + 8 builds of a few seconds each at 192 px, then a short session per segment and
up to `VERIFY_ROUNDS` sessions of a few policies each.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from evaluators.registry import get_device
from search.checkpoint import load_baseline
from search.trial import TrialContext, timing_screen
from spaces.greedy import (
    DEPTH_GRID,
    SegmentCosts,
    depth_losses,
    depth_step,
    first_fit,
    greedy_path,
    policy_parts,
    segment_losses,
    viable_prefix,
)
from spaces.policy import Policy
from spaces.precision import uniform_precisions
from spaces.pruning import REFERENCE_RATIOS
from spaces.segments import INPUT_SEGMENT, graph_segments, members, precision_segments
from spaces.sensitivity import Sensitivity, sensitivity_path

GRID = REFERENCE_RATIOS
"""Ratios each segment is measured at, the greedy's steps."""
TARGET_FRACTIONS = (0.7, 0.5, 0.4, 0.33, 0.25)
"""Targets besides the budget, as fractions of L0 (only those below the budget): 0.7, the bench's budgets (0.5, 0.33,
0.25), and 0.4, so that a front under a 0.5 x L0 budget is not only points near it."""
BUDGET_MARGIN = 0.97
"""Each start aims this far under its limit (the budget, a fraction of L0), so that its trial's own timing, a
few per cent off the guided session's, keeps it within: a 0.5 x L0 start timed 3.00 ms for 3.03 and 3.07 in its
trial."""
VERIFY_ROUNDS = 6
"""Timed rounds of the bisection along the greedy's path (a path of 27 steps needs about 5 after the first)."""
CLOSE = 0.03
"""Targets closer than this (fraction of L0) to one kept are dropped."""
INPUT_GAIN = 0.02
"""The input block takes another precision than the rest only if the unpruned model runs this much faster with it
(a fraction of its time): a ratio of medians timed side by side scatters by about 1%."""


@dataclass(frozen=True)
class GuidedStart:
    """A guided start: its policy, the target (ms, study scale) it was made for, and its timing-only screen's ms."""

    policy: Policy
    target_ms: float
    measured_ms: float

    def to_dict(self) -> dict:
        return {"policy": self.policy.to_dict(), "target_ms": self.target_ms, "measured_ms": self.measured_ms}

    @classmethod
    def from_dict(cls, data: Mapping) -> GuidedStart:
        return cls(Policy.from_dict(data["policy"]), float(data["target_ms"]), float(data["measured_ms"]))


def guided_starts(
    ctx: TrialContext, model=None, *, log: Callable[[str], None] = print
) -> tuple[dict[str, GuidedStart], SegmentCosts | None]:
    """(name -> guided start of a study (see the module docstring), the segment costs they were found with);
    ({}, None) when there is none to make (no sensitivity stored, or the fastest precision fits the budget); where
    the fastest precisions, unpruned, fit the budget and are not uniform (the input block differs), that policy is
    the start for the budget, and the costs are None where no target is left below it.

    The costs (`spaces.greedy.SegmentCosts`: the measured per-segment savings, the sensitivity's
    losses, each segment's units) are what `search.repair` repairs sampled policies with.
    model: the loaded baseline, when the caller has it.
    """
    model = model if model is not None else load_baseline(ctx.checkpoint)
    path = sensitivity_path(ctx.checkpoint)
    if not path.is_file():
        log(f"guided starts: none, they need the model's sensitivity ({path}; run `squeezefit sensitivity`).")
        return {}, None
    started = time.perf_counter()
    sensitivity = Sensitivity.load(path, model)
    segments = ctx.space.segments or graph_segments(model, ctx.imgsz)
    session = _Session(ctx, model, segments)
    fastest, base_ms = session.fastest_precisions()
    starts: dict[str, GuidedStart] = {}
    if base_ms <= ctx.budget_ms * BUDGET_MARGIN and not session.uniform:
        # unpruned, the fastest precisions fit the budget, and no reference has them
        target = ctx.budget_ms * BUDGET_MARGIN
        starts[_name(ctx, target)] = GuidedStart(session.policy({}, {}), round(target, 4), round(base_ms, 4))
    targets = _targets(ctx, base_ms)
    if not targets:
        unpruned = f"; unpruned, it is {next(iter(starts))}" if starts else ""
        log(f"guided starts: {len(starts)}, {fastest} ({base_ms:.2f} ms) already fits the budget{unpruned}.")
        return starts, None
    held = members(segments, [u.name for u in ctx.space.pruning_units])
    deep = {depth_step(s): units for s, units in members(segments, list(ctx.space.depth_units)).items()}
    log(
        f"guided starts: {fastest} {base_ms:.2f} ms is the fastest; timing {len(held)} segments "
        f"pruned at {', '.join(f'{r:g}' for r in GRID)}"
        + (f" and {len(deep)} without their inner blocks" if deep else "")
        + f" for targets {', '.join(f'{t:.2f}' for t in targets)} ms"
    )
    for name, start in starts.items():
        log(f"  {name}: {start.measured_ms:.2f} ms (target {start.target_ms:.2f}), pruned nothing, {fastest}")
    savings, base_ms = session.segment_savings(held, deep)
    log(
        f"  unpruned {base_ms:.2f} ms; saved (ms) at {'/'.join(f'{r:g}' for r in GRID)}: "
        + ", ".join(f"{s} {'/'.join(f'{table[r]:.2f}' for r in GRID)}" for s, table in savings.items() if s in held)
        + "".join(f"; {s} {savings[s][1.0]:.2f}" for s in deep)
    )
    losses = {
        **segment_losses(sensitivity.base_map, sensitivity.pruning, held, GRID),
        **depth_losses(sensitivity.base_map, sensitivity.depth, deep),
    }
    if deep and not sensitivity.depth:
        log(f"  no depth steps: the sensitivity ({path}) has no depth column; run `squeezefit sensitivity` again")
    held = {**held, **deep}
    whole = greedy_path(savings, losses)
    path = viable_prefix(whole, losses, sensitivity.base_map)
    if len(path) < len(whole):
        log(
            f"  the greedy's path stops at step {len(path)} of {len(whole)}: beyond it the sensitivity's drops add up "
            f"to the model's whole mAP50-95 ({sensitivity.base_map:.3f}), which no fine-tune here recovers"
        )
    found, missed_by = _fit_targets(session, targets, path, savings, base_ms, held, log=log)
    found.update(_within_limits(missed_by, ctx.budget_ms))
    for target, (ratios, measured) in found.items():
        policy = session.policy(held, ratios)
        if any(policy == s.policy for s in starts.values()):
            continue
        name = _name(ctx, target)
        starts[name] = GuidedStart(policy, round(target, 4), round(measured, 4))
        shaved = ", ".join(f"{s} {r:g}" for s, r in ratios.items() if r > 0) or "nothing"
        log(f"  {name}: {measured:.2f} ms (target {target:.2f}), pruned {shaved}, {fastest}")
    missed = [
        f"{t:.2f}" + (f" (closest timed {missed_by[t][1]:.2f})" if t in missed_by else " (beyond the grid's estimate)")
        for t in targets
        if t not in found
    ]
    if missed:
        log(f"  no start fits {', '.join(missed)} ms within the grid")
    log(f"guided starts: {len(starts)} in {time.perf_counter() - started:.0f} s")
    return starts, SegmentCosts(savings, losses, held)


def _name(ctx: TrialContext, target: float) -> str:
    """`guided-<limit>x`: the start for `target` (ms) named by the limit it was made for, a fraction of L0."""
    return f"guided-{target / BUDGET_MARGIN / ctx.reference_ms:.2f}x"


def _targets(ctx: TrialContext, base_ms: float) -> list[float]:
    """Latency targets (ms, descending): the budget, then the L0 fractions below it, each less the margin; only
    those under `base_ms`."""
    fractions = [f * ctx.reference_ms for f in TARGET_FRACTIONS if f * ctx.reference_ms < ctx.budget_ms]
    limits = [ctx.budget_ms, *fractions]
    wanted = [limit * BUDGET_MARGIN for limit in limits]
    kept: list[float] = []
    for target in wanted:
        if target < base_ms and all(abs(target - k) > CLOSE * ctx.reference_ms for k in kept):
            kept.append(target)
    return kept


def _within_limits(missed_by: Mapping[float, tuple[dict, float]], budget_ms: float) -> dict[float, tuple[dict, float]]:
    """The targets of `missed_by` (target -> (ratios, ms) of the last step timed for it) below the budget whose step
    meets the target's limit (target / BUDGET_MARGIN): a start there need not keep the margin to its own line."""
    return {t: (ratios, ms) for t, (ratios, ms) in missed_by.items() if ms <= t / BUDGET_MARGIN < budget_ms}


def _fit_targets(session, targets, path, savings, base_ms, held, *, log=print):
    """(target -> (segment ratios, measured ms) of the least-pruned policy of `path` found to fit it,
    target -> (segment ratios, measured ms) of the last policy timed that missed it). Logs each round's candidates.

    A bisection per target over the path's indices: the first point timed is the additive
    estimate's (`first_fit`), then the midpoint between the furthest point known to miss and
    the nearest known to fit (the path's end while none is). All targets' points of a
    round share one session; `VERIFY_ROUNDS` rounds at most.
    """
    if not path:
        return {}, {}
    bounds = {t: [-1, None] for t in targets}  # target -> [furthest index that missed, nearest that fit]
    probe = {t: first_fit(path, savings, base_ms, t) for t in targets}
    found: dict[float, tuple[dict, float]] = {}
    missed_by: dict[float, tuple[dict, float]] = {}
    for round_ in range(1, VERIFY_ROUNDS + 1):
        if not probe:
            break
        indices = sorted(set(probe.values()))
        timed = dict(zip(indices, session.time_policies([session.policy(held, path[i]) for i in indices]), strict=True))
        for target, index in probe.items():
            ms = timed[index]
            shaved = ", ".join(f"{s} {r:g}" for s, r in path[index].items() if r > 0)
            log(f"  round {round_}, target {target:.2f} ms: step {index + 1}/{len(path)} timed {ms:.2f} ({shaved})")
            if ms <= target:
                bounds[target][1] = index
                found[target] = (path[index], ms)
                missed_by.pop(target, None)
            else:
                bounds[target][0] = index
                if target not in found:
                    missed_by[target] = (path[index], ms)
        probe = {}
        for target, (missed, fit) in bounds.items():
            high = fit if fit is not None else len(path)
            if high - missed > 1:
                probe[target] = (missed + high) // 2 if fit is not None else (missed + high + 1) // 2
    return found, missed_by


class _Session:
    """Builds timing-only artifacts under `<outdir>/guided/` and times them against the study's reference."""

    def __init__(self, ctx: TrialContext, model, segments) -> None:
        self.ctx, self.model = ctx, model
        # of every policy made here; `fastest_precisions` chooses them
        self.activation: str | None = None
        self.precisions: dict[str, str] = uniform_precisions(ctx.space.precision_units, "fp32")
        held = members(precision_segments(segments), ctx.space.precision_units)
        self.input_units = held.get(INPUT_SEGMENT, ())
        self.device = get_device(ctx.device)
        self.folder = Path(ctx.outdir) / "guided"
        self.folder.mkdir(parents=True, exist_ok=True)

    @property
    def uniform(self) -> bool:
        """Whether every unit has the session's one precision, as in a reference (False where step 1 gave the input
        block another precision)."""
        return len(set(self.precisions.values())) == 1

    def policy(self, held: Mapping[str, tuple[str, ...]], ratios: Mapping[str, float]) -> Policy:
        """A start of this session: `ratios` per segment or depth step of `held` (`spaces.greedy.policy_parts`), the
        session's precisions and activation."""
        return self._policy(held, ratios, self.precisions, self.activation)

    def _policy(self, held, ratios, precisions: Mapping[str, str], activation: str | None) -> Policy:
        pruning, depth = policy_parts(held, ratios, self.ctx.space.depth_units)
        return Policy(
            pruning=pruning,
            precision=precisions,
            distillation=self.ctx.space.pruned_finetune(activation),
            activation=activation,
            depth=depth,
        )

    def fastest_precisions(self) -> tuple[str, float]:
        """(what was chosen, in words; the unpruned model's ms with it): the session's precisions and activation.

        First the fastest uniform precision among those offered (fp32 = L0), each with the model's own
        activation and each the study offers; then the input block at each other offered precision
        (`INPUT_GAIN`)."""
        units = self.ctx.space.precision_units
        corners = [
            (p, a)
            for p in self.ctx.space.offered
            for a in (None, *self.ctx.space.activations)
            if (p, a) != ("fp32", None)
        ]
        policies = [self._policy({}, {}, uniform_precisions(units, p), a) for p, a in corners]
        measured = self.time_policies(policies) if policies else []
        (precision, self.activation), ms = min(
            [(("fp32", None), self.ctx.reference_ms), *zip(corners, measured, strict=True)], key=lambda cm: cm[1]
        )
        self.precisions = uniform_precisions(units, precision)
        chosen = f"all-{precision}"
        others = [p for p in self.ctx.space.offered if p != precision] if self.input_units else []
        if others:
            variants = [{**self.precisions, **dict.fromkeys(self.input_units, p)} for p in others]
            uniform_ms, *input_ms = self.time_policies(
                [self._policy({}, {}, v, self.activation) for v in [self.precisions, *variants]]
            )
            best = min(range(len(others)), key=lambda i: input_ms[i])
            if input_ms[best] < uniform_ms * (1 - INPUT_GAIN):
                self.precisions, ms = variants[best], input_ms[best]
                chosen = f"all-{precision} but the input block ({others[best]})"
            else:
                ms = uniform_ms
        return chosen + (f" with {self.activation}" if self.activation else ""), ms

    def segment_savings(self, held, deep=None) -> tuple[dict[str, dict[float, float]], float]:
        """(segment or depth step -> {ratio: ms saved}, the unpruned model's ms): one session per segment, its
        variants (pruned at each ratio of GRID, and without the inner blocks of its depth step in `deep`, depth step
        -> its depth units) timed with the unpruned model, each saving from within its session; the unpruned ms is
        the sessions' median.

        Small sessions: in one session of every variant (28 artifacts) the per-artifact scatter
        reached +-0.6 ms on a 4.6 ms model, larger than most segments' savings.
        """
        savings: dict[str, dict[float, float]] = {}
        bases = []
        unpruned = self.policy({}, {})
        deep = deep or {}
        for segment in held:
            step = depth_step(segment)
            shallow = [self.policy(deep, {step: r}) for r in DEPTH_GRID] if step in deep else []
            base, *pruned = self.time_policies([unpruned, *(self.policy(held, {segment: r}) for r in GRID), *shallow])
            savings[segment] = {r: base - ms for r, ms in zip(GRID, pruned[: len(GRID)], strict=True)}
            if shallow:
                savings[step] = {r: base - ms for r, ms in zip(DEPTH_GRID, pruned[len(GRID) :], strict=True)}
            bases.append(base)
        return savings, statistics.median(bases)

    def time_policies(self, policies: list[Policy]) -> list[float]:
        """Each policy's screen, timing-only, timed together with the reference in one session: ms on the study scale."""
        recipe = self.device.recipe_for()
        # built once: an earlier round or an earlier creation of this study may have built it
        paths = [timing_screen(policy, self.ctx, recipe, self.folder, baseline=self.model) for policy in policies]
        measured = self.device.measure_together([self.ctx.reference_artifact, *paths], settings=self.ctx.timing)
        return [m.latency_ms(self.ctx.reference_ms) for m in measured[1:]]
