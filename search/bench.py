"""The benchmark: the searched front against uniform compression and random search, in one run.

Contenders, all measured in one process on one device with the same fine-tune budget
(the config's epochs, train/val fidelity and seed):

- "fp32": the baseline's exported FP32 artifact (its latency is L0, its mAP50-95 M0);
- "uniform": what users apply by hand, fine-tuned whatever their latency — every reference
  policy of the space but FP32 (all-INT8, all-FP16, uniform pruning 0.25 / 0.5 / 0.75 at
  the fastest precision with distillation) plus pruning 0.5 without distillation;
- "search": a `run_search` study with the config's sampler (TPE or NSGA-II);
- "random": the same study with Optuna's RandomSampler, the same trial count, budget,
  enqueued reference policies and early-stopping setting.

All contenders share one per-policy result directory, so a policy two of them evaluate
(the enqueued references) is computed once and reused with its measured scores; every
latency is timed in this run (a fresh latency cache), so machine drift hits all alike.

The pure part — fronts, 2-D hypervolume, best mAP under a budget, the targets — works
on `BenchPoint`s and is what the report (`search.bench_report`) is rendered from.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata
from pathlib import Path

FP32, UNIFORM, SEARCH, RANDOM = "fp32", "uniform", "search", "random"
CONTENDERS = (FP32, UNIFORM, SEARCH, RANDOM)
BUDGET_FRACTIONS = (0.5, 0.33, 0.25)  # of L0: the budgets the best-under-budget table reports
# Targets of the benchmark: retained mAP under 0.33·L0, margin over the best uniform policy,
# and the searched front's hypervolume relative to random search's.
TARGET_RETAINED, TARGET_RETAINED_FRACTION = 0.97, 0.33
TARGET_MARGIN = 0.01
TARGET_HV_RATIO = 1.1
_VERSIONED = ("squeezefit", "torch", "ultralytics", "torch-pruning", "onnxruntime", "openvino", "nncf", "optuna", "ray")


@dataclass(frozen=True)
class BenchPoint:
    """One evaluated policy of one contender.

    latency_ms: p50 on the bench device; map50_95: of the deployed artifact. status:
    "complete" (deployed artifact scored, within the contender's budget), "infeasible"
    (over the search budget) or "pruned" (fine-tune stopped early). Only complete points
    enter fronts, hypervolumes and budget tables. seconds: the policy's measured compute.
    """

    contender: str
    label: str
    map50_95: float
    latency_ms: float
    status: str = "complete"
    policy_id: str = ""
    seconds: float = 0.0


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

    def of(self, contender: str) -> list[BenchPoint]:
        return [p for p in self.points if p.contender == contender]

    def to_dict(self) -> dict:
        data = asdict(self)
        data["points"] = [asdict(p) for p in self.points]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "BenchResult":
        return cls(**{**data, "points": tuple(BenchPoint(**p) for p in data["points"])})


# --- pure computations ------------------------------------------------------------------


def front(points: Iterable[BenchPoint], max_latency_ms: float = math.inf) -> list[BenchPoint]:
    """Complete, non-dominated points (higher mAP, lower latency) within `max_latency_ms`, fastest first."""
    usable = sorted((p for p in points if p.status == "complete" and p.latency_ms <= max_latency_ms),
                    key=lambda p: (p.latency_ms, -p.map50_95))  # fmt: skip
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
    policy over the budget, so points beyond it would favour the uniform set.
    """
    return hypervolume_2d(((p.latency_ms, p.map50_95) for p in front(points, budget_ms)), (budget_ms, 0.0))


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
    searched, uniform = result.of(SEARCH), result.of(UNIFORM)
    targets = []
    best = best_under(searched, TARGET_RETAINED_FRACTION * l0)
    kept = retained(best.map50_95, m0) if best else 0.0
    targets.append(Target(
        f"search keeps >= {TARGET_RETAINED:.0%} of M0 under {TARGET_RETAINED_FRACTION:g}·L0", kept >= TARGET_RETAINED,
        f"{kept:.1%} ({best.label})" if best else "no searched policy fits",
    ))  # fmt: skip
    for fraction in BUDGET_FRACTIONS:
        s, u = best_under(searched, fraction * l0), best_under(uniform, fraction * l0)
        passed = s is not None and (u is None or s.map50_95 >= u.map50_95 + TARGET_MARGIN)
        detail = f"search {_map(s)} vs uniform {_map(u)}" + (f" ({s.map50_95 - u.map50_95:+.4f})" if s and u else "")
        targets.append(Target(f"search >= best uniform + {TARGET_MARGIN} under {fraction:g}·L0", passed, detail))
    hv_s, hv_r = hypervolume(searched, result.budget_ms), hypervolume(result.of(RANDOM), result.budget_ms)
    ratio = hv_s / hv_r if hv_r > 0 else (math.inf if hv_s > 0 else 0.0)
    targets.append(Target(f"search hypervolume >= {TARGET_HV_RATIO}x random's", ratio >= TARGET_HV_RATIO,
                          f"{hv_s:.4f} vs {hv_r:.4f} ({ratio:.2f}x)"))  # fmt: skip
    return targets


def _map(point: BenchPoint | None) -> str:
    return f"{point.map50_95:.4f}" if point else "none fits"


# --- the run ----------------------------------------------------------------------------


def uniform_policies(space) -> dict:
    """The uniform contenders: every reference policy but FP32, plus pruning 0.5 without distillation."""
    from spaces.distillation import DistillationSettings
    from spaces.policy import Policy

    refs = {k: v for k, v in space.reference_policies().items() if k != "fp32"}
    half = f"prune-0.5-{space.fastest_precision()}"
    if half in refs and space.max_epochs > 0:
        no_kd = DistillationSettings(enabled=False, epochs=space.max_epochs)
        refs[f"{half}-no-distill"] = Policy(pruning=refs[half].pruning, precision=refs[half].precision, distillation=no_kd)
    return refs


@contextlib.contextmanager
def _fresh_latency_cache(path: Path):
    """Time every artifact in this run: a new latency cache file, inherited by Ray's workers."""
    previous = os.environ.get("SQUEEZEFIT_LATENCY_CACHE")
    path.parent.mkdir(parents=True, exist_ok=True)
    os.environ["SQUEEZEFIT_LATENCY_CACHE"] = str(path)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("SQUEEZEFIT_LATENCY_CACHE", None)
        else:
            os.environ["SQUEEZEFIT_LATENCY_CACHE"] = previous


def _point(contender: str, label: str, result) -> BenchPoint:
    return BenchPoint(contender, label, result.map50_95, result.latency_ms, result.status, result.policy_id,
                      round(sum(result.seconds.values()), 2))  # fmt: skip


def study_points(contender: str, study) -> list[BenchPoint]:
    """A study's finished trials as points; a complete trial over the study's budget counts as infeasible."""
    from search.front import trials_table

    seconds = {t.number: sum((t.user_attrs.get("seconds") or {}).values()) for t in study.get_trials(deepcopy=False)}
    points = []
    for row in trials_table(study).itertuples():
        status = "complete" if row.feasible else ("infeasible" if row.status == "complete" else row.status)
        label = row.reference or f"trial {row.trial}"
        points.append(BenchPoint(contender, label, row.map50_95, row.latency_ms, status, row.policy_id, round(seconds[row.trial], 2)))
    return points


def versions() -> dict:
    found = {"python": platform.python_version()}
    for name in _VERSIONED:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found


def bench_name() -> str:
    return time.strftime("bench-%Y%m%d-%H%M%S")


def run_bench(config, *, name: str, cache_path: Path, early_stop: bool = True, command: str = "") -> BenchResult:
    """Measure every contender for the StudyConfig `config` (its `trials` per search) in this process.

    Studies `<name>-<sampler>` and `<name>-random` are created in the config's storage
    (UserError if either exists); no time limit applies, so both searches finish exactly
    `config.trials` trials. `cache_path` is the run's fresh latency cache.
    """
    import torch

    from evaluators.accuracy import RUNTIMES, measure_accuracy
    from evaluators.exceptions import UserError
    from search.setup import prepare
    from search.study import load_study
    from search.trial import evaluate_policy
    from search.tuner import check_can_start, run_search

    if config.sampler == "random":
        raise UserError("the bench compares a guided sampler against random search; set the config's sampler to tpe or nsga2.")
    config = replace(config, time_limit_min=None)  # a time limit would cut the slower search short: same trial count for both
    searches = {SEARCH: config.sampler, RANDOM: "random"}
    studies = {c: f"{name}-{s}" for c, s in searches.items()}
    for study_name in studies.values():
        check_can_start(study_name, config.storage_url, resume=False)  # before minutes of preparation
    date, walls, points = time.strftime("%Y-%m-%d %H:%M:%S %Z"), {}, []
    with _fresh_latency_cache(Path(cache_path)):
        start = time.perf_counter()
        prepared = prepare(config, name=name)
        ctx = prepared.context
        runtime = prepared.fingerprint.get("runtime")
        baseline = measure_accuracy(
            Path(ctx.outdir) / "baseline-fp32.onnx", Path(ctx.data_yaml), imgsz=ctx.imgsz, max_images=ctx.val_images,
            runtime=runtime if runtime in RUNTIMES else "onnxruntime", workdir=Path(ctx.outdir) / "fp32",
        )  # fmt: skip
        walls[FP32] = round(time.perf_counter() - start, 1)
        points.append(BenchPoint(FP32, "fp32", baseline.map50_95, prepared.baseline_latency_ms, seconds=walls[FP32]))
        print(f"[bench] FP32 baseline: p50 {prepared.baseline_latency_ms:.2f} ms, mAP50-95 {baseline.map50_95:.4f}", flush=True)

        start = time.perf_counter()
        unbounded = replace(ctx, budget_ms=math.inf)  # uniform policies are fine-tuned whatever their latency
        for label, policy in uniform_policies(ctx.space).items():
            point = _point(UNIFORM, label, evaluate_policy(policy, unbounded))
            points.append(point)
            print(f"[bench] uniform {label}: p50 {point.latency_ms:.2f} ms, mAP50-95 {point.map50_95:.4f} ({point.seconds:.0f} s)", flush=True)
        walls[UNIFORM] = round(time.perf_counter() - start, 1)

        for contender, sampler in searches.items():
            start = time.perf_counter()
            run_search(replace(config, name=studies[contender], sampler=sampler), prepared, name=studies[contender], early_stop=early_stop)
            walls[contender] = round(time.perf_counter() - start, 1)
            points += study_points(contender, load_study(studies[contender], config.storage_url))
    threads = {"device": prepared.fingerprint.get("settings", {}).get("intra_op_threads"), "torch": torch.get_num_threads(),
               "cpus": os.cpu_count()}  # fmt: skip
    return BenchResult(
        name=name, command=command, date=date, config=config.to_dict(), sampler=config.sampler, trials=config.trials,
        early_stop=early_stop, baseline_latency_ms=prepared.baseline_latency_ms, baseline_map=baseline.map50_95,
        budget_ms=ctx.budget_ms, fingerprint=prepared.fingerprint, versions=versions(), threads=threads,
        points=tuple(points), wall_seconds=walls, studies=studies, storage=config.storage_url,
    )  # fmt: skip

