"""The Ray Tune side of a study: the Optuna searcher that records squeezefit's results, and the progress line.

Ray's `OptunaSearch` asks Optuna for each trial's parameters and tells it the result. It
would tell a multi-objective trial stopped early (no values) as COMPLETE with None and
fail; `searcher_class()`'s searcher tells it PRUNED instead, a crashed trial FAIL, and
records on every Optuna trial the `TrialResult` (as user attributes) and the latency
constraint `latency_budget` = p50 - budget (feasible when <= 0). Ray is imported only
when these are built.
"""

from __future__ import annotations

import json
import time
import warnings

from optuna.trial import TrialState

from search.trial_result import TrialResult


def define_by_run(space, trial) -> None:
    """OptunaSearch's space function: sample a policy (its parameters are what Optuna records).

    Reference policies are enqueued as they are, also where the space narrows a unit's range
    (from sensitivity): Optuna's warning that such a fixed value is out of range is expected.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Fixed parameter .* is out of range")
        space.sample(trial)


def searcher_class():
    """The OptunaSearch subclass; construct it with OptunaSearch's arguments plus `budget_ms` (p50 budget, ms)."""
    from ray.tune.search.optuna import OptunaSearch

    class StudySearcher(OptunaSearch):
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
            """Tell every trial still running as FAIL (the search was interrupted): none stays RUNNING."""
            for trial_id, ot_trial in self._ot_trials.items():
                if trial_id not in self._completed_trials:
                    self._completed_trials.add(trial_id)
                    self._ot_study.tell(ot_trial, state=TrialState.FAIL)

    return StudySearcher


def progress_callback(total: int, budget_ms: float, start: float):
    """A Ray Tune callback printing one line per finished trial: n/`total`, its scores, the best feasible, an ETA.

    start: `time.perf_counter()` when the search began (the ETA extrapolates from it).
    """
    from ray.tune import Callback

    class Progress(Callback):
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

    return Progress()
