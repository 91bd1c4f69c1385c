"""Multi-fidelity fine-tuning: Ray Tune's ASHA scheduler over a trial's fine-tune epochs.

With `scheduler: asha` a trial within the budget reports after every fine-tune epoch
(training iteration = epoch; its final, scored result is one iteration later), and Ray
Tune's `ASHAScheduler` decides at the rungs 1, rf, rf², ... epochs (rf =
`asha_reduction_factor`, up to `finetune_epochs`) whether it continues: a trial goes on
only if its score is in the top 1/rf of the scores recorded at that rung so far. Many
policies get a short fine-tune, the promising ones get the rest.

The score (`SCORE`) is one number, as the scheduler needs: the trial's validation mAP50-95
after the epoch (PyTorch) minus the best mAP50-95 of the study's current front at equal or
lower latency (0 when no feasible trial is that fast), i.e. how far above (> 0) or below
the front the trial stands at its own latency. A fast policy is therefore not compared
with a slow one's mAP. The front grows during a search, so a later trial is judged
against a stronger front. Trials over the budget and trials without a fine-tune report
NaN, which the scheduler's rung statistics ignore.

A trial the scheduler stops ends as PRUNED in Optuna, with the epoch curve it reached and
the reason (`search.searcher`); it is never on a front. The train subset stays the
study's `train_images` at every rung.
"""

from __future__ import annotations

import math

import optuna
from optuna.trial import TrialState

SCHEDULERS = ("fifo", "asha")
SCORE = "asha_score"


def front_map_at(study_name: str, storage_url: str, latency_ms: float) -> float | None:
    """The best mAP50-95 of the study's finished feasible trials at p50 <= `latency_ms`, or None if there is none."""
    study = optuna.load_study(study_name=study_name, storage=storage_url)
    return max(
        (
            t.values[0]
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.values and t.values[1] <= latency_ms and all(c <= 0 for c in t.constraints.values())
        ),
        default=None,
    )


def score(value: float, front_map: float | None) -> float:
    """The scheduler's metric: `value` (val mAP50-95) minus the front's mAP at the trial's latency (None: 0)."""
    return value - (front_map or 0.0)


def no_score() -> float:
    """The metric of a report the scheduler should not rank (over budget, no fine-tune, the final result)."""
    return math.nan


def asha_scheduler(max_epochs: int, reduction_factor: int):
    """Ray Tune's ASHAScheduler over fine-tune epochs: rungs at 1, rf, rf², ... below `max_epochs` + 1
    (the final scored report is iteration `max_epochs` + 1)."""
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr="training_iteration",
        metric=SCORE,
        mode="max",
        max_t=max_epochs + 1,
        grace_period=1,
        reduction_factor=reduction_factor,
    )
