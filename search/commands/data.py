"""`squeezefit data`: generate the embedded default data set (digits over photographs)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from evaluators.paths import data_dir

HELP = "Generate the embedded default data set (deterministic; nothing is downloaded)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=None, help="parent directory (default: <home>/data)")
    parser.add_argument("--train", type=int, default=1500, help="train images (default 1500)")
    parser.add_argument("--val", type=int, default=300, help="val images (default 300)")
    parser.add_argument("--imgsz", type=int, default=192, help="image side in px (default 192)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")


def run(args: argparse.Namespace) -> int:
    from search.embedded.data import DatasetSpec, generate_dataset

    spec = DatasetSpec(train=args.train, val=args.val, imgsz=args.imgsz, seed=args.seed)
    start = time.perf_counter()
    data_yaml = generate_dataset(args.out or data_dir(), spec, progress=True)
    print(f"data set ready in {time.perf_counter() - start:.1f} s: {data_yaml}")
    return 0
