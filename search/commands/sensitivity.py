"""`squeezefit sensitivity`: per-unit mAP drop when only that unit is pruned or INT8, stored with the model."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "Measure each unit's sensitivity to pruning and INT8 (no fine-tuning) and store it next to the model."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, nargs="?", default=Path("studies/default.yaml"), help="study YAML: model, data, imgsz, device (default studies/default.yaml)")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5, 0.75], help="pruning ratios to try per unit")
    parser.add_argument("--max-images", type=int, default=64, help="validate on the first N val images (default 64)")
    parser.add_argument("--no-int8", action="store_true", help="skip the INT8 point of each unit")
    parser.add_argument("--units", nargs="+", help="only these units (default: every pruning unit)")


def run(args: argparse.Namespace) -> int:
    from evaluators.base import get_device
    from evaluators.exceptions import UserError
    from evaluators.offline import ensure_offline
    from evaluators.recipe import Int8Recipe
    from search.setup import calibration_images, resolve_data
    from search.study import StudyConfig
    from spaces.sensitivity import analyze_sensitivity, sensitivity_path

    ensure_offline()
    from ultralytics.nn.tasks import load_checkpoint

    config = StudyConfig.from_yaml(args.config)
    checkpoint = Path(config.model)
    if not checkpoint.is_file():
        raise UserError(f"model checkpoint {checkpoint} does not exist.")
    data_yaml = resolve_data(config)
    device = get_device(config.device)
    runtime = "openvino" if device.fingerprint().runtime == "openvino" else "onnxruntime"
    model, _ = load_checkpoint(checkpoint)
    result = analyze_sensitivity(
        model, data_yaml, imgsz=config.imgsz, ratios=tuple(args.ratios), int8=not args.no_int8,
        calibration_images=calibration_images(data_yaml, config.calibration_images),
        recipe=device.int8_recipe or Int8Recipe(), max_images=args.max_images, units=args.units, runtime=runtime,
    )  # fmt: skip
    path = result.save(sensitivity_path(checkpoint))
    print(result.table())
    print(f"saved to {path}; a study uses it with `sensitivity_max_drop: 0.02` in its config")
    return 0
