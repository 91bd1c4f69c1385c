"""Side-by-side timing, the statistics: what the run times of artifacts timed in turn say.

A shared host's speed drifts by 10-60% within minutes, and INT8 and FP32 kernels drift
differently, so two latencies taken minutes apart cannot be divided. Timed run by run in
turn within one session (`evaluators.timing.run_alternating`), the ratio of their medians
is steady from process to process.

`ratio_interval(candidate, reference)`: median(candidate) / median(reference), with a
bootstrap 95% interval that resamples whole rounds (pairs stay together, so the drift
they share cancels) with a fixed seed: the same times give the same interval.

`host_drift(reference)`: how much the reference itself moved over the session: median of
its last fifth / median of its first fifth - 1 (positive: the host slowed down).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
_BOOTSTRAP_BATCH = 100


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
