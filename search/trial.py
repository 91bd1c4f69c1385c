"""One trial: policy -> prune -> latency screen -> fine-tune -> artifact -> scores.

The order follows DESIGN.md. Latency depends on structure and precision, not on trained
weights, so it is measured first, on an artifact of the pruned but untrained model; a
policy over the budget stops there — no fine-tuning is spent on it — and records the
mAP of that untuned artifact, so the sampler still learns something true about it.
Survivors are fine-tuned with their distillation settings, re-built with the full
calibration set, and scored on the artifact that would be deployed.

Every trial writes into `<outdir>/<policy_id>/`; a `result.json` there means the policy
was already evaluated in this study and is reused, not recomputed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from ultralytics.nn.tasks import load_checkpoint

from evaluators.accuracy import measure_accuracy
from evaluators.base import TimingSettings
from evaluators.datasets import subset_data_yaml
from evaluators.registry import get_device
from evaluators.vocabulary import Int8Recipe
from spaces.distillation import finetune
from spaces.policy import Policy
from spaces.precision import build_artifact
from spaces.pruning import apply_pruning
from spaces.space import SearchSpace

STATUSES = ("complete", "infeasible", "pruned")
# Latency does not depend on the calibration: the screen artifact calibrates on a few images.
_SCREEN_CALIBRATION = 8


@dataclass(frozen=True)
class TrialContext:
    """Everything a trial needs besides its policy; picklable, sent to Ray workers.

    budget_ms: the latency budget (p50) on `device`. train_images / val_images: fidelity
    knobs (first N images of each split); None = the whole split.
    """

    checkpoint: str
    data_yaml: str
    imgsz: int
    device: str
    budget_ms: float
    space: SearchSpace
    calibration_images: tuple[str, ...]
    outdir: str
    timing: TimingSettings = TimingSettings()
    train_images: int | None = None
    val_images: int | None = None
    seed: int = 0


@dataclass(frozen=True)
class TrialResult:
    """What one trial measured. Latency in ms (p50 / p90 of the device), size in MB."""

    status: str
    policy_id: str
    policy: dict
    map50_95: float
    map50: float
    latency_ms: float
    latency_p90_ms: float
    size_mb: float
    macs: int
    params: int
    fingerprint: dict
    reason: str = ""
    epoch_maps: tuple[float, ...] = ()
    artifact: str = ""
    weights: str = ""
    seconds: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["epoch_maps"] = list(self.epoch_maps)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> TrialResult:
        return cls(**{**data, "epoch_maps": tuple(data.get("epoch_maps", ()))})


def build_screen(policy: Policy, ctx: TrialContext, recipe: Int8Recipe, path: Path, baseline=None):
    """(pruned model, class names, screen artifact): the untrained artifact whose latency decides feasibility.

    baseline: the loaded checkpoint model, when the caller has it (else it is loaded from `ctx.checkpoint`).
    """
    if baseline is None:
        baseline, _ = load_checkpoint(ctx.checkpoint)
    pruned = apply_pruning(baseline, policy.pruning, imgsz=ctx.imgsz)
    screen = build_artifact(
        pruned.model,
        policy.precision,
        path,
        imgsz=ctx.imgsz,
        names=baseline.names,
        calibration_images=list(ctx.calibration_images)[:_SCREEN_CALIBRATION],
        recipe=recipe,
    )
    return pruned, baseline.names, screen


def evaluate_policy(
    policy: Policy, ctx: TrialContext, *, should_stop: Callable[[int, float, float], bool] | None = None
) -> TrialResult:
    """Run the trial flow for `policy`; reuse a finished result of the same policy in `ctx.outdir`.

    should_stop(epoch, val_map50_95, latency_ms) is asked after each fine-tune epoch; True
    stops the fine-tune and the trial ends as "pruned".
    """
    out = Path(ctx.outdir) / policy.policy_id
    done = out / "result.json"
    if done.is_file():
        return TrialResult.from_dict(json.loads(done.read_text()))
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = round(now - clock, 2)
        clock = now

    device = get_device(ctx.device)
    recipe = device.recipe_for(policy.recipe)
    runtime = device.accuracy_runtime
    pruned, names, screen = build_screen(policy, ctx, recipe, out / "screen.onnx")
    lap("screen")
    calib = list(ctx.calibration_images)
    latency = device.measure(screen.path, settings=ctx.timing)
    lap("latency")

    def accuracy(path: Path):
        return measure_accuracy(
            path, Path(ctx.data_yaml), imgsz=ctx.imgsz, runtime=runtime, max_images=ctx.val_images, workdir=out
        )

    common = dict(
        policy_id=policy.policy_id,
        policy=policy.to_dict(),
        latency_ms=latency.p50_ms,
        latency_p90_ms=latency.p90_ms,
        macs=pruned.macs,
        params=pruned.params,
        fingerprint=device.fingerprint().to_dict(),
    )
    if latency.p50_ms > ctx.budget_ms:
        acc = accuracy(screen.path)
        lap("validate")
        reason = f"p50 {latency.p50_ms:.2f} ms is over the {ctx.budget_ms:.2f} ms budget; no fine-tuning spent"
        result = TrialResult(
            "infeasible",
            map50_95=acc.map50_95,
            map50=acc.map50,
            size_mb=_mb(screen.path),
            reason=reason,
            artifact=str(screen.path),
            seconds=seconds,
            **common,
        )
        return _save(result, done)

    def on_epoch(epoch: int, value: float) -> bool:
        return bool(should_stop and should_stop(epoch, value, latency.p50_ms))

    data_yaml = subset_data_yaml(Path(ctx.data_yaml), "train", ctx.train_images, out)
    data_yaml = subset_data_yaml(data_yaml, "val", ctx.val_images, out)
    tuned = finetune(
        pruned.model,
        ctx.checkpoint,
        policy.distillation,
        data_yaml,
        imgsz=ctx.imgsz,
        seed=ctx.seed,
        workdir=out,
        on_epoch=on_epoch,
    )
    lap("finetune")
    if tuned.stopped_early:
        reason = f"stopped after epoch {len(tuned.epoch_maps)}: val mAP50-95 {tuned.epoch_maps[-1]:.4f} cannot reach the front"
        result = TrialResult(
            "pruned",
            map50_95=tuned.epoch_maps[-1],
            map50=0.0,
            size_mb=_mb(screen.path),
            reason=reason,
            epoch_maps=tuned.epoch_maps,
            artifact=str(screen.path),
            seconds=seconds,
            **common,
        )
        return _save(result, done)

    weights = out / "model.pt"
    tuned.model.names = names
    torch.save(tuned.model, weights)
    artifact = build_artifact(
        tuned.model,
        policy.precision,
        out / "model.onnx",
        imgsz=ctx.imgsz,
        names=names,
        calibration_images=calib,
        recipe=recipe,
    )
    final_latency = device.measure(
        artifact.path, settings=ctx.timing
    )  # same structure: a cache hit, checked rather than assumed
    lap("artifact")
    acc = accuracy(artifact.path)
    lap("validate")
    result = TrialResult(
        "complete",
        map50_95=acc.map50_95,
        map50=acc.map50,
        size_mb=_mb(artifact.path),
        epoch_maps=tuned.epoch_maps,
        artifact=str(artifact.path),
        weights=str(weights),
        seconds=seconds,
        **{**common, "latency_ms": final_latency.p50_ms, "latency_p90_ms": final_latency.p90_ms},
    )
    return _save(result, done)


def _mb(path: Path) -> float:
    return round(Path(path).stat().st_size / 1e6, 3)


def _save(result: TrialResult, path: Path) -> TrialResult:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result.to_dict(), indent=1))
    tmp.replace(path)  # atomic: a killed trial never leaves a half-written result
    return result
