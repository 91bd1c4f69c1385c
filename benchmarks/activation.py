"""What the activation knob buys: the model with SiLU and with ReLU, side by side, on each device.

The committed baseline, unpruned and uniformly pruned at 0.5, with its own SiLU and with
ReLU (`spaces.activation.with_activation`), at each precision the device offers; every
artifact of a device timed in ONE round-robin session with its FP32 baseline. Latency is
the structure's (weights do not change it), so the swapped models are not trained here.
With `--convert`, the baseline is also converted to ReLU as the default study does
(`search.variants`, cached: a study with the same settings reuses it) and its per-epoch
val mAP50-95 is reported next to the baseline's.

    python benchmarks/activation.py --devices ort-cpu openvino-cpu --convert \
        --output benchmarks/results/activation.md
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

from benchmark_report import command_line, publish  # noqa: E402

from evaluators.hardware import cpu_description  # noqa: E402
from evaluators.registry import get_device  # noqa: E402
from search.checkpoint import load_baseline  # noqa: E402
from search.embedded.baseline import REPO_BASELINE, BaselineRecord  # noqa: E402
from search.prepare import calibration_images, resolve_data  # noqa: E402
from search.study import StudyConfig  # noqa: E402
from search.variants import convert_baseline  # noqa: E402
from spaces.activation import with_activation  # noqa: E402
from spaces.onnx_export import export_onnx, precision_units  # noqa: E402
from spaces.precision import build_artifact, uniform_precisions  # noqa: E402
from spaces.pruning import apply_pruning, pruning_units, uniform_ratios  # noqa: E402

RATIOS = (0.0, 0.5)
ACTIVATIONS = ("silu", "relu")  # silu: the baseline's own


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", nargs="+", default=["ort-cpu", "openvino-cpu"])
    parser.add_argument("--config", type=Path, default=Path("studies/default.yaml"), help="the study to convert for")
    parser.add_argument("--convert", action="store_true", help="also convert the baseline to ReLU (minutes)")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)

    record = BaselineRecord.load(REPO_BASELINE)
    config = StudyConfig.from_yaml(args.config)
    data_yaml = resolve_data(config)
    model = load_baseline(REPO_BASELINE)
    units = pruning_units(model)
    calib = calibration_images(data_yaml, 32)  # timing only: the structure, not the scales, sets the latency
    lines = [
        "# The activation knob: SiLU or ReLU",
        "",
        f"Command: `{command_line(__file__, argv)}`  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; machine: {cpu_description()}, {os.cpu_count()} CPUs; "
        f"baseline `{REPO_BASELINE.name}` at {record.imgsz} px (its own activation: SiLU), unpruned and uniformly "
        f"pruned at {RATIOS[-1]}, with SiLU and with ReLU; each device's artifacts timed in one round-robin session "
        "with its FP32 baseline (speed-up = L0/L from that session). Untrained swaps: latency depends on the "
        "structure only.",
    ]
    for name in args.devices:
        device = get_device(name)
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            paths = []
            for ratio in RATIOS:
                pruned = apply_pruning(model, uniform_ratios(units, ratio), imgsz=record.imgsz).model
                for activation in ACTIVATIONS:
                    variant = pruned if activation == "silu" else with_activation(pruned, activation)
                    probe = export_onnx(variant, Path(tmp) / "probe.onnx", imgsz=record.imgsz, names=model.names)
                    for precision in device.precisions:
                        if (ratio, activation, precision) == (0.0, "silu", "fp32"):
                            continue  # the reference itself
                        artifact = build_artifact(
                            variant,
                            uniform_precisions(list(precision_units(probe)), precision),
                            Path(tmp) / f"{ratio}-{activation}-{precision}.onnx",
                            imgsz=record.imgsz,
                            names=model.names,
                            calibration_images=calib,
                            recipe=device.recipe_for(),
                            timing_only=True,
                        )
                        paths.append(artifact.path)
                        rows.append((ratio, activation, precision))
            reference = export_onnx(model, Path(tmp) / "fp32.onnx", imgsz=record.imgsz, names=model.names)
            measured = device.measure_together([reference, *paths])
        l0 = measured[0].p50_ms
        by_row = dict(zip(rows, measured[1:], strict=True))
        fp = device.fingerprint()
        lines += [
            "",
            f"## {name}: {fp.runtime} {fp.version}, settings {fp.settings}",
            "",
            f"FP32 baseline (SiLU) L0 = {l0:.2f} ms.",
            "",
            "| pruning | precision | SiLU p50 ms | SiLU L/L0 | ReLU p50 ms | ReLU L/L0 | ReLU vs SiLU |",
            "|---:|---|---:|---:|---:|---:|---:|",
        ]
        for ratio in RATIOS:
            for precision in device.precisions:
                silu = l0 if (ratio, precision) == (0.0, "fp32") else by_row[(ratio, "silu", precision)].p50_ms
                relu = by_row[(ratio, "relu", precision)].p50_ms
                lines.append(
                    f"| {ratio:g} | {precision} | {silu:.2f} | {silu / l0:.3f} | {relu:.2f} | {relu / l0:.3f} | "
                    f"{silu / relu:.2f}x |"
                )
        print("\n".join(lines[-(len(RATIOS) * len(device.precisions) + 6) :]), flush=True)
    if args.convert:
        lines += _conversion(config, data_yaml, record)
    publish(lines, args.output)
    return 0


def _conversion(config: StudyConfig, data_yaml: Path, record: BaselineRecord) -> list[str]:
    """The report's section on converting the baseline to ReLU with the study's settings."""
    variant = convert_baseline(
        Path(config.model),
        data_yaml,
        activation="relu",
        imgsz=config.imgsz,
        epochs=config.activation_epochs,
        seed=config.seed,
        val_images=config.val_images,
    )
    return [
        "",
        "## Converting the baseline to ReLU",
        "",
        f"`{config.name}` study settings: {config.activation_epochs} epochs on the whole train split, distilled from "
        f"the baseline (`search.variants`), validated on the first {config.val_images} val images (PyTorch); it took "
        f"{variant.seconds / 60:.1f} min when it was made (cached in `{Path(variant.checkpoint).name}`).",
        "",
        f"- baseline (SiLU): mAP50-95 {record.map50_95:.4f}",
        f"- ReLU, per epoch: {', '.join(f'{m:.4f}' for m in variant.epoch_maps)}",
        f"- ReLU, best: **{variant.map50_95:.4f}** ({variant.map50_95 / record.map50_95:.1%} of the baseline)",
    ]


if __name__ == "__main__":
    sys.exit(main())
