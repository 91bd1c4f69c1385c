"""Reuse a finished study on a new device: accuracy carries over, latency is measured again.

`transfer_study` creates a study for the new device in the same storage (same space, its
own record naming its source), carries the source's trials into it without fine-tuning
anything, and can then continue the search there, warm. Per carried trial:

- the source's fine-tuned weights (`model.pt`) become the new device's artifact. A
  precision the new device does not run becomes fp32 (every device runs fp32; the continued
  search explores the faster ones the device offers), and INT8 units take the new device's
  INT8 recipe. When neither changes, the source's artifact file is the artifact (copied):
  rebuilding it would only risk drift in what was scored (if the file is gone it is rebuilt
  from the weights, and then validated again).
- latency is measured on the new device (a new fingerprint, so never a cached source value).
- mAP is reused when the artifact is numerically the same (the source's file: same
  precisions, same INT8 recipe) and its mAP comes from the same runtime (one of
  `evaluators.accuracy.RUNTIMES`; other runtimes validate through onnxruntime, as in
  `search.trial`); else it is validated again on the new runtime at the source's fidelity
  (`val_images`). Validation only: nothing is fine-tuned here, and no `model.pt` is written.

Which trials: every COMPLETE trial with status "complete" ("all"), or the source's Pareto
front plus its top-K by mAP ("front+topK"). With "all", trials that were over the source's
budget (never fine-tuned) are carried as latency re-measurements of their untuned screen
artifact only while they are still over the new budget: that tells the sampler the region
is too slow. One that now fits is left out — its untuned mAP would mislead the sampler —
and is listed as skipped; the search evaluates it properly if it asks for it. PRUNED
trials (stopped early, no weights) are skipped.

A carried trial is added as a COMPLETE Optuna trial whose parameters and distributions are
those the new space's define-by-run produces for its policy (so the sampler starts
informed), with the tuner's user attributes (`TrialResult.to_dict()`), the tuner's
constraint (`latency_budget` = p50 - budget), and `transferred_from` (source trial number),
`map_source` ("reused" | "revalidated"), `source_map50_95`, `changed` (the deployed policy
or its INT8 expression differs from the source's) and `changes` (what); `reference` names
it when it is one of the new space's reference policies, so a continued search does not
enqueue that policy again. Running the transfer again resumes it: carried trials are skipped.
"""

from __future__ import annotations

import datetime
import json
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import optuna
from optuna.trial import TrialState

from evaluators.accuracy import RUNTIMES, measure_accuracy
from evaluators.base import Device
from evaluators.registry import get_device
from evaluators.vocabulary import Int8Recipe, UserError
from search.front import pareto_front, trials_table
from search.study import STUDY_ATTR, StudyConfig, load_study, open_storage, study_record
from search.trial import TrialContext, TrialResult, build_screen
from search.tuner import DONE_STATES, new_study_record, run_search
from spaces.policy import Policy
from spaces.precision import build_artifact

SELECTIONS = ("all", "front+topK")
FALLBACK_PRECISION = "fp32"


@dataclass(frozen=True)
class TransferredTrial:
    """One carried trial: its scores on the source device and here (mAP in [0, 1], p50 in ms)."""

    source_trial: int
    trial: int
    reference: str
    status: str
    feasible: bool
    policy_id: str
    map50_95: float
    source_map50_95: float
    map_source: str
    latency_ms: float
    source_latency_ms: float
    changed: bool
    changes: tuple[str, ...]


@dataclass(frozen=True)
class TransferReport:
    """What a transfer did and what it means for the front.

    latency_rank_correlation: Spearman's rho of p50 between the two devices over the carried
    trials (None below 3 trials or for constant latencies). seconds: the transfer's wall
    time (all runs of it, preparation included, the continued search excluded);
    source_seconds: the source's search time (sum of its trials' durations);
    time_fraction = seconds / source_seconds. lost_from_front / gained_on_front: source
    trial numbers on the source front and not on the new one, and the reverse;
    new_on_front: trials searched on the new device (not carried) that are on its front.
    """

    source_study: str
    study: str
    storage_url: str
    source_device: str
    device: str
    budget_ms: float
    baseline_latency_ms: float
    source_budget_ms: float
    source_baseline_latency_ms: float
    trials: tuple[TransferredTrial, ...]
    skipped: tuple[tuple[int, str], ...]
    latency_rank_correlation: float | None
    seconds: float
    source_seconds: float
    time_fraction: float | None
    continued: int
    continue_seconds: float
    front: tuple[dict, ...]
    source_front: tuple[int, ...]
    lost_from_front: tuple[int, ...]
    gained_on_front: tuple[int, ...]
    new_on_front: tuple[int, ...]

    def to_dict(self) -> dict:
        data = asdict(self)
        data["skipped"] = [{"source_trial": n, "reason": r} for n, r in self.skipped]
        return data


def target_name(source: str, device: str) -> str:
    """The default name of a transferred study: `<source>-on-<device>`, ':' and '/' made '-'."""
    return f"{source}-on-{device.replace(':', '-').replace('/', '-')}"


def map_precisions(policy: Policy, offered) -> tuple[Policy, tuple[str, ...]]:
    """The policy with every precision the device does not offer set to fp32, and what moved."""
    moved: dict[tuple[str, str], int] = {}
    precision = {}
    for unit, p in policy.precision.items():
        precision[unit] = p if p in offered else FALLBACK_PRECISION
        if precision[unit] != p:
            moved[(p, precision[unit])] = moved.get((p, precision[unit]), 0) + 1
    changes = tuple(f"precision {a} -> {b} on {n} unit(s) (not offered)" for (a, b), n in sorted(moved.items()))
    return replace(policy, precision=precision), changes


def study_seconds(study) -> float:
    """A study's search time: the sum of its finished trials' durations, in seconds."""
    return sum(t.duration.total_seconds() for t in study.get_trials(deepcopy=False) if t.duration is not None)


def transfer_study(
    source: str,
    storage_url: str,
    device: str,
    *,
    name: str | None = None,
    budget_ms: float | None = None,
    budget_fraction: float | None = None,
    continue_trials: int = 0,
    select: str = "all",
    top_k: int = 5,
    early_stop: bool = True,
) -> TransferReport:
    """Carry study `source` over to `device` as study `name` (created, or resumed if it is a transfer
    of `source`), then run `continue_trials` more trials there. The budget is `budget_ms`, or
    `budget_fraction` of the new device's FP32 baseline, or the source's rule (an absolute budget
    stays absolute, a fraction stays a fraction of the new baseline). UserError for an unknown
    study or device, a source without complete trials, or a name taken by another study.
    """
    from search.prepare import prepare

    if select not in SELECTIONS:
        raise UserError(f"unknown selection {select!r}; choose one of {', '.join(SELECTIONS)}.")
    started = time.perf_counter()
    src = load_study(source, storage_url)
    src_record = study_record(src)
    target_device = get_device(device)
    name = name or target_name(source, device)
    carried = _select(src, select, top_k)
    if not carried["complete"]:
        raise UserError(f"study {source!r} has no complete trial with fine-tuned weights to transfer.")

    config, existing = _target_config(src_record, source, name, device, storage_url, budget_ms, budget_fraction)
    prepared = prepare(config, name=name)
    dst = _open_target(name, storage_url, src, existing, config, prepared, source, src_record)
    record = study_record(dst)
    target = _Target(
        prepared.context,
        target_device,
        target_device.accuracy_runtime,
        _runtime(src_record["fingerprint"]["runtime"]),
        _recipe_of(src_record["device"]),
        tuple(config.objectives),
        source,
        {p.policy_id: n for n, p in prepared.context.space.reference_policies().items()},
    )
    done = {t.user_attrs.get("transferred_from") for t in dst.get_trials(deepcopy=False)}
    taken = {
        Path(t.user_attrs["artifact"]).parent.name
        for t in dst.get_trials(deepcopy=False)
        if t.user_attrs.get("artifact")
    }
    skipped = list(carried["skipped"])
    for trial in carried["complete"] + carried["infeasible"]:
        if trial.number not in done:
            reason = _carry(trial, target, dst, taken)
            if reason:
                skipped.append((trial.number, reason))
    seconds = record.get("transfer_seconds", 0.0) + time.perf_counter() - started
    dst.set_user_attr(STUDY_ATTR, {**record, "transfer_seconds": round(seconds, 2)})

    continued, continue_seconds = 0, 0.0
    if continue_trials > 0:
        have = len(dst.get_trials(deepcopy=False, states=DONE_STATES))
        outcome = run_search(
            config.with_overrides(trials=have + continue_trials),
            prepared,
            name=name,
            resume=True,
            early_stop=early_stop,
        )
        continued, continue_seconds = outcome.trials_run, outcome.seconds
    dst = load_study(name, storage_url)
    return _report(src, dst, storage_url, skipped, seconds, continued, continue_seconds)


# --- setting the target up ---------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    ctx: TrialContext
    device: Device
    runtime: str  # validation runtime here
    source_runtime: str
    source_recipe: Int8Recipe | None  # None: not known here (source device unusable on this machine)
    objectives: tuple[str, ...]
    source: str
    references: dict  # policy_id -> name of the target space's reference policies


def _runtime(fingerprint_runtime: str) -> str:
    return fingerprint_runtime if fingerprint_runtime in RUNTIMES else "onnxruntime"


def _recipe_of(device: str) -> Int8Recipe | None:
    try:
        return get_device(device).recipe_for()
    except UserError:
        return None


def _select(study, select: str, top_k: int) -> dict:
    """Source trials to carry: {"complete": [...], "infeasible": [...], "skipped": [(number, reason)]}."""
    complete, infeasible, skipped = [], [], []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        status = t.user_attrs.get("status")
        if t.state == TrialState.PRUNED or status == "pruned":
            skipped.append((t.number, "stopped early: it has no fine-tuned weights"))
        elif status == "complete" and not Path(t.user_attrs.get("weights") or "").is_file():
            skipped.append((t.number, f"its fine-tuned weights {t.user_attrs.get('weights')!r} are gone"))
        elif status == "complete":
            complete.append(t)
        elif status == "infeasible" and select == "all":
            infeasible.append(t)
    if select != "all":
        front = set(pareto_front(trials_table(study))["trial"].astype(int))
        best = sorted(complete, key=lambda t: -t.user_attrs["map50_95"])[: max(top_k, 0)]
        keep = front | {t.number for t in best}
        complete = [t for t in complete if t.number in keep]
    return {"complete": complete, "infeasible": infeasible, "skipped": skipped}


def _target_config(
    src_record, source, name, device, storage_url, budget_ms, budget_fraction
) -> tuple[StudyConfig, dict | None]:
    """The target's StudyConfig, and its record if the target study already exists."""
    known = {f.name for f in fields(StudyConfig)}
    if name in {s.study_name for s in optuna.get_all_study_summaries(open_storage(storage_url))}:
        record = study_record(load_study(name, storage_url))
        if record.get("source_study") != source or record.get("device") != device:
            raise UserError(
                f"study {name!r} already exists in {storage_url} and is not a transfer of {source!r} "
                f"to {device}; pass --name to name a new one."
            )
        if budget_ms is not None or budget_fraction is not None:
            raise UserError(
                f"study {name!r} already has a budget of {record['budget_ms']:.2f} ms; drop the budget option to resume it."
            )
        stored = {k: v for k, v in record["config"].items() if k in known}
        return StudyConfig(
            **{**stored, "storage": storage_url, "budget_ms": record["budget_ms"], "budget_fraction": None}
        ), record
    base = StudyConfig(**{k: v for k, v in src_record["config"].items() if k in known})
    data = base.data if base.data == "embedded" else src_record["data_yaml"]  # relative paths were the source's cwd
    config = base.with_overrides(
        name=name, device=device, storage=storage_url, model=src_record["checkpoint"], data=data
    )
    if budget_ms is not None or budget_fraction is not None:
        config = replace(config, budget_ms=budget_ms, budget_fraction=budget_fraction)
    return config, None


def _open_target(name, storage_url, src, existing, config, prepared, source, src_record):
    """The target study: reopened, or created with the keys `search.tuner.run_search` records plus its source."""
    if existing is not None:
        return load_study(name, storage_url)
    record = {
        **new_study_record(config, prepared),
        "source_study": source,
        "source_device": src_record["device"],
        "transfer_seconds": 0.0,
    }
    study = optuna.create_study(study_name=name, storage=open_storage(storage_url), directions=src.directions)
    study.set_user_attr(STUDY_ATTR, record)
    return study


# --- carrying one trial ------------------------------------------------------------------


def _carry(trial, target: _Target, study, taken: set) -> str:
    """Evaluate one source trial on the target and add it to `study`; a reason if it is left out."""
    ctx, attrs = target.ctx, trial.user_attrs
    began = datetime.datetime.now()
    policy, changes = map_precisions(Policy.from_dict(attrs["policy"]), ctx.space.offered)
    recipe = target.device.recipe_for(policy.recipe)
    if "int8" in policy.precision.values() and recipe != (policy.recipe or target.source_recipe):
        changes += (_recipe_change(policy.recipe or target.source_recipe, recipe),)
    folder = policy.policy_id if policy.policy_id not in taken else f"{policy.policy_id}-from-{trial.number}"
    out = Path(ctx.outdir) / folder
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(step: str) -> None:
        nonlocal clock
        seconds[step] = round(time.perf_counter() - clock, 2)
        clock = time.perf_counter()

    complete = attrs["status"] == "complete"
    path = out / ("model.onnx" if complete else "screen.onnx")
    copied = not changes and Path(attrs.get("artifact") or "").is_file()
    if copied:
        shutil.copyfile(attrs["artifact"], path)
    elif complete:
        import torch

        model = torch.load(attrs["weights"], map_location="cpu", weights_only=False)
        build_artifact(
            model,
            policy.precision,
            path,
            imgsz=ctx.imgsz,
            names=model.names,
            calibration_images=ctx.calibration_images,
            recipe=recipe,
        )
    else:
        build_screen(policy, ctx, recipe, path)
    lap("artifact")
    latency = target.device.measure(path, settings=ctx.timing)
    lap("latency")
    if not complete and latency.p50_ms <= ctx.budget_ms:
        return f"untuned, and it fits the budget on {ctx.device} ({latency.p50_ms:.2f} ms): left to the search to fine-tune"
    if not copied or target.runtime != target.source_runtime:
        acc = measure_accuracy(
            path, Path(ctx.data_yaml), imgsz=ctx.imgsz, runtime=target.runtime, max_images=ctx.val_images, workdir=out
        )
        scores, map_source = (acc.map50_95, acc.map50), "revalidated"
        lap("validate")
    else:
        scores, map_source = (attrs["map50_95"], attrs["map50"]), "reused"
    reason = f"carried over from study {target.source!r} trial {trial.number}; no fine-tuning spent"
    if not complete:
        reason = f"p50 {latency.p50_ms:.2f} ms is over the {ctx.budget_ms:.2f} ms budget; " + reason
    result = TrialResult(
        attrs["status"],
        policy.policy_id,
        policy.to_dict(),
        scores[0],
        scores[1],
        latency.p50_ms,
        latency.p90_ms,
        round(path.stat().st_size / 1e6, 3),
        attrs["macs"],
        attrs["params"],
        target.device.fingerprint().to_dict(),
        reason=reason,
        epoch_maps=tuple(attrs.get("epoch_maps", ())),
        artifact=str(path),
        weights=attrs.get("weights", "") if complete else "",
        seconds=seconds,
    )
    (out / "result.json").write_text(json.dumps(result.to_dict(), indent=1))  # what search.trial reuses for this policy
    extra = {
        "transferred_from": trial.number,
        "map_source": map_source,
        "source_map50_95": attrs["map50_95"],
        "changed": bool(changes),
        "changes": list(changes),
    }
    if reference := target.references.get(policy.policy_id):
        extra["reference"] = reference  # so a continued search does not enqueue it again
    _add_trial(study, result, extra, target, began)
    taken.add(folder)
    return ""


def _recipe_change(before: Int8Recipe | None, after: Int8Recipe) -> str:
    if before is None:
        return "INT8 recipe: the source device's is unknown here"
    diff = [f"{k} {v} -> {after.to_dict()[k]}" for k, v in before.to_dict().items() if after.to_dict()[k] != v]
    return "INT8 recipe " + ", ".join(diff)


def _add_trial(study, result: TrialResult, extra: dict, target: _Target, began: datetime.datetime) -> None:
    """Add a COMPLETE trial with the parameters the target space's define-by-run gives its policy."""
    params, distributions = replay_params(target.ctx.space, Policy.from_dict(result.policy))
    trial = optuna.trial.create_trial(
        params=params,
        distributions=distributions,
        values=[getattr(result, o) for o in target.objectives],
        user_attrs={**result.to_dict(), **extra},
        constraints={"latency_budget": result.latency_ms - target.ctx.budget_ms},
    )
    trial.datetime_start, trial.datetime_complete = began, datetime.datetime.now()  # its real cost, for study_seconds
    study.add_trial(trial)


def replay_params(space, policy: Policy) -> tuple[dict, dict]:
    """(params, distributions) that `space.sample` records for `policy`; raises if it does not sample it back."""
    params = space.to_params(policy)
    if len(space.offered) == 1:  # to_params leaves out single-choice precisions; define-by-run still asks for them
        params.update({f"precision.{u}": space.offered[0] for u in space.precision_units})
    fixed = optuna.trial.FixedTrial(params)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Fixed parameter .* is out of range")
        sampled = space.sample(fixed)
    if replace(sampled, recipe=policy.recipe).policy_id != policy.policy_id:
        raise RuntimeError(f"the space does not sample policy {policy.policy_id} back from its parameters")
    return fixed.params, {k: _containing(d, fixed.params[k]) for k, d in fixed.distributions.items()}


def _containing(distribution, value):
    """The distribution, widened to hold `value`: a reference policy may sit outside a range narrowed by sensitivity."""
    if isinstance(distribution, optuna.distributions.FloatDistribution) and not distribution._contains(value):
        return optuna.distributions.FloatDistribution(
            min(distribution.low, value), max(distribution.high, value), log=distribution.log, step=distribution.step
        )
    return distribution


# --- the report --------------------------------------------------------------------------


def _report(src, dst, storage_url, skipped, seconds, continued, continue_seconds) -> TransferReport:
    src_record, record = study_record(src), study_record(dst)
    budget = record["budget_ms"]
    sources = {t.number: t.user_attrs for t in src.get_trials(deepcopy=False)}
    carried = []
    for t in dst.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        a = t.user_attrs
        if "transferred_from" not in a:
            continue
        s = sources[a["transferred_from"]]
        carried.append(
            TransferredTrial(
                a["transferred_from"],
                t.number,
                s.get("reference", ""),
                a["status"],
                a["status"] == "complete" and a["latency_ms"] <= budget,
                a["policy_id"],
                a["map50_95"],
                s["map50_95"],
                a["map_source"],
                a["latency_ms"],
                s["latency_ms"],
                a["changed"],
                tuple(a["changes"]),
            )
        )
    origin = {c.trial: c.source_trial for c in carried}
    src_front = [int(n) for n in pareto_front(trials_table(src))["trial"]]
    front = pareto_front(trials_table(dst))
    here = {origin[int(n)] for n in front["trial"] if int(n) in origin}
    rows = tuple(
        {
            "trial": int(r.trial),
            "transferred_from": origin.get(int(r.trial)),
            "map50_95": float(r.map50_95),
            "latency_ms": float(r.latency_ms),
            "size_mb": float(r.size_mb),
            "policy_id": r.policy_id,
            "reference": r.reference,
        }
        for r in front.itertuples()
    )
    source_seconds = study_seconds(src)
    return TransferReport(
        src.study_name,
        dst.study_name,
        storage_url,
        src_record["device"],
        record["device"],
        budget,
        record["baseline_latency_ms"],
        src_record["budget_ms"],
        src_record["baseline_latency_ms"],
        tuple(carried),
        tuple(sorted(skipped)),
        latency_rank_correlation([(c.source_latency_ms, c.latency_ms) for c in carried]),
        round(seconds, 2),
        round(source_seconds, 2),
        seconds / source_seconds if source_seconds > 0 else None,
        continued,
        round(continue_seconds, 2),
        rows,
        tuple(src_front),
        tuple(n for n in src_front if n not in here),
        tuple(sorted(here - set(src_front))),
        tuple(r["trial"] for r in rows if r["transferred_from"] is None),
    )


def latency_rank_correlation(pairs) -> float | None:
    """Spearman's rho of (source ms, target ms) pairs; None below 3 pairs or when it is undefined."""
    import math

    from scipy.stats import spearmanr

    if len(pairs) < 3:
        return None
    rho = float(spearmanr([a for a, _ in pairs], [b for _, b in pairs]).statistic)
    return None if math.isnan(rho) else rho
