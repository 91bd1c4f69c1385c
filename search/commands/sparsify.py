"""`squeezefit sparsify`: train a study's model with the group-norm sparsity regularizer before it is searched."""

from __future__ import annotations

import argparse
from pathlib import Path

from search.commands import add_config_argument

HELP = (
    "Train a study's model a few epochs with a group-norm sparsity regularizer, so that channels become "
    "removable; writes a new checkpoint a study can name as its model."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from spaces.sparsity import REG

    add_config_argument(parser, "study YAML whose model, data and image size are used")
    parser.add_argument("--out", type=Path, required=True, help="the new checkpoint (.pt; must not exist)")
    parser.add_argument("--epochs", type=int, default=5, help="training epochs on the whole train split (default 5)")
    parser.add_argument("--reg", type=float, default=REG, help=f"regularization coefficient (default {REG:g})")
    parser.add_argument("--lr0", type=float, default=1e-3, help="AdamW initial learning rate (default 0.001)")


def run(args: argparse.Namespace) -> int:
    import shutil
    import sys
    import time
    from dataclasses import replace

    from evaluators.paths import runs_dir
    from evaluators.vocabulary import UserError
    from search.checkpoint import load_baseline
    from search.embedded.baseline import BaselineRecord, validate
    from search.prepare import resolve_data
    from search.study import StudyConfig
    from spaces.channel_groups import prepare_model
    from spaces.sparsity import group_norm_regularizer, group_norms, sparsify

    config = StudyConfig.from_yaml(args.config)
    group_norm_regularizer(args.reg)  # bad settings fail before anything is loaded
    if args.epochs < 1:
        raise UserError(f"sparsity training needs at least 1 epoch, got {args.epochs}.")
    out = Path(args.out)
    if out.suffix != ".pt" or out.exists():
        raise UserError(f"--out {out} must be a new .pt file; pass another path.")
    model = load_baseline(config.model)
    data_yaml = resolve_data(config)
    start = time.perf_counter()
    result = sparsify(
        model,
        data_yaml,
        imgsz=config.imgsz,
        epochs=args.epochs,
        reg=args.reg,
        lr0=args.lr0,
        seed=config.seed,
        workdir=runs_dir() / "sparsify" / out.stem,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(result.weights, out)
    map50_95, map50 = validate(out, data_yaml, config.imgsz)
    small = _small_fraction(group_norms(prepare_model(model))), _small_fraction(group_norms(result.model))
    record_path = BaselineRecord.path_for(Path(config.model))
    if record_path.is_file():  # an embedded baseline: the new checkpoint gets its record (data: embedded reads it)
        replace(
            BaselineRecord.load(Path(config.model)),
            checkpoint=str(out),
            epochs=args.epochs,
            map50_95=map50_95,
            map50=map50,
            train_seconds=round(time.perf_counter() - start, 1),
            command="squeezefit " + " ".join(sys.argv[1:]),
            date=time.strftime("%Y-%m-%d"),
        ).save(out)
    print(
        f"sparsified {config.model} -> {out}: mAP50-95 {map50_95:.4f} after {args.epochs} epoch(s) (reg {args.reg:g}); "
        f"channels with a weight norm under 10% of the median: {small[0]:.1%} before, {small[1]:.1%} after. "
        f"Set `model: {out}` in a study and run `squeezefit sensitivity` for it before searching."
    )
    return 0


def _small_fraction(norms) -> float:
    return float((norms < 0.1 * norms.median()).float().mean())
