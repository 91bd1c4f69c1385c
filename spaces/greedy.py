"""Guided starts: the NetAdapt-style greedy that picks one pruning ratio per segment for a latency target.

What a good engineer tries first: take the model at the device's fastest precision, then
repeatedly shave the segment (`spaces.segments`) that buys the most latency per unit of
accuracy lost, one step up its ratio grid at a time, until the model fits the target. This
module is the rule only; the inputs are measured elsewhere (`search.guided`):

- `savings`: segment -> {ratio: ms saved on the device when only that segment is pruned
  at that ratio}, measured side by side against the unpruned model at the same precision;
- `losses`: segment -> {ratio: estimated mAP50-95 lost}, from the stored per-unit
  sensitivity (`segment_losses`).

The greedy orders its steps (`greedy_path`): the segment and higher ratio on its grid
with the largest (extra saving) / (extra loss); a step that saves nothing is never taken.
Where along that path a latency target is met is decided by timing (`search.guided`), not
by adding the savings up: neighbouring segments share a convolution, so summed savings
over-promise, and more so the deeper the pruning. The additive estimate (`estimated_ms`)
only picks the first point to time (`first_fit`).

A segment with depth units (`spaces.depth`) has a second kind of step, `<segment>/depth` (`depth_step`):
removing every inner block of its units, a table with the one grid point 1.0 (its saving
measured the same way, its loss the sensitivity's depth drops). `policy_parts` turns a
point of the path into a policy's pruning ratios and depth.

The same path, started from a sampled policy's ratios instead of the unpruned model
(`greedy_path(..., start=...)`), repairs a policy over the budget (`search.repair`).
`SegmentCosts` holds the tables with the segments' units, as a study stores them.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

DEPTH_SUFFIX = "/depth"
"""A greedy step `<segment>/depth` removes every inner block of the segment's depth units; 1.0 on its grid: removed."""
DEPTH_GRID = (1.0,)
"""The grid of a depth step: 0 keeps the inner blocks, 1 removes them all."""

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


def depth_step(segment: str) -> str:
    """The name of `segment`'s depth step in the greedy's tables."""
    return segment + DEPTH_SUFFIX


def depth_losses(
    base_map: float, unit_maps: Mapping[str, float], held: Mapping[str, Sequence[str]]
) -> dict[str, dict[float, float]]:
    """depth step -> {1.0: estimated mAP50-95 lost with every inner block of its units removed}: the sum of the units'
    drops (`Sensitivity.depth`: unit -> mAP50-95 without its inner blocks; a negative drop counts as 0). held: depth
    step -> its depth units; a step with a unit never measured gets no loss, so the greedy never takes it."""
    return {
        step: {1.0: sum(max(0.0, base_map - unit_maps[u]) for u in units)}
        for step, units in held.items()
        if units and all(u in unit_maps for u in units)
    }


def policy_parts(
    held: Mapping[str, Sequence[str]], ratios: Mapping[str, float], depth_units: Mapping[str, int]
) -> tuple[dict[str, float], dict[str, int]]:
    """(pruning unit -> ratio, depth unit -> inner blocks removed) of a point of the greedy's path: each segment's
    ratio for its units, each depth step at 1 removing all of its units' inner blocks (`depth_units`: their counts)."""
    pruning: dict[str, float] = {}
    depth: dict[str, int] = {}
    for step, value in ratios.items():
        if value <= 0:
            continue
        if step.endswith(DEPTH_SUFFIX):
            depth.update({u: depth_units[u] for u in held[step]})
        else:
            pruning.update(dict.fromkeys(held[step], value))
    return pruning, depth


def _unit_drop(base_map: float, maps: Mapping[float, float] | None, ratio: float) -> float:
    if not maps:
        return base_map * ratio
    points = [(0.0, 0.0), *sorted((r, max(0.0, base_map - m)) for r, m in maps.items())]
    for (r0, d0), (r1, d1) in itertools.pairwise(points):
        if ratio <= r1:
            return d0 + (d1 - d0) * (ratio - r0) / (r1 - r0)
    (r0, d0), (r1, d1) = points[-2], points[-1]
    return max(d1, d1 + (d1 - d0) * (ratio - r1) / (r1 - r0))


@dataclass(frozen=True)
class SegmentCosts:
    """The greedy's inputs as measured for one study: segment -> {grid ratio: ms saved} (`savings`), segment ->
    {grid ratio: estimated mAP50-95 lost} (`losses`), and segment -> the pruning units it holds (`held`); a depth
    step (`depth_step`) has its row in each, holding the segment's depth units."""

    savings: Mapping[str, Mapping[float, float]]
    losses: Mapping[str, Mapping[float, float]]
    held: Mapping[str, tuple[str, ...]]

    def to_dict(self) -> dict:
        """JSON-ready (ratios as strings)."""

        def table(t):
            return {s: {str(r): v for r, v in row.items()} for s, row in t.items()}

        return {
            "savings": table(self.savings),
            "losses": table(self.losses),
            "held": {s: list(u) for s, u in self.held.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> SegmentCosts:
        def table(t):
            return {s: {float(r): float(v) for r, v in row.items()} for s, row in t.items()}

        return cls(table(data["savings"]), table(data["losses"]), {s: tuple(u) for s, u in data["held"].items()})


def estimated_ms(base_ms: float, savings: Mapping[str, Mapping[float, float]], ratios: Mapping[str, float]) -> float:
    """The additive latency estimate (ms) of pruning each segment at `ratios` (unnamed: 0)."""
    return base_ms - sum(_at(savings[s], r) for s, r in ratios.items())


def _at(table: Mapping[float, float], ratio: float) -> float:
    """A segment's saving or loss at `ratio` (0 unpruned): the table's value at a grid ratio, linear between grid
    ratios (0 at 0), the last grid ratio's beyond it."""
    if ratio <= 0:
        return 0.0
    if ratio in table:
        return table[ratio]
    points = [(0.0, 0.0), *sorted(table.items())]
    for (r0, v0), (r1, v1) in itertools.pairwise(points):
        if ratio <= r1:
            return v0 + (v1 - v0) * (ratio - r0) / (r1 - r0)
    return points[-1][1]


def greedy_path(
    savings: Mapping[str, Mapping[float, float]],
    losses: Mapping[str, Mapping[float, float]],
    start: Mapping[str, float] | None = None,
) -> list[dict[str, float]]:
    """The greedy's policies in order, each one grid ratio beyond the one before: segment -> ratio (every
    segment of `savings`; 0: unpruned).

    start: segment -> the ratio the path starts from (any value; unnamed: 0); the path's steps
    go to the grid ratios above it. Each greedy step is `_best_step` (it may skip ratios of a
    segment; the skipped ratios become path entries of their own, so the path moves one ratio
    at a time). The path ends when every segment is at or beyond its last ratio or no step
    saves anything; a segment missing from `losses` is never pruned. Latency falls along the
    path, up to measurement noise: the caller times points of it to find where a target is first met.
    """
    ratios = {s: float((start or {}).get(s, 0.0)) for s in savings}
    path: list[dict[str, float]] = []
    while (step := _best_step(savings, losses, ratios)) is not None:
        segment, ratio = step
        for r in sorted(r for r in savings[segment] if ratios[segment] < r <= ratio):
            ratios[segment] = r
            path.append(dict(ratios))
    return path


def estimated_loss(losses: Mapping[str, Mapping[float, float]], ratios: Mapping[str, float]) -> float:
    """The additive loss estimate (mAP50-95) of pruning each segment at `ratios` (unnamed or unknown: 0)."""
    return sum(_at(losses[s], r) for s, r in ratios.items() if s in losses)


def viable_prefix(path: Sequence[Mapping[str, float]], losses, base_map: float) -> list[Mapping[str, float]]:
    """The policies of `path` up to the first whose estimated loss (`estimated_loss`) reaches `base_map`.

    Beyond that the untuned drops add up to everything the model scores, and a short fine-tune
    recovers nothing: on the embedded YOLO11n (M0 0.39), policies estimated at 0.007-0.012 kept
    0.36-0.37 after a 3-epoch fine-tune, one at 0.56 kept 0.04, one at 1.39 kept 0.000 (at
    lr0 2e-4, 1e-3 and 3e-3, with distillation or without).
    """
    return list(itertools.takewhile(lambda ratios: estimated_loss(losses, ratios) < base_map, path))


def first_fit(path: Sequence[Mapping[str, float]], savings, base_ms: float, target_ms: float) -> int:
    """The index of the first policy of `path` whose additive estimate fits `target_ms` (the last if none does)."""
    return next((i for i, r in enumerate(path) if estimated_ms(base_ms, savings, r) <= target_ms), len(path) - 1)


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
