"""`squeezefit search`: run a study against a latency budget, then print its front and export the best."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from search.commands import add_config_argument, add_storage_argument, config_overrides
from search.samplers import SAMPLERS
from search.scheduler import SCHEDULERS
from search.study import SPACES, STARTS

HELP = "Search compression policies for a model against a device's latency budget."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    # Flags whose dest is a StudyConfig field override the file's setting.
    parser.add_argument("--study", dest="name", help="study name (default: the config's name)")
    add_storage_argument(parser)
    parser.add_argument("--trials", type=int, help="finished trials the study should reach")
    parser.add_argument("--budget-ms", type=float, help="latency budget (p50, ms) on the device")
    parser.add_argument("--device", help="device name, e.g. ort-cpu, ort-cpu:2, openvino-cpu")
    parser.add_argument("--sampler", choices=tuple(SAMPLERS))
    parser.add_argument("--time-limit-min", type=float, help="stop starting trials after this many minutes")
    parser.add_argument(
        "--pruning-importance", help="how pruned channels are ranked: magnitude (the default), lamp, taylor or hessian"
    )
    parser.add_argument(
        "--pruning-round-to", type=int, help="every pruned channel group keeps a multiple of this many (default 8)"
    )
    parser.add_argument(
        "--space",
        choices=SPACES,
        help="one ratio and one precision per graph segment (segments, the default) or per unit (per-unit)",
    )
    parser.add_argument(
        "--starts",
        choices=STARTS,
        help="enqueue the uniform references plus guided starts measured on the device (guided, the default) "
        "or the references only",
    )
    parser.add_argument("--concurrency", type=int, help="trials run at once (default 1)")
    parser.add_argument(
        "--retries", type=int, help="restart a trial whose process or node died up to N times (default 0: FAIL)"
    )
    parser.add_argument(
        "--address", help="run on this Ray cluster (HOST:PORT, or auto for RAY_ADDRESS); default: a local Ray"
    )
    parser.add_argument(
        "--scheduler",
        choices=SCHEDULERS,
        help="fifo (every trial fine-tunes its epochs) or asha (Ray Tune's ASHA stops the less promising after "
        "1, 3, 9 ... epochs)",
    )
    parser.add_argument(
        "--recover-epochs",
        type=int,
        metavar="N",
        help="then recover the best policy under the budget N epochs on the whole train split before exporting it "
        "(default 0: export it as searched)",
    )
    parser.add_argument(
        "--no-repair",
        dest="repair",
        action="store_false",
        default=None,
        help="score a sampled policy over the budget as infeasible instead of shaving it until it fits",
    )
    parser.add_argument(
        "--no-depth",
        dest="depth",
        action="store_false",
        default=None,
        help="search channels only: never remove the inner blocks of C3k2/C2PSA blocks",
    )
    parser.add_argument("--resume", action="store_true", help="continue a stopped study of the same name")
    parser.add_argument("--no-early-stop", action="store_true", help="never stop a fine-tune early")
    parser.add_argument(
        "--out", type=Path, help="where to export the best policy under the budget (default out/<study>)"
    )


def run(args: argparse.Namespace) -> int:
    from search.cluster import connect, disconnect
    from search.study import StudyConfig, load_study, study_record
    from search.tuner import check_can_start

    config = StudyConfig.from_yaml(args.config, **config_overrides(args))
    if args.budget_ms is not None:
        config = replace(
            config, budget_fraction=None
        )  # an absolute budget on the command line replaces the file's rule
    if config.address:  # first, so a bad address leaves the storage untouched; the device is measured on its node
        config = replace(config, device=connect(config.address, config.device))
    try:
        exists = check_can_start(config.name, config.storage_url, resume=args.resume)  # before minutes of preparation
        record = study_record(load_study(config.name, config.storage_url)) if exists else None
        if record is not None:
            check_same_space(config, record)
        return _search(config, record, args)
    finally:
        disconnect()


def check_same_space(config, record: dict) -> None:
    """A resumed study goes on in the space it was searched in (a record without one was per-unit, the old default)."""
    from evaluators.vocabulary import UserError

    stored = record["config"].get("space", "per-unit")
    if stored != config.space:
        raise UserError(
            f"study {config.name!r} was searched in the {stored} space; pass --space {stored} to resume it."
        )


def _search(config, record, args: argparse.Namespace) -> int:
    from search.export import export_bundle
    from search.front import pareto_front, plot_front, trials_table
    from search.front_timing import front_text
    from search.prepare import prepare
    from search.study import load_study
    from search.tuner import run_search

    prepared = prepare(config, record=record)  # a resumed study keeps its L0 and budget
    outcome = run_search(config, prepared, name=config.name, resume=args.resume, early_stop=not args.no_early_stop)
    study = load_study(config.name, config.storage_url)
    recovered = _recover_best(study, prepared.context, config.recover_epochs) if config.recover_epochs else None
    table = trials_table(study)
    front = pareto_front(table)
    out = args.out or Path("out") / config.name
    if recovered is not None:  # the better of the recovery and its source, re-timed together with the baseline
        bundle = export_bundle(study, out / "best", trial=recovered)
    else:  # the search has just re-timed its front with the baseline: the card takes that session
        bundle = (
            export_bundle(study, out / "best", budget_ms=outcome.budget_ms, retime=False) if not front.empty else None
        )
    print(
        f"\nstudy {config.name!r}: {len(table)} finished trials in {outcome.seconds / 60:.1f} min; Pareto front (budget {outcome.budget_ms:.2f} ms):"
    )
    print(front_text(study, front))
    png = plot_front(
        table, outcome.budget_ms, out / "front.png", title=f"{config.name} on {config.device}", html=out / "front.html"
    )
    print(f"front plot: {png}")
    if bundle is not None:
        print(f"best policy under the budget exported to {bundle}")
    return 0


def _recover_best(study, ctx, epochs: int) -> int | None:
    """Recover the best trial under the study's budget `epochs` epochs (`search.recover`); the number of the best
    trial under the budget after it — the recovered trial, or its source where the recovery scored lower (a model
    near its ceiling can lose a little in more epochs) — or None when no trial fits the budget."""
    from search.front import best_under, trials_table
    from search.recover import RecoverySettings, recover_trial

    best = best_under(trials_table(study), ctx.budget_ms)
    if best is None:
        return None
    print(f"\nrecovering the best policy under the budget, trial {int(best['trial'])}: {epochs} epochs", flush=True)
    number = recover_trial(study, int(best["trial"]), ctx, RecoverySettings(epochs=epochs))
    attrs = study.trials[number].user_attrs
    print(
        f"trial {int(best['trial'])} recovered as trial {number}: mAP50-95 {attrs['recovery']['map_before']:.4f} -> "
        f"{attrs['map50_95']:.4f} at p50 {attrs['latency_ms']:.2f} ms ({attrs['recovery']['seconds'] / 60:.1f} min)",
        flush=True,
    )
    after = best_under(trials_table(study), ctx.budget_ms)
    if int(after["trial"]) != number:
        print(
            f"the recovery did not improve it: trial {int(after['trial'])} stays the best under the budget", flush=True
        )
    return int(after["trial"])
