"""The benchmark run: every contender measured in this process on one device (see `search.bench.points`)."""

from __future__ import annotations

import contextlib
import math
import os
import platform
import time
from dataclasses import asdict, replace
from importlib import metadata
from pathlib import Path

from search.bench.points import (
    FP32,
    PEER,
    PER_UNIT,
    RANDOM,
    SEARCH,
    UNIFORM,
    BenchPoint,
    BenchResult,
    best_under,
    report_budgets,
)

_VERSIONED = ("squeezefit", "torch", "ultralytics", "torch-pruning", "onnxruntime", "openvino", "nncf", "optuna", "ray")


def uniform_policies(space) -> dict:
    """The uniform contenders: every reference policy but FP32, plus pruning 0.5 without distillation."""
    from spaces.distillation import DistillationSettings
    from spaces.policy import Policy

    refs = {k: v for k, v in space.reference_policies().items() if k != "fp32"}
    half = f"prune-0.5-{space.fastest_precision()}"
    if half in refs and space.max_epochs > 0:
        no_kd = DistillationSettings(enabled=False, epochs=space.max_epochs)
        refs[f"{half}-no-distill"] = Policy(
            pruning=refs[half].pruning, precision=refs[half].precision, distillation=no_kd
        )
    return refs


@contextlib.contextmanager
def _fresh_latency_cache(path: Path):
    """Time every artifact in this run: a new latency cache file, inherited by Ray's workers.

    The path is made absolute: Ray Tune runs each trial in a working directory of its own, where a relative
    path named a fresh file per trial, so no trial shared a structure's latency with another trial or with a
    recovery (a recovered point was re-timed, 7-9% off its trial's ratio on OpenVINO).
    """
    previous = os.environ.get("SQUEEZEFIT_LATENCY_CACHE")
    path = path.resolve()
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
    return BenchPoint(
        contender,
        label,
        result.map50_95,
        result.latency_ms,
        result.status,
        result.policy_id,
        round(sum(result.seconds.values()), 2),
    )


def study_points(contender: str, study) -> list[BenchPoint]:
    """A study's finished trials as points; a complete trial over the study's budget counts as infeasible."""
    from search.front import trials_table

    seconds = {t.number: sum((t.user_attrs.get("seconds") or {}).values()) for t in study.get_trials(deepcopy=False)}
    points = []
    for row in trials_table(study).itertuples():
        status = "complete" if row.feasible else ("infeasible" if row.status == "complete" else row.status)
        label = row.reference or f"trial {row.trial}"
        points.append(
            BenchPoint(
                contender, label, row.map50_95, row.latency_ms, status, row.policy_id, round(seconds[row.trial], 2)
            )
        )
    return points


def recover_bests(points: list[BenchPoint], ctx, epochs: int, budgets_ms, *, log=print) -> list[BenchPoint]:
    """The uniform set's and the search's best point under each of `budgets_ms` (`report_budgets`), recovered
    `epochs` epochs on the whole train split (`search.recover`; one recovery per policy), as recovered points."""
    from search.recover import RecoverySettings, recover_policy
    from search.trial_result import load_result
    from spaces.policy import Policy

    settings, done, recovered = RecoverySettings(epochs=epochs), set(), []
    for budget in budgets_ms:
        for contender in (UNIFORM, SEARCH):
            best = best_under([p for p in points if p.contender == contender], budget)
            if best is None or (contender, best.policy_id) in done:
                continue
            done.add((contender, best.policy_id))
            evaluated = load_result(Path(ctx.outdir) / best.policy_id / "result.json")
            result = recover_policy(Policy.from_dict(evaluated.policy), evaluated.to_dict(), ctx, settings)
            point = replace(
                _point(contender, f"{best.label} recovered", result), policy_id=best.policy_id, recovered=True
            )
            log(
                f"[bench] {contender} {best.label} recovered ({epochs} epochs): mAP50-95 {best.map50_95:.4f} -> "
                f"{point.map50_95:.4f} at {point.latency_ms:.2f} ms ({point.seconds / 60:.1f} min)",
                flush=True,
            )
            recovered.append(point)
    return recovered


def versions() -> dict:
    found = {"python": platform.python_version()}
    for name in _VERSIONED:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found


def bench_name() -> str:
    return time.strftime("bench-%Y%m%d-%H%M%S")


def run_bench(
    config,
    *,
    name: str,
    cache_path: Path,
    early_stop: bool = True,
    command: str = "",
    per_unit: bool = False,
) -> BenchResult:
    """Measure every contender for the StudyConfig `config` (its `trials` per search) in this process.

    Studies `<name>-<sampler>` and `<name>-random` (and `<name>-per-unit-<sampler>` with
    `per_unit`: the config's search over the per-unit space) are created in the config's
    storage (UserError if one exists); no time limit applies, so every search finishes exactly
    `config.trials` trials. `cache_path` is the run's fresh latency cache.
    """
    import torch

    from evaluators.accuracy import measure_accuracy
    from evaluators.registry import get_device
    from evaluators.vocabulary import UserError
    from search.bench.peers import measure_peers
    from search.front_timing import session_settings
    from search.guided import guided_starts
    from search.prepare import prepare
    from search.study import load_study
    from search.trial import evaluate_policy
    from search.tuner import check_can_start, run_search

    if config.sampler == "random":
        raise UserError(
            "the bench compares a guided sampler against random search; set the config's sampler to tpe or nsga2."
        )
    if per_unit and config.space == "per-unit":
        raise UserError(
            "the per-unit contender compares the segments space with the per-unit one; the config "
            "already searches per unit: set its space to segments."
        )
    config = replace(
        config, time_limit_min=None
    )  # a time limit would cut the slower search short: same trial count for both
    searches = {SEARCH: config.sampler, RANDOM: "random", **({PER_UNIT: config.sampler} if per_unit else {})}
    suffixes = {SEARCH: config.sampler, RANDOM: "random", PER_UNIT: f"per-unit-{config.sampler}"}
    studies = {c: f"{name}-{suffixes[c]}" for c in searches}
    for study_name in studies.values():
        check_can_start(study_name, config.storage_url, resume=False)  # before minutes of preparation
    date, walls, points = time.strftime("%Y-%m-%d %H:%M:%S %Z"), {}, []
    with _fresh_latency_cache(Path(cache_path)):
        start = time.perf_counter()
        prepared = prepare(config, name=name, guided=False)  # the search's guided starts count in its own wall
        ctx = prepared.context
        baseline = measure_accuracy(
            Path(ctx.outdir) / "baseline-fp32.onnx",
            Path(ctx.data_yaml),
            imgsz=ctx.imgsz,
            max_images=ctx.val_images,
            runtime=get_device(config.device).accuracy_runtime,
            workdir=Path(ctx.outdir) / "fp32",
        )
        walls[FP32] = round(time.perf_counter() - start, 1)
        points.append(BenchPoint(FP32, "fp32", baseline.map50_95, prepared.baseline_latency_ms, seconds=walls[FP32]))
        print(
            f"[bench] FP32 baseline: p50 {prepared.baseline_latency_ms:.2f} ms, mAP50-95 {baseline.map50_95:.4f}",
            flush=True,
        )

        start = time.perf_counter()
        peers = measure_peers(ctx, get_device(config.device), session_settings(prepared.to_record(config)))
        points += [
            BenchPoint(PEER, p.label, p.map50_95, p.ratio * prepared.baseline_latency_ms, seconds=p.seconds)
            for p in peers
            if not p.skipped
        ]
        walls[PEER] = round(time.perf_counter() - start, 1)

        start = time.perf_counter()
        unbounded = replace(ctx, budget_ms=math.inf)  # uniform policies are fine-tuned whatever their latency
        for label, policy in uniform_policies(ctx.space).items():
            point = _point(UNIFORM, label, evaluate_policy(policy, unbounded))
            points.append(point)
            print(
                f"[bench] uniform {label}: p50 {point.latency_ms:.2f} ms, mAP50-95 {point.map50_95:.4f} ({point.seconds:.0f} s)",
                flush=True,
            )
        walls[UNIFORM] = round(time.perf_counter() - start, 1)

        guided, costs = {}, None  # measured once, by the first search that takes them; their cost in its wall time
        for contender, sampler in searches.items():
            start = time.perf_counter()
            # the per-unit contender: the same search over one ratio and one precision per block
            searched = replace(ctx, space=replace(ctx.space, segments=())) if contender == PER_UNIT else ctx
            # random search is the plain baseline: the uniform references, no guided starts; the searched spaces
            # share the same starts (unit-level policies, valid in both), so they differ in what their samplers find
            if contender != RANDOM and config.starts == "guided" and not guided:
                guided, costs = guided_starts(searched)
            starts, start_costs = (guided, costs) if contender != RANDOM else ({}, None)
            run_search(
                replace(
                    config,
                    name=studies[contender],
                    sampler=sampler,
                    space="per-unit" if contender == PER_UNIT else config.space,
                ),
                replace(prepared, context=searched, starts=starts, costs=start_costs),
                name=studies[contender],
                early_stop=early_stop,
            )
            walls[contender] = round(time.perf_counter() - start, 1)
            points += study_points(contender, load_study(studies[contender], config.storage_url))
        if config.recover_epochs:
            recovered = recover_bests(
                points, ctx, config.recover_epochs, report_budgets(ctx.budget_ms, prepared.baseline_latency_ms)
            )
            points += recovered
            for point in recovered:
                walls[point.contender] = round(walls[point.contender] + point.seconds, 1)
    settings = prepared.fingerprint.get("settings", {})
    threads = {
        "device": settings.get("intra_op_threads", settings.get("inference_num_threads")),  # ONNX Runtime, OpenVINO
        "torch": torch.get_num_threads(),
        "cpus": os.cpu_count(),
    }
    return BenchResult(
        name=name,
        command=command,
        date=date,
        config=config.to_dict(),
        sampler=config.sampler,
        trials=config.trials,
        early_stop=early_stop,
        baseline_latency_ms=prepared.baseline_latency_ms,
        baseline_map=baseline.map50_95,
        budget_ms=ctx.budget_ms,
        fingerprint=prepared.fingerprint,
        versions=versions(),
        threads=threads,
        points=tuple(points),
        wall_seconds=walls,
        studies=studies,
        storage=config.storage_url,
        peers=tuple(asdict(p) for p in peers),
    )
