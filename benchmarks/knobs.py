"""Do the knobs move the numbers? MACs, params, latency and untuned mAP of simple policies.

For the committed baseline: FP32, uniform pruning at 0.25 / 0.5 (FP32), all-INT8 (the
device's own recipe), and the two combined — each built as the deployable ONNX artifact,
timed on the device and validated (no fine-tuning, so pruned mAPs show the raw damage
that distillation has to recover).

    python benchmarks/knobs.py --device ort-cpu --output benchmarks/results/knobs.md
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from evaluators.environment import ensure_offline

ensure_offline()  # before anything imports Ultralytics

from ultralytics.nn.tasks import load_checkpoint  # noqa: E402

from evaluators.accuracy import measure_accuracy  # noqa: E402
from evaluators.paths import data_dir  # noqa: E402
from evaluators.registry import get_device  # noqa: E402
from search.embedded.baseline import REPO_BASELINE, BaselineRecord  # noqa: E402
from search.embedded.data import DatasetSpec, generate_dataset  # noqa: E402
from search.prepare import calibration_images  # noqa: E402
from spaces.onnx_export import export_onnx, precision_units  # noqa: E402
from spaces.precision import build_artifact, uniform_precisions  # noqa: E402
from spaces.pruning import apply_pruning, pruning_units, uniform_ratios  # noqa: E402

POLICIES = (
    ("fp32", 0.0, "fp32"),
    ("prune 0.25", 0.25, "fp32"),
    ("prune 0.5", 0.5, "fp32"),
    ("all-int8", 0.0, "int8"),
    ("prune 0.25 + int8", 0.25, "int8"),
    ("prune 0.5 + int8", 0.5, "int8"),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="ort-cpu")
    parser.add_argument("--val-images", type=int, default=300)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)

    record = BaselineRecord.load(REPO_BASELINE)
    data_yaml = generate_dataset(data_dir(), DatasetSpec(imgsz=record.imgsz, seed=record.seed))
    device = get_device(args.device)
    model, _ = load_checkpoint(REPO_BASELINE)
    units = pruning_units(model)
    calib = calibration_images(data_yaml, 128)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, ratio, precision in POLICIES:
            pruned = apply_pruning(model, uniform_ratios(units, ratio), imgsz=record.imgsz)
            probe = export_onnx(pruned.model, Path(tmp) / "probe.onnx", imgsz=record.imgsz, names=model.names)
            precisions = uniform_precisions(list(precision_units(probe)), precision)
            artifact = build_artifact(
                pruned.model,
                precisions,
                Path(tmp) / f"{len(rows)}.onnx",
                imgsz=record.imgsz,
                names=model.names,
                calibration_images=calib,
                recipe=device.recipe_for(),
            )
            latency = device.measure(artifact.path)
            runtime = "openvino" if device.fingerprint().runtime == "openvino" else "onnxruntime"
            acc = measure_accuracy(
                artifact.path,
                data_yaml,
                imgsz=record.imgsz,
                runtime=runtime,
                max_images=args.val_images,
                workdir=Path(tmp),
            )
            rows.append((label, pruned.macs, pruned.params, latency.p50_ms, latency.p90_ms, acc.map50_95))
            print(
                f"{label:<20} {pruned.macs / 1e6:8.1f} MMACs {pruned.params / 1e6:6.3f} M params  p50 {latency.p50_ms:6.2f} ms  mAP50-95 {acc.map50_95:.4f}",
                flush=True,
            )

    base_ms, base_map = rows[0][3], rows[0][5]
    fp = device.fingerprint()
    lines = [
        f"# Knobs on the baseline — {args.device}, {date.today().isoformat()}",
        "",
        f"Command: `python benchmarks/{Path(__file__).name} {shlex.join(argv if argv is not None else sys.argv[1:])}`  ",
        f"Baseline: `{REPO_BASELINE.name}` at {record.imgsz} px; mAP on the first {args.val_images} val images, no fine-tuning.  ",
        f"Device: {fp.hardware}, {fp.runtime} {fp.version}, settings {fp.settings}; load average {os.getloadavg()[0]:.2f}.",
        "",
        "| policy | MMACs | params (M) | p50 ms | p90 ms | speed-up | mAP50-95 (untuned) | retained |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, macs, params, p50, p90, m in rows:
        lines.append(
            f"| {label} | {macs / 1e6:.1f} | {params / 1e6:.3f} | {p50:.2f} | {p90:.2f} | {base_ms / p50:.2f}x | {m:.4f} | {m / base_map:.1%} |"
        )
    report = "\n".join(lines) + "\n"
    print(report)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(report)
    return 0


if __name__ == "__main__":
    start = time.perf_counter()
    code = main()
    print(f"done in {time.perf_counter() - start:.0f} s")
    sys.exit(code)
