"""What the benchmark compares (the searched front against uniform compression and random search) and how it scores it.

Contenders, all measured in one process on one device with the same fine-tune budget
(the config's epochs, train/val fidelity and seed):

- "fp32": the baseline's exported FP32 artifact (its latency is L0, its mAP50-95 M0);
- "peer": what one Ultralytics export command gives (`search.bench.peers`), timed in one session with the
  FP32 reference on its own runtime, validated by Ultralytics' validator;
- "uniform": what users apply by hand, fine-tuned whatever their latency — every reference
  policy of the space but FP32 (all-INT8, all-FP16, uniform pruning 0.25 / 0.5 / 0.75 at
  the fastest precision with distillation) plus pruning 0.5 without distillation;
- "search": a `run_search` study with the config's sampler (TPE or NSGA-II);
- "random": the same study with Optuna's RandomSampler, the same trial count, budget,
  enqueued reference policies and early-stopping setting;
- "per-unit" (`bench --per-unit`): the configured search over the per-unit space (one
  ratio and one precision per block) instead of the segments space, with the same guided
  starts (measured once), trial count and fidelity: what the structured space buys.

All contenders share one per-policy result directory, so a policy two of them evaluate
(the enqueued references) is computed once and reused with its measured scores; every
latency is timed in this run (a fresh latency cache), so machine drift hits all alike.

This module is the pure part — fronts, 2-D hypervolume, best mAP under a budget, the
targets — on `BenchPoint`s; the report (`search.bench.report`) is rendered from it and the
run (`search.bench.run`) produces it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

FP32, PEER, UNIFORM, SEARCH, RANDOM, PER_UNIT = "fp32", "peer", "uniform", "search", "random", "per-unit"
CONTENDERS = (FP32, PEER, UNIFORM, SEARCH, RANDOM, PER_UNIT)
SEARCHES = (SEARCH, RANDOM, PER_UNIT)  # the contenders shown by their best point within the budget
BUDGET_FRACTIONS = (0.5, 0.33, 0.25)  # of L0: the budgets the best-under-budget table reports
# Targets of the benchmark: mAP retained (M/M0) by the search's best under each fraction of L0; its margin
# over the best uniform policy there; accuracy level at which the front must beat every peer's speed; the
# searched front's hypervolume relative to random search's, and to the per-unit space's.
TARGET_RETAINED = {0.5: 0.98, 0.33: 0.95, 0.25: 0.90}
TARGET_MARGIN = 0.03
TARGET_PEER_ACCURACY = 0.95
TARGET_HV_RATIO = 1.5
TARGET_HV_PER_UNIT = 1.2


@dataclass(frozen=True)
class BenchPoint:
    """One evaluated policy of one contender.

    latency_ms: p50 on the bench device; map50_95: of the deployed artifact. status:
    "complete" (deployed artifact scored, within the contender's budget), "infeasible"
    (over the search budget) or "pruned" (fine-tune stopped early). Only complete points
    enter fronts, hypervolumes and budget tables. seconds: the policy's measured compute (for a
    recovered point: the recovery's).
    """

    contender: str
    label: str
    map50_95: float
    latency_ms: float
    status: str = "complete"
    policy_id: str = ""
    seconds: float = 0.0
    recovered: bool = False  # a contender's best under a budget after `search.recover` (not in hypervolumes)


@dataclass(frozen=True)
class Target:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class BenchResult:
    """Everything one bench run measured; round-trips through `to_dict` / `from_dict` (JSON).

    baseline_latency_ms (L0) and baseline_map (M0) are the FP32 artifact's; budget_ms is
    the searches' latency budget; wall_seconds maps a contender to its wall time.
    """

    name: str
    command: str
    date: str
    config: dict
    sampler: str
    trials: int
    early_stop: bool
    baseline_latency_ms: float
    baseline_map: float
    budget_ms: float
    fingerprint: dict
    versions: dict
    threads: dict
    points: tuple[BenchPoint, ...]
    wall_seconds: dict = field(default_factory=dict)
    studies: dict = field(default_factory=dict)
    storage: str = ""
    peers: tuple[dict, ...] = ()  # `search.bench.peers.Peer` as dicts: how each was made, timed, or why skipped

    def of(self, contender: str) -> list[BenchPoint]:
        return [p for p in self.points if p.contender == contender]

    def to_dict(self) -> dict:
        data = asdict(self)
        data["points"] = [asdict(p) for p in self.points]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> BenchResult:
        points = tuple(BenchPoint(**p) for p in data["points"])
        return cls(**{**data, "points": points, "peers": tuple(data.get("peers", ()))})


# --- pure computations ------------------------------------------------------------------


def front(points: Iterable[BenchPoint], max_latency_ms: float = math.inf) -> list[BenchPoint]:
    """Complete, non-dominated points (higher mAP, lower latency) within `max_latency_ms`, fastest first."""
    usable = sorted(
        (p for p in points if p.status == "complete" and p.latency_ms <= max_latency_ms),
        key=lambda p: (p.latency_ms, -p.map50_95),
    )
    kept, best = [], -math.inf
    for p in usable:
        if p.map50_95 > best:  # faster points came first: only a higher mAP is not dominated
            kept.append(p)
            best = p.map50_95
    return kept


def hypervolume_2d(points: Iterable[tuple[float, float]], reference: tuple[float, float]) -> float:
    """Area (ms x mAP) dominated by (latency_ms, map) points and bounded by `reference`.

    Latency is minimised, mAP maximised: a point dominates the box from itself to
    (reference latency, reference mAP). Points not better than the reference on both
    axes add nothing. A sweep over the points sorted by latency.
    """
    ref_latency, ref_map = reference
    area, best = 0.0, ref_map
    for latency, value in sorted(p for p in points if p[0] < ref_latency and p[1] > ref_map):
        if value > best:  # each new best adds the strip between the old best and it
            area += (ref_latency - latency) * (value - best)
            best = value
    return area


def hypervolume(points: Iterable[BenchPoint], budget_ms: float) -> float:
    """Hypervolume of a contender's complete points within `budget_ms`, reference (budget_ms, mAP 0).

    Only the region the searches were asked to cover counts: they never fine-tune a
    policy over the budget, so points beyond it would favour the uniform set. Recovered points
    are left out: the hypervolume compares what the samplers found at equal trials.
    """
    searched = [p for p in points if not p.recovered]
    return hypervolume_2d(((p.latency_ms, p.map50_95) for p in front(searched, budget_ms)), (budget_ms, 0.0))


def report_budgets(budget_ms: float, baseline_ms: float) -> list[float]:
    """The budgets (ms, descending) the bench shows each contender's best under, and recovers that best at: the
    search's own budget (where `make demo` recovers its exported policy), then `BUDGET_FRACTIONS` x L0 (one of
    those within 0.1% of L0 of the search's budget is the same budget)."""
    budgets = [budget_ms]
    for fraction in BUDGET_FRACTIONS:
        if all(abs(fraction * baseline_ms - b) > 1e-3 * baseline_ms for b in budgets):
            budgets.append(fraction * baseline_ms)
    return sorted(budgets, reverse=True)


def best_under(points: Iterable[BenchPoint], budget_ms: float) -> BenchPoint | None:
    """The highest-mAP complete point with latency <= `budget_ms` (ties: the faster), or None."""
    fits = [p for p in points if p.status == "complete" and p.latency_ms <= budget_ms]
    return max(fits, key=lambda p: (p.map50_95, -p.latency_ms), default=None)


def speedup(latency_ms: float, baseline_latency_ms: float) -> float:
    """L0 / L: how many times faster than the FP32 baseline."""
    return baseline_latency_ms / latency_ms if latency_ms > 0 else math.inf


def retained(map50_95: float, baseline_map: float) -> float:
    """M / M0: the fraction of the FP32 baseline's mAP50-95 kept."""
    return map50_95 / baseline_map if baseline_map > 0 else 0.0


def check_targets(result: BenchResult) -> list[Target]:
    """The benchmark's pass/fail targets, in the order the report lists them."""
    l0, m0 = result.baseline_latency_ms, result.baseline_map
    searched, uniform, peers = result.of(SEARCH), result.of(UNIFORM), result.of(PEER)
    targets = []
    for fraction, keep in TARGET_RETAINED.items():
        best = best_under(searched, fraction * l0)
        kept = retained(best.map50_95, m0) if best else 0.0
        targets.append(
            Target(
                f"search keeps >= {keep:.0%} of M0 under {fraction:g}·L0",
                kept >= keep,
                f"{kept:.1%} ({best.label})" if best else "no searched policy fits",
            )
        )
    for fraction in TARGET_RETAINED:
        s, u = best_under(searched, fraction * l0), best_under(uniform, fraction * l0)
        # where no uniform policy fits, the search still has to keep TARGET_MARGIN of mAP: a useless point beats nothing
        passed = s is not None and s.map50_95 >= (u.map50_95 if u else 0.0) + TARGET_MARGIN
        detail = f"search {_map(s)} vs uniform {_map(u)}" + (f" ({s.map50_95 - u.map50_95:+.4f})" if s and u else "")
        targets.append(Target(f"search >= best uniform + {TARGET_MARGIN} under {fraction:g}·L0", passed, detail))
    targets += _peer_targets(front(searched, result.budget_ms), [p for p in peers if p.status == "complete"], m0)
    hv_s = hypervolume(searched, result.budget_ms)
    targets.append(_hv_target("random's", hv_s, result.of(RANDOM), TARGET_HV_RATIO, result.budget_ms))
    targets.append(_hv_target("the per-unit space's", hv_s, result.of(PER_UNIT), TARGET_HV_PER_UNIT, result.budget_ms))
    return targets


def _hv_target(other: str, hv_s: float, points: list[BenchPoint], wanted: float, budget_ms: float) -> Target:
    name = f"search hypervolume >= {wanted}x {other}"
    if not points:
        return Target(name, False, "not run (`bench --per-unit` runs the per-unit space)")
    hv_o = hypervolume(points, budget_ms)
    ratio = hv_s / hv_o if hv_o > 0 else (math.inf if hv_s > 0 else 0.0)
    return Target(name, ratio >= wanted, f"{hv_s:.4f} vs {hv_o:.4f} ({ratio:.2f}x)")


def _peer_targets(searched_front: list[BenchPoint], peers: list[BenchPoint], m0: float) -> list[Target]:
    """No peer dominates a point of the searched front; the front holds a point at >= TARGET_PEER_ACCURACY of M0
    faster than every peer that reaches that accuracy."""
    name_dominates = "no one-command peer dominates a point of the search's front"
    name_faster = f"the front has a point at >= {TARGET_PEER_ACCURACY:.0%} of M0 faster than every peer there"
    if not peers:
        return [Target(n, False, "no peer was measured") for n in (name_dominates, name_faster)]
    if not searched_front:
        return [Target(n, False, "the search's front is empty") for n in (name_dominates, name_faster)]
    beaten = [(p, q) for p in searched_front for q in peers if q.latency_ms <= p.latency_ms and q.map50_95 > p.map50_95]
    dominated = Target(
        name_dominates,
        not beaten,
        "; ".join(f"{q.label} ({q.map50_95:.4f}, {q.latency_ms:.2f} ms) over {p.label}" for p, q in beaten)
        or f"{len(searched_front)} front points, {len(peers)} peers",
    )
    level = TARGET_PEER_ACCURACY * m0
    accurate = [p for p in searched_front if p.map50_95 >= level]
    rivals = [q for q in peers if q.map50_95 >= level]
    fastest_rival = min(rivals, key=lambda q: q.latency_ms, default=None)
    best = min(accurate, key=lambda p: p.latency_ms, default=None)
    passed = best is not None and (fastest_rival is None or best.latency_ms < fastest_rival.latency_ms)
    detail = (f"{best.label} {best.map50_95:.4f} at {best.latency_ms:.2f} ms" if best else "no front point there") + (
        f" vs {fastest_rival.label} {fastest_rival.map50_95:.4f} at {fastest_rival.latency_ms:.2f} ms"
        if fastest_rival
        else "; no peer reaches it"
    )
    return [dominated, Target(name_faster, passed, detail)]


def _map(point: BenchPoint | None) -> str:
    return f"{point.map50_95:.4f}" if point else "none fits"
