"""Ray Tune runs the trials, Optuna proposes the policies: the multi-objective search.

Objectives: mAP50-95 (maximise) and p50 latency in ms (minimise), optionally model size
in MB (minimise). The latency budget reaches the sampler as an Optuna constraint
(`latency_ms - budget_ms <= 0` is feasible), so over-budget trials are COMPLETE and known
to be infeasible rather than dropped. A trial stopped early is told to Optuna as PRUNED —
never left RUNNING (Ray's OptunaSearch would tell a multi-objective trial without values
as COMPLETE with None and fail, see `search.searcher`).

The study lives in the Optuna storage; every trial carries its policy, scores, device
fingerprint and the paths of its weights and artifact as user attributes. A stopped
search resumes from the storage: stale RUNNING trials (a killed process) become FAIL,
finished ones stay, and only the missing number of trials runs. When the trials are done,
the front is re-timed with the baseline in one round-robin session (`search.front_timing`).
"""

from __future__ import annotations

import functools
import json
import os
import time
from dataclasses import dataclass, replace

from optuna.trial import TrialState

from evaluators.environment import ensure_offline
from evaluators.vocabulary import UserError
from search.cluster import check_shared, where_this_runs
from search.repair import Repair, evaluate_or_repair
from search.samplers import make_sampler
from search.scheduler import SCORE, asha_scheduler, front_map_at, no_score, score
from search.searcher import define_by_run, failure_callback, progress_callback, searcher_class, trial_policy
from search.study import OBJECTIVES, StudyConfig, create_study, load_study, open_storage, study_exists
from search.trial import TrialContext
from search.trial_result import TrialResult

# Optimistic mAP gain a trial may still make per remaining fine-tune epoch, and the margin
# by which a PyTorch val mAP may exceed the artifact's; a trial below the best known mAP at
# equal or lower latency by more than that cannot reach the front.
EARLY_STOP_GAIN_PER_EPOCH = 0.03
EARLY_STOP_MARGIN = 0.02
DONE_STATES = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass(frozen=True)
class SearchOutcome:
    study_name: str
    storage_url: str
    budget_ms: float
    baseline_latency_ms: float
    trials_run: int
    seconds: float


def metrics(config: StudyConfig) -> tuple[list[str], list[str]]:
    """Ray Tune metric names and modes ("max" / "min") for the config's objectives."""
    return list(config.objectives), ["max" if OBJECTIVES[o] == "maximize" else "min" for o in config.objectives]


def dominated_at(study_name: str, storage_url: str, epoch: int, epochs: int, value: float, latency_ms: float) -> bool:
    """True if a finished feasible trial at equal or lower latency beats `value` by more than the trial can still gain."""
    best = front_map_at(study_name, storage_url, latency_ms)
    headroom = EARLY_STOP_MARGIN + EARLY_STOP_GAIN_PER_EPOCH * (epochs - epoch)
    return best is not None and value + headroom < best


def run_trial(
    config: dict,
    ctx: TrialContext,
    study_name: str,
    storage_url: str,
    early_stop: bool,
    scheduled: bool = False,
    repair: Repair | None = None,
) -> None:
    """The Ray Tune function: one policy from Optuna's parameters, evaluated, its scored result reported.

    scheduled: a scheduler (`search.scheduler`) ranks the trial after every fine-tune epoch: each epoch is
    reported too, with the result the trial stands as (PRUNED) should the scheduler stop it there.
    repair: a policy over the budget (not one of `repair.keep`) is repaired (`search.repair`) and the trial
    scores the repaired policy, the proposal recorded in `repaired_from`; None: it is scored as infeasible.
    """
    from ray import tune

    ensure_offline()  # a worker process may live on another machine
    check_shared(ctx.checkpoint, ctx.data_yaml, ctx.outdir)
    policy = trial_policy(ctx.space, config)

    def should_stop(epoch: int, value: float, latency_ms: float) -> bool:
        return early_stop and dominated_at(
            study_name, storage_url, epoch, policy.distillation.epochs, value, latency_ms
        )

    def report_epoch(epoch: int, value: float, interim: TrialResult) -> None:
        interim = replace(interim, trained_on=where_this_runs())
        rank = score(value, front_map_at(study_name, storage_url, interim.latency_ms))
        tune.report({**_metrics(interim), SCORE: rank, "interim": json.dumps(interim.to_dict())})

    result = evaluate_or_repair(
        policy, ctx, repair, should_stop=should_stop, report_epoch=report_epoch if scheduled else None
    )
    result = replace(result, trained_on=where_this_runs())
    tune.report({**_metrics(result), SCORE: no_score(), "result": json.dumps(result.to_dict())})


def _metrics(result: TrialResult) -> dict:
    return {
        "map50_95": result.map50_95,
        "latency_ms": result.latency_ms,
        "size_mb": result.size_mb,
        "status": result.status,
    }


def _time_front_together(name: str, storage_url: str) -> None:
    """Re-time the finished study's front with the baseline in one session (`search.front_timing`)."""
    from search.front import pareto_front, trials_table
    from search.front_timing import time_front

    study = load_study(name, storage_url)
    if not pareto_front(trials_table(study)).empty:
        session = time_front(study)
        print(f"front re-timed together with the baseline ({session['rounds']} rounds)", flush=True)


def _trial_name(trial) -> str:
    return trial.trial_id


def check_can_start(name: str, storage_url: str, *, resume: bool) -> bool:
    """Whether study `name` exists; UserError if that contradicts `resume` (nothing stored is touched)."""
    exists = study_exists(name, storage_url)
    if exists and not resume:
        raise UserError(
            f"study {name!r} already exists in {storage_url}; pass --resume to continue it or --study to name a new one."
        )
    if resume and not exists:
        raise UserError(f"there is no study {name!r} in {storage_url} to resume.")
    return exists


def prepare_study(config: StudyConfig, name: str, storage_url: str, record: dict, references: dict, *, resume: bool):
    """Create (or, with `resume`, reopen) the Optuna study; enqueue missing reference policies.

    Returns (study, trials already done). An existing study without `resume` is a
    UserError, so nothing stored is overwritten.
    """
    storage = open_storage(storage_url)
    if check_can_start(name, storage_url, resume=resume):
        study = load_study(name, storage_url)
    else:
        study = create_study(name, storage_url, config.objectives, record)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)  # its process is gone
    present = {t.user_attrs.get("reference") for t in study.get_trials(deepcopy=False) if t.state != TrialState.FAIL}
    for ref_name, params in references.items():
        if ref_name not in present:
            study.enqueue_trial(params, user_attrs={"reference": ref_name}, skip_if_exists=False)
    done = len(study.get_trials(deepcopy=False, states=DONE_STATES))
    return study, done


def run_search(
    config: StudyConfig, prepared, *, name: str, resume: bool = False, early_stop: bool = True
) -> SearchOutcome:
    """Run (or resume) the study until it has `config.trials` finished trials or its time limit passes."""
    import ray
    from ray import tune

    from evaluators.paths import runs_dir

    ctx: TrialContext = prepared.context
    storage_url = config.storage_url
    record = prepared.to_record(config)
    starts = {n: s.policy for n, s in prepared.starts.items()}  # guided starts (`search.guided`)
    named = {**ctx.space.reference_policies(), **starts}
    references = {n: ctx.space.to_params(p) for n, p in named.items()}
    repair = (
        Repair(prepared.costs, frozenset(p.policy_id for p in named.values()))
        if config.repair and prepared.costs is not None
        else None
    )
    _study, done = prepare_study(config, name, storage_url, record, references, resume=resume)
    remaining = config.trials - done
    start = time.perf_counter()
    if remaining <= 0:
        print(f"study {name!r} already has {done} finished trials (asked for {config.trials}).")
        return SearchOutcome(name, storage_url, ctx.budget_ms, prepared.baseline_latency_ms, 0, 0.0)
    dims = ctx.space.dimensions()
    print(
        f"study {name!r}: {remaining} trial(s) to run ({done} done) on {ctx.device}, budget {ctx.budget_ms:.2f} ms "
        f"(baseline FP32 {prepared.baseline_latency_ms:.2f} ms); {config.space} space of {dims['total']} dimensions "
        f"({dims['prune']} ratios, {dims['precision']} precisions"
        + (f", {dims['depth']} depths" if dims.get("depth") else "")
        + f", {dims['distill']} fine-tune"
        + (f", {dims['model']} activation" if dims.get("model") else "")
        + ")"
        + ("; a sampled policy over the budget is repaired" if repair else ""),
        flush=True,
    )

    metric, mode = metrics(config)
    searcher = searcher_class()(
        functools.partial(define_by_run, ctx.space),
        metric=metric,
        mode=mode,
        sampler=make_sampler(config.sampler, config.seed),
        study_name=name,
        storage=open_storage(storage_url),
        budget_ms=ctx.budget_ms,
        time_limit_s=config.time_limit_min * 60 if config.time_limit_min else None,
    )
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    on_cluster = ray.is_initialized()  # connected by `search.cluster.connect`: trials go wherever Ray has a CPU
    cpus = max(os.cpu_count() or 1, config.concurrency)
    if not on_cluster:
        ray.init(
            num_cpus=cpus, include_dashboard=False, log_to_driver=True, logging_level="ERROR", ignore_reinit_error=True
        )
    failures = failure_callback(searcher)
    try:
        scheduled = config.scheduler == "asha" and ctx.space.max_epochs > 1
        trainable = tune.with_parameters(
            run_trial,
            ctx=ctx,
            study_name=name,
            storage_url=storage_url,
            early_stop=early_stop,
            scheduled=scheduled,
            repair=repair,
        )
        # Fine-tuning uses the trial's share of the cores (one CPU on a cluster); latency is timed at the device's
        # own threads, on the device's node.
        trainable = tune.with_resources(trainable, {"cpu": 1 if on_cluster else max(1, cpus // config.concurrency)})
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                num_samples=remaining,
                max_concurrent_trials=config.concurrency,
                trial_name_creator=_trial_name,
                trial_dirname_creator=_trial_name,
                reuse_actors=True,
                scheduler=asha_scheduler(ctx.space.max_epochs, config.asha_reduction_factor) if scheduled else None,
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=str(runs_dir() / "ray"),
                verbose=0,
                callbacks=[failures, progress_callback(remaining, ctx.budget_ms, start)],
                stop=failures,
                failure_config=tune.FailureConfig(max_failures=config.retries),
            ),
        )
        tuner.fit()
    finally:
        if not on_cluster:
            ray.shutdown()  # a cluster connection is the caller's (`search.cluster.connect`)
        searcher.fail_unfinished()  # interrupted (Ctrl-C): never leave a trial RUNNING
    if searcher.timed_out:
        print(
            f"[search] the time limit ({config.time_limit_min:g} min) passed: no trial started after it, the running "
            "ones finished; --resume runs the rest.",
            flush=True,
        )
    if failures.device_lost:
        raise UserError(
            f"the search stopped, its device is gone ({failures.device_lost.rstrip('.')}); the study keeps its "
            "finished trials and --resume continues it once the device is back."
        )
    _time_front_together(name, storage_url)
    return SearchOutcome(
        name, storage_url, ctx.budget_ms, prepared.baseline_latency_ms, remaining, time.perf_counter() - start
    )
