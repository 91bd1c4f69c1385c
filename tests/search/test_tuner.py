"""The searcher's bookkeeping with a real OptunaSearch and Optuna study: PRUNED, FAIL (with its reason, also
through a real Ray Tune run), constraints."""

import functools
import json
import os

import optuna
import pytest
from optuna.trial import TrialState

from search.scheduler import SCORE, asha_scheduler, no_score, score
from search.searcher import define_by_run, failure_callback, searcher_class
from search.trial_result import TrialResult
from search.tuner import dominated_at
from spaces.pruning import PruningUnit
from spaces.space import SearchSpace

SPACE = SearchSpace(
    pruning_units=(
        PruningUnit("model.2", 32, "backbone", ("model.2.cv1",)),
        PruningUnit("model.4", 64, "backbone", ("model.4.cv1",)),
    ),
    precision_units=("model.2", "model.4"),
    offered=("int8", "fp32"),
    max_epochs=2,
)


def _result(status: str, map50_95: float, latency_ms: float) -> dict:
    r = TrialResult(status, "abc", {}, map50_95, 0.0, latency_ms, latency_ms, 1.0, 1, 1, {"runtime": "onnxruntime"})
    return {
        "map50_95": map50_95,
        "latency_ms": latency_ms,
        "size_mb": 1.0,
        "status": status,
        "result": json.dumps(r.to_dict()),
    }


def test_searcher_tells_pruned_fail_and_constraints():
    searcher = searcher_class()(
        functools.partial(define_by_run, SPACE),
        metric=["map50_95", "latency_ms"],
        mode=["max", "min"],
        sampler=optuna.samplers.RandomSampler(seed=0),
        budget_ms=1.0,
    )
    configs = {tid: searcher.suggest(tid) for tid in ("a", "b", "c", "d", "e")}
    assert all(any(k.startswith("prune.") for k in c) for c in configs.values())
    searcher.on_trial_complete("a", result=_result("pruned", 0.1, 0.5))
    searcher.on_trial_complete("b", result=_result("infeasible", 0.3, 2.0))
    searcher.on_trial_complete("c", result=_result("complete", 0.2, 0.8))
    searcher.on_trial_complete("d", error=True)
    assert searcher._ot_study.trials[3].state == TrialState.RUNNING  # held for its reason
    searcher.fail("d", "ValueError: no such layer", "node-7")
    searcher.fail_unfinished()  # "e" was interrupted
    study = searcher._ot_study
    a, b, c, d, e = study.trials
    assert a.state == TrialState.PRUNED and a.values is None and a.user_attrs["status"] == "pruned"
    assert b.state == TrialState.COMPLETE and b.values == [0.3, 2.0] and b.constraints["latency_budget"] == 1.0
    assert c.state == TrialState.COMPLETE and c.constraints["latency_budget"] == pytest.approx(0.8 - 1.0)
    assert (d.state, e.state) == (TrialState.FAIL, TrialState.FAIL)
    assert d.user_attrs == {"status": "failed", "error": "ValueError: no such layer", "trained_on": {"host": "node-7"}}
    assert [t.number for t in study.best_trials] == [c.number]  # the feasible Pareto set excludes b


def _crashes(config):
    raise ValueError(f"unit {sorted(config)[0]} has no such layer\nsecond line")


def _loses_the_device(config):
    from evaluators.vocabulary import DeviceUnavailable

    raise DeviceUnavailable("no node of the Ray cluster holds 'device:ort-cpu'; start one.")


def _takes_a_while(config):
    import time

    from ray import tune

    time.sleep(1.5)
    tune.report(_result("complete", 0.3, 0.8))


def _tune(trainable, searcher, storage, samples: int, retries: int = 0, scheduler=None):
    """A real Ray Tune run of `trainable` with `searcher` and its failure callback; the callback."""
    import ray
    from ray import tune

    failures = failure_callback(searcher)
    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR")
    try:
        tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher, num_samples=samples, max_concurrent_trials=1, scheduler=scheduler
            ),
            run_config=tune.RunConfig(
                storage_path=str(storage),
                verbose=0,
                callbacks=[failures],
                stop=failures,
                failure_config=tune.FailureConfig(max_failures=retries),
            ),
        ).fit()
    finally:
        ray.shutdown()
        searcher.fail_unfinished()
    return failures


def _searcher(time_limit_s=None):
    return searcher_class()(
        functools.partial(define_by_run, SPACE),
        metric=["map50_95", "latency_ms"],
        mode=["max", "min"],
        sampler=optuna.samplers.RandomSampler(seed=0),
        budget_ms=1.0,
        time_limit_s=time_limit_s,
    )


def test_the_time_limit_starts_no_trial_after_it_and_lets_the_running_one_finish(tmp_path):
    # Each trial takes 1.5 s, the limit is 1 s: the first runs past it and is COMPLETE, none starts after it.
    searcher = _searcher(time_limit_s=1.0)
    _tune(_takes_a_while, searcher, tmp_path, samples=4)
    trials = searcher._ot_study.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] and trials[0].values == [0.3, 0.8]
    assert searcher.timed_out
    unlimited = _searcher()
    _tune(_takes_a_while, unlimited, tmp_path / "unlimited", samples=2)
    assert len(unlimited._ot_study.trials) == 2 and not unlimited.timed_out


def test_a_trial_that_raises_is_fail_with_its_reason_through_ray_tune(tmp_path):
    searcher = _searcher()
    failures = _tune(_crashes, searcher, tmp_path, samples=2)
    trials = searcher._ot_study.trials
    assert len(trials) == 2 and all(t.state == TrialState.FAIL for t in trials)
    for t in trials:
        assert t.user_attrs["status"] == "failed" and t.user_attrs["trained_on"]["host"]
        assert t.user_attrs["error"].startswith("ValueError: unit ") and t.user_attrs["error"].endswith("no such layer")
    assert failures.device_lost is None  # an ordinary crash does not stop the search


def _dies_once(config, marker):
    from ray import tune

    if not marker.exists():
        marker.touch()
        os._exit(1)  # the trial's process dies, as on a node that went away
    tune.report(_result("complete", 0.3, 0.8))


def test_a_retried_trial_that_then_finishes_is_complete(tmp_path):
    from ray import tune

    searcher = _searcher()
    failures = _tune(tune.with_parameters(_dies_once, marker=tmp_path / "died"), searcher, tmp_path, 1, retries=1)
    (trial,) = searcher._ot_study.trials
    assert (tmp_path / "died").exists() and failures.device_lost is None
    assert trial.state == TrialState.COMPLETE and trial.values == [0.3, 0.8] and "error" not in trial.user_attrs


def test_a_lost_device_stops_the_search_after_the_trial_that_saw_it(tmp_path):
    searcher = _searcher()
    failures = _tune(_loses_the_device, searcher, tmp_path, samples=6)
    trials = searcher._ot_study.trials
    assert failures.device_lost == "no node of the Ray cluster holds 'device:ort-cpu'; start one."
    assert 1 <= len(trials) < 6 and all(t.state == TrialState.FAIL for t in trials)
    assert trials[0].user_attrs["error"].startswith("DeviceUnavailable: no node of the Ray cluster")


def test_dominated_rule(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    study = optuna.create_study(study_name="s", storage=url, directions=["maximize", "minimize"])
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    for values, violation in (([0.50, 10.0], -1.0), ([0.90, 5.0], 2.0)):  # feasible; infeasible (ignored)
        study.add_trial(
            optuna.trial.create_trial(
                params={"x": 0.5},
                distributions=dist,
                values=values,
                system_attrs={"constraints:latency_budget": violation},
            )
        )
    # a trial at 12 ms, last epoch: dominated only if the feasible 10 ms trial beats it by more than the margin
    assert dominated_at("s", url, epoch=3, epochs=3, value=0.40, latency_ms=12.0)
    assert not dominated_at("s", url, epoch=3, epochs=3, value=0.49, latency_ms=12.0)
    # epochs still to go leave headroom
    assert dominated_at("s", url, epoch=3, epochs=3, value=0.45, latency_ms=12.0)
    assert not dominated_at("s", url, epoch=1, epochs=3, value=0.45, latency_ms=12.0)
    # faster than every feasible trial: nothing dominates it (the infeasible 5 ms trial does not count)
    assert not dominated_at("s", url, epoch=3, epochs=3, value=0.01, latency_ms=6.0)


def test_a_reference_outside_a_narrowed_range_replays_quietly_as_itself():
    """The trial replays its parameters; a reference's ratio beyond a sensitivity-narrowed range is expected."""
    import warnings

    from search.searcher import trial_policy

    space = SearchSpace(
        pruning_units=SPACE.pruning_units,
        precision_units=SPACE.precision_units,
        offered=SPACE.offered,
        ratio_ranges={"model.4": (0.0, 0.1, 0.05)},
        max_epochs=2,
    )
    reference = space.reference_policies()["prune-0.5-int8"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        policy = trial_policy(space, space.to_params(reference))
    assert policy == reference
    assert policy.pruning["model.4"] == 0.5


def _fine_tunes(config, seen, scores):
    """Like `search.tuner.run_trial` with a scheduler: one report after epoch 1 of 2 (the result it would stand as),
    then the scored result; the n-th trial's val mAP is scores[n]; `seen` records what each trial got to do."""
    from ray import tune

    n = len(list(seen.glob("started-*")))
    (seen / f"started-{n}").touch()
    value = scores[n]
    interim = TrialResult("pruned", "abc", {}, value, 0.0, 0.8, 0.8, 1.0, 1, 1, {}, reason="stopped after epoch 1")
    metrics = {"map50_95": value, "latency_ms": 0.8, "size_mb": 1.0, "status": "pruned"}
    tune.report({**metrics, SCORE: score(value, None), "interim": json.dumps(interim.to_dict())})
    (seen / f"went-on-{n}").touch()  # a stopped trial never gets here: the report above does not return
    tune.report({**_result("complete", value, 0.8), SCORE: no_score()})


def test_asha_stops_the_less_promising_after_an_epoch_and_they_are_pruned(tmp_path):
    from ray import tune

    seen = tmp_path / "seen"
    seen.mkdir()
    searcher = _searcher()
    scheduler = asha_scheduler(max_epochs=2, reduction_factor=3)
    trainable = tune.with_parameters(_fine_tunes, seen=seen, scores=[0.5, 0.1, 0.6, 0.05])
    _tune(trainable, searcher, tmp_path / "ray", samples=4, scheduler=scheduler)
    trials = searcher._ot_study.trials
    states = [t.state for t in trials]
    # Rung 1 (after epoch 1) keeps a trial in the top third of the scores recorded there so far.
    assert states == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.COMPLETE, TrialState.PRUNED]
    assert sorted(p.name for p in seen.glob("went-on-*")) == ["went-on-0", "went-on-2"]
    for t in (trials[1], trials[3]):
        assert t.values is None and t.user_attrs["status"] == "pruned" and t.user_attrs["reason"]
    assert trials[2].values == [0.6, 0.8]
