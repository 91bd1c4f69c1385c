"""`squeezefit front`: the Pareto front of a study as a table (CSV/JSON on request) and a plot."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from search.commands import add_address_argument, add_study_arguments, storage_url

HELP = "Show a study's Pareto front (feasible, non-dominated trials) as a table and a plot."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_study_arguments(parser)
    parser.add_argument("--all", action="store_true", help="list every finished trial, not only the front")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.add_argument("--csv", type=Path, help="also write the table to this CSV file")
    parser.add_argument("--plot", type=Path, help="write the plot to this PNG (an .html beside it is interactive)")
    parser.add_argument(
        "--retime",
        action="store_true",
        help="time the front's members and the baseline together now, on the study's device, and show their speedups",
    )
    add_address_argument(parser)


def run(args: argparse.Namespace) -> int:
    from search.cluster import joined
    from search.front import pareto_front, plot_front, trials_table
    from search.front_timing import front_text, time_front
    from search.study import load_study, study_record

    study = load_study(args.study, storage_url(args))
    record = study_record(study)
    if args.retime:
        with joined(record["device"], args.address, record["config"].get("address")):
            time_front(study)
    budget = record["budget_ms"]
    table = trials_table(study)
    shown = table if args.all else pareto_front(table)
    if args.csv:
        shown.to_csv(args.csv, index=False)
    if args.plot:
        plot_front(table, budget, args.plot, title=args.study, html=args.plot.with_suffix(".html"))
    if args.json:
        print(json.dumps(shown.to_dict(orient="records"), indent=1))
    else:
        print(
            f"study {args.study!r}: {len(table)} finished trials, {int(table['feasible'].sum())} feasible, budget {budget:.2f} ms"
        )
        if args.all:
            cols = ["trial", "status", "map50_95", "latency_ms", "size_mb", "policy_id", "reference"]
            print(shown[cols].to_string(index=False) if not shown.empty else "  (no feasible trial)")
        else:
            print(front_text(study, shown))
    return 0
