"""Side-by-side timing: artifacts loaded together and run in turn, so host drift falls on all alike.

A shared host's speed drifts by 10-60% within minutes, and INT8 and FP32 kernels drift
differently, so two latencies taken minutes apart cannot be divided. Timed run by run in
turn within one session, the ratio of their medians is steady from process to process.

`run_alternating(clocks, settings)`: each clock is warmed up (as in `evaluators.timing`),
then the clocks take turns, one run each per round, the order reversed every other round
(A B, B A, A B, ...), until BOTH floors hold: `settings.min_runs` rounds and
`settings.min_seconds` of timing (or `settings.max_runs` rounds). The garbage collector
is paused while timing. Returns each clock's run times (ms), one per round.

`ratio_interval(candidate, reference)`: median(candidate) / median(reference), with a
bootstrap 95% interval that resamples whole rounds (pairs stay together, so the drift
they share cancels) with a fixed seed: the same times give the same interval.

`host_drift(reference)`: how much the reference itself moved over the session: median of
its last fifth / median of its first fifth - 1 (positive: the host slowed down).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence

import numpy as np

from evaluators.base import TimingSettings
from evaluators.timing import warm_up

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
_BOOTSTRAP_BATCH = 100


def run_alternating(clocks: Sequence[Callable[[], float]], settings: TimingSettings) -> list[list[float]]:
    """Warm each clock up, then run them in turn (order reversed every other round); ms per clock per round."""
    if not clocks:
        return []
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for clock in clocks:
            warm_up(clock, settings)
        times: list[list[float]] = [[] for _ in clocks]
        order = list(range(len(clocks)))
        start = time.perf_counter_ns()
        rounds = 0
        while rounds < settings.max_runs:
            for index in order if rounds % 2 == 0 else reversed(order):
                times[index].append(clocks[index]())
            rounds += 1
            if rounds >= settings.min_runs and (time.perf_counter_ns() - start) / 1e9 >= settings.min_seconds:
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return times


def ratio_interval(candidate: Sequence[float], reference: Sequence[float]) -> tuple[float, float, float]:
    """(ratio, low, high): median(candidate) / median(reference) and its bootstrap 95% interval over rounds."""
    cand, ref = np.asarray(candidate, dtype=float), np.asarray(reference, dtype=float)
    if cand.shape != ref.shape or cand.size == 0:
        raise ValueError("candidate and reference need the same, non-zero number of rounds")
    ratio = float(np.median(cand) / np.median(ref))
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    ratios = []
    # In batches: all resamples at once would hold 2000 x rounds arrays (hundreds of MB at 5000 rounds).
    for done in range(0, BOOTSTRAP_RESAMPLES, _BOOTSTRAP_BATCH):
        picks = rng.integers(0, cand.size, size=(min(_BOOTSTRAP_BATCH, BOOTSTRAP_RESAMPLES - done), cand.size))
        ratios.append(np.median(cand[picks], axis=1) / np.median(ref[picks], axis=1))
    low, high = np.percentile(np.concatenate(ratios), [2.5, 97.5])
    return ratio, float(low), float(high)


def host_drift(reference: Sequence[float]) -> float:
    """median(last fifth) / median(first fifth) - 1 of the reference's run times over the session."""
    window = max(1, len(reference) // 5)
    first, last = float(np.median(reference[:window])), float(np.median(reference[-window:]))
    return last / first - 1 if first > 0 else 0.0
