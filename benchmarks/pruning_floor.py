"""How fast can channel pruning make the model on a device? The latency floor of the search space.

The committed baseline pruned uniformly at each ratio (up to the space's largest, 0.75), at
each precision the device offers, every artifact timed in ONE round-robin session with the
FP32 baseline (so the speedups share one moment of the host). No fine-tuning, no mAP: this
is the structure's speed only. A budget below the fastest row is out of the space's reach
on that device, whatever the accuracy.

    python benchmarks/pruning_floor.py --devices ort-cpu openvino-cpu \
        --output benchmarks/results/pruning_floor.md
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from evaluators.environment import ensure_offline

ensure_offline()  # before anything imports Ultralytics

from benchmark_report import command_line  # noqa: E402
from ultralytics.nn.tasks import load_checkpoint  # noqa: E402

from evaluators.hardware import cpu_description  # noqa: E402
from evaluators.paths import data_dir  # noqa: E402
from evaluators.registry import get_device  # noqa: E402
from search.embedded.baseline import REPO_BASELINE, BaselineRecord  # noqa: E402
from search.embedded.data import DatasetSpec, generate_dataset  # noqa: E402
from search.prepare import calibration_images  # noqa: E402
from spaces.onnx_export import export_onnx, precision_units  # noqa: E402
from spaces.precision import build_artifact, uniform_precisions  # noqa: E402
from spaces.pruning import RATIO_RANGE, apply_pruning, pruning_units, uniform_ratios  # noqa: E402

RATIOS = (0.0, 0.25, 0.5, 0.6, 0.75)
FRACTIONS = (0.5, 0.33, 0.25)  # of L0: the bench's budgets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", nargs="+", default=["ort-cpu", "openvino-cpu"])
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)

    record = BaselineRecord.load(REPO_BASELINE)
    data_yaml = generate_dataset(data_dir(), DatasetSpec(imgsz=record.imgsz, seed=record.seed))
    model, _ = load_checkpoint(REPO_BASELINE)
    units = pruning_units(model)
    calib = calibration_images(data_yaml, 32)  # timing only: the structure, not the scales, sets the latency
    lines = [
        "# The latency floor of channel pruning",
        "",
        f"Command: `{command_line(__file__, argv)}`  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; machine: {cpu_description()}, {os.cpu_count()} CPUs; "
        f"baseline `{REPO_BASELINE.name}` at {record.imgsz} px, uniform pruning (ratios up to the space's "
        f"largest, {max(RATIOS)}), untuned; each device's artifacts timed in one round-robin session with its FP32 "
        "baseline (speed-up = L0/L from that session).",
    ]
    for name in args.devices:
        device = get_device(name)
        rows, base_macs = [], 0
        with tempfile.TemporaryDirectory() as tmp:
            paths = []
            for ratio in RATIOS:
                if ratio > RATIO_RANGE[1]:
                    continue
                pruned = apply_pruning(model, uniform_ratios(units, ratio), imgsz=record.imgsz)
                base_macs = pruned.macs if ratio == 0.0 else base_macs
                probe = export_onnx(pruned.model, Path(tmp) / "probe.onnx", imgsz=record.imgsz, names=model.names)
                for precision in device.precisions:
                    if ratio == 0.0 and precision == "fp32":
                        continue  # the reference itself, timed first
                    artifact = build_artifact(
                        pruned.model,
                        uniform_precisions(list(precision_units(probe)), precision),
                        Path(tmp) / f"{ratio}-{precision}.onnx",
                        imgsz=record.imgsz,
                        names=model.names,
                        calibration_images=calib,
                        recipe=device.recipe_for(),
                    )
                    paths.append(artifact.path)
                    rows.append((ratio, precision, pruned.macs))
            reference = export_onnx(model, Path(tmp) / "fp32.onnx", imgsz=record.imgsz, names=model.names)
            measured = device.measure_together([reference, *paths])
        l0 = measured[0].p50_ms
        fastest = min(m.p50_ms for m in measured[1:])
        fp = device.fingerprint()
        lines += [
            "",
            f"## {name}: {fp.runtime} {fp.version}, settings {fp.settings}",
            "",
            f"FP32 baseline L0 = {l0:.2f} ms. Fastest artifact: {fastest:.2f} ms = {fastest / l0:.2f}·L0 "
            f"({l0 / fastest:.2f}x); budgets below it — "
            + ", ".join(
                f"{f:g}·L0 = {f * l0:.2f} ms: {'reachable' if fastest <= f * l0 else 'out of reach'}" for f in FRACTIONS
            )
            + ".",
            "",
            "| uniform ratio | precision | MMACs | p50 ms | L/L0 | speed-up |",
            "|---:|---|---:|---:|---:|---:|",
            f"| 0 | fp32 (reference) | {base_macs / 1e6:.1f} | {l0:.2f} | 1.00 | 1.00x |",
        ]
        for (ratio, precision, macs), m in zip(rows, measured[1:], strict=True):
            lines.append(
                f"| {ratio:g} | {precision} | {macs / 1e6:.1f} | {m.p50_ms:.2f} | {m.p50_ms / l0:.2f} | {l0 / m.p50_ms:.2f}x |"
            )
        print("\n".join(lines[-(len(rows) + 6) :]), flush=True)
    report = "\n".join(lines) + "\n"
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
