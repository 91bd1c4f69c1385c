"""`squeezefit transfer`: reuse a finished study on a new device, then optionally continue its search there."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

from search.commands import add_study_arguments, storage_url

HELP = (
    "Reuse a study on a new device: latency is measured again, mAP validated again only where it can change "
    "the front, the search continues warm."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_study_arguments(parser, "the finished source study; the new study goes into its storage")
    parser.add_argument("--device", required=True, help="the new device, e.g. openvino-cpu, ort-cpu:2")
    parser.add_argument(
        "--name",
        help="name of the new study (default <study>-on-<device>); an existing transfer of the same study resumes",
    )
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--budget-ms", type=float, help="latency budget (p50, ms) on the new device")
    budget.add_argument("--budget-fraction", type=float, help="budget as a fraction of the new device's FP32 baseline")
    parser.add_argument(
        "--continue",
        dest="continue_trials",
        type=int,
        default=0,
        metavar="N",
        help="then run N more trials of the search on the new device (default 0)",
    )
    parser.add_argument(
        "--select",
        choices=("all", "front+topK"),
        default="all",
        help="carry every complete trial (and still-too-slow untuned ones), or the source front plus the top K by mAP",
    )
    parser.add_argument("--top-k", type=int, default=5, help="K for --select front+topK (default 5)")
    parser.add_argument(
        "--map-margin",
        type=float,
        default=None,
        metavar="M",
        help="validate a trial's mAP again only if its source mAP plus M (mAP50-95) could still put it on the new "
        "front; the others keep the source's mAP, marked carried (default 0.01; a large value validates every one)",
    )
    parser.add_argument(
        "--no-early-stop", action="store_true", help="never stop a fine-tune of the continued search early"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON (progress goes to stderr)")
    parser.add_argument(
        "--address", help="measure the new device on this Ray cluster's node that holds it (HOST:PORT, or auto)"
    )


def run(args: argparse.Namespace) -> int:
    from evaluators.vocabulary import UserError
    from search.cluster import joined
    from search.transfer import MAP_MARGIN, transfer_study

    if args.continue_trials < 0 or args.top_k < 0:
        raise UserError("--continue and --top-k must be zero or more.")
    storage = storage_url(args)
    progress = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    with progress, joined(args.device, args.address, stored=False) as device:
        report = transfer_study(
            args.study,
            storage,
            device,
            name=args.name,
            budget_ms=args.budget_ms,
            budget_fraction=args.budget_fraction,
            continue_trials=args.continue_trials,
            select=args.select,
            top_k=args.top_k,
            early_stop=not args.no_early_stop,
            map_margin=MAP_MARGIN if args.map_margin is None else args.map_margin,
        )
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
    else:
        print_report(report)
    return 0


def print_report(report) -> None:
    """The human-readable report: carried trials, rank correlation, time, the new front and what changed on it."""
    import pandas as pd

    r = report
    share = (
        f" ({r.time_fraction:.0%} of the source search's {r.source_seconds / 60:.1f} min)"
        if r.time_fraction is not None
        else ""
    )
    print(
        f"\nstudy {r.source_study!r} ({r.source_device}) -> {r.study!r} ({r.device}): {len(r.trials)} trial(s) carried "
        f"in {r.seconds / 60:.1f} min{share}, no fine-tuning"
    )
    steps = ", ".join(f"{step} {s / 60:.1f}" for step, s in r.step_seconds.items())
    prepared = "" if r.prepare_seconds is None else f"preparation {r.prepare_seconds / 60:.1f}; "
    print(f"time per step (min): {steps or 'none'}; {prepared}the rest: start-up, trials left out, bookkeeping")
    margin = "" if r.map_margin is None else f" (margin {r.map_margin:g})"
    print(
        f"mAP: {r.map_sources['reused']} reused, {r.map_sources['revalidated']} validated again, "
        f"{r.map_sources['carried']} carried from the source without validation{margin}: "
        f"{r.validations_skipped} validation(s) skipped; a carried mAP is never on the front"
    )
    print(
        f"budget {r.budget_ms:.2f} ms on {r.device} (FP32 baseline {r.baseline_latency_ms:.2f} ms); "
        f"source: {r.source_budget_ms:.2f} ms on {r.source_device} (baseline {r.source_baseline_latency_ms:.2f} ms)"
    )
    rows = [
        {
            "from": t.source_trial,
            "trial": t.trial,
            "reference": t.reference,
            "status": t.status,
            "mAP src": round(t.source_map50_95, 4),
            "mAP here": round(t.map50_95, 4),
            "mAP from": t.map_source,
            "ms src": round(t.source_latency_ms, 2),
            "ms here": round(t.latency_ms, 2),
            "changes": "; ".join(t.changes),
        }
        for t in r.trials
    ]
    print(pd.DataFrame(rows).to_string(index=False) if rows else "  (nothing carried)")
    for number, reason in r.skipped:
        print(f"  skipped source trial {number}: {reason}")
    rho = (
        "undefined (fewer than 3 trials or constant latency)"
        if r.latency_rank_correlation is None
        else f"{r.latency_rank_correlation:.3f}"
    )
    print(f"latency rank correlation (Spearman) {r.source_device} vs {r.device}: {rho}")
    if r.continued:
        print(f"continued search: {r.continued} trial(s) in {r.continue_seconds / 60:.1f} min")
    print(f"\nPareto front on {r.device} (budget {r.budget_ms:.2f} ms):")
    front = pd.DataFrame(
        [
            {**row, "transferred_from": "" if row["transferred_from"] is None else row["transferred_from"]}
            for row in r.front
        ]
    )
    print(front.to_string(index=False) if not front.empty else "  (empty)")
    if not r.front_measured:
        print("warning: the study's stored front (squeezefit front) holds a trial whose mAP was carried, not measured")
    names = {t.source_trial: t.reference or t.policy_id for t in r.trials}

    def listing(numbers) -> str:
        return ", ".join(f"trial {n} ({names.get(n, '?')})" for n in numbers) or "none"

    print(f"on the front of {r.source_device} but not of {r.device}: {listing(r.lost_from_front)}")
    print(f"on the front of {r.device} but not of {r.source_device}: {listing(r.gained_on_front)}")
    if r.new_on_front:
        print(f"on the front, searched on {r.device} after the transfer: trial {', '.join(map(str, r.new_on_front))}")
