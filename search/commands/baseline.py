"""`squeezefit baseline`: train the baseline detector on the embedded data set and record its scores."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from evaluators.paths import data_dir

HELP = "Train a YOLO baseline from scratch on the embedded data set and record its mAP next to it."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--family", default="yolo11n", help="yolo11n, yolo11s, yolov8n or yolov8s (default yolo11n)")
    parser.add_argument(
        "--out", type=Path, default=None, help="checkpoint path (default studies/baseline/<family>-digits.pt)"
    )
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--imgsz", type=int, default=192)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-images", type=int, default=1500, help="embedded data set: train images")
    parser.add_argument("--val-images", type=int, default=300, help="embedded data set: val images")


def run(args: argparse.Namespace) -> int:
    from search.embedded.baseline import REPO_BASELINE, check_target, train_baseline
    from search.embedded.data import DatasetSpec, dataset_digest, generate_dataset

    out = args.out or REPO_BASELINE.with_name(f"{args.family}-digits.pt")
    check_target(args.family, out)  # before the data set is made and the model trained
    spec = DatasetSpec(train=args.train_images, val=args.val_images, imgsz=args.imgsz, seed=args.seed)
    data_yaml = generate_dataset(data_dir(), spec, progress=True)
    command = (
        "squeezefit " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[0].endswith("squeezefit") else ""
    )
    record = train_baseline(
        args.family,
        data_yaml,
        out,
        imgsz=args.imgsz,
        epochs=args.epochs,
        batch=args.batch,
        seed=args.seed,
        data_digest=dataset_digest(data_yaml.parent),
        command=command,
    )
    print(
        f"baseline {out}: mAP50-95 {record.map50_95:.4f}, mAP50 {record.map50:.4f} after {record.epochs} epochs ({record.train_seconds:.0f} s)"
    )
    return 0
