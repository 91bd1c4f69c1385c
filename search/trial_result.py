"""What one trial measured, how it is kept, and how long each step took.

A `TrialResult` is stored twice: as `<outdir>/<policy_id>/result.json`, where a later trial
of the same policy in the same study finds it and reuses it, and as the Optuna trial's user
attributes (`to_dict()`), which `front`, `export` and `transfer` read. `save_result` writes
the file atomically, so a process killed mid-write never leaves a result that a later
search fails to parse.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class TrialResult:
    """What one trial measured.

    status: "complete" (fine-tuned and scored), "infeasible" (over the
    budget: the untuned screen artifact's scores) or "pruned" (fine-tune stopped early).
    mAPs in [0, 1] on the deployed artifact; latency in ms (p50 / p90 on the study's scale:
    the ratio to the study's reference artifact, timed side by side, times its L0; see
    `search.trial.time_artifact`); timing: that paired measurement (ratio with its 95%
    interval, raw p50s, host drift, runs); size in MB; macs per image and params as plain
    counts; seconds: wall seconds per step. trained_on: where the trial ran (host; node: the Ray
    node id), set by the Ray trial function; where its latency was timed is `timing["measured_on"]`.
    repaired_from: for a sampled policy over the budget that the trial repaired (`search.repair`), the proposal's
    policy_id and p50 latency_ms and the repair's timed rounds; empty otherwise.
    """

    status: str
    policy_id: str
    policy: dict
    map50_95: float
    map50: float
    latency_ms: float
    latency_p90_ms: float
    size_mb: float
    macs: int
    params: int
    fingerprint: dict
    reason: str = ""
    epoch_maps: tuple[float, ...] = ()
    artifact: str = ""
    weights: str = ""
    seconds: dict = field(default_factory=dict)
    timing: dict = field(default_factory=dict)
    trained_on: dict = field(default_factory=dict)
    repaired_from: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["epoch_maps"] = list(self.epoch_maps)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> TrialResult:
        return cls(**{**data, "epoch_maps": tuple(data.get("epoch_maps", ()))})


def save_result(result: TrialResult, path: Path) -> TrialResult:
    """Write `result` to `path` as JSON, atomically (a temporary file renamed over it); return it."""
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(result.to_dict(), indent=1))
    tmp.replace(path)
    return result


def load_result(path: Path) -> TrialResult | None:
    """The result stored at `path` by `save_result`, or None when there is none (not evaluated yet)."""
    path = Path(path)
    return TrialResult.from_dict(json.loads(path.read_text())) if path.is_file() else None


def add_measured_trial(
    study, params: dict, distributions: dict, result: TrialResult, extra: dict, *, objectives, budget_ms: float
) -> int:
    """Store `result` in `study` as a COMPLETE Optuna trial (values in `objectives` order, the latency-budget
    constraint, user attributes `result.to_dict()` plus `extra`), dated so that its duration is the sum of its
    steps' seconds (its real cost); its trial number."""
    import datetime

    import optuna

    trial = optuna.trial.create_trial(
        params=params,
        distributions=distributions,
        values=[getattr(result, o) for o in objectives],
        user_attrs={**result.to_dict(), **extra},
        constraints={"latency_budget": result.latency_ms - budget_ms},
    )
    trial.datetime_complete = datetime.datetime.now()
    trial.datetime_start = trial.datetime_complete - datetime.timedelta(seconds=sum(result.seconds.values()))
    study.add_trial(trial)
    return study.get_trials(deepcopy=False)[-1].number


def size_mb(path: Path) -> float:
    """The file's size in MB (10^6 bytes), to 0.001."""
    return round(Path(path).stat().st_size / 1e6, 3)


class Stopwatch:
    """Wall seconds per step, to 0.01 s: `lap(step)` records the time since the last lap (or the start)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._clock = time.perf_counter()

    def lap(self, step: str) -> None:
        now = time.perf_counter()
        self.seconds[step] = round(now - self._clock, 2)
        self._clock = now
