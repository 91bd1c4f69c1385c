"""`squeezefit search`: run a study against a latency budget."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "Search compression policies for a model against a device's latency budget."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, nargs="?", default=Path("studies/default.yaml"), help="study YAML (default studies/default.yaml)")
    parser.add_argument("--study", dest="name", help="study name (default: the config's name)")
    parser.add_argument("--storage", help="Optuna storage URL (default: SQLite under studies/)")
    parser.add_argument("--trials", type=int)
    parser.add_argument("--budget-ms", type=float)
    parser.add_argument("--device")
    parser.add_argument("--resume", action="store_true", help="continue a stopped study of the same name")


def run(args: argparse.Namespace) -> int:
    from evaluators.exceptions import UserError
    from evaluators.offline import data_dir
    from search.baseline import BaselineRecord
    from search.embedded_data import DatasetSpec, generate_dataset
    from search.study import StudyConfig

    config = StudyConfig.from_yaml(
        args.config, name=args.name, storage=args.storage, trials=args.trials, budget_ms=args.budget_ms, device=args.device
    )
    model = Path(config.model)
    if not model.is_file():
        raise UserError(f"model checkpoint {model} does not exist; train one with `squeezefit baseline`.")
    if config.data == "embedded":
        record = BaselineRecord.load(model)
        data_yaml = generate_dataset(data_dir(), DatasetSpec(imgsz=record.imgsz, seed=record.seed), progress=True)
        print(f"baseline {model}: mAP50-95 {record.map50_95:.4f} (recorded); data {data_yaml}")
    print(f"study {config.name!r} prepared; the policy search itself is not built yet.")
    return 0
