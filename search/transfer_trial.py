"""One carried trial of a transfer (`search.transfer`): the trial flow for a trial another device scored.

Nothing is fine-tuned. The transfer runs two passes; the first in two steps:

1. Latency, for every carried trial.
   a. `build_carried`: the artifact is the source's file, copied, or re-built from the
      trial's weights (untuned: from the pruned baseline, as the screen). A re-built INT8
      artifact is built *timing-only* (`spaces.precision.build_artifact`: `TIMING_CALIBRATION`
      images, no NNCF bias correction): it has the structure, hence the latency, of the
      full build, and is used for nothing but timing.
   b. `time_together`: every artifact of the pass is timed in ONE round-robin session with
      the study's reference (`Device.measure_together`: each round runs the reference and
      every artifact once, the order reversed every other round, so each artifact is still
      alternated with the reference run by run, as `search.trial.time_artifact` pairs one).
      The floors are the study's own (`ctx.timing`), per round: every artifact gets at
      least `min_runs` runs and the session lasts at least `min_seconds`. Latency = ratio x
      L0 (`ctx.reference_ms`), the p90 on the same scale; the timing dict is the trial
      flow's (ratio, ratio_low, ratio_high, p50_ms, reference_p50_ms, host_drift, runs,
      cached=False) plus `session` ("together (N artifacts)"). Each trial's "latency"
      seconds are its share of the session. An untuned trial that fits the budget is left out.
2. `settle_carried`: the mAP, from one of `MAP_SOURCES`:
   - "reused": the artifact is the source's file and the source's mAP was measured on it
     by this device's accuracy runtime: that mAP is this artifact's.
   - "revalidated": validated here, on `ctx.val_images` images of the val split. A
     timing-only artifact is first built in full (every calibration image, bias
     correction: `search.trial.build_deployed`, or `build_screen` when untuned; step
     "deploy"); it must have the timed artifact's structure hash (else a bug: RuntimeError),
     so the latency of the session is its latency. The timing-only file is then removed.
   - "carried": the source's mAP, kept without measuring it here (the transfer decided it
     cannot reach the new front). It approximates the artifact's mAP for the sampler; it
     is not this artifact's measured mAP, so such a trial must never be on a front, be
     exported or appear as measured. Its artifact stays the timing-only file when it was re-built.

A measured result (reused, revalidated) is saved to `<ctx.outdir>/<folder>/result.json`,
where the trial flow finds it and reuses it for the same policy. A carried one is saved
to `carried.json` beside it instead: the trial flow never reuses a mAP nobody measured,
so a later search that asks for the policy evaluates it properly.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from evaluators.artifact import structure_hash
from evaluators.registry import get_device
from search.trial import (
    TrialContext,
    TrialLatency,
    build_deployed,
    build_screen,
    prune,
    start_model,
    validate_artifact,
)
from search.trial_result import Stopwatch, TrialResult, save_result, size_mb
from spaces.policy import Policy
from spaces.precision import build_artifact

MAP_SOURCES = ("reused", "revalidated", "carried")
CARRIED_FILE = "carried.json"
# A timing-only artifact's INT8 values do not matter, only its structure: a few images calibrate it.
TIMING_CALIBRATION = 8


@dataclass(frozen=True)
class TimedTrial:
    """A carried trial after pass 1: its artifact here and its latency, or why it is left out.

    source: the trial as its device recorded it. policy: what is deployed here. artifact:
    the file timed (in `folder`). latency: None when left out (or not timed yet, after
    `build_carried`). map_reusable: the artifact is the source's file and the source's mAP
    was measured on it by this device's accuracy runtime. timing_only: the artifact was
    built timing-only; it must be built in full before it is validated. seconds: wall
    seconds per step so far.
    """

    source: TrialResult
    policy: Policy
    folder: Path
    artifact: Path
    latency: TrialLatency | None
    map_reusable: bool
    seconds: dict
    left_out: str = ""
    timing_only: bool = False

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


def build_carried(
    source: TrialResult,
    policy: Policy,
    ctx: TrialContext,
    *,
    folder: str,
    rebuild: bool,
    source_runtime: str | None,
) -> TimedTrial:
    """Pass 1a: the artifact to time for a trial another device scored, in `<ctx.outdir>/<folder>/` (not timed yet).

    source: "complete" (`source.weights` holds its fine-tuned model) or "infeasible"
    (untuned, over the source's budget). The artifact is `source.artifact`, copied, unless
    `rebuild` or the file is gone; then it is built from the weights or (untuned) from the
    pruned baseline, timing-only when any unit is INT8 (`model-timing.onnx` /
    `screen-timing.onnx`; else the build is the full one). source_runtime: the accuracy
    runtime the source's mAP was measured on, on that file (None: it was not measured on it,
    e.g. a mAP the source itself carried).
    """
    out = Path(ctx.outdir) / folder
    out.mkdir(parents=True, exist_ok=True)
    watch = Stopwatch()
    device = get_device(ctx.device)
    complete = source.status == "complete"
    name = "model" if complete else "screen"
    copied = not rebuild and Path(source.artifact).is_file()
    timing_only = not copied and "int8" in policy.precision.values()
    path = out / (f"{name}-timing.onnx" if timing_only else f"{name}.onnx")
    if copied:
        shutil.copyfile(source.artifact, path)
    else:
        if complete:
            model = torch.load(source.weights, map_location="cpu", weights_only=False)
        else:
            baseline = start_model(policy, ctx)
            model = prune(baseline, policy, ctx).model
            model.names = baseline.names
        build_artifact(
            model,
            policy.precision,
            path,
            imgsz=ctx.imgsz,
            names=model.names,
            calibration_images=list(ctx.calibration_images)[:TIMING_CALIBRATION],
            recipe=device.recipe_for(policy.recipe),
            timing_only=timing_only,
        )
    watch.lap("artifact")
    reusable = copied and source_runtime == device.accuracy_runtime
    return TimedTrial(source, policy, out, path, None, reusable, watch.seconds, timing_only=timing_only)


def time_together(built: Sequence[TimedTrial], ctx: TrialContext) -> list[TimedTrial]:
    """Pass 1b: time every built artifact with the study's reference in one session (see the module docstring).

    Returns the trials in the same order, each with its latency, or left out: an untuned
    trial that fits `ctx.budget_ms` here (its untuned mAP would mislead the sampler).
    """
    if not built:
        return []
    device = get_device(ctx.device)
    start = time.perf_counter()
    measured = device.measure_together([ctx.reference_artifact, *(b.artifact for b in built)], settings=ctx.timing)
    share = round((time.perf_counter() - start) / len(built), 2)
    session = f"together ({len(built)} artifact{'s' if len(built) != 1 else ''})"
    timed = []
    for one, m in zip(built, measured[1:], strict=True):
        latency = TrialLatency.scaled(m, ctx.reference_ms, session=session)
        left_out = ""
        if one.source.status != "complete" and latency.latency_ms <= ctx.budget_ms:
            left_out = f"untuned, and it fits the budget on {ctx.device} ({latency.latency_ms:.2f} ms): left to the search to fine-tune"
        seconds = {**one.seconds, "latency": share}
        timed.append(replace(one, latency=None if left_out else latency, seconds=seconds, left_out=left_out))
    return timed


def settle_carried(timed: TimedTrial, ctx: TrialContext, *, validate: bool, origin: str) -> Remeasured:
    """Pass 2: the mAP of a timed trial — reused if it can be, else validated here if `validate`, else carried.

    The result ("<origin>; no fine-tuning spent") is saved to `result.json` in the trial's
    folder when its mAP is measured, to `carried.json` when it is carried (see the module docstring).
    RuntimeError (a bug) if the full build of a timing-only artifact differs from it in structure.
    """
    if timed.latency is None:
        return Remeasured(None, left_out=timed.left_out)
    source, latency, artifact = timed.source, timed.latency, timed.artifact
    device = get_device(ctx.device)
    seconds = dict(timed.seconds)
    if timed.map_reusable:
        map_source, acc = "reused", source
    elif validate:
        watch = Stopwatch()
        if timed.timing_only:
            artifact = _build_in_full(timed, ctx)
            watch.lap("deploy")
        map_source = "revalidated"
        acc = validate_artifact(artifact, ctx, device.accuracy_runtime, timed.folder)
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
        size_mb=size_mb(artifact),
        macs=source.macs,
        params=source.params,
        fingerprint=device.fingerprint().to_dict(),
        reason=reason,
        epoch_maps=source.epoch_maps,
        artifact=str(artifact),
        weights=source.weights if complete else "",
        seconds=seconds,
    )
    file = CARRIED_FILE if map_source == "carried" else "result.json"
    return Remeasured(save_result(result, timed.folder / file), map_source=map_source)


def _build_in_full(timed: TimedTrial, ctx: TrialContext) -> Path:
    """The full build of a timing-only artifact (`model.onnx` / `screen.onnx` beside it), checked to share its structure."""
    recipe = get_device(ctx.device).recipe_for(timed.policy.recipe)
    if timed.source.status == "complete":
        model = torch.load(timed.source.weights, map_location="cpu", weights_only=False)
        path = build_deployed(model, timed.policy, ctx, recipe, timed.folder / "model.onnx")
    else:
        path = build_screen(timed.policy, ctx, recipe, timed.folder / "screen.onnx")[2].path
    if structure_hash(path) != structure_hash(timed.artifact):
        raise RuntimeError(
            f"the full build {path} differs in structure from the timing-only artifact {timed.artifact} it was timed as"
        )
    timed.artifact.unlink()
    return path
