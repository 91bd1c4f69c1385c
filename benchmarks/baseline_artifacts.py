"""Write the embedded baseline's FP32 artifact and, per device, its all-INT8 and (where offered) all-bf16 artifacts.

The artifacts the latency benchmarks compare: the committed YOLO11n baseline at its image
size, exported as squeezefit's trials export it, and the same graph in each device's own
INT8 recipe (calibrated on the first 128 train images of the embedded data set, which is
generated if missing) — what `squeezefit search` times as the "fp32" and "all-int8"
reference policies.

    python benchmarks/baseline_artifacts.py --out runs/artifacts --devices ort-cpu openvino-cpu

writes `fp32.onnx`, `int8-<device>.onnx` (and `bf16-<device>.onnx` where the device offers
bf16) into `--out` and prints their paths.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from evaluators.environment import ensure_offline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the artifacts")
    parser.add_argument("--devices", nargs="+", default=["ort-cpu", "openvino-cpu"], help="device names")
    parser.add_argument("--calibration-images", type=int, default=128, help="INT8 calibration images")
    args = parser.parse_args(argv)
    ensure_offline()

    from evaluators.registry import get_device
    from search.checkpoint import load_baseline
    from search.embedded.baseline import REPO_BASELINE, BaselineRecord
    from search.prepare import calibration_images, resolve_data
    from search.study import StudyConfig
    from spaces.onnx_export import export_onnx, precision_units
    from spaces.precision import build_artifact, uniform_precisions

    record = BaselineRecord.load(REPO_BASELINE)
    config = StudyConfig(model=str(REPO_BASELINE), imgsz=record.imgsz)
    images = list(calibration_images(resolve_data(config), args.calibration_images))
    model = load_baseline(REPO_BASELINE)
    args.out.mkdir(parents=True, exist_ok=True)
    fp32 = export_onnx(model, args.out / "fp32.onnx", imgsz=record.imgsz, names=model.names)
    print(fp32)
    units = precision_units(fp32)
    for name in args.devices:
        device = get_device(name)
        for precision in ("int8", "bf16"):
            if precision not in device.precisions:
                continue
            artifact = build_artifact(
                model,
                uniform_precisions(units, precision),
                args.out / f"{precision}-{name.replace(':', '-')}.onnx",
                imgsz=record.imgsz,
                names=model.names,
                calibration_images=images,
                recipe=device.recipe_for(),
            )
            print(artifact.path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
