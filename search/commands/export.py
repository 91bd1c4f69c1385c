"""`squeezefit export`: write the deployable bundle of a study's chosen policy."""

from __future__ import annotations

import argparse
from pathlib import Path

from search.commands import add_address_argument, add_study_arguments, storage_url
from search.commands.recover import add_recovery_arguments, recovery_settings

HELP = "Export a policy of a study (best under a budget, or a given trial) as a deployable bundle."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_study_arguments(parser)
    choice = parser.add_mutually_exclusive_group(required=True)
    choice.add_argument(
        "--budget-ms", type=float, help="export the best-mAP complete trial with p50 within this budget"
    )
    choice.add_argument("--trial", type=int, help="export this trial number")
    parser.add_argument(
        "--out", type=Path, required=True, help="bundle directory (policy.yaml, model.onnx, model.pt, card.md)"
    )
    add_recovery_arguments(parser, "--recover-epochs")
    add_address_argument(parser)


def run(args: argparse.Namespace) -> int:
    from search.cluster import joined
    from search.export import export_bundle
    from search.study import load_study, study_record

    study = load_study(args.study, storage_url(args))
    record = study_record(study)
    with joined(record["device"], args.address, record["config"].get("address")):  # the card re-times on it
        if args.recover_epochs:  # recover the chosen trial first, then export the recovered one
            number = _recovered(study, args)
            out = export_bundle(study, args.out, trial=number)
        else:
            out = export_bundle(study, args.out, budget_ms=args.budget_ms, trial=args.trial)
    print(f"exported to {out}: {', '.join(sorted(p.name for p in out.iterdir()))}")
    return 0


def _recovered(study, args: argparse.Namespace) -> int:
    """The trial number of the recovery of the chosen trial (made now, or stored)."""
    from search.export import choose_trial
    from search.prepare import stored_context
    from search.recover import recover_trial, recoverable

    settings = recovery_settings(args)  # bad settings fail before anything runs
    chosen = args.trial if args.trial is not None else int(choose_trial(study, budget_ms=args.budget_ms)["trial"])
    number = recoverable(study, chosen).number
    print(f"recovering trial {number} before the export", flush=True)
    return recover_trial(study, number, stored_context(study, storage_url(args)), settings)
