"""One carried trial of a transfer (`search.transfer`): the trial flow for a trial another device scored.

Nothing is fine-tuned. The transfer runs two passes, one function each:

1. `time_carried`: the artifact is the source's file, copied, or re-built from the trial's
   weights (untuned: as the screen) by the trial flow's own builders (`search.trial`), and
   timed with `search.trial.time_artifact`: side by side with the study's reference, on
   its L0 scale. Latency depends on structure and precision only, so this is the whole
   latency story. An untuned trial that fits the budget here is left out.
2. `settle_carried`: the mAP, from one of `MAP_SOURCES`:
   - "reused": the artifact is the source's file and the source's mAP was measured on it
     by this device's accuracy runtime: that mAP is this artifact's.
   - "revalidated": validated here, on `ctx.val_images` images of the val split.
   - "carried": the source's mAP, kept without measuring it here (the transfer decided it
     cannot reach the new front). It approximates the artifact's mAP for the sampler; it
     is not this artifact's measured mAP, so such a trial must never be on a front, be
     exported or appear as measured.

A measured result (reused, revalidated) is saved to `<ctx.outdir>/<folder>/result.json`,
where the trial flow finds it and reuses it for the same policy. A carried one is saved
to `carried.json` beside it instead: the trial flow never reuses a mAP nobody measured,
so a later search that asks for the policy evaluates it properly.

`remeasure_policy` runs both passes for one trial, validating whenever the mAP cannot be
reused (a transfer without lazy validation).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from evaluators.accuracy import measure_accuracy
from evaluators.registry import get_device
from search.trial import TrialContext, TrialLatency, build_deployed, build_screen, time_artifact
from search.trial_result import Stopwatch, TrialResult, save_result, size_mb
from spaces.policy import Policy

MAP_SOURCES = ("reused", "revalidated", "carried")
CARRIED_FILE = "carried.json"


@dataclass(frozen=True)
class TimedTrial:
    """Pass 1 of a carried trial: its artifact here and its latency, or why it is left out.

    source: the trial as its device recorded it. policy: what is deployed here. artifact:
    the file timed (in `folder`). latency: None when left out. map_reusable: the artifact
    is the source's file and the source's mAP was measured on it by this device's accuracy
    runtime. seconds: wall seconds per step so far.
    """

    source: TrialResult
    policy: Policy
    folder: Path
    artifact: Path
    latency: TrialLatency | None
    map_reusable: bool
    seconds: dict
    left_out: str = ""

    def feasible(self, budget_ms: float) -> bool:
        """A fine-tuned trial within `budget_ms` here: one that can be on the front."""
        return self.source.status == "complete" and self.latency is not None and self.latency.latency_ms <= budget_ms


@dataclass(frozen=True)
class Remeasured:
    """A carried trial as measured here: its result (None: left out, and why) and where its mAP comes from."""

    result: TrialResult | None
    map_source: str = ""
    left_out: str = ""

    @property
    def map_reused(self) -> bool:
        return self.map_source == "reused"


def time_carried(
    source: TrialResult,
    policy: Policy,
    ctx: TrialContext,
    *,
    folder: str,
    rebuild: bool,
    source_runtime: str | None,
) -> TimedTrial:
    """Pass 1: build or copy the artifact of a trial another device scored, and time it on `ctx.device`.

    source: "complete" (`source.weights` holds its fine-tuned model) or "infeasible"
    (untuned, over the source's budget). The artifact is `source.artifact`, copied into
    `<ctx.outdir>/<folder>/`, unless `rebuild` or the file is gone; then it is built as
    `search.trial.evaluate_policy` builds it, from the weights or (untuned) as the screen.
    source_runtime: the accuracy runtime the source's mAP was measured on, on that file
    (None: it was not measured on it, e.g. a mAP the source itself carried). An untuned
    trial that fits `ctx.budget_ms` here is left out: its untuned mAP would mislead the sampler.
    """
    out = Path(ctx.outdir) / folder
    out.mkdir(parents=True, exist_ok=True)
    watch = Stopwatch()
    device = get_device(ctx.device)
    recipe = device.recipe_for(policy.recipe)
    complete = source.status == "complete"
    path = out / ("model.onnx" if complete else "screen.onnx")
    copied = not rebuild and Path(source.artifact).is_file()
    if copied:
        shutil.copyfile(source.artifact, path)
    elif complete:
        build_deployed(torch.load(source.weights, map_location="cpu", weights_only=False), policy, ctx, recipe, path)
    else:
        build_screen(policy, ctx, recipe, path)
    watch.lap("artifact")
    latency = time_artifact(device, path, ctx)
    watch.lap("latency")
    reusable = copied and source_runtime == device.accuracy_runtime
    if not complete and latency.latency_ms <= ctx.budget_ms:
        fits = f"untuned, and it fits the budget on {ctx.device} ({latency.latency_ms:.2f} ms): left to the search to fine-tune"
        return TimedTrial(source, policy, out, path, None, reusable, watch.seconds, left_out=fits)
    return TimedTrial(source, policy, out, path, latency, reusable, watch.seconds)


def settle_carried(timed: TimedTrial, ctx: TrialContext, *, validate: bool, origin: str) -> Remeasured:
    """Pass 2: the mAP of a timed trial — reused if it can be, else validated here if `validate`, else carried.

    The result ("<origin>; no fine-tuning spent") is saved to `result.json` in the trial's
    folder when its mAP is measured, to `carried.json` when it is carried (see the module docstring).
    """
    if timed.latency is None:
        return Remeasured(None, left_out=timed.left_out)
    source, latency = timed.source, timed.latency
    device = get_device(ctx.device)
    seconds = dict(timed.seconds)
    if timed.map_reusable:
        map_source, acc = "reused", source
    elif validate:
        watch = Stopwatch()
        map_source = "revalidated"
        acc = measure_accuracy(
            timed.artifact,
            Path(ctx.data_yaml),
            imgsz=ctx.imgsz,
            runtime=device.accuracy_runtime,
            max_images=ctx.val_images,
            workdir=timed.folder,
        )
        watch.lap("validate")
        seconds.update(watch.seconds)
    else:
        map_source, acc = "carried", source
    complete = source.status == "complete"
    reason = f"{origin}; no fine-tuning spent"
    if map_source == "carried":
        reason += "; mAP not measured here (the source's, carried)"
    if not complete:
        reason = f"p50 {latency.latency_ms:.2f} ms is over the {ctx.budget_ms:.2f} ms budget; {reason}"
    result = TrialResult(
        status=source.status,
        policy_id=timed.policy.policy_id,
        policy=timed.policy.to_dict(),
        map50_95=acc.map50_95,
        map50=acc.map50,
        latency_ms=latency.latency_ms,
        latency_p90_ms=latency.latency_p90_ms,
        timing=latency.timing,
        size_mb=size_mb(timed.artifact),
        macs=source.macs,
        params=source.params,
        fingerprint=device.fingerprint().to_dict(),
        reason=reason,
        epoch_maps=source.epoch_maps,
        artifact=str(timed.artifact),
        weights=source.weights if complete else "",
        seconds=seconds,
    )
    file = CARRIED_FILE if map_source == "carried" else "result.json"
    return Remeasured(save_result(result, timed.folder / file), map_source=map_source)


def remeasure_policy(
    source: TrialResult,
    policy: Policy,
    ctx: TrialContext,
    *,
    folder: str,
    rebuild: bool,
    source_runtime: str | None,
    origin: str,
) -> Remeasured:
    """Both passes for one trial another device scored: timed here, its mAP reused or validated here.

    See `time_carried` and `settle_carried`; nothing is fine-tuned, and an untuned trial
    that fits `ctx.budget_ms` here is left out with nothing saved.
    """
    timed = time_carried(source, policy, ctx, folder=folder, rebuild=rebuild, source_runtime=source_runtime)
    return settle_carried(timed, ctx, validate=True, origin=origin)
