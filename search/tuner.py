"""Ray Tune runs the trials, Optuna proposes the policies: the multi-objective search.

Objectives: mAP50-95 (maximise) and p50 latency in ms (minimise), optionally model size
in MB (minimise). The latency budget reaches the sampler as an Optuna constraint
(`latency_ms - budget_ms <= 0` is feasible), so over-budget trials are COMPLETE and known
to be infeasible rather than dropped. A trial stopped early is told to Optuna as PRUNED —
never left RUNNING (Ray's OptunaSearch would tell a multi-objective trial without values
as COMPLETE with None and fail, see `_StudySearcher`).

The study lives in the Optuna storage; every trial carries its policy, scores, device
fingerprint and the paths of its weights and artifact as user attributes. A stopped
search resumes from the storage: stale RUNNING trials (a killed process) become FAIL,
finished ones stay, and only the missing number of trials runs.
"""

from __future__ import annotations

import functools
import json
import os
import time
import warnings
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from evaluators.environment import ensure_offline
from evaluators.vocabulary import UserError
from search.study import STUDY_ATTR, StudyConfig, open_storage
from search.trial import TrialContext, TrialResult, evaluate_policy

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
    """Ray/Optuna metric names and modes for the config's objectives."""
    modes = {"map50_95": "max", "latency_ms": "min", "size_mb": "min"}
    return list(config.objectives), [modes[o] for o in config.objectives]


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=5)


def dominated_at(study_name: str, storage_url: str, epoch: int, epochs: int, value: float, latency_ms: float) -> bool:
    """True if a finished feasible trial at equal or lower latency beats `value` by more than the trial can still gain."""
    study = optuna.load_study(study_name=study_name, storage=storage_url)
    best = max(
        (
            t.values[0]
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.values and t.values[1] <= latency_ms and all(c <= 0 for c in t.constraints.values())
        ),
        default=None,
    )
    headroom = EARLY_STOP_MARGIN + EARLY_STOP_GAIN_PER_EPOCH * (epochs - epoch)
    return best is not None and value + headroom < best


def define_by_run(space, trial) -> None:
    """OptunaSearch's space function: sample a policy (its parameters are what Optuna records).

    Reference policies are enqueued as they are, also where the space narrows a unit's range
    (from sensitivity): Optuna's warning that such a fixed value is out of range is expected.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Fixed parameter .* is out of range")
        space.sample(trial)


def run_trial(config: dict, ctx: TrialContext, study_name: str, storage_url: str, early_stop: bool) -> None:
    """The Ray Tune function: one policy from Optuna's parameters, evaluated, reported once."""
    from ray import tune

    ensure_offline()  # a worker process may live on another machine
    policy = ctx.space.sample(optuna.trial.FixedTrial(config))

    def should_stop(epoch: int, value: float, latency_ms: float) -> bool:
        return early_stop and dominated_at(
            study_name, storage_url, epoch, policy.distillation.epochs, value, latency_ms
        )

    result = evaluate_policy(policy, ctx, should_stop=should_stop)
    tune.report(
        {
            "map50_95": result.map50_95,
            "latency_ms": result.latency_ms,
            "size_mb": result.size_mb,
            "status": result.status,
            "result": json.dumps(result.to_dict()),
        }
    )


def _searcher_class():
    from ray.tune.search.optuna import OptunaSearch

    class _StudySearcher(OptunaSearch):
        """OptunaSearch that records squeezefit's results and tells PRUNED / FAIL correctly."""

        def __init__(self, *args, budget_ms: float, **kwargs):
            super().__init__(*args, **kwargs)
            self._budget_ms = budget_ms

        def on_trial_complete(self, trial_id, result=None, error=False):
            ot_trial = self._ot_trials.get(trial_id)
            if ot_trial is None or trial_id in self._completed_trials:
                return
            self._completed_trials.add(trial_id)
            if error or not result or "result" not in result:
                self._ot_study.tell(ot_trial, state=TrialState.FAIL)
                return
            outcome = TrialResult.from_dict(json.loads(result["result"]))
            for key, value in outcome.to_dict().items():
                ot_trial.set_user_attr(key, value)
            ot_trial.set_constraint("latency_budget", outcome.latency_ms - self._budget_ms)
            if outcome.status == "pruned":
                self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
            else:
                self._ot_study.tell(ot_trial, [result[m] for m in self._metric])

        def fail_unfinished(self) -> None:
            for trial_id, ot_trial in self._ot_trials.items():
                if trial_id not in self._completed_trials:
                    self._completed_trials.add(trial_id)
                    self._ot_study.tell(ot_trial, state=TrialState.FAIL)

    return _StudySearcher


def _trial_name(trial) -> str:
    return trial.trial_id


def _progress_callback(total: int, budget_ms: float, start: float):
    from ray.tune import Callback

    class _Progress(Callback):
        """One line per finished trial: n/N, its scores, the best feasible so far, an ETA."""

        def __init__(self):
            self.done, self.best = 0, None

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if "result" not in result:
                return
            self.done += 1
            r = TrialResult.from_dict(json.loads(result["result"]))
            if (
                r.status == "complete"
                and r.latency_ms <= budget_ms
                and (self.best is None or r.map50_95 > self.best.map50_95)
            ):
                self.best = r
            elapsed = time.perf_counter() - start
            eta = elapsed / self.done * max(total - self.done, 0)
            best = (
                f"best feasible mAP50-95 {self.best.map50_95:.4f} @ {self.best.latency_ms:.2f} ms"
                if self.best
                else "no feasible trial yet"
            )
            print(
                f"[trial {self.done}/{total}] {r.status:<10} mAP50-95 {r.map50_95:.4f}  p50 {r.latency_ms:.2f} ms "
                f"(budget {budget_ms:.2f})  | {best} | ETA {eta / 60:.1f} min",
                flush=True,
            )

    return _Progress()


def check_can_start(name: str, storage_url: str, *, resume: bool) -> bool:
    """Whether study `name` exists; UserError if that contradicts `resume` (nothing stored is touched)."""
    exists = name in {s.study_name for s in optuna.get_all_study_summaries(open_storage(storage_url))}
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
    exists = check_can_start(name, storage_url, resume=resume)
    _, modes = metrics(config)
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        load_if_exists=True,
        directions=["maximize" if m == "max" else "minimize" for m in modes],
    )
    if not exists:
        study.set_user_attr(STUDY_ATTR, record)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)  # its process is gone
    present = {t.user_attrs.get("reference") for t in study.get_trials(deepcopy=False) if t.state != TrialState.FAIL}
    for ref_name, params in references.items():
        if ref_name not in present:
            study.enqueue_trial(params, user_attrs={"reference": ref_name}, skip_if_exists=False)
    done = len(study.get_trials(deepcopy=False, states=DONE_STATES))
    return study, done


def new_study_record(config: StudyConfig, prepared) -> dict:
    """What a study stores about itself (STUDY_ATTR): everything `front`, `export` and `transfer` need."""
    ctx: TrialContext = prepared.context
    return {
        "config": config.to_dict(),
        "budget_ms": ctx.budget_ms,
        "baseline_latency_ms": prepared.baseline_latency_ms,
        "fingerprint": prepared.fingerprint,
        "checkpoint": ctx.checkpoint,
        "data_yaml": ctx.data_yaml,
        "imgsz": ctx.imgsz,
        "device": ctx.device,
        "outdir": ctx.outdir,
        "pruning_units": [u.name for u in ctx.space.pruning_units],
        "precision_units": list(ctx.space.precision_units),
        "offered": list(ctx.space.offered),
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def run_search(
    config: StudyConfig, prepared, *, name: str, resume: bool = False, early_stop: bool = True
) -> SearchOutcome:
    """Run (or resume) the study until it has `config.trials` finished trials or its time limit passes."""
    import ray
    from ray import tune

    from evaluators.paths import runs_dir

    ctx: TrialContext = prepared.context
    storage_url = config.storage_url
    record = new_study_record(config, prepared)
    references = {n: ctx.space.to_params(p) for n, p in ctx.space.reference_policies().items()}
    _study, done = prepare_study(config, name, storage_url, record, references, resume=resume)
    remaining = config.trials - done
    start = time.perf_counter()
    if remaining <= 0:
        print(f"study {name!r} already has {done} finished trials (asked for {config.trials}).")
        return SearchOutcome(name, storage_url, ctx.budget_ms, prepared.baseline_latency_ms, 0, 0.0)
    print(
        f"study {name!r}: {remaining} trial(s) to run ({done} done) on {ctx.device}, budget {ctx.budget_ms:.2f} ms "
        f"(baseline FP32 {prepared.baseline_latency_ms:.2f} ms)",
        flush=True,
    )

    metric, mode = metrics(config)
    searcher = _searcher_class()(
        functools.partial(define_by_run, ctx.space),
        metric=metric,
        mode=mode,
        sampler=make_sampler(config.sampler, config.seed),
        study_name=name,
        storage=open_storage(storage_url),
        budget_ms=ctx.budget_ms,
    )
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    cpus = max(os.cpu_count() or 1, config.concurrency)
    ray.init(
        num_cpus=cpus, include_dashboard=False, log_to_driver=True, logging_level="ERROR", ignore_reinit_error=True
    )
    try:
        trainable = tune.with_parameters(
            run_trial, ctx=ctx, study_name=name, storage_url=storage_url, early_stop=early_stop
        )
        # Fine-tuning uses the trial's share of the cores; latency is still timed at the device's own threads.
        trainable = tune.with_resources(trainable, {"cpu": max(1, cpus // config.concurrency)})
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                num_samples=remaining,
                max_concurrent_trials=config.concurrency,
                time_budget_s=config.time_limit_min * 60 if config.time_limit_min else None,
                trial_name_creator=_trial_name,
                trial_dirname_creator=_trial_name,
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=str(runs_dir() / "ray"),
                verbose=0,
                callbacks=[_progress_callback(remaining, ctx.budget_ms, start)],
                failure_config=tune.FailureConfig(max_failures=0),
            ),
        )
        tuner.fit()
    finally:
        ray.shutdown()
        searcher.fail_unfinished()  # interrupted (Ctrl-C): never leave a trial RUNNING
    return SearchOutcome(
        name, storage_url, ctx.budget_ms, prepared.baseline_latency_ms, remaining, time.perf_counter() - start
    )
