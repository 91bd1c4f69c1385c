"""`squeezefit export`: write the deployable bundle of a study's chosen policy."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "Export a policy of a study (best under a budget, or a given trial) as a deployable bundle."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--study", required=True, help="study name")
    parser.add_argument("--storage", help="Optuna storage URL (default: SQLite under studies/)")
    choice = parser.add_mutually_exclusive_group(required=True)
    choice.add_argument(
        "--budget-ms", type=float, help="export the best-mAP complete trial with p50 within this budget"
    )
    choice.add_argument("--trial", type=int, help="export this trial number")
    parser.add_argument(
        "--out", type=Path, required=True, help="bundle directory (policy.yaml, model.onnx, model.pt, card.md)"
    )


def run(args: argparse.Namespace) -> int:
    from search.export import export_bundle
    from search.study import StudyConfig, load_study

    study = load_study(args.study, args.storage or StudyConfig().storage_url)
    out = export_bundle(study, args.out, budget_ms=args.budget_ms, trial=args.trial)
    print(f"exported to {out}: {', '.join(sorted(p.name for p in out.iterdir()))}")
    return 0
