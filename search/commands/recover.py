"""`squeezefit recover`: a longer, full-data fine-tune of chosen trials, stored as new trials of the study."""

from __future__ import annotations

import argparse

from search.commands import add_address_argument, add_study_arguments, storage_url

HELP = (
    "Recover chosen policies of a study: fine-tune them longer on the whole train split, distilled from the "
    "baseline, re-measured and stored as new trials linked to their source."
)


def add_recovery_arguments(parser: argparse.ArgumentParser, epochs_flag: str = "--epochs", default=None) -> None:
    """The recovery settings (`search.recover.RecoverySettings`): epochs, train images, lr0, distillation weight."""
    from search.recover import RecoverySettings

    parser.add_argument(
        epochs_flag,
        dest="recover_epochs",
        type=int,
        default=default,
        metavar="N",
        help=f"recovery fine-tune epochs (default {RecoverySettings().epochs})"
        if default
        else "recovery fine-tune epochs",
    )
    parser.add_argument(
        "--recover-images", type=int, metavar="N", help="train on the first N train images (default: the whole split)"
    )
    parser.add_argument("--recover-lr0", type=float, help="AdamW initial learning rate (default: the policy's)")
    parser.add_argument("--recover-dis", type=float, help="distillation loss weight (default: the policy's)")
    parser.add_argument(
        "--recover-prune-steps",
        type=int,
        default=1,
        metavar="K",
        help="start again from the baseline and prune toward the policy in K steps, the epochs split between them "
        "(default 1: continue the trial's weights)",
    )
    parser.add_argument(
        "--recover-qat",
        action="store_true",
        help="quantization-aware training: the INT8 units' convs fine-tune through INT8 rounding (for a policy whose "
        "post-training INT8 costs more than 0.01 mAP50-95; a recovery prints that cost)",
    )


def recovery_settings(args: argparse.Namespace):
    from search.recover import RecoverySettings

    return RecoverySettings(
        epochs=args.recover_epochs,
        train_images=args.recover_images,
        lr0=args.recover_lr0,
        weight=args.recover_dis,
        prune_steps=args.recover_prune_steps,
        qat=args.recover_qat,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from search.recover import RecoverySettings

    add_study_arguments(parser)
    choice = parser.add_mutually_exclusive_group(required=True)
    choice.add_argument("--trial", type=int, help="recover this trial number")
    choice.add_argument("--budget-ms", type=float, help="recover the best-mAP complete trial within this p50 budget")
    choice.add_argument("--front", action="store_true", help="recover every member of the Pareto front")
    add_recovery_arguments(parser, default=RecoverySettings().epochs)
    add_address_argument(parser)


def run(args: argparse.Namespace) -> int:
    from search.cluster import joined
    from search.export import choose_trial
    from search.front import pareto_front, trials_table
    from search.front_timing import front_text, time_front
    from search.prepare import stored_context
    from search.recover import recover_trial, recoverable
    from search.study import load_study, study_record

    settings = recovery_settings(args)
    study = load_study(args.study, storage_url(args))
    record = study_record(study)
    if args.front:
        chosen = [int(n) for n in pareto_front(trials_table(study))["trial"]]
    elif args.trial is not None:
        chosen = [args.trial]
    else:
        chosen = [int(choose_trial(study, budget_ms=args.budget_ms)["trial"])]
    if not chosen:
        print(f"study {args.study!r} has no Pareto front to recover.")
        return 0
    # every choice is checked before hours of fine-tuning; a recovered trial stands for its source
    chosen = list(dict.fromkeys(recoverable(study, number).number for number in chosen))
    with joined(record["device"], args.address, record["config"].get("address")):
        ctx = stored_context(study, storage_url(args))
        for i, number in enumerate(chosen, 1):
            print(f"[recover {i}/{len(chosen)}] trial {number}", flush=True)
            new = recover_trial(study, number, ctx, settings)
            attrs = study.trials[new].user_attrs
            before = attrs["recovery"]["map_before"]
            print(
                f"[recover {i}/{len(chosen)}] trial {number} -> trial {new}: mAP50-95 {before:.4f} -> "
                f"{attrs['map50_95']:.4f} at p50 {attrs['latency_ms']:.2f} ms ({attrs['recovery']['seconds'] / 60:.1f} min)",
                flush=True,
            )
        study = load_study(args.study, storage_url(args))
        session = time_front(study)  # the front with its recovered points, timed together with the baseline
    print(f"\nPareto front of {args.study!r} (budget {record['budget_ms']:.2f} ms, {session['rounds']} rounds):")
    print(front_text(study, pareto_front(trials_table(study))))
    return 0
