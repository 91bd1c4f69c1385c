"""The searcher's bookkeeping with a real OptunaSearch and Optuna study: PRUNED, FAIL, constraints."""

import functools
import json

import optuna
import pytest
from optuna.trial import TrialState

from search.searcher import define_by_run, searcher_class
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
    searcher.fail_unfinished()  # "e" was interrupted
    study = searcher._ot_study
    a, b, c, d, e = study.trials
    assert a.state == TrialState.PRUNED and a.values is None and a.user_attrs["status"] == "pruned"
    assert b.state == TrialState.COMPLETE and b.values == [0.3, 2.0] and b.constraints["latency_budget"] == 1.0
    assert c.state == TrialState.COMPLETE and c.constraints["latency_budget"] == pytest.approx(0.8 - 1.0)
    assert (d.state, e.state) == (TrialState.FAIL, TrialState.FAIL)
    assert [t.number for t in study.best_trials] == [c.number]  # the feasible Pareto set excludes b


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
