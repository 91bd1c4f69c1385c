"""Recovery of a chosen policy: a longer fine-tune on the whole train split, distilled from the baseline.

A search fine-tunes every candidate briefly, on the study's fidelity subset (`train_images`,
`finetune_epochs`), because it must afford many. The few policies a person picks deserve
more: `recover_trial` continues the source trial's fine-tuned weights (or, for a policy the
search never fine-tuned, its pruned baseline) for `RecoverySettings.epochs` epochs on the
whole train split (or `train_images`), with Ultralytics' feature distillation from the
study's baseline (unless the source's own fine-tune ran without it,
`RecoverySettings.distillation`), then builds the deployed artifact again on the study's full
calibration set, times it against the study's reference (the same paired protocol as a
trial) and validates it on the study's validation images, so the recovered mAP is
comparable with every other trial of the study.

The result is stored as a new COMPLETE trial of the same study, at the source trial's
parameters (it is the same point of the space, better trained; `SearchSpace.replay`), its own scores, and the
user attributes `recovered_from` (the source trial's number) and `recovery`; its policy (and
policy id) is the source's with the recovery's fine-tune settings. The recovery's attributes: the settings,
the source's mAP (`map_before`), the per-epoch val mAP (the epoch curve, PyTorch), the
train images used and the wall seconds it cost. `front` marks such points, `export` exports
them like any trial, and the card shows the before/after. Recovering the same trial with
the same settings again returns the stored trial (its files under
`<outdir>/<policy_id>/recovered-<epochs>e-<images>/` are reused).

The sampler of a resumed search sees recovered trials too: a better-trained point is a true
statement that its region of the space is good.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import optuna
import torch

from evaluators.datasets import split_images, subset_data_yaml
from evaluators.registry import get_device
from evaluators.vocabulary import UserError
from search.trial import TrialContext, build_deployed, prune, start_model, time_artifact, validate_artifact
from search.trial_result import Stopwatch, TrialResult, add_measured_trial, load_result, save_result, size_mb
from spaces.distillation import DistillationSettings, finetune
from spaces.onnx_export import preprocess_images
from spaces.policy import Policy
from spaces.pruning import IterativePruning
from spaces.qat import QuantizationAware
from spaces.space import SearchSpace

RECOVERED_ATTR = "recovered_from"
# A plain recovery whose artifact scores this much mAP50-95 under its best epoch in PyTorch suggests --recover-qat.
INT8_COST_HINT = 0.01
RECOVERY_MIN_LR0 = 1e-3
"""A recovery's AdamW lr0 where none is given: the source's, but at least this. The 3-epoch trial fine-tune of a
swapped activation runs at `spaces.activation.SWAPPED_FINETUNE_LR0` (2e-4); a 6-epoch recovery on the whole train
split at that rate under-trains (ONNX Runtime bench study, ReLU INT8, undistilled: the 0.33x L0 guided start
0.3431 at 2e-4, 0.3742 at 1e-3; the unpruned 0.5x start 0.3898 and 0.3942)."""


@dataclass(frozen=True)
class RecoverySettings:
    """How a chosen policy is recovered.

    epochs: fine-tune epochs (> 0). train_images: the first N train images (None: the whole
    split). lr0: AdamW initial learning rate (None: the source policy's, at least RECOVERY_MIN_LR0). weight: the
    distillation loss weight, Ultralytics' `dis` (None: the source policy's when it
    distilled, else the default). prune_steps: 1 continues the trial's fine-tuned weights; k > 1
    starts again from the baseline and prunes toward the policy in k steps with the epochs split
    between them ("prune some, fine-tune, prune again"; `spaces.pruning.IterativePruning`), at the
    cost of k pruning passes (seconds each) and the same epochs. qat: the INT8 units' convs train through
    INT8 rounding (quantization-aware training, `spaces.qat`) — for a policy whose post-training INT8 costs
    more than INT8_COST_HINT; a policy without INT8 units is recovered without it (`for_policy`).
    """

    epochs: int = 10
    train_images: int | None = None
    lr0: float | None = None
    weight: float | None = None
    prune_steps: int = 1
    qat: bool = False

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise UserError(f"recovery needs at least 1 epoch, got {self.epochs}.")
        if not 1 <= self.prune_steps <= self.epochs:
            raise UserError(
                f"recovery prunes in 1 to its {self.epochs} epochs' steps (one epoch after each at least), "
                f"got {self.prune_steps} steps."
            )
        if self.train_images is not None and self.train_images < 1:
            raise UserError(f"recovery needs at least 1 train image, got {self.train_images}.")

    def tag(self) -> str:
        """The folder name of a recovery with these settings: `recovered-<epochs>e-<images|all>[-lr..][-dis..]`."""
        parts = [f"recovered-{self.epochs}e", str(self.train_images or "all")]
        parts += [f"lr{self.lr0:g}"] if self.lr0 is not None else []
        parts += [f"dis{self.weight:g}"] if self.weight is not None else []
        parts += [f"steps{self.prune_steps}"] if self.prune_steps > 1 else []
        parts += ["qat"] if self.qat else []
        return "-".join(parts)

    def for_policy(self, policy: Policy) -> RecoverySettings:
        """These settings as they apply to `policy`: no quantization-aware training without INT8 units."""
        return self if "int8" in policy.precision.values() else replace(self, qat=False)

    def distillation(self, source: DistillationSettings) -> DistillationSettings:
        """The fine-tune settings, with these epochs: distilled from the source's teacher, unless the source's own
        fine-tune ran without distillation — the search found it better so (a ReLU policy, whose student mimics
        the SiLU baseline's features poorly, lost 0.022 mAP50-95 in a 6-epoch recovery with distillation and
        gained 0.015 without). A source that was never fine-tuned (epochs 0) is distilled; `recover_policy` hands
        such a source the fine-tune its space gives a pruned policy instead (`recovered_from`)."""
        default = DistillationSettings()
        return DistillationSettings(
            enabled=source.enabled if source.epochs > 0 else True,
            weight=self.weight or (source.weight if source.enabled else default.weight),
            epochs=self.epochs,
            lr0=self.lr0 or max(source.lr0, RECOVERY_MIN_LR0),
            teacher=source.teacher,
        )


def recovered_trials(study, number: int) -> dict[str, int]:
    """Settings tag -> trial number of the stored recoveries of trial `number`."""
    return {
        t.user_attrs["recovery"]["tag"]: t.number
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if t.user_attrs.get(RECOVERED_ATTR) == number
    }


def recoverable(study, number: int):
    """The FrozenTrial a recovery of trial `number` starts from: the trial, or the source of a recovered trial
    (recovering a recovery recovers its source with the new settings). UserError saying why not otherwise."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    trial = trials.get(number)
    if trial is None or trial.state != optuna.trial.TrialState.COMPLETE or "status" not in trial.user_attrs:
        raise UserError(f"study {study.study_name!r} has no finished trial number {number}.")
    if trial.user_attrs.get(RECOVERED_ATTR) is not None:
        trial = trials[trial.user_attrs[RECOVERED_ATTR]]
    attrs = trial.user_attrs
    if attrs["status"] != "complete":
        raise UserError(
            f"trial {number} is {attrs['status']}: only a complete trial (within the budget, fine-tuned) is recovered."
        )
    if attrs.get("map_source") == "carried":
        raise UserError(
            f"trial {number}'s mAP was carried from another device's study, not measured; only a measured trial is recovered."
        )
    weights = attrs.get("weights")
    if weights and not Path(weights).is_file():
        raise UserError(f"trial {number}'s weights file {weights!r} is gone; re-run the study to rebuild it.")
    return trial


def recover_trial(study, number: int, ctx: TrialContext, settings: RecoverySettings) -> int:
    """Recover trial `number` of `study` (see the module docstring; a recovered trial's source, if it is one); the
    recovered trial's number.

    ctx: the study's trial context (`search.prepare.prepare` of its stored record). A stored
    recovery with the same settings is returned as it is.
    """
    source = recoverable(study, number)
    number = source.number
    attrs = source.user_attrs
    policy = Policy.from_dict(attrs["policy"])
    settings = settings.for_policy(policy)
    stored = recovered_trials(study, number).get(settings.tag())
    if stored is not None:
        return stored
    result = recover_policy(policy, attrs, ctx, settings)
    extra = {
        RECOVERED_ATTR: number,
        "recovery": {
            "tag": settings.tag(),
            **asdict(settings),
            "train_images_used": train_count(ctx, settings),
            "started_from": _started_from(attrs, settings),
            "map_before": attrs["map50_95"],
            "map50_before": attrs["map50"],
            "epoch_maps": list(result.epoch_maps),
            "int8_cost": _int8_cost(result, settings),
            "seconds": round(sum(result.seconds.values()), 2),
        },
    }
    if attrs.get("reference"):
        extra["reference"] = f"{attrs['reference']} recovered"
    params, distributions = ctx.space.replay(policy)  # ranges widened where an enqueued start lies outside them
    return add_measured_trial(
        study, params, distributions, result, extra, objectives=study_objectives(study), budget_ms=ctx.budget_ms
    )


def recovered_from(policy: Policy, space: SearchSpace) -> DistillationSettings:
    """The fine-tune a recovery of `policy` continues (`RecoverySettings.distillation`): the policy's own where it
    fine-tuned; for a policy never fine-tuned (a reference), the one `space` gives a pruned policy of its
    activation (`SearchSpace.pruned_finetune`: distilled for the model's own, not for a swapped one)."""
    if policy.distillation.epochs or not space.max_epochs:
        return policy.distillation
    return space.pruned_finetune(policy.activation)


def recover_policy(policy: Policy, attrs: dict, ctx: TrialContext, settings: RecoverySettings) -> TrialResult:
    """The recovery of `policy` from its evaluated result `attrs` (`TrialResult.to_dict()`: weights, macs, params);
    reused from `<outdir>/<policy_id>/<settings.tag()>/result.json` when it was done before."""
    out = Path(ctx.outdir) / policy.policy_id / settings.tag()
    if (stored := load_result(out / "result.json")) is not None:
        return stored
    out.mkdir(parents=True, exist_ok=True)
    watch = Stopwatch()
    device = get_device(ctx.device)
    recipe = device.recipe_for(policy.recipe)
    baseline = start_model(policy, ctx)  # the baseline, or its conversion to the policy's activation
    data_yaml = subset_data_yaml(Path(ctx.data_yaml), "train", settings.train_images, out)
    data_yaml = subset_data_yaml(data_yaml, "val", ctx.val_images, out)
    distillation = settings.distillation(recovered_from(policy, ctx.space))
    quantization = _quantization(policy, ctx, recipe) if settings.qat else None
    print(
        f"  recovering {policy.policy_id}: {distillation.epochs} epochs on {train_count(ctx, settings)} train images, "
        + (
            f"distilled from the baseline (dis {distillation.weight:g}, lr0 {distillation.lr0:g})"
            if distillation.enabled
            else f"without distillation (lr0 {distillation.lr0:g})"
        )
        + (f", pruned from the baseline in {settings.prune_steps} steps" if settings.prune_steps > 1 else "")
        + (", INT8 simulated in training" if quantization else ""),
        flush=True,
    )
    if settings.prune_steps > 1:
        tuned_model, epoch_maps = _prune_iteratively(
            baseline, policy, ctx, settings, distillation, data_yaml, out, quantization
        )
    else:
        if attrs.get("weights"):
            student = torch.load(attrs["weights"], map_location="cpu", weights_only=False)
        else:  # a policy the search did not fine-tune (e.g. unpruned): start from its pruned baseline
            student = prune(baseline, policy, ctx).model
        tuned = finetune(
            student,
            ctx.checkpoint,
            distillation,
            data_yaml,
            imgsz=ctx.imgsz,
            seed=ctx.seed,
            workdir=out,
            quantization=quantization,
        )
        tuned_model, epoch_maps = tuned.model, tuned.epoch_maps
    recovered = replace(policy, distillation=distillation)  # its own policy: the same point, fine-tuned further
    watch.lap("finetune")
    weights = out / "model.pt"
    tuned_model.names = baseline.names
    torch.save(tuned_model, weights)
    artifact = build_deployed(tuned_model, policy, ctx, recipe, out / "model.onnx")
    latency = time_artifact(device, artifact, ctx)
    watch.lap("artifact")
    acc = validate_artifact(artifact, ctx, device.accuracy_runtime, out)
    watch.lap("validate")
    result = TrialResult(
        status="complete",
        policy_id=recovered.policy_id,
        policy=recovered.to_dict(),
        map50_95=acc.map50_95,
        map50=acc.map50,
        latency_ms=latency.latency_ms,
        latency_p90_ms=latency.latency_p90_ms,
        size_mb=size_mb(artifact),
        macs=attrs["macs"],
        params=attrs["params"],
        fingerprint=device.fingerprint().to_dict(),
        epoch_maps=tuple(epoch_maps),
        artifact=str(artifact),
        weights=str(weights),
        seconds=watch.seconds,
        timing=latency.timing,
    )
    if not settings.qat and (cost := _int8_cost(result, settings)) is not None and cost > INT8_COST_HINT:
        print(
            f"  post-training INT8 costs {cost:.4f} mAP50-95 (the artifact against the best epoch in PyTorch): "
            "a recovery with --recover-qat may keep more",
            flush=True,
        )
    return save_result(result, out / "result.json")


def _quantization(policy: Policy, ctx: TrialContext, recipe) -> QuantizationAware:
    """The quantization-aware training of `policy`'s INT8 units on the device's grid, ranges set on the study's
    calibration images (at most 64 of them: ranges settle in training)."""
    images = preprocess_images(list(ctx.calibration_images)[:64], ctx.imgsz)
    return QuantizationAware(dict(policy.precision), recipe, images)


def _int8_cost(result: TrialResult, settings: RecoverySettings) -> float | None:
    """The best val mAP50-95 in PyTorch of the final fine-tune's epochs (the kept weights) minus the artifact's,
    both on the study's val images; None without INT8 units. Includes what the runtime's other arithmetic
    changes, which is small beside INT8."""
    if "int8" not in result.policy["precision"].values() or not result.epoch_maps:
        return None
    share, extra = divmod(settings.epochs, settings.prune_steps)
    final = result.epoch_maps[-(share + (1 if extra else 0)) :]  # `_prune_iteratively`: the last step's epochs
    return round(max(final) - result.map50_95, 4)


def _prune_iteratively(
    baseline,
    policy: Policy,
    ctx: TrialContext,
    settings: RecoverySettings,
    distillation,
    data_yaml,
    out,
    quantization: QuantizationAware | None = None,
):
    """(model, epoch curve): the baseline pruned toward the policy in `settings.prune_steps` steps
    (`spaces.pruning.IterativePruning`), the recovery's epochs split over the steps and run after each."""
    pruning = IterativePruning(
        baseline,
        policy.pruning,
        steps=settings.prune_steps,
        imgsz=ctx.imgsz,
        importance=ctx.pruning_importance,
        round_to=ctx.pruning_round_to,
        depth=policy.depth,
    )
    share, extra = divmod(distillation.epochs, settings.prune_steps)
    epoch_maps: list[float] = []
    for step in range(1, settings.prune_steps + 1):
        pruning.step()
        epochs = share + (1 if step > settings.prune_steps - extra else 0)  # the later steps take the remainder
        print(f"  pruning step {step}/{settings.prune_steps}, then {epochs} epoch(s)", flush=True)
        tuned = finetune(
            pruning.model,
            ctx.checkpoint,
            replace(distillation, epochs=epochs),
            data_yaml,
            imgsz=ctx.imgsz,
            seed=ctx.seed,
            workdir=out / f"step{step}",
            quantization=quantization,
        )
        pruning.model.load_state_dict(tuned.model.state_dict())  # the next step ranks channels by these weights
        epoch_maps += tuned.epoch_maps
    return pruning.model.eval(), epoch_maps


def _started_from(attrs: dict, settings: RecoverySettings) -> str:
    if settings.prune_steps > 1:
        return f"the baseline, pruned in {settings.prune_steps} steps with fine-tuning between them"
    return "the trial's weights" if attrs.get("weights") else "the pruned baseline"


def train_count(ctx: TrialContext, settings: RecoverySettings) -> int:
    """How many train images a recovery with `settings` trains on."""
    total = len(split_images(Path(ctx.data_yaml), "train")[1])
    return min(total, settings.train_images or total)


def study_objectives(study) -> list[str]:
    """The study's objectives, as its config names them."""
    from search.study import study_record

    return list(study_record(study)["config"]["objectives"])
