"""What repairing sampled policies over the budget buys: one study config searched twice, with and without repair.

Both searches run in this one process on the same prepared study (the same L0, budget,
guided starts and segment costs, measured once; the same output folder, so a reference or
guided start is evaluated once and reused by the second search, as `squeezefit bench` does),
with the same sampler and seed and the same trial count, no time limit and no recovery.
Reported per search: how many sampled trials ended within the budget, the best mAP50-95
within it, the hypervolume of its front within the budget (`search.bench.points.hypervolume`,
reference (budget, 0)) and its wall time. Latencies come from a fresh latency cache.

    python benchmarks/repair.py studies/default.yaml --output benchmarks/results/repair.md
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from benchmark_report import command_line, publish

from evaluators.environment import ensure_offline

ensure_offline()  # before anything imports Ultralytics

from evaluators.hardware import cpu_description  # noqa: E402
from search.bench.points import best_under, hypervolume  # noqa: E402
from search.bench.run import study_points  # noqa: E402
from search.prepare import prepare  # noqa: E402
from search.study import StudyConfig, load_study  # noqa: E402
from search.tuner import run_search  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--trials", type=int, help="trials per search (default: the config's)")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"repair-bench-{stamp}"
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["SQUEEZEFIT_LATENCY_CACHE"] = str(Path(tmp) / "latency.sqlite")  # inherited by Ray's workers
        config = StudyConfig.from_yaml(
            args.config,
            storage=f"sqlite:///{Path(tmp) / 'studies.db'}",
            trials=args.trials,
            time_limit_min=None,
            recover_epochs=0,
            starts="guided",
        )
        config = replace(config, time_limit_min=None, recover_epochs=0)
        date, started = time.strftime("%Y-%m-%d %H:%M:%S %Z"), time.perf_counter()
        prepared = prepare(config, name=name)
        prepare_s = time.perf_counter() - started
        rows = []
        for label, repair in (("with repair", True), ("without repair", False)):
            study_name = f"{name}-{'repair' if repair else 'plain'}"
            started = time.perf_counter()
            run_search(replace(config, name=study_name, repair=repair), prepared, name=study_name)
            wall = time.perf_counter() - started
            study = load_study(study_name, config.storage_url)
            points = study_points(label, study)
            sampled = [p for p in points if p.label.startswith("trial ")]
            repaired = sum(1 for t in study.get_trials(deepcopy=False) if t.user_attrs.get("repaired_from"))
            best = best_under(points, prepared.context.budget_ms)
            best_sampled = best_under(sampled, prepared.context.budget_ms)
            rows.append(
                (
                    label,
                    len(sampled),
                    sum(1 for p in sampled if p.status == "complete"),
                    repaired,
                    best,
                    best_sampled,
                    hypervolume(points, prepared.context.budget_ms),
                    wall,
                )
            )
    ctx = prepared.context
    command = command_line(__file__, argv)
    lines = [
        "# Repair of sampled policies over the budget: with and without, at equal trials",
        "",
        f"Command: `{command}`  ",
        f"Date: {date}; machine: {cpu_description()}, {os.cpu_count()} CPUs; study config `{args.config}` "
        f"({config.trials} trials per search, sampler {config.sampler}, seed {config.seed}, {config.space} space, "
        f"guided starts shared); device `{ctx.device}`, L0 {prepared.baseline_latency_ms:.2f} ms, budget "
        f"{ctx.budget_ms:.2f} ms; preparation (L0, guided starts) {prepare_s / 60:.1f} min, measured once.",
        "",
        "| search | sampled trials | within the budget | repaired | best within the budget | best sampled | "
        "hypervolume (ms x mAP) | wall (min) |",
        "|---|---:|---:|---:|---|---|---:|---:|",
    ]

    def shown(point) -> str:
        return f"{point.map50_95:.4f} at {point.latency_ms:.2f} ms ({point.label})" if point else "none"

    for label, n, feasible, repaired, best, best_sampled, volume, wall in rows:
        lines.append(
            f"| {label} | {n} | {feasible} | {repaired} | {shown(best)} | {shown(best_sampled)} | {volume:.4f} | "
            f"{wall / 60:.1f} |"
        )
    lines += [
        "",
        "The second search reuses the first one's results of the references and guided starts (same policies, same "
        "output folder), so its wall time leaves them out; the sampled trials are its own.",
    ]
    publish(lines, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
