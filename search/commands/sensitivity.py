"""`squeezefit sensitivity`: per-unit mAP drop when only that unit is pruned, INT8 or without its inner blocks, stored
with the model."""

from __future__ import annotations

import argparse
from pathlib import Path

from search.commands import add_config_argument

HELP = (
    "Measure each unit's sensitivity to pruning, INT8 and removing its inner blocks (no fine-tuning) and store it "
    "next to the model."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser, "study YAML: model, data, imgsz, device, calibration, pruning importance and round_to")
    parser.add_argument(
        "--ratios", type=float, nargs="+", default=[0.25, 0.5, 0.75], help="pruning ratios to try per unit"
    )
    parser.add_argument("--max-images", type=int, default=64, help="validate on the first N val images (default 64)")
    parser.add_argument("--no-int8", action="store_true", help="skip the INT8 point of each unit")
    parser.add_argument("--no-depth", action="store_true", help="skip the point without each block's inner blocks")
    parser.add_argument("--units", nargs="+", help="only these units (default: every pruning unit)")


def run(args: argparse.Namespace) -> int:
    from evaluators.registry import get_device
    from search.checkpoint import load_baseline
    from search.prepare import calibration_images, resolve_data
    from search.sensitivity import analyze_sensitivity
    from search.study import StudyConfig
    from spaces.importance import get_criterion
    from spaces.sensitivity import sensitivity_path

    config = StudyConfig.from_yaml(args.config)
    get_criterion(config.pruning_importance)  # an unknown name fails before the data set is made
    checkpoint = Path(config.model)
    model = load_baseline(checkpoint)
    data_yaml = resolve_data(config)
    device = get_device(config.device)
    result = analyze_sensitivity(
        model,
        data_yaml,
        imgsz=config.imgsz,
        ratios=tuple(args.ratios),
        int8=not args.no_int8,
        calibration_images=calibration_images(data_yaml, config.calibration_images),
        recipe=device.recipe_for(),
        max_images=args.max_images,
        units=args.units,
        importance=config.pruning_importance,
        round_to=config.pruning_round_to,
        runtime=device.accuracy_runtime,
        depth=not args.no_depth,
    )
    path = result.save(sensitivity_path(checkpoint))
    print(result.table())
    print(f"saved to {path}; a study uses it with `sensitivity_max_drop: 0.02` in its config")
    return 0
