"""One trial: policy -> prune -> latency screen -> fine-tune -> artifact -> scores.

The order follows DESIGN.md. Latency depends on structure and precision, not on trained
weights, so it is measured first, on an artifact of the pruned but untrained model; a
policy over the budget stops there — no fine-tuning is spent on it — and records the
mAP of that untuned artifact, so the sampler still learns something true about it.
Survivors are fine-tuned with their distillation settings, re-built with the full
calibration set, and scored on the artifact that would be deployed.

Latency is the artifact's ratio to the study's reference artifact, timed side by side,
times L0 (`time_artifact`). A transfer re-measures trials another device scored in
`search.transfer_trial`.

Every trial writes into `<outdir>/<policy_id>/`; a `result.json` there (written atomically)
means the policy was already evaluated in this study and is reused, not recomputed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from evaluators.accuracy import measure_accuracy
from evaluators.base import TimingSettings
from evaluators.datasets import subset_data_yaml
from evaluators.registry import get_device
from evaluators.vocabulary import Int8Recipe, UserError
from search.checkpoint import load_baseline
from search.trial_result import Stopwatch, TrialResult, load_result, save_result, size_mb
from spaces.activation import with_activation
from spaces.distillation import finetune
from spaces.policy import Policy
from spaces.precision import build_artifact
from spaces.pruning import apply_pruning
from spaces.space import SearchSpace

# Latency does not depend on the calibration: the screen artifact calibrates on a few images.
_SCREEN_CALIBRATION = 8


@dataclass(frozen=True)
class TrialContext:
    """Everything a trial needs besides its policy; picklable, sent to Ray workers.

    budget_ms: the latency budget (p50) on `device`. train_images / val_images: fidelity
    knobs (first N images of each split); None = the whole split. pruning_importance /
    pruning_round_to: how `spaces.pruning.apply_pruning` ranks a unit's channels (a
    criterion's name) and rounds the count it keeps (a multiple of it; None: any count).
    variants: (activation, checkpoint) of each converted baseline of the study (`search.variants`): where a
    policy that names the activation starts from (`start_model`).
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
    pruning_importance: str = "magnitude"
    pruning_round_to: int | None = 8
    reference_artifact: str = ""
    reference_ms: float = 0.0
    variants: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class TrialLatency:
    """A trial artifact's latency on the study's scale (see `time_artifact`); ms.

    latency_ms / latency_p90_ms: p50 / p90 as the ratio to the reference times L0.
    timing: the paired measurement behind them — ratio, ratio_low, ratio_high (95%),
    p50_ms and reference_p50_ms as timed in that session, host_drift, runs, cached, and
    measured_on: where and when (`evaluators.base.timing_session`: host, started, ended; node on a cluster).
    """

    latency_ms: float
    latency_p90_ms: float
    timing: dict

    @classmethod
    def scaled(cls, m, reference_ms: float, **extra) -> TrialLatency:
        """The study-scale latency of the paired measurement `m` (ratio x `reference_ms`); `extra` joins its timing."""
        timing = {
            "ratio": m.ratio,
            "ratio_low": m.ratio_low,
            "ratio_high": m.ratio_high,
            "p50_ms": m.p50_ms,
            "reference_p50_ms": m.reference_p50_ms,
            "host_drift": m.host_drift,
            "runs": m.runs,
            "cached": m.cached,
            "measured_on": dict(m.session),
            **extra,
        }
        return cls(m.latency_ms(reference_ms), m.p90_ms * reference_ms / m.reference_p50_ms, timing)


def time_artifact(device, path: Path, ctx: TrialContext) -> TrialLatency:
    """Time `path` against the study's reference artifact side by side on `device`; scale by L0.

    Latencies of a study are all `ratio x ctx.reference_ms` (L0, the reference's p50 fixed
    when the study was created), so trials timed an hour apart on a drifting host stay
    comparable: the host's speed cancels in the ratio.
    """
    return TrialLatency.scaled(
        device.measure_paired(path, ctx.reference_artifact, settings=ctx.timing), ctx.reference_ms
    )


def start_model(policy: Policy, ctx: TrialContext, baseline=None, *, weights: bool = True):
    """The model `policy` is pruned from: the study's baseline, or, for a policy that names an activation, the
    baseline converted to it (`ctx.variants`).

    baseline: the loaded baseline, when the caller has it. weights: False where only the structure matters
    (a timing-only build): the activation is then swapped on the baseline's weights, and no converted baseline
    is needed. UserError where the study has no converted baseline for the policy's activation.
    """
    if policy.activation is None or not weights:
        model = baseline if baseline is not None else load_baseline(ctx.checkpoint)
        return model if policy.activation is None else with_activation(model, policy.activation)
    variants = dict(ctx.variants)
    if policy.activation not in variants:
        raise UserError(
            f"policy {policy.policy_id} runs the model with {policy.activation}, which the study does not offer "
            f"(set `activations: [{policy.activation}]` in its config)."
        )
    return load_baseline(variants[policy.activation])


def prune(baseline, policy: Policy, ctx: TrialContext):
    """`spaces.pruning.apply_pruning` of the loaded baseline (its depth and channels) with the study's importance
    and round_to."""
    return apply_pruning(
        baseline,
        policy.pruning,
        imgsz=ctx.imgsz,
        importance=ctx.pruning_importance,
        round_to=ctx.pruning_round_to,
        depth=policy.depth,
    )


def build_screen(
    policy: Policy, ctx: TrialContext, recipe: Int8Recipe, path: Path, baseline=None, *, timing_only: bool = False
):
    """(pruned model, class names, screen artifact): the untrained artifact whose latency decides feasibility.

    baseline: the loaded checkpoint model, when the caller has it (else it is loaded from `ctx.checkpoint`); the
    policy's activation is applied to it (`start_model`).
    timing_only: an artifact for timing and nothing else (`spaces.precision.build_artifact`); a trial's
    screen is validated too, so it is not.
    """
    baseline = start_model(policy, ctx, baseline, weights=not timing_only)
    pruned = prune(baseline, policy, ctx)
    screen = build_artifact(
        pruned.model,
        policy.precision,
        path,
        imgsz=ctx.imgsz,
        names=baseline.names,
        calibration_images=list(ctx.calibration_images)[:_SCREEN_CALIBRATION],
        recipe=recipe,
        timing_only=timing_only,
    )
    return pruned, baseline.names, screen


def timing_screen(policy: Policy, ctx: TrialContext, recipe: Int8Recipe, folder: Path, baseline=None) -> Path:
    """`<folder>/<policy_id>.onnx`: the policy's timing-only screen (`build_screen`), built once — an earlier build
    there is reused, and a build is written under a temporary name first, so an interrupted one is never taken."""
    path = Path(folder) / f"{policy.policy_id}.onnx"
    if not path.is_file():
        partial = path.with_suffix(".partial.onnx")
        build_screen(policy, ctx, recipe, partial, baseline=baseline, timing_only=True)
        partial.replace(path)
    return path


def build_deployed(model, policy: Policy, ctx: TrialContext, recipe: Int8Recipe, path: Path) -> Path:
    """Write the artifact that is deployed for a fine-tuned `model` (with its `names`), calibrated on every image."""
    artifact = build_artifact(
        model,
        policy.precision,
        path,
        imgsz=ctx.imgsz,
        names=model.names,
        calibration_images=list(ctx.calibration_images),
        recipe=recipe,
    )
    return artifact.path


def evaluate_policy(
    policy: Policy,
    ctx: TrialContext,
    *,
    should_stop: Callable[[int, float, float], bool] | None = None,
    report_epoch: Callable[[int, float, TrialResult], None] | None = None,
) -> TrialResult:
    """Run the trial flow for `policy`; reuse a finished result of the same policy in `ctx.outdir`.

    should_stop(epoch, val_map50_95, latency_ms) is asked after each fine-tune epoch; True
    stops the fine-tune and the trial ends as "pruned".
    report_epoch(epoch, val_map50_95, interim) is called after each fine-tune epoch but the last that goes on: `interim`
    is the "pruned" result the trial stands as should a scheduler stop it there (`search.scheduler`; the call
    may block while it decides, and not return).
    """
    out = Path(ctx.outdir) / policy.policy_id
    done = out / "result.json"
    if (stored := load_result(done)) is not None:
        return stored
    out.mkdir(parents=True, exist_ok=True)
    watch = Stopwatch()
    device = get_device(ctx.device)
    recipe = device.recipe_for(policy.recipe)
    pruned, names, screen = build_screen(policy, ctx, recipe, out / "screen.onnx")
    watch.lap("screen")
    latency = time_artifact(device, screen.path, ctx)
    watch.lap("latency")
    common = dict(
        policy_id=policy.policy_id,
        policy=policy.to_dict(),
        macs=pruned.macs,
        params=pruned.params,
        fingerprint=device.fingerprint().to_dict(),
        seconds=watch.seconds,  # later laps land here too
    )
    screened = dict(
        latency_ms=latency.latency_ms,
        latency_p90_ms=latency.latency_p90_ms,
        timing=latency.timing,
        size_mb=size_mb(screen.path),
    )
    if latency.latency_ms > ctx.budget_ms:
        acc = validate_artifact(screen.path, ctx, device.accuracy_runtime, out)
        watch.lap("validate")
        reason = f"{_over_budget(latency.latency_ms, ctx.budget_ms)}; no fine-tuning spent"
        result = TrialResult(
            status="infeasible",
            **common,
            **screened,
            map50_95=acc.map50_95,
            map50=acc.map50,
            reason=reason,
            artifact=str(screen.path),
        )
        return save_result(result, done)

    maps: list[float] = []

    def on_epoch(epoch: int, value: float) -> bool:
        maps.append(value)
        if should_stop and should_stop(epoch, value, latency.latency_ms):
            return True
        if report_epoch is not None and epoch < policy.distillation.epochs:  # after the last, the scored result
            reason = f"stopped by the scheduler after epoch {epoch}: val mAP50-95 {value:.4f}"
            interim = dict(map50_95=value, map50=0.0, epoch_maps=tuple(maps), artifact=str(screen.path))
            report_epoch(epoch, value, TrialResult(status="pruned", **common, **screened, **interim, reason=reason))
        return False

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
    watch.lap("finetune")
    if tuned.stopped_early:
        reason = f"stopped after epoch {len(tuned.epoch_maps)}: val mAP50-95 {tuned.epoch_maps[-1]:.4f} cannot reach the front"
        stopped = dict(map50_95=tuned.epoch_maps[-1], map50=0.0, epoch_maps=tuned.epoch_maps, artifact=str(screen.path))
        return save_result(TrialResult(status="pruned", **common, **screened, **stopped, reason=reason), done)

    weights = out / "model.pt"
    tuned.model.names = names
    torch.save(tuned.model, weights)
    artifact = build_deployed(tuned.model, policy, ctx, recipe, out / "model.onnx")
    final = time_artifact(device, artifact, ctx)  # same structure: a cache hit, checked rather than assumed
    watch.lap("artifact")
    acc = validate_artifact(artifact, ctx, device.accuracy_runtime, out)
    watch.lap("validate")
    result = TrialResult(
        status="complete",
        **common,
        latency_ms=final.latency_ms,
        latency_p90_ms=final.latency_p90_ms,
        timing=final.timing,
        size_mb=size_mb(artifact),
        map50_95=acc.map50_95,
        map50=acc.map50,
        epoch_maps=tuned.epoch_maps,
        artifact=str(artifact),
        weights=str(weights),
    )
    return save_result(result, done)


def validate_artifact(path: Path, ctx: TrialContext, runtime: str, workdir: Path):
    """mAP of the artifact at `path` on `runtime`, on the first `ctx.val_images` images of the val split."""
    return measure_accuracy(
        path, Path(ctx.data_yaml), imgsz=ctx.imgsz, runtime=runtime, max_images=ctx.val_images, workdir=workdir
    )


def _over_budget(latency_ms: float, budget_ms: float) -> str:
    return f"p50 {latency_ms:.2f} ms is over the {budget_ms:.2f} ms budget"
