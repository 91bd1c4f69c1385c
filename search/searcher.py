"""The Ray Tune side of a study: the Optuna searcher that records squeezefit's results, and the progress line.

Ray's `OptunaSearch` asks Optuna for each trial's parameters and tells it the result. It
would tell a multi-objective trial stopped early (no values) as COMPLETE with None and
fail; `searcher_class()`'s searcher tells it PRUNED instead, a crashed trial FAIL, and
records on every Optuna trial the `TrialResult` (as user attributes) and the latency
constraint `latency_budget` = p50 - budget (feasible when <= 0). A crashed trial (its code
raised, or the node running it died) is told FAIL with user attributes `status` "failed",
`error` (one line: why) and `trained_on` (the host it ran on): Ray hands the searcher no
error, so the searcher holds the trial until `failure_callback`, which Ray calls right
after with the trial, tells it. A study's time limit is kept here too, as Optuna's `timeout` keeps
it: once it has passed no trial starts, and the trials running finish and are told as usual (Ray
Tune's own `time_budget_s` would stop them mid-fine-tune, leaving FAIL trials). Ray is imported
only when these are built.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
import warnings

from optuna.trial import TrialState

from search.trial_result import TrialResult


def define_by_run(space, trial) -> None:
    """OptunaSearch's space function: sample a policy (its parameters are what Optuna records).

    Reference policies are enqueued as they are, also where the space narrows a unit's range
    (from sensitivity): Optuna's warning that such a fixed value is out of range is expected.
    """
    with _fixed_values_out_of_range():
        space.sample(trial)


def trial_policy(space, params: dict):
    """The policy a trial's parameters (as Ray hands them to the trial) stand for; a reference's
    values outside a narrowed range are expected here too."""
    import optuna

    with _fixed_values_out_of_range():
        return space.sample(optuna.trial.FixedTrial(params))


@contextlib.contextmanager
def _fixed_values_out_of_range():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Fixed parameter .* is out of range")
        warnings.filterwarnings("ignore", message="The value .* is out of the range of the distribution")
        yield


def searcher_class():
    """The OptunaSearch subclass; construct it with OptunaSearch's arguments plus `budget_ms` (p50 budget, ms)
    and `time_limit_s` (seconds from its first trial after which it starts no more; None: no limit)."""
    from ray.tune.search import Searcher
    from ray.tune.search.optuna import OptunaSearch

    class StudySearcher(OptunaSearch):
        """OptunaSearch that records squeezefit's results and tells PRUNED / FAIL correctly."""

        def __init__(self, *args, budget_ms: float, time_limit_s: float | None = None, **kwargs):
            super().__init__(*args, **kwargs)
            self._budget_ms = budget_ms
            self._failed: set = set()
            self._time_limit_s = time_limit_s
            self._first_started: float | None = None
            self.timed_out = False  # the time limit stopped the search before its trial count

        def suggest(self, trial_id):
            now = time.monotonic()
            self._first_started = self._first_started or now
            if self._time_limit_s is not None and now - self._first_started >= self._time_limit_s:
                self.timed_out = True
                return Searcher.FINISHED
            return super().suggest(trial_id)

        def on_trial_complete(self, trial_id, result=None, error=False):
            ot_trial = self._ot_trials.get(trial_id)
            if ot_trial is None or trial_id in self._completed_trials:
                return
            if error:
                self._failed.add(trial_id)  # told by `fail` with the reason, or at the end by `fail_unfinished`
                return
            self._completed_trials.add(trial_id)
            outcome = final_or_interim(result)
            if outcome is None:
                self._ot_study.tell(ot_trial, state=TrialState.FAIL)
                return
            for key, value in outcome.to_dict().items():
                ot_trial.set_user_attr(key, value)
            ot_trial.set_constraint("latency_budget", outcome.latency_ms - self._budget_ms)
            if outcome.status == "pruned":
                self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
            else:
                self._ot_study.tell(ot_trial, [result[m] for m in self._metric])

        def fail(self, trial_id, reason: str, host: str | None) -> None:
            """Tell the crashed trial `trial_id` FAIL, recording why (`reason`, one line) and where (`host`)."""
            ot_trial = self._ot_trials.get(trial_id)
            if ot_trial is None or trial_id in self._completed_trials:
                return
            self._completed_trials.add(trial_id)
            ot_trial.set_user_attr("status", "failed")
            ot_trial.set_user_attr("error", reason)
            if host:
                ot_trial.set_user_attr("trained_on", {"host": host})
            self._ot_study.tell(ot_trial, state=TrialState.FAIL)

        def fail_unfinished(self) -> None:
            """Tell every trial still running as FAIL (the search was interrupted): none stays RUNNING."""
            for trial_id, ot_trial in self._ot_trials.items():
                if trial_id not in self._completed_trials:
                    self._completed_trials.add(trial_id)
                    self._ot_study.tell(ot_trial, state=TrialState.FAIL)

    return StudySearcher


def final_or_interim(result: dict | None) -> TrialResult | None:
    """The trial's result from its last report: the scored one ("result"), or, for a trial a scheduler stopped
    after an epoch, the PRUNED result it stood as then ("interim"); None when the report has neither."""
    for key in ("result", "interim"):
        if result and key in result:
            return TrialResult.from_dict(json.loads(result[key]))
    return None


def lost_device(error: BaseException | None) -> bool:
    """Whether a trial crashed because its device can no longer be reached (`DeviceUnavailable`)."""
    from ray.exceptions import RayTaskError

    from evaluators.vocabulary import DeviceUnavailable

    if isinstance(error, RayTaskError):
        error = getattr(error, "cause", None) or error.as_instanceof_cause()
    return isinstance(error, DeviceUnavailable)


def failure_reason(error: BaseException | None) -> str:
    """One line saying why a trial crashed, from the error Ray recorded for it (None: unknown)."""
    from ray.exceptions import RayActorError, RayTaskError

    if error is None:
        return "the trial failed and Ray recorded no error"
    if isinstance(error, RayTaskError):
        cause = error.as_instanceof_cause()
        if not isinstance(cause, RayActorError):
            inner = getattr(error, "cause", None) or cause
            return f"{type(inner).__name__}: {_first_line(str(inner))}"
        error = cause
    if isinstance(error, RayActorError):
        return f"the Ray worker running the trial died ({_first_line(str(error)).rstrip('.')})"
    return f"{type(error).__name__}: {_first_line(str(error))}"


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else "no message"


def _node_ip(error: BaseException | None) -> str | None:
    """The IP address of the node a Ray error happened on, as its message names it ("ip=..." / "ip: ...")."""
    found = re.search(r"\bip[=:]\s*([0-9A-Fa-f.:]*[0-9A-Fa-f])", str(error)) if error is not None else None
    return found.group(1) if found else None


def _recorded_error(trial) -> BaseException | None:
    """The error Ray recorded for a crashed `trial`, from the driver's copy (the storage's may not be synced yet)."""
    import ray.cloudpickle as cloudpickle

    path = trial.pickled_error_file
    try:
        with open(path, "rb") as file:
            return cloudpickle.load(file)
    except Exception:  # none written (the error was not Ray's) or unreadable: the trial fails without its reason
        return None


def failure_callback(searcher):
    """A Ray Tune callback telling `searcher` (a `searcher_class()` instance) each crashed trial with its reason;
    also a stopper: once a trial lost the device, `device_lost` holds why and no new trial starts."""
    from ray.tune import Callback, Stopper

    class Failures(Callback, Stopper):
        device_lost: str | None = None

        def on_trial_error(self, iteration, trials, trial, **info):
            error = _recorded_error(trial)
            reason = failure_reason(error)
            print(f"[trial failed] {reason}", flush=True)
            # where it ran: Ray knows the host once a trial reported; Ray's error names its node's IP
            where = trial.temporary_state.location.hostname or _node_ip(error)
            searcher.fail(trial.trial_id, reason, where)
            if lost_device(error) and self.device_lost is None:
                self.device_lost = reason.split(": ", 1)[-1]

        def __call__(self, trial_id, result) -> bool:
            return False

        def stop_all(self) -> bool:
            return self.device_lost is not None

    return Failures()


def progress_callback(total: int, budget_ms: float, start: float):
    """A Ray Tune callback printing one line per finished trial: n/`total`, its scores, the best feasible, an ETA.

    start: `time.perf_counter()` when the search began (the ETA extrapolates from it). A trial a scheduler
    stopped after an epoch is a line too, as "pruned".
    """
    from ray.tune import Callback

    class Progress(Callback):
        def __init__(self):
            self.done, self.best = 0, None

        def on_trial_error(self, iteration, trials, trial, **info):
            self.done += 1  # `failure_callback` says why

        def on_trial_complete(self, iteration, trials, trial, **info):
            r = final_or_interim(trial.last_result)
            if r is None:
                return
            self.done += 1
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
            repaired = f" (repaired from {r.repaired_from['latency_ms']:.2f} ms)" if r.repaired_from else ""
            print(
                f"[trial {self.done}/{total}] {r.status:<10} mAP50-95 {r.map50_95:.4f}  p50 {r.latency_ms:.2f} ms "
                f"(budget {budget_ms:.2f}){repaired}  | {best} | ETA {eta / 60:.1f} min",
                flush=True,
            )

    return Progress()
