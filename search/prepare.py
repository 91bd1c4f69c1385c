"""Turn a StudyConfig into what trials need: data, baseline, device, space, budget.

`prepare(config)` does the few real measurements a study needs before its first trial
(and, where the study offers activations, converts its baseline to each once, `search.variants`):
the baseline's FP32 artifact is exported and timed on the device (the reference latency
L0 that `budget_fraction` is relative to), and the most compressed policy the space allows
is timed against it side by side, so an impossible budget is a clear error before any
trial runs. The baseline's artifact stays the study's reference: every trial is timed
against it and scaled by L0 (`search.trial.time_artifact`). L0 and the budget are fixed
when the study is created: `prepare(config, record=...)` of a resumed study takes them
from its stored record instead of timing the baseline again. `prepare(config,
time_fastest=False)` leaves the fastest policy untimed and the budget unchecked, for a caller
that has other evidence the budget is reachable (a transfer whose carried trials fit it) and
calls `check_budget` otherwise.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from evaluators.base import TimingSettings
from evaluators.datasets import split_images
from evaluators.paths import data_dir, studies_dir
from evaluators.registry import get_device
from evaluators.vocabulary import PRECISIONS, UserError
from search.checkpoint import load_baseline
from search.guided import GuidedStart, guided_starts
from search.study import StudyConfig, study_record
from search.trial import TrialContext, build_screen, time_artifact
from search.variants import Variant, convert_baseline
from spaces.activation import check_activation
from spaces.depth import depth_units
from spaces.greedy import SegmentCosts
from spaces.importance import get_criterion
from spaces.onnx_export import export_onnx, precision_units
from spaces.policy import Policy
from spaces.precision import uniform_precisions
from spaces.pruning import pruning_units, uniform_ratios
from spaces.segments import Segment, graph_segments
from spaces.sensitivity import Sensitivity, depth_units_within, ratio_ranges_from, sensitivity_path
from spaces.space import SearchSpace


@dataclass(frozen=True)
class Prepared:
    """A study ready to run: the trial context plus the reference measurements (ms; fastest: None when not timed)."""

    context: TrialContext
    baseline_latency_ms: float
    fastest_latency_ms: float | None
    fingerprint: dict
    starts: Mapping[str, GuidedStart] = field(default_factory=dict)  # name -> guided start (`search.guided`)
    costs: SegmentCosts | None = None  # what the guided starts were found with; `search.repair` uses them
    variants: Mapping[str, Variant] = field(default_factory=dict)  # activation -> converted baseline

    def to_record(self, config: StudyConfig) -> dict:
        """What a study stores about itself (`search.study.STUDY_ATTR`): all `front`, `export` and `transfer` need."""
        ctx = self.context
        return {
            "config": config.to_dict(),
            "budget_ms": ctx.budget_ms,
            "baseline_latency_ms": self.baseline_latency_ms,
            "fingerprint": self.fingerprint,
            "checkpoint": ctx.checkpoint,
            "data_yaml": ctx.data_yaml,
            "imgsz": ctx.imgsz,
            "device": ctx.device,
            "outdir": ctx.outdir,
            "reference_artifact": ctx.reference_artifact,
            "pruning_units": [u.name for u in ctx.space.pruning_units],
            "precision_units": list(ctx.space.precision_units),
            "offered": list(ctx.space.offered),
            "fastest_precision": ctx.space.fastest_precision(),
            "segments": [s.to_list() for s in ctx.space.segments],
            "depth_units": dict(ctx.space.depth_units),
            "dimensions": ctx.space.dimensions(),
            "guided_starts": {name: start.to_dict() for name, start in self.starts.items()},
            **({"segment_costs": self.costs.to_dict()} if self.costs is not None else {}),
            **({"variants": {a: v.to_dict() for a, v in self.variants.items()}} if self.variants else {}),
            "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        }


def resolve_data(config: StudyConfig) -> Path:
    """The data YAML of a study: the embedded set (generated if needed) or the given file."""
    if config.data == "embedded":
        from search.embedded.baseline import BaselineRecord
        from search.embedded.data import DatasetSpec, generate_dataset

        record = BaselineRecord.load(Path(config.model))
        return generate_dataset(data_dir(), DatasetSpec(imgsz=record.imgsz, seed=record.seed), progress=True)
    path = Path(config.data)
    if not path.is_file():
        raise UserError(f"data set file {path} does not exist.")
    return path.resolve()


def calibration_images(data_yaml: Path, count: int) -> tuple[str, ...]:
    """The first `count` training images (sorted by name): INT8 calibration comes from the train split."""
    _, images = split_images(data_yaml, "train")
    if not images:
        raise UserError(f"the train split of {data_yaml} has no images to calibrate INT8 with.")
    return tuple(str(p) for p in images[:count])


def setup_digest(config: StudyConfig, checkpoint: Path) -> str:
    """12 hex digits naming what a trial's result depends on besides its policy.

    Trials write under `runs/<study>-<digest>/<policy_id>/` and reuse a finished result
    found there, so two studies share results only when storage, checkpoint bytes, data,
    device, budget, fidelity and seed all agree.
    """
    settings = {
        k: v
        for k, v in config.to_dict().items()
        if k
        not in (
            "name",
            "trials",
            "time_limit_min",
            "concurrency",
            "sampler",
            "retries",
            "space",
            "starts",
            "recover_epochs",
            "scheduler",
            "asha_reduction_factor",
            "repair",
            "depth",
        )
    }
    digest = hashlib.sha256(json.dumps({**settings, "storage": config.storage_url}, sort_keys=True).encode())
    digest.update(Path(checkpoint).read_bytes())
    return digest.hexdigest()[:12]


def prepare(
    config: StudyConfig,
    *,
    name: str | None = None,
    record: dict | None = None,
    time_fastest: bool = True,
    guided: bool = True,
) -> Prepared:
    """Resolve everything a study's trials share, with the two reference latencies measured.

    record: the stored record of the study being resumed (`Prepared.to_record`); its L0
    (`baseline_latency_ms`) and `budget_ms` are kept, so a resumed study keeps its scale,
    and so are its guided starts.
    time_fastest: False skips `check_budget` (`fastest_latency_ms` is None); the caller checks the budget.
    guided: False makes no guided starts (`search.guided`) even where `config.starts` asks for them
    (a caller that runs no search).
    """
    get_criterion(config.pruning_importance)  # an unknown name fails before minutes of preparation
    for activation in config.activations:
        check_activation(activation)
    checkpoint = Path(config.model)
    model = load_baseline(checkpoint)
    data_yaml = resolve_data(config)
    variants = {
        a: convert_baseline(
            checkpoint,
            data_yaml,
            activation=a,
            imgsz=config.imgsz,
            epochs=config.activation_epochs,
            seed=config.seed,
            val_images=config.val_images,
        )
        for a in config.activations
    }
    device = get_device(config.device)
    outdir = studies_dir() / "runs" / f"{name or config.name}-{setup_digest(config, checkpoint)}"
    outdir.mkdir(parents=True, exist_ok=True)
    reference = export_onnx(model, outdir / "baseline-fp32.onnx", imgsz=config.imgsz, names=model.names)
    space = SearchSpace(
        pruning_units=tuple(pruning_units(model)),
        precision_units=tuple(precision_units(reference)),
        offered=tuple(p for p in PRECISIONS if p in device.precisions),
        max_epochs=config.finetune_epochs,
        ratio_ranges=sensitivity_ranges(config, checkpoint, model),
        segments=_segments(config, model, record),
        # a resumed study keeps the references it was created with (a record without one: the speed order)
        fastest=record.get("fastest_precision", "") if record is not None else device.fastest_precision,
        activations=config.activations,
        depth_units=_depth_units(config, checkpoint, model, record),
    )
    timing = TimingSettings(min_seconds=config.latency_min_seconds)
    if record is not None:
        baseline_ms, budget = record["baseline_latency_ms"], record["budget_ms"]
    else:
        baseline_ms = device.measure(reference, settings=timing).p50_ms
        budget = config.budget_ms or baseline_ms * (config.budget_fraction or 1.0)
    context = TrialContext(
        checkpoint=str(checkpoint.resolve()),
        data_yaml=str(data_yaml),
        imgsz=config.imgsz,
        device=config.device,
        budget_ms=float(budget),
        space=space,
        calibration_images=calibration_images(data_yaml, config.calibration_images),
        outdir=str(outdir),
        timing=timing,
        train_images=config.train_images,
        val_images=config.val_images,
        seed=config.seed,
        pruning_importance=config.pruning_importance,
        pruning_round_to=config.pruning_round_to,
        reference_artifact=str(reference),
        reference_ms=float(baseline_ms),
        variants=tuple((a, v.checkpoint) for a, v in variants.items()),
    )
    fastest_ms = check_budget(context, model) if time_fastest else None
    costs = None
    if record is not None:
        starts = {n: GuidedStart.from_dict(s) for n, s in record.get("guided_starts", {}).items()}
        costs = SegmentCosts.from_dict(record["segment_costs"]) if "segment_costs" in record else None
    elif guided and config.starts == "guided":
        starts, costs = guided_starts(context, model)
    else:
        starts = {}
    return Prepared(context, baseline_ms, fastest_ms, device.fingerprint().to_dict(), starts, costs, variants)


def _segments(config: StudyConfig, model, record: dict | None) -> tuple[Segment, ...]:
    """The structured space's segments: a resumed study's recorded ones (it keeps its space: one recorded before the
    head was split by scale keeps one "head" segment), else the model's (`graph_segments`); none for "per-unit"."""
    if record is not None and "segments" in record:
        return tuple(Segment.from_list(row) for row in record["segments"])
    return graph_segments(model, config.imgsz) if config.space == "segments" else ()


def _depth_units(config: StudyConfig, checkpoint: Path, model, record: dict | None) -> dict[str, int]:
    """The blocks a policy may make shallower (`spaces.depth.depth_units`): a resumed study's recorded ones (none in a
    record from before depth was searched: it keeps its space), else the model's where `config.depth` allows, less
    those whose stored sensitivity drop exceeds `sensitivity_max_drop` where the config sets it."""
    if record is not None:
        return dict(record.get("depth_units", {}))
    if not config.depth:
        return {}
    units = depth_units(model)
    measured = stored_sensitivity(config, checkpoint, model)
    return units if measured is None else depth_units_within(measured, units, config.sensitivity_max_drop)


def stored_context(study, storage_url: str) -> TrialContext:
    """The trial context of a stored study, for work on its trials after the search (no timing, no starts).

    Its L0, budget, reference artifact and output folder are the stored ones.
    """
    record = study_record(study)
    config = StudyConfig.from_record(record, storage_url)
    context = prepare(config, name=study.study_name, record=record, time_fastest=False, guided=False).context
    return replace(context, outdir=record["outdir"], reference_artifact=record["reference_artifact"])


def check_budget(ctx: TrialContext, model=None) -> float:
    """p50 (ms, on the study's scale) of the fastest corner of the space: every unit at the largest ratio and with
    every inner block removed, at each offered precision, with each offered activation; UserError if it is over `ctx.budget_ms` (an impossible budget).

    Every precision is measured, not assumed: on a small pruned model INT8's Q/DQ overhead
    can make it slower than FP32. The artifacts are the trials' own screen artifacts.
    model: the loaded baseline, when the caller has it.
    """
    device = get_device(ctx.device)
    fastest_ms = _fastest_latency(ctx, device, model if model is not None else load_baseline(ctx.checkpoint))
    if fastest_ms > ctx.budget_ms:
        raise UserError(
            f"the budget of {ctx.budget_ms:.2f} ms is below the fastest policy the space allows ({fastest_ms:.2f} ms on {ctx.device})."
        )
    return fastest_ms


def _fastest_latency(ctx: TrialContext, device, model) -> float:
    space = ctx.space
    ratios = uniform_ratios(space.pruning_units, space.ratio_range[1])
    latencies = []
    for precision, activation in itertools.product(space.offered, (None, *space.activations)):
        policy = Policy(
            pruning=ratios,
            precision=uniform_precisions(space.precision_units, precision),
            activation=activation,
            depth=space.depth_units,
        )
        path = Path(ctx.outdir) / f"fastest-{precision}{f'-{activation}' if activation else ''}.onnx"
        _, _, screen = build_screen(policy, ctx, device.recipe_for(), path, baseline=model)
        latencies.append(time_artifact(device, screen.path, ctx).latency_ms)
    return min(latencies)


def sensitivity_ranges(config: StudyConfig, checkpoint: Path, model) -> dict:
    """Per-unit pruning ranges from the model's stored sensitivity, when the config asks for them.

    UserError if it is missing, or was measured with another pruning importance or round_to than the study's.
    """
    measured = stored_sensitivity(config, checkpoint, model)
    return {} if measured is None else ratio_ranges_from(measured, config.sensitivity_max_drop)


def stored_sensitivity(config: StudyConfig, checkpoint: Path, model):
    """The model's stored `spaces.sensitivity.Sensitivity` where the config narrows the space by it
    (`sensitivity_max_drop`), else None. UserError if it is missing, or was measured with another pruning
    importance or round_to than the study's."""
    if config.sensitivity_max_drop is None:
        return None
    path = sensitivity_path(checkpoint)
    if not path.is_file():
        raise UserError(
            f"the config sets sensitivity_max_drop but {path} does not exist; run `squeezefit sensitivity` first."
        )
    measured = Sensitivity.load(path, model)
    used = (measured.settings.importance, measured.settings.round_to)
    if used != (config.pruning_importance, config.pruning_round_to):
        raise UserError(
            f"{path} was measured with pruning importance {used[0]} and round_to {used[1]}, but the study prunes with "
            f"{config.pruning_importance} and {config.pruning_round_to}; run `squeezefit sensitivity` again."
        )
    return measured
