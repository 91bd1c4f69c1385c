"""How much a fine-tune gains from the caller's torch threads over the one Ultralytics' CPU training leaves it.

Ultralytics' `select_device` sets torch to cpu_count - 1 threads for CPU training (1 on a
2-core box). `spaces.distillation.finetune` gives the caller's thread count back once the
trainer is built. This times the same fine-tune (the committed baseline pruned uniformly
0.25, distilled, `--epochs` on the first `--train-images` train images, validation on 100 val
images) with 1 thread and with all cores, alternating run by run (`--rounds` each), in one
process, so the host's drift falls on both alike.

    python benchmarks/train_threads.py --output benchmarks/results/train_threads.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from benchmark_report import command_line, publish

from evaluators.environment import ensure_offline

ensure_offline()  # before anything imports Ultralytics

import torch  # noqa: E402
from ultralytics.nn.tasks import load_checkpoint  # noqa: E402

from evaluators.datasets import subset_data_yaml  # noqa: E402
from evaluators.hardware import cpu_description  # noqa: E402
from evaluators.paths import data_dir  # noqa: E402
from search.embedded.baseline import REPO_BASELINE, BaselineRecord  # noqa: E402
from search.embedded.data import DatasetSpec, generate_dataset  # noqa: E402
from spaces.distillation import DistillationSettings, finetune  # noqa: E402
from spaces.pruning import apply_pruning, pruning_units, uniform_ratios  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train-images", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)

    record = BaselineRecord.load(REPO_BASELINE)
    data_yaml = generate_dataset(data_dir(), DatasetSpec(imgsz=record.imgsz, seed=record.seed))
    baseline, _ = load_checkpoint(REPO_BASELINE)
    pruned = apply_pruning(baseline, uniform_ratios(pruning_units(baseline), 0.25), imgsz=record.imgsz).model
    cores = os.cpu_count() or 1
    seconds: dict[int, list[float]] = {1: [], cores: []}
    with tempfile.TemporaryDirectory() as tmp:
        subset = subset_data_yaml(data_yaml, "train", args.train_images, Path(tmp))
        subset = subset_data_yaml(subset, "val", 100, Path(tmp))
        for round_ in range(args.rounds):
            for threads in (1, cores) if round_ % 2 == 0 else (cores, 1):
                torch.set_num_threads(threads)
                result = finetune(
                    pruned,
                    REPO_BASELINE,
                    DistillationSettings(epochs=args.epochs),
                    subset,
                    imgsz=record.imgsz,
                    workdir=Path(tmp) / f"{round_}-{threads}",
                )
                seconds[threads].append(result.seconds)
                print(f"[train threads] round {round_ + 1}: {threads} thread(s) {result.seconds:.1f} s", flush=True)

    command = command_line(__file__, argv)
    one, many = statistics.median(seconds[1]), statistics.median(seconds[cores])
    lines = [
        "# Fine-tune wall time by torch threads",
        "",
        f"Command: `{command}`  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; machine: {cpu_description()}, {cores} CPUs; "
        f"the baseline pruned uniformly 0.25, distilled, {args.epochs} epoch(s) on {args.train_images} train images, "
        f"validated on 100; 1 and {cores} threads alternating, {args.rounds} runs each, one process.",
        "",
        "| torch threads | runs (s) | median (s) |",
        "|---:|---|---:|",
        f"| 1 | {', '.join(f'{s:.1f}' for s in seconds[1])} | {one:.1f} |",
        f"| {cores} | {', '.join(f'{s:.1f}' for s in seconds[cores])} | {many:.1f} |",
        "",
        f"{cores} threads take {many / one:.2f}x the wall time of 1.",
    ]
    publish(lines, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
