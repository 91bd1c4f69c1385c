"""Reuse a finished study on a new device: accuracy carries over, latency is measured again.

`transfer_study` creates a study for the new device in the same storage (same space, its
own record naming its source), carries the source's trials into it without fine-tuning
anything, and can then continue the search there, warm. Per carried trial (measured by
`search.trial.remeasure_policy`, with the trial flow's own builders and result file):

- the source's fine-tuned weights (`model.pt`) become the new device's artifact. A
  precision the new device does not run becomes fp32 (every device runs fp32; the continued
  search explores the faster ones the device offers), and INT8 units take the new device's
  INT8 recipe. When neither changes, the source's artifact file is the artifact (copied):
  rebuilding it would only risk drift in what was scored (if the file is gone it is rebuilt
  from the weights, and then validated again).
- latency is measured on the new device (a new fingerprint, so never a cached source value).
- mAP is reused when the artifact is numerically the same (the source's file: same
  precisions, same INT8 recipe) and its mAP comes from the same runtime (one of
  `evaluators.accuracy.RUNTIMES`; other runtimes validate through onnxruntime, as in
  `search.trial`); else it is validated again on the new runtime at the source's fidelity
  (`val_images`). Validation only: nothing is fine-tuned here, and no `model.pt` is written.

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
`map_source` ("reused" | "revalidated"), `source_map50_95`, `changed` (the deployed policy
or its INT8 expression differs from the source's) and `changes` (what); `reference` names
it when it is one of the new space's reference policies, so a continued search does not
enqueue that policy again. Running the transfer again resumes it: carried trials are skipped.
"""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path

import optuna

from evaluators.accuracy import RUNTIMES
from evaluators.base import Device
from evaluators.registry import get_device
from evaluators.vocabulary import Int8Recipe, UserError
from search.study import STUDY_ATTR, load_study, study_record
from search.transfer_report import TransferReport, transfer_report
from search.transfer_target import SELECTIONS, open_target, select_trials, target_config
from search.trial import TrialContext, remeasure_policy
from search.trial_result import TrialResult
from search.tuner import DONE_STATES, run_search
from spaces.policy import Policy

FALLBACK_PRECISION = "fp32"


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
) -> TransferReport:
    """Carry study `source` over to `device` as study `name` (created, or resumed if it is a transfer
    of `source`), then run `continue_trials` more trials there. The budget is `budget_ms`, or
    `budget_fraction` of the new device's FP32 baseline, or the source's rule (an absolute budget
    stays absolute, a fraction stays a fraction of the new baseline). UserError for an unknown
    study or device, a source without complete trials, or a name taken by another study.
    """
    from search.prepare import prepare

    if select not in SELECTIONS:
        raise UserError(f"unknown selection {select!r}; choose one of {', '.join(SELECTIONS)}.")
    started = time.perf_counter()
    src = load_study(source, storage_url)
    src_record = study_record(src)
    target_device = get_device(device)
    name = name or target_name(source, device)
    carried = select_trials(src, select, top_k)
    if not carried["complete"]:
        raise UserError(f"study {source!r} has no complete trial with fine-tuned weights to transfer.")

    config, existing = target_config(src_record, source, name, device, storage_url, budget_ms, budget_fraction)
    prepared = prepare(config, name=name)
    dst = open_target(name, storage_url, existing, config, prepared, source, src_record)
    record = study_record(dst)
    target = _Target(
        ctx=prepared.context,
        device=target_device,
        source_runtime=_runtime(src_record["fingerprint"]["runtime"]),
        source_recipe=_recipe_of(src_record["device"]),
        objectives=tuple(config.objectives),
        source=source,
        references={p.policy_id: n for n, p in prepared.context.space.reference_policies().items()},
    )
    done = {t.user_attrs.get("transferred_from") for t in dst.get_trials(deepcopy=False)}
    taken = {
        Path(t.user_attrs["artifact"]).parent.name
        for t in dst.get_trials(deepcopy=False)
        if t.user_attrs.get("artifact")
    }
    skipped = list(carried["skipped"])
    for trial in carried["complete"] + carried["infeasible"]:
        if trial.number not in done:
            reason = _carry(trial, target, dst, taken)
            if reason:
                skipped.append((trial.number, reason))
    seconds = record.get("transfer_seconds", 0.0) + time.perf_counter() - started
    dst.set_user_attr(STUDY_ATTR, {**record, "transfer_seconds": round(seconds, 2)})

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


# --- carrying one trial ------------------------------------------------------------------


def _carry(trial, target: _Target, study, taken: set) -> str:
    """Re-measure one source trial on the target and add it to `study`; a reason if it is left out."""
    attrs = trial.user_attrs
    began = datetime.datetime.now()
    policy, changes = map_precisions(Policy.from_dict(attrs["policy"]), target.ctx.space.offered)
    recipe, before = target.device.recipe_for(policy.recipe), policy.recipe or target.source_recipe
    if "int8" in policy.precision.values() and recipe != before:
        changes += (_recipe_change(before, recipe),)
    folder = policy.policy_id if policy.policy_id not in taken else f"{policy.policy_id}-from-{trial.number}"
    measured = remeasure_policy(
        TrialResult.from_dict({f.name: attrs[f.name] for f in fields(TrialResult) if f.name in attrs}),
        policy,
        target.ctx,
        folder=folder,
        rebuild=bool(changes),
        source_runtime=target.source_runtime,
        origin=f"carried over from study {target.source!r} trial {trial.number}",
    )
    if measured.result is None:
        return measured.left_out
    extra = {
        "transferred_from": trial.number,
        "map_source": "reused" if measured.map_reused else "revalidated",
        "source_map50_95": attrs["map50_95"],
        "changed": bool(changes),
        "changes": list(changes),
    }
    if reference := target.references.get(policy.policy_id):
        extra["reference"] = reference  # so a continued search does not enqueue it again
    _add_trial(study, measured.result, extra, target, began)
    taken.add(folder)
    return ""


def _recipe_change(before: Int8Recipe | None, after: Int8Recipe) -> str:
    if before is None:
        return "INT8 recipe: the source device's is unknown here"
    diff = [f"{k} {v} -> {after.to_dict()[k]}" for k, v in before.to_dict().items() if after.to_dict()[k] != v]
    return "INT8 recipe " + ", ".join(diff)


def _add_trial(study, result: TrialResult, extra: dict, target: _Target, began: datetime.datetime) -> None:
    """Add a COMPLETE trial with the parameters the target space's define-by-run gives its policy."""
    params, distributions = target.ctx.space.replay(Policy.from_dict(result.policy))
    trial = optuna.trial.create_trial(
        params=params,
        distributions=distributions,
        values=[getattr(result, o) for o in target.objectives],
        user_attrs={**result.to_dict(), **extra},
        constraints={"latency_budget": result.latency_ms - target.ctx.budget_ms},
    )
    trial.datetime_start, trial.datetime_complete = began, datetime.datetime.now()  # its real cost, for study_seconds
    study.add_trial(trial)
