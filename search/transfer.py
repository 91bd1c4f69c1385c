"""Reuse a finished study on a new device: latency is measured again, accuracy only where it matters.

`transfer_study` creates a study for the new device in the same storage (same space, its
own record naming its source), carries the source's trials into it without fine-tuning
anything, and can then continue the search there, warm. It prepares the target as a search
does (`search.prepare.prepare`: the target's reference artifact and L0), then runs two
passes over the carried trials (each step of one trial is in `search.transfer_trial`):

1. Latency, for every carried trial. The source's fine-tuned weights (`model.pt`) become
   the new device's artifact. A precision the new device does not run becomes fp32 (every
   device runs fp32; the continued search explores the faster ones the device offers), and
   INT8 units take the new device's INT8 recipe. When neither changes, the source's
   artifact file is the artifact (copied): rebuilding it would only risk drift in what was
   scored (if the file is gone it is rebuilt from the weights). A re-built INT8 artifact is
   built timing-only (few calibration images, no bias correction: the structure, hence the
   latency, of the full build), in up to `BUILD_WORKERS` processes at once (nothing is
   timed while they build). All artifacts are then timed in ONE round-robin session
   with the target's reference artifact (each artifact alternated with the reference run
   by run, with the study's floors per round), on the target's L0 scale: a new
   fingerprint, so never a source value. The budget is checked here rather than in the
   preparation: when a carried trial fits it, it is reachable; only when none does is the
   fastest corner of the space timed (`search.prepare.check_budget`), before the target
   study is created.
2. Accuracy, lazily. A trial's mAP is "reused" when the artifact is the source's file and
   its mAP comes from the same runtime (one of `evaluators.accuracy.RUNTIMES`; other
   runtimes validate through onnxruntime, as in `search.trial`). Any other mAP must be
   measured again, and is measured only where it can change the new front: walking the
   trials fastest first (on the new device), a fine-tuned trial within the new budget is
   validated (at the source's fidelity, `val_images`) only if its source mAP plus
   `MAP_MARGIN` exceeds the best measured mAP of the target at equal or lower latency
   (`worth_validating`). Only such a trial gets the full build of its artifact (every
   calibration image, bias correction), checked to have the timed artifact's structure,
   so its latency from the session stands. Otherwise it could not be on the front even at
   its source mAP plus the margin: it keeps its source mAP, marked "carried", and its
   timing-only artifact. Trials over the new budget are never validated (they cannot be on
   the front, and a constrained sampler orders infeasible trials by their constraint, not
   their values): their mAP is carried too.

A carried mAP tells the sampler roughly where the trial stands; it is not the artifact's
measured mAP. By the rule above such a trial is always dominated by a measured one, so it
is never on the new front; it must not be exported or shown as measured either (its user
attribute `map_source` is "carried").

Which trials: every COMPLETE trial with status "complete" ("all"), or the source's Pareto
front plus its top-K by mAP ("front+topK"). With "all", trials that were over the source's
budget (never fine-tuned) are carried as latency re-measurements of their untuned screen
artifact only while they are still over the new budget: that tells the sampler the region
is too slow. One that now fits is left out — its untuned mAP would mislead the sampler —
and is listed as skipped; the search evaluates it properly if it asks for it. PRUNED
trials (stopped early, no weights) are skipped.

A carried trial is added as a COMPLETE Optuna trial whose parameters and distributions are
those the new space's define-by-run produces for its policy (so the sampler starts
informed), with the tuner's user attributes (`TrialResult.to_dict()`), the tuner's
constraint (`latency_budget` = p50 - budget), and `transferred_from` (source trial number),
`map_source` ("reused" | "revalidated" | "carried"), `source_map50_95`, `changed` (the
deployed policy or its INT8 expression differs from the source's) and `changes` (what);
`reference` names it when it is one of the new space's reference policies, so a continued
search does not enqueue that policy again. A recovered trial (`search.recover`) keeps its
`recovery` and names its source by the source's number in the new study (`recovered_from`,
absent when the source was not carried). Trials are added in the order of pass 2 (fastest
first), except that a recovered trial whose source is still to come is added after it.
Running the transfer again resumes it: the target keeps its L0 and budget, carried trials
are skipped, and the trials it holds count as measured points.
The target's record keeps the transfer's wall seconds (`transfer_seconds`, every run of
it) and those of its preparation (`transfer_prepare_seconds`: the reference, L0 and, when
needed, the budget check).
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import time
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, fields, replace
from pathlib import Path

import optuna
from optuna.trial import TrialState

from evaluators.accuracy import RUNTIMES
from evaluators.base import Device
from evaluators.environment import ensure_offline
from evaluators.registry import get_device
from evaluators.vocabulary import Int8Recipe, UserError
from search.recover import RECOVERED_ATTR
from search.study import STUDY_ATTR, load_study, study_record
from search.transfer_report import TransferReport, transfer_report
from search.transfer_target import SELECTIONS, open_target, select_trials, target_config
from search.transfer_trial import TimedTrial, build_carried, settle_carried, time_together
from search.trial import TrialContext
from search.trial_result import TrialResult, add_measured_trial
from search.tuner import DONE_STATES, run_search
from spaces.policy import Policy

FALLBACK_PRECISION = "fp32"

# How far (mAP50-95, in [0, 1]) a trial's mAP on the new device may be above its source
# mAP. Validated again after the ort-cpu -> openvino-cpu transfer of the default study (INT8
# re-quantized ORT -> NNCF, validated on OpenVINO instead of onnxruntime), 14 trials moved
# by at most 0.0089 (an untuned INT8 screen; fine-tuned ones at most 0.0029; see
# benchmarks/results/transfer.md): the largest move rounded up. A trial whose source mAP
# plus this is not above a measured mAP at equal or lower latency is not validated.
MAP_MARGIN = 0.01
# Processes that build carried artifacts at once (one torch thread each), at most the cores.
BUILD_WORKERS = 2


def target_name(source: str, device: str) -> str:
    """The default name of a transferred study: `<source>-on-<device>`, ':' and '/' made '-'."""
    return f"{source}-on-{device.replace(':', '-').replace('/', '-')}"


def map_precisions(policy: Policy, offered) -> tuple[Policy, tuple[str, ...]]:
    """The policy with every precision the device does not offer set to fp32, and what moved."""
    moved: dict[tuple[str, str], int] = {}
    precision = {}
    for unit, p in policy.precision.items():
        precision[unit] = p if p in offered else FALLBACK_PRECISION
        if precision[unit] != p:
            moved[(p, precision[unit])] = moved.get((p, precision[unit]), 0) + 1
    changes = tuple(f"precision {a} -> {b} on {n} unit(s) (not offered)" for (a, b), n in sorted(moved.items()))
    return replace(policy, precision=precision), changes


def worth_validating(source_map: float, latency_ms: float, measured, margin: float = MAP_MARGIN) -> bool:
    """Whether a feasible trial whose mAP here is unknown could still be on the new front.

    measured: (p50 ms, mAP50-95) of the target's feasible trials with a measured mAP.
    True unless one of them at equal or lower latency has a mAP of at least
    `source_map + margin`: then the trial is dominated even if it gains `margin` here.
    """
    best = max((m for ms, m in measured if ms <= latency_ms), default=None)
    return best is None or source_map + margin > best


def study_seconds(study) -> float:
    """A study's search time: the sum of its finished trials' durations, in seconds."""
    return sum(t.duration.total_seconds() for t in study.get_trials(deepcopy=False) if t.duration is not None)


def transfer_study(
    source: str,
    storage_url: str,
    device: str,
    *,
    name: str | None = None,
    budget_ms: float | None = None,
    budget_fraction: float | None = None,
    continue_trials: int = 0,
    select: str = "all",
    top_k: int = 5,
    early_stop: bool = True,
    map_margin: float = MAP_MARGIN,
) -> TransferReport:
    """Carry study `source` over to `device` as study `name` (created, or resumed if it is a transfer
    of `source`), then run `continue_trials` more trials there. The budget is `budget_ms`, or
    `budget_fraction` of the new device's FP32 baseline, or the source's rule (an absolute budget
    stays absolute, a fraction stays a fraction of the new baseline). map_margin: see `MAP_MARGIN`
    (a large value validates every feasible trial whose mAP cannot be reused). UserError for an
    unknown study or device, a source without complete trials, a name taken by another study,
    or a negative margin.
    """
    from search.prepare import check_budget, prepare

    if select not in SELECTIONS:
        raise UserError(f"unknown selection {select!r}; choose one of {', '.join(SELECTIONS)}.")
    if map_margin < 0:
        raise UserError(f"the mAP margin must be zero or more, got {map_margin}.")
    started = time.perf_counter()
    src = load_study(source, storage_url)
    src_record = study_record(src)
    target_device = get_device(device)
    name = name or target_name(source, device)
    carried = select_trials(src, select, top_k)
    if not carried["complete"]:
        raise UserError(f"study {source!r} has no complete trial with fine-tuned weights to transfer.")

    config, existing = target_config(src_record, source, name, device, storage_url, budget_ms, budget_fraction)
    # a resumed target keeps its L0 and budget; a new one's budget is checked after pass 1
    prepared = prepare(config, name=name, record=existing, time_fastest=False, guided=continue_trials > 0)
    preparing = time.perf_counter() - started
    target = _Target(
        ctx=prepared.context,
        device=target_device,
        source_runtime=_runtime(src_record["fingerprint"]["runtime"]),
        source_recipe=_recipe_of(src_record["device"]),
        objectives=tuple(config.objectives),
        source=source,
        references={p.policy_id: n for n, p in prepared.context.space.reference_policies().items()},
    )
    held = load_study(name, storage_url).get_trials(deepcopy=False) if existing is not None else []
    timed, left_out = _time_all(carried["complete"] + carried["infeasible"], target, held)  # pass 1
    # a carried trial within the budget shows it is reachable (an untuned one is left out exactly when it fits)
    reachable = bool(left_out) or any(c.timed.latency.latency_ms <= target.ctx.budget_ms for c in timed)
    if existing is None and not reachable:
        checking = time.perf_counter()
        prepared = replace(prepared, fastest_latency_ms=check_budget(prepared.context))  # UserError: impossible
        preparing += time.perf_counter() - checking
    dst = open_target(name, storage_url, existing, config, prepared, source, src_record)
    record = study_record(dst)
    _settle_all(timed, target, dst, map_margin)  # pass 2
    skipped = list(carried["skipped"]) + left_out
    seconds = record.get("transfer_seconds", 0.0) + time.perf_counter() - started
    dst.set_user_attr(
        STUDY_ATTR,
        {
            **record,
            "transfer_seconds": round(seconds, 2),
            "transfer_prepare_seconds": round(record.get("transfer_prepare_seconds", 0.0) + preparing, 2),
            "map_margin": map_margin,
        },
    )

    continued, continue_seconds = 0, 0.0
    if continue_trials > 0:
        have = len(dst.get_trials(deepcopy=False, states=DONE_STATES))
        outcome = run_search(
            config.with_overrides(trials=have + continue_trials),
            prepared,
            name=name,
            resume=True,
            early_stop=early_stop,
        )
        continued, continue_seconds = outcome.trials_run, outcome.seconds
    return transfer_report(
        src,
        load_study(name, storage_url),
        storage_url,
        skipped=skipped,
        seconds=seconds,
        source_seconds=study_seconds(src),
        continued=continued,
        continue_seconds=continue_seconds,
    )


# --- setting the target up ---------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    ctx: TrialContext
    device: Device
    source_runtime: str  # the runtime the source's mAP was validated on
    source_recipe: Int8Recipe | None  # None: not known here (source device unusable on this machine)
    objectives: tuple[str, ...]
    source: str
    references: dict  # policy_id -> name of the target space's reference policies


def _runtime(fingerprint_runtime: str) -> str:
    return fingerprint_runtime if fingerprint_runtime in RUNTIMES else "onnxruntime"


def _recipe_of(device: str) -> Int8Recipe | None:
    try:
        return get_device(device).recipe_for()
    except UserError:
        return None


def _measured_points(study, budget_ms: float) -> list[tuple[float, float]]:
    """(p50 ms, mAP50-95) of the study's fine-tuned trials within `budget_ms` whose mAP was measured here."""
    return [
        (t.user_attrs["latency_ms"], t.user_attrs["map50_95"])
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.user_attrs.get("status") == "complete"
        and t.user_attrs["latency_ms"] <= budget_ms
        and t.user_attrs.get("map_source") != "carried"
    ]


# --- carrying the trials -----------------------------------------------------------------


def _time_all(trials, target: _Target, held) -> tuple[list[_Carry], list[tuple[int, str]]]:
    """Pass 1 over the source `trials` not carried yet (`held`: the target's trials so far): built, then timed in
    one session; the timed ones and the left-out ones with why."""
    done = {t.user_attrs.get("transferred_from") for t in held}
    taken = {Path(t.user_attrs["artifact"]).parent.name for t in held if t.user_attrs.get("artifact")}
    todo = [t for t in trials if t.number not in done]
    plans = [_plan(trial, target, taken) for trial in todo]
    built = _build_all(plans, target.ctx)
    timed = time_together(built, target.ctx)
    carries = [_Carry(trial, t, plan.changes) for trial, plan, t in zip(todo, plans, timed, strict=True)]
    kept = [c for c in carries if not c.timed.left_out]
    left_out = [(c.trial.number, c.timed.left_out) for c in carries if c.timed.left_out]
    return kept, left_out


def _settle_all(carries, target: _Target, study, margin: float) -> None:
    """Pass 2: each timed trial's mAP, fastest first (see the module docstring); added to `study` in that order,
    except that a recovered trial whose source is still to come waits for it (its link names the source's
    number in `study`)."""
    budget = target.ctx.budget_ms
    measured = _measured_points(study, budget)
    numbers = {
        t.user_attrs["transferred_from"]: t.number
        for t in study.get_trials(deepcopy=False)
        if "transferred_from" in t.user_attrs
    }
    coming = {c.trial.number for c in carries}
    waiting = []
    for one in sorted(carries, key=lambda c: (c.timed.latency.latency_ms, -c.source_map)):
        feasible = one.timed.feasible(budget)
        validate = feasible and worth_validating(one.source_map, one.timed.latency.latency_ms, measured, margin)
        settled = _settle(one, target, validate)
        if one.trial.user_attrs.get(RECOVERED_ATTR) in coming.difference(numbers):
            waiting.append((one, settled))
        else:
            numbers[one.trial.number] = _add_carried(study, one, settled, target, numbers)
        if feasible and settled.map_source != "carried":
            measured.append((settled.result.latency_ms, settled.result.map50_95))
    for one, settled in waiting:
        numbers[one.trial.number] = _add_carried(study, one, settled, target, numbers)


@dataclass(frozen=True)
class _Carry:
    """A source trial built (pass 1a) and timed (1b) on the target, waiting for its mAP (pass 2)."""

    trial: optuna.trial.FrozenTrial
    timed: TimedTrial
    changes: tuple[str, ...]

    @property
    def source_map(self) -> float:
        return self.trial.user_attrs["map50_95"]


@dataclass(frozen=True)
class _Plan:
    """What pass 1a builds for one source trial (picklable: builds may run in worker processes)."""

    source: TrialResult
    policy: Policy
    changes: tuple[str, ...]
    folder: str
    source_runtime: str | None

    def build(self, ctx: TrialContext) -> TimedTrial:
        return build_carried(
            self.source,
            self.policy,
            ctx,
            folder=self.folder,
            rebuild=bool(self.changes),
            source_runtime=self.source_runtime,
        )


def _plan(trial, target: _Target, taken: set) -> _Plan:
    """Pass 1a for one source trial, planned: its policy here, what changed, its folder."""
    attrs = trial.user_attrs
    policy, changes = map_precisions(Policy.from_dict(attrs["policy"]), target.ctx.space.offered)
    recipe, before = target.device.recipe_for(policy.recipe), policy.recipe or target.source_recipe
    if "int8" in policy.precision.values() and recipe != before:
        changes += (_recipe_change(before, recipe),)
    folder = policy.policy_id if policy.policy_id not in taken else f"{policy.policy_id}-from-{trial.number}"
    taken.add(folder)
    return _Plan(
        source=TrialResult.from_dict({f.name: attrs[f.name] for f in fields(TrialResult) if f.name in attrs}),
        policy=policy,
        changes=changes,
        folder=folder,
        # a mAP the source itself carried was measured on no artifact: never reused
        source_runtime=None if attrs.get("map_source") == "carried" else target.source_runtime,
    )


def _build_all(plans: list[_Plan], ctx: TrialContext) -> list[TimedTrial]:
    """Pass 1a: every planned artifact, in order. Rebuilds run in up to `BUILD_WORKERS` processes
    (one torch thread each); nothing is timed meanwhile, so the builds may share the cores."""
    rebuilds = sum(bool(p.changes) for p in plans)
    workers = min(BUILD_WORKERS, os.cpu_count() or 1, rebuilds)
    if workers < 2:
        return [p.build(ctx) for p in plans]
    spawn = multiprocessing.get_context("spawn")  # no forked copy of this process's runtimes and threads
    with ProcessPoolExecutor(workers, mp_context=spawn, initializer=_one_thread) as pool:
        return list(pool.map(functools.partial(_Plan.build, ctx=ctx), plans))


def _one_thread() -> None:
    """A build worker: one torch thread, offline, and its output on stderr (stdout may carry the --json report)."""
    import sys

    import torch

    os.dup2(2, 1)
    sys.stdout = sys.stderr
    ensure_offline()
    torch.set_num_threads(1)


def _settle(one: _Carry, target: _Target, validate: bool):
    """Pass 2 for one timed trial: its mAP (reused, validated or carried)."""
    return settle_carried(
        one.timed,
        target.ctx,
        validate=validate,
        origin=f"carried over from study {target.source!r} trial {one.trial.number}",
    )


def _add_carried(study, one: _Carry, settled, target: _Target, numbers: Mapping[int, int]) -> int:
    """Add a settled trial to `study`, linked to its source trial; a recovered one keeps its recovery and names
    its source's number in `study` (`numbers`: source number -> number here), if that was carried. Its number."""
    extra = {
        "transferred_from": one.trial.number,
        "map_source": settled.map_source,
        "source_map50_95": one.source_map,
        "changed": bool(one.changes),
        "changes": list(one.changes),
    }
    if reference := target.references.get(one.timed.policy.policy_id):
        extra["reference"] = reference  # so a continued search does not enqueue it again
    if "recovery" in one.trial.user_attrs:
        extra["recovery"] = one.trial.user_attrs["recovery"]
        if (source := numbers.get(one.trial.user_attrs.get(RECOVERED_ATTR))) is not None:
            extra[RECOVERED_ATTR] = source
    return _add_trial(study, settled.result, extra, target)


def _recipe_change(before: Int8Recipe | None, after: Int8Recipe) -> str:
    if before is None:
        return "INT8 recipe: the source device's is unknown here"
    diff = [f"{k} {v} -> {after.to_dict()[k]}" for k, v in before.to_dict().items() if after.to_dict()[k] != v]
    return "INT8 recipe " + ", ".join(diff)


def _add_trial(study, result: TrialResult, extra: dict, target: _Target) -> int:
    """Add a COMPLETE trial with the parameters the target space's define-by-run gives its policy; its
    duration is the sum of its steps' seconds (its real cost, for `study_seconds`). Its number."""
    params, distributions = target.ctx.space.replay(Policy.from_dict(result.policy))
    return add_measured_trial(
        study, params, distributions, result, extra, objectives=target.objectives, budget_ms=target.ctx.budget_ms
    )
