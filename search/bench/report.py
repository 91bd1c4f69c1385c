"""The bench's report: a markdown file, a PNG of every contender's points and fronts, the raw JSON.

Rendering is pure (a `BenchResult` in, text out), so a finished run's JSON can be
re-rendered and the tests can check the headline figures without running anything.
"""

from __future__ import annotations

import json
from pathlib import Path

from search.bench.points import (
    BUDGET_FRACTIONS,
    CONTENDERS,
    FP32,
    PEER,
    PER_UNIT,
    RANDOM,
    SEARCH,
    SEARCHES,
    UNIFORM,
    BenchPoint,
    BenchResult,
    best_under,
    check_targets,
    front,
    hypervolume,
    report_budgets,
    retained,
    speedup,
)
from search.front import latency_map_axes, save_latency_map_plot

_TITLES = {FP32: "FP32 baseline", PEER: "one-command peer", UNIFORM: "uniform", RANDOM: "random search"}


def title(result: BenchResult, contender: str) -> str:
    if contender == PER_UNIT:
        return f"squeezefit search, per-unit space ({result.sampler})"
    return f"squeezefit search ({result.sampler})" if contender == SEARCH else _TITLES[contender]


def _ran(result: BenchResult) -> tuple[str, ...]:
    """The contenders this run measured, in `CONTENDERS` order (the per-unit space only with `--per-unit`)."""
    return tuple(c for c in CONTENDERS if c != PER_UNIT or result.of(c))


def _cell(point: BenchPoint | None, result: BenchResult) -> str:
    if point is None:
        return "—"
    return f"{point.map50_95:.4f} ({retained(point.map50_95, result.baseline_map):.1%}, {point.label}, {point.latency_ms:.2f} ms)"


def summary_rows(result: BenchResult) -> list[dict]:
    """The main table: each uniform policy, the FP32 baseline, and each search by its best point within the budget."""
    l0, m0 = result.baseline_latency_ms, result.baseline_map
    rows = []
    for contender in _ran(result):
        points = result.of(contender)
        if contender in SEARCHES:
            best = best_under(points, result.budget_ms)
            shown = [best] if best else []
        else:
            shown = [p for p in points if p.status == "complete"]
        for p in shown:
            rows.append(
                {
                    "contender": title(result, contender),
                    "policy": p.label,
                    "latency_ms": p.latency_ms,
                    "speedup": speedup(p.latency_ms, l0),
                    "map50_95": p.map50_95,
                    "retained": retained(p.map50_95, m0),
                }
            )
        if not shown:
            rows.append({"contender": title(result, contender), "policy": "(none within the budget)"})
    return rows


def render_report(result: BenchResult, *, plot_name: str = "") -> str:
    """The markdown report of a bench run (plot linked as `plot_name` when given)."""
    l0, m0, budget = result.baseline_latency_ms, result.baseline_map, result.budget_ms
    cfg, fp = result.config, result.fingerprint
    targets = check_targets(result)
    passed = sum(t.passed for t in targets)
    ran = _ran(result)
    lines = [
        f"# squeezefit bench — {result.name}",
        "",
        f"Targets passed: **{passed}/{len(targets)}**. FP32 baseline L0 = {l0:.3f} ms, M0 = {m0:.4f} mAP50-95; "
        f"search budget {budget:.3f} ms ({budget / l0:.2f}·L0).",
        "",
        "## How it was measured",
        "",
        f"- Command: `{result.command or 'squeezefit bench'}`",
        f"- Date: {result.date}; wall time {sum(result.wall_seconds.values()) / 60:.1f} min in one process",
        f"- Machine: {fp.get('hardware', '?')}; {fp.get('runtime', '?')} {fp.get('version', '?')}, settings {fp.get('settings', {})}",
        f"- Threads: device {result.threads.get('device')}, torch {result.threads.get('torch')}, CPUs {result.threads.get('cpus')}",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in result.versions.items()),
        f"- Study config `{cfg.get('name')}`: model `{cfg.get('model')}`, data `{cfg.get('data')}`, imgsz {cfg.get('imgsz')}, "
        f"device `{cfg.get('device')}`, fine-tune {cfg.get('finetune_epochs')} epoch(s) on {cfg.get('train_images') or 'all'} train images, "
        f"validation on {cfg.get('val_images') or 'all'} val images, calibration {cfg.get('calibration_images')} images, seed {cfg.get('seed')}"
        + (
            f", activations offered: {', '.join(cfg['activations'])} (the baseline converted "
            f"{cfg.get('activation_epochs')} epochs on the whole train split, once, shared by every contender)"
            if cfg.get("activations")
            else ""
        ),
        f"- Searches: {result.trials} trials each (the enqueued reference policies included), sampler {result.sampler} vs random"
        + (f" and {result.sampler} over the per-unit space" if PER_UNIT in ran else "")
        + f", early stopping {'on' if result.early_stop else 'off'} for all, no time limit; studies "
        + ", ".join(f"`{s}`" for s in result.studies.values())
        + f" in `{result.storage}`",
        *(
            [
                f"- Recovery: the best uniform and the best searched policy under each budget of the table below were "
                f"fine-tuned {cfg['recover_epochs']} more epochs on the whole train split, distilled from the baseline "
                "unless the policy's own fine-tune ran without distillation (a reference never fine-tuned: as a guided start "
                "of its activation fine-tunes) (`squeezefit recover`), and are shown as `<policy> recovered`; hypervolumes leave recovered points out"
            ]
            if cfg.get("recover_epochs")
            else []
        ),
        "",
        "Fairness: every contender runs on the same device in the same process, with the same fine-tune budget per "
        "candidate. Both searches start from the same enqueued reference policies (FP32, all-INT8, all-FP16, uniform "
        "pruning), which count toward their trials; a reference's result is computed once — by the uniform contender, or "
        "by the first search for FP32 — and reused. The search also enqueues its guided starts (measured on the device, "
        "their cost in its wall time) where its config asks for them; random search gets none, so the two differ in "
        "the guided starts and the policies their samplers propose. "
        "A reused reference over the budget keeps its fine-tuned mAP in the study, but both samplers rank infeasible trials "
        "by their constraint violation alone, and the bench counts it as infeasible. Every latency was timed during this "
        "run (a fresh latency cache), so a policy shared by two contenders has one latency.",
        "",
        "## Contenders",
        "",
        "L0/L: times faster than the FP32 baseline; M/M0: mAP50-95 retained. A search is shown by its best policy within its budget.",
        "",
        "| contender | policy | p50 (ms) | L0/L | mAP50-95 | M/M0 |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in summary_rows(result):
        if "latency_ms" in row:
            lines.append(
                f"| {row['contender']} | {row['policy']} | {row['latency_ms']:.3f} | {row['speedup']:.2f}x | "
                f"{row['map50_95']:.4f} | {row['retained']:.1%} |"
            )
        else:
            lines.append(f"| {row['contender']} | {row['policy']} | — | — | — | — |")
    lines += _peer_lines(result)
    lines += [
        "",
        "## Wall time per contender",
        "",
        "| contender | wall (s) | policies | of which complete | policy compute (s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for c in ran:
        pts = result.of(c)
        lines.append(
            f"| {title(result, c)} | {result.wall_seconds.get(c, 0):.0f} | {len(pts)} | "
            f"{sum(p.status == 'complete' for p in pts)} | {sum(p.seconds for p in pts):.0f} |"
        )
    lines += [
        "",
        "Policy compute counts a reused reference result at the cost it had when first measured.",
        "",
        "## Best mAP50-95 under a budget",
        "",
        "Each cell: mAP50-95 (M/M0, policy, p50).",
        "",
        "| budget | ms | best peer | uniform (best) | random search | squeezefit search | search − uniform |",
        "|---|---:|---|---|---|---|---:|",
    ]
    for cap in report_budgets(budget, l0):
        q, u, r, s = (best_under(result.of(c), cap) for c in (PEER, UNIFORM, RANDOM, SEARCH))
        gap = f"{s.map50_95 - u.map50_95:+.4f}" if s and u else "—"
        cells = " | ".join(_cell(x, result) for x in (q, u, r, s))
        named = f"{cap / l0:.2g}·L0" + (" (search budget)" if cap == budget else "")
        lines.append(f"| {named} | {cap:.3f} | {cells} | {gap} |")
    fronts = [c for c in (UNIFORM, RANDOM, PER_UNIT, SEARCH) if c in ran]
    hv = {c: hypervolume(result.of(c), budget) for c in fronts}
    lines += [
        "",
        "## Hypervolume",
        "",
        f"Of each contender's complete points within the search budget, in (p50 ms, mAP50-95) space, against the common "
        f"reference point ({budget:.3f} ms, 0): points beyond the budget are left out for every contender, because the "
        f"searches never fine-tune there.",
        "",
        "| front | points on it | hypervolume (ms·mAP) | vs random |",
        "|---|---:|---:|---:|",
    ]
    for c in fronts:
        ratio = f"{hv[c] / hv[RANDOM]:.2f}x" if hv[RANDOM] > 0 else "—"
        lines.append(f"| {title(result, c)} | {len(front(result.of(c), budget))} | {hv[c]:.5f} | {ratio} |")
    lines += ["", "## Targets", "", "| target | result | measured |", "|---|---|---|"]
    lines += [f"| {t.name} | {'PASS' if t.passed else 'FAIL'} | {t.detail} |" for t in targets]
    for c in [c for c in (SEARCH, RANDOM, PER_UNIT) if c in ran]:
        lines += [
            "",
            f"## Front of the {title(result, c)}",
            "",
            "| policy | p50 (ms) | L0/L | mAP50-95 | M/M0 |",
            "|---|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {p.label} | {p.latency_ms:.3f} | {speedup(p.latency_ms, l0):.2f}x | {p.map50_95:.4f} | {retained(p.map50_95, m0):.1%} |"
            for p in front(result.of(c), budget)
        ] or ["| (empty) | | | | |"]
    if plot_name:
        lines += ["", f"![mAP50-95 vs p50 latency of every contender]({plot_name})"]
    return "\n".join(lines) + "\n"


def _peer_lines(result: BenchResult) -> list[str]:
    """The peers section: how each was made and run, its speedup with the interval, or why it was skipped."""
    if not result.peers:
        return []
    lines = [
        "",
        "## One-command peers",
        "",
        "Each exported from the baseline by Ultralytics with its defaults, validated by Ultralytics' validator on its "
        "own file, and timed in ONE round-robin session with the bench device's FP32 reference (every peer on its own "
        "runtime, the bench device's thread count); p50 = ratio to the reference x L0.",
        "",
        "| peer | made by | runs on | p50 (ms) | L0/L (95%) | mAP50-95 | M/M0 |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    l0, m0 = result.baseline_latency_ms, result.baseline_map
    for peer in result.peers:
        runtime = peer["runtime"] + (f" ({peer['precision']})" if peer.get("precision") else "")
        if peer["skipped"]:
            lines.append(f"| {peer['label']} | `{peer['command']}` | {runtime} | skipped: {peer['skipped']} | | | |")
            continue
        lines.append(
            f"| {peer['label']} | `{peer['command']}` | {runtime} | {peer['ratio'] * l0:.3f} | "
            f"{1 / peer['ratio']:.2f}x ({1 / peer['ratio_high']:.2f}-{1 / peer['ratio_low']:.2f}) | "
            f"{peer['map50_95']:.4f} | {retained(peer['map50_95'], m0):.1%} |"
        )
    return lines


def plot_bench(result: BenchResult, png: Path) -> Path:
    """mAP50-95 vs p50 latency: every contender's complete points, the two search fronts, the peers, budget lines."""
    l0, budget = result.baseline_latency_ms, result.budget_ms
    fig, ax = latency_map_axes((9, 5.5))
    # The random front is drawn last, dashed, so it stays visible where the two fronts coincide.
    series = ((SEARCH, "#4C72B0", "-", 3.0), (PER_UNIT, "#55A868", ":", 2.0), (RANDOM, "#555555", "--", 1.5))
    for c, colour, style, width in series:
        pts = [p for p in result.of(c) if p.status == "complete"]
        ax.scatter([p.latency_ms for p in pts], [p.map50_95 for p in pts], c=colour, alpha=0.4, s=18)
        if f := front(pts, budget):
            ax.step(
                [p.latency_ms for p in f],
                [p.map50_95 for p in f],
                where="post",
                c=colour,
                ls=style,
                lw=width,
                marker="o",
                ms=4,
                label=f"{title(result, c)} front",
            )
    _labelled(ax, result.of(UNIFORM), marker="s", colour="#DD8452", size=40, label="uniform", dy=4)
    _labelled(ax, result.of(PEER), marker="^", colour="#8172B3", size=60, label="one-command peers", dy=-10)
    ax.scatter([l0], [result.baseline_map], marker="*", c="k", s=120, label="FP32 baseline", zorder=3)
    for fraction, style in zip(BUDGET_FRACTIONS, ("--", "-.", ":"), strict=False):
        ax.axvline(fraction * l0, ls=style, c="#C44E52", lw=1, label=f"{fraction:g}·L0 = {fraction * l0:.2f} ms")
    if all(abs(budget - f * l0) > 1e-3 * l0 for f in BUDGET_FRACTIONS):
        ax.axvline(budget, ls="--", c="k", lw=1, label=f"search budget {budget:.2f} ms")
    heading = f"{result.name}: {result.config.get('name')} on {result.config.get('device')}"
    return save_latency_map_plot(fig, ax, png, title=heading, legend_size=7)


def _labelled(ax, points, *, marker: str, colour: str, size: float, label: str, dy: float) -> None:
    """The complete `points` as one marked series, each with its label beside it (`dy` points above)."""
    shown = [p for p in points if p.status == "complete"]
    if not shown:
        return
    ax.scatter(
        [p.latency_ms for p in shown],
        [p.map50_95 for p in shown],
        marker=marker,
        c=colour,
        s=size,
        label=label,
        zorder=3,
    )
    for p in shown:
        ax.annotate(p.label, (p.latency_ms, p.map50_95), fontsize=7, xytext=(4, dy), textcoords="offset points")


def write_outputs(result: BenchResult, report: Path) -> tuple[Path, Path, Path]:
    """Write the markdown `report`, its PNG and the raw JSON beside it; return (md, png, json)."""
    report = Path(report)
    report.parent.mkdir(parents=True, exist_ok=True)
    png = plot_bench(result, report.with_suffix(".png"))
    raw = report.with_suffix(".json")
    raw.write_text(json.dumps(result.to_dict(), indent=1))
    report.write_text(render_report(result, plot_name=png.name))
    return report, png, raw
