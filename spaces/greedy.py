"""Guided starts: the NetAdapt-style greedy that picks one pruning ratio per segment for a latency target.

What a good engineer tries first: take the model at the device's fastest precision, then
repeatedly shave the segment (`spaces.segments`) that buys the most latency per unit of
accuracy lost, one step up its ratio grid at a time, until the model fits the target. This
module is the rule only; the inputs are measured elsewhere (`search.guided`):

- `savings`: segment -> {ratio: ms saved on the device when only that segment is pruned
  at that ratio}, measured side by side against the unpruned model at the same precision;
- `losses`: segment -> {ratio: estimated mAP50-95 lost}, from the stored per-unit
  sensitivity (`segment_losses`).

A policy's latency is estimated additively: the base latency, minus each segment's saving
at its ratio scaled by `realized`, plus a `correction_ms`. Pruning two neighbouring
segments does not save the sum of their savings alone (both shrink the convolution between
them, which is counted twice), so the sum over-promises, the more the more is pruned: the
caller learns `realized` (the fraction of the summed saving that timing showed) from a timed
miss, and the greedy goes on with it. The greedy step is the segment and higher
ratio on its grid with the largest (extra saving) / (extra loss), cut back to the
smallest ratio of that segment that fits when one does; a step that saves nothing is
never taken.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

LOSS_FLOOR = 1e-3
"""A step's estimated loss is at least this (mAP50-95): a free step is very good, not infinitely good."""


def segment_losses(
    base_map: float,
    unit_maps: Mapping[str, Mapping[float, float]],
    held: Mapping[str, Sequence[str]],
    grid: Sequence[float],
) -> dict[str, dict[float, float]]:
    """segment -> {ratio: estimated mAP50-95 lost with all its units pruned at ratio}, for every ratio of `grid`.

    base_map: the unpruned model's mAP50-95; unit_maps: unit -> {ratio: mAP50-95 with only
    that unit pruned} (a sensitivity analysis, untuned); held: segment -> its pruning units.
    A segment's loss is the sum of its units' drops (a negative drop, noise, counts as 0),
    not capped at `base_map`: the estimate ranks steps, and a cap would make the largest
    ratios of sensitive segments look no worse than their middle ones. A unit's drop at a
    ratio it was not measured at is interpolated linearly (0 at ratio 0), and extrapolated
    beyond its largest measured ratio along its last slope; a unit never measured is
    assumed to lose `base_map * ratio` (pruned last).
    """
    losses: dict[str, dict[float, float]] = {}
    for segment, units in held.items():
        losses[segment] = {r: sum(_unit_drop(base_map, unit_maps.get(u), r) for u in units) for r in grid}
    return losses


def _unit_drop(base_map: float, maps: Mapping[float, float] | None, ratio: float) -> float:
    if not maps:
        return base_map * ratio
    points = [(0.0, 0.0), *sorted((r, max(0.0, base_map - m)) for r, m in maps.items())]
    for (r0, d0), (r1, d1) in itertools.pairwise(points):
        if ratio <= r1:
            return d0 + (d1 - d0) * (ratio - r0) / (r1 - r0)
    (r0, d0), (r1, d1) = points[-2], points[-1]
    return max(d1, d1 + (d1 - d0) * (ratio - r1) / (r1 - r0))


def estimated_ms(
    base_ms: float,
    savings: Mapping[str, Mapping[float, float]],
    ratios: Mapping[str, float],
    realized: float = 1.0,
) -> float:
    """The additive latency estimate (ms) of pruning each segment at `ratios` (unnamed: 0), `realized` of the
    summed saving counted."""
    return base_ms - realized * sum(_at(savings[s], r) for s, r in ratios.items())


def realized_fraction(base_ms: float, savings, ratios: Mapping[str, float], measured_ms: float) -> float:
    """The fraction of the summed saving of `ratios` that a timing (`measured_ms`) showed, in [0.1, 1.5]."""
    promised = base_ms - estimated_ms(base_ms, savings, ratios)
    if promised <= 0:
        return 1.0
    return min(1.5, max(0.1, (base_ms - measured_ms) / promised))


def _at(table: Mapping[float, float], ratio: float) -> float:
    """A segment's saving or loss at `ratio` (0 unpruned)."""
    return table[ratio] if ratio > 0 else 0.0


def greedy_ratios(
    savings: Mapping[str, Mapping[float, float]],
    losses: Mapping[str, Mapping[float, float]],
    base_ms: float,
    target_ms: float,
    *,
    start: Mapping[str, float] | None = None,
    correction_ms: float = 0.0,
    realized: float = 1.0,
) -> dict[str, float] | None:
    """Segment -> ratio (every segment of `savings`; 0: unpruned) whose estimate fits `target_ms`, or None.

    From `start` (all 0 by default), take greedy steps up each segment's ratio grid (the
    ratios of `savings[segment]`; a step may skip ratios) until
    `estimated_ms(..., realized) + correction_ms <= target_ms`.
    None when every segment is at its last ratio (or no step saves anything) and it still
    does not fit. A segment missing from `losses` is never pruned.
    """
    ratios = {s: 0.0 for s in savings}
    ratios.update(start or {})
    while (over := estimated_ms(base_ms, savings, ratios, realized) + correction_ms - target_ms) > 0:
        step = _best_step(savings, losses, ratios)
        if step is None:
            return None
        segment, ratio = step
        # no further than needed: the smallest ratio of that segment that already fits, if one does
        saved = _at(savings[segment], ratios[segment])
        fitting = [
            r
            for r in sorted(savings[segment])
            if ratios[segment] < r < ratio and realized * (savings[segment][r] - saved) >= over
        ]
        ratios[segment] = fitting[0] if fitting else ratio
    return ratios


def _best_step(savings, losses, ratios) -> tuple[str, float] | None:
    """The (segment, higher ratio) with the largest extra saving per extra loss; None if no step saves time.

    Every higher ratio of a segment is a candidate, not only the next: a noisy saving measured
    at one ratio does not block the segment's larger ones.
    """
    best, best_score = None, 0.0
    for segment, table in savings.items():
        if segment not in losses:
            continue
        current = ratios[segment]
        saved, lost = _at(table, current), _at(losses[segment], current)
        for ratio in sorted(r for r in table if r > current):
            gain = table[ratio] - saved
            if gain <= 0:
                continue
            score = gain / max(losses[segment][ratio] - lost, LOSS_FLOOR)
            if score > best_score:
                best, best_score = (segment, ratio), score
    return best
