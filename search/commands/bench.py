"""`squeezefit bench`: the searched front against uniform compression and random search, in one run."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from search.commands import add_config_argument, add_storage_argument, config_overrides

HELP = "Benchmark the search against uniform compression and random search on one device, in one run."

# Trials per search (the six reference policies included): the default study's bench fits
# in 90 minutes on 2 cores even at the slow end of the per-policy costs in EPILOG.
DEFAULT_TRIALS = 20

EPILOG = f"""\
Contenders: the FP32 baseline; Ultralytics' one-command exports; uniform policies (all-<p>
for every precision the device offers, uniform pruning 0.25/0.5/0.75 at the device's fastest
precision with distillation, 0.5 without); random search; the configured search. The
searches run the same number of trials (the reference policies included, computed once and
shared), the config's budget and fine-tune fidelity, the same early-stopping setting and no
time limit.

Duration on 2 cores (ort-cpu, 1 thread), studies/default.yaml (imgsz 192, 3 fine-tune
epochs on 600 images, validation on 300): a fine-tuned policy costs 80-155 s (20-45 s
per epoch with its validation, plus ~15 s of pruning, timing, INT8 calibration and
scoring), a policy screened out by the budget ~10 s; preparation, the FP32 baseline and the
uniform set take 6-11 min. With the default {DEFAULT_TRIALS} trials per search (14 sampled each)
the bench ends in ~30-55 min, ~85 min if every sampled policy is fine-tuned for 3 epochs
at the slow end; the one-command peers add ~1 min. Recovery (`recover_epochs`, 10 in
studies/default.yaml) adds ~70 s per epoch for each distinct best policy recovered (at most
eight: uniform and search under the search's budget and 0.5, 0.33 and 0.25 x L0); --recover-epochs 0 leaves it out.
--per-unit adds a third search of the same size, with the search's guided starts.
studies/smoke.yaml --trials 7 ends in ~3 min.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    add_config_argument(parser)
    parser.add_argument("--device", help="bench on this device instead of the config's, e.g. openvino-cpu, ort-cpu:2")
    parser.add_argument(
        "--trials",
        type=int,
        default=DEFAULT_TRIALS,
        help=f"finished trials per search, the references included (default {DEFAULT_TRIALS})",
    )
    parser.add_argument("--out", type=Path, help="output directory (default out/<bench name>)")
    add_storage_argument(
        parser, "Optuna storage URL for the two studies (default: the config's, or SQLite under studies/)"
    )
    parser.add_argument(
        "--report", type=Path, help="markdown report path; the PNG and JSON go beside it (default <out>/bench.md)"
    )
    parser.add_argument("--no-early-stop", action="store_true", help="never stop a fine-tune early, in every search")
    parser.add_argument(
        "--per-unit",
        action="store_true",
        help="also run the config's search over the per-unit space at equal trials (what the segments space buys)",
    )
    parser.add_argument(
        "--recover-epochs",
        type=int,
        metavar="N",
        help="recover the best uniform and searched policy under each budget N epochs on the whole train split "
        "(default: the config's recover_epochs; 0: none)",
    )


def run(args: argparse.Namespace) -> int:
    from search.bench.points import check_targets
    from search.bench.report import write_outputs
    from search.bench.run import bench_name, run_bench
    from search.study import StudyConfig

    config = StudyConfig.from_yaml(args.config, **config_overrides(args))
    name = bench_name()
    out = args.out or Path("out") / name
    command = "squeezefit bench " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if "bench" in sys.argv[1:2] else ""
    result = run_bench(
        config,
        name=name,
        cache_path=out / "latency-cache.sqlite",
        early_stop=not args.no_early_stop,
        command=command,
        per_unit=args.per_unit,
    )
    report, png, raw = write_outputs(result, args.report or out / "bench.md")
    print(f"\nbench {name}: wall {sum(result.wall_seconds.values()) / 60:.1f} min")
    for target in check_targets(result):
        print(f"  {'PASS' if target.passed else 'FAIL'}  {target.name}: {target.detail}")
    print(f"report: {report}\nplot: {png}\nraw results: {raw}")
    return 0
