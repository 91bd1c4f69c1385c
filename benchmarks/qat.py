"""What quantization-aware recovery buys over a plain one: the same pruned INT8 policy, fine-tuned both ways.

The committed baseline pruned uniformly (`--prune`, magnitude ranking, as a study prunes) and
set all-INT8, then fine-tuned twice from that same start with the same recovery settings
(`--epochs` on `--train-images`, distilled from the baseline, seed 0): once plain, once with
its INT8 convs trained through INT8 rounding (`spaces.qat`). Each is then quantized like any
deployed artifact (the device's own INT8 recipe, the study default's 128 calibration
images) and validated on the artifact by the device's accuracy runtime (Ultralytics'
validator, the whole val split). Reported: the best epoch's mAP50-95 in PyTorch, the INT8
artifact's, the difference (what post-training INT8 cost), and the wall time of each
fine-tune. The two artifacts have one structure, so one latency: none is timed.

    python benchmarks/qat.py --device ort-cpu --prune 0.25 --epochs 4 --output benchmarks/results/qat.md
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from benchmark_report import command_line, publish

from evaluators.environment import ensure_offline

ensure_offline()  # before anything imports Ultralytics

import torch  # noqa: E402
from ultralytics.nn.tasks import load_checkpoint  # noqa: E402

from evaluators.accuracy import measure_accuracy  # noqa: E402
from evaluators.datasets import subset_data_yaml  # noqa: E402
from evaluators.hardware import cpu_description  # noqa: E402
from evaluators.paths import data_dir  # noqa: E402
from evaluators.registry import get_device  # noqa: E402
from search.embedded.baseline import REPO_BASELINE, BaselineRecord  # noqa: E402
from search.embedded.data import DatasetSpec, generate_dataset  # noqa: E402
from search.prepare import calibration_images  # noqa: E402
from spaces.distillation import DistillationSettings, finetune  # noqa: E402
from spaces.onnx_export import preprocess_images  # noqa: E402
from spaces.precision import build_artifact, uniform_precisions  # noqa: E402
from spaces.pruning import apply_pruning, pruning_units, uniform_ratios  # noqa: E402
from spaces.qat import QuantizationAware  # noqa: E402

CALIBRATION = 128  # the default study's calibration images


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="ort-cpu")
    parser.add_argument("--prune", type=float, default=0.25, help="uniform pruning ratio of every unit")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--train-images", type=int, help="first N train images (default: the whole split)")
    parser.add_argument(
        "--symmetric-activations",
        action="store_true",
        help="the device's recipe with symmetric activations (NNCF's PERFORMANCE preset does this; post-training "
        "INT8 costs more with it)",
    )
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)

    record = BaselineRecord.load(REPO_BASELINE)
    data_yaml = generate_dataset(data_dir(), DatasetSpec(imgsz=record.imgsz, seed=record.seed))
    device = get_device(args.device)
    recipe = device.recipe_for(None)
    if args.symmetric_activations:
        recipe = replace(recipe, symmetric_activations=True)
    baseline, _ = load_checkpoint(REPO_BASELINE)
    units = pruning_units(baseline)
    pruned = apply_pruning(baseline, uniform_ratios(units, args.prune), imgsz=record.imgsz).model
    precisions = uniform_precisions([f"model.{i}" for i in range(len(pruned.model))], "int8")
    calib = calibration_images(data_yaml, CALIBRATION)
    settings = DistillationSettings(epochs=args.epochs)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        train_yaml = subset_data_yaml(data_yaml, "train", args.train_images, Path(tmp))
        for name, quantization in (
            ("plain", None),
            ("quantization-aware", QuantizationAware(precisions, recipe, preprocess_images(calib[:64], record.imgsz))),
        ):
            print(f"[qat bench] {name}: {args.epochs} epochs", flush=True)
            tuned = finetune(
                pruned,
                REPO_BASELINE,
                settings,
                train_yaml,
                imgsz=record.imgsz,
                workdir=Path(tmp) / name,
                quantization=quantization,
            )
            tuned.model.names = baseline.names
            artifact = build_artifact(
                tuned.model,
                precisions,
                Path(tmp) / name / "int8.onnx",
                imgsz=record.imgsz,
                names=baseline.names,
                calibration_images=list(calib),
                recipe=recipe,
            )
            acc = measure_accuracy(artifact.path, data_yaml, runtime=device.accuracy_runtime, workdir=Path(tmp) / name)
            best = max(tuned.epoch_maps)
            rows.append((name, tuned.epoch_maps, best, acc.map50_95, tuned.seconds))
            print(f"[qat bench] {name}: best epoch {best:.4f}, INT8 artifact {acc.map50_95:.4f}", flush=True)

    command = command_line(__file__, argv)
    lines = [
        "# Quantization-aware vs plain recovery",
        "",
        f"Command: `{command}`  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; machine: {cpu_description()}, {os.cpu_count()} CPUs, "
        f"torch threads {torch.get_num_threads()} (Ultralytics' CPU training sets them); baseline `{REPO_BASELINE.name}` ({record.map50_95:.4f} "
        f"mAP50-95) at {record.imgsz} px, uniform pruning {args.prune} (magnitude), all INT8 on `{args.device}` "
        f"(recipe: {recipe.quantizer}, {recipe.activations} activations, {recipe.weights} weights, per-channel "
        f"{recipe.per_channel}, symmetric activations {recipe.symmetric_activations}); {args.epochs} epochs on {args.train_images or 'all'} train images, "
        f"distilled from the baseline; {CALIBRATION} calibration images; mAP on the whole val split.",
        "",
        "| recovery | epoch curve (PyTorch) | best epoch | INT8 artifact | INT8 cost | fine-tune wall (s) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, curve, best, int8, seconds in rows:
        lines.append(
            f"| {name} | {', '.join(f'{m:.4f}' for m in curve)} | {best:.4f} | {int8:.4f} | {best - int8:+.4f} | "
            f"{seconds:.0f} |"
        )
    lines += [
        "",
        f"Quantization-aware minus plain, on the INT8 artifact: {rows[1][3] - rows[0][3]:+.4f} mAP50-95; "
        f"its fine-tune took {rows[1][4] / rows[0][4]:.2f}x the plain one's wall time.",
        "",
        "The quantization-aware row's epoch curve is validated through the simulated rounding (Ultralytics validates "
        "the EMA model, which keeps the fake-quantized convs), so its INT8 cost is what the simulation misses, not "
        "what quantization costs it.",
    ]
    publish(lines, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
