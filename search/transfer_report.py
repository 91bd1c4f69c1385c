"""The report of a transfer (`search.transfer`): what was carried, how latency ranks moved, the new front.

Built from the two stored studies alone, so a resumed transfer reports every carried
trial, not only those carried in this run. Each carried trial says where its mAP comes
from (`search.transfer_trial.MAP_SOURCES`); the report's front holds measured mAPs only
(a trial whose mAP was carried counts as not feasible for it), and `front_measured` says
whether the front `search.front` computes from the stored study holds measured mAPs only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from optuna.trial import TrialState

from search.front import pareto_front, trials_table
from search.study import study_record
from search.transfer_trial import MAP_SOURCES


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
    seconds: dict

    @property
    def measured(self) -> bool:
        """Its mAP was measured on its artifact here (reused or validated again), not carried."""
        return self.map_source != "carried"


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
    front: one row per front member (fastest first) with its scores and `map_source` ("reused" or
    "revalidated" for a carried trial, "searched" for one of the continued search).
    map_margin: the margin of the lazy validation (`search.transfer.MAP_MARGIN`);
    map_sources: how many carried trials have a "reused", "revalidated" or "carried" mAP;
    validations_skipped: carried trials whose mAP was not validated although it could not
    be reused (the "carried" ones); step_seconds: the carried trials' seconds per step, summed:
    "artifact" (copied or built timing-only), "latency" (each trial's share of the timing
    session), "deploy" (the full build before a validation), "validate"; prepare_seconds:
    the preparation (start-up, the target's reference and L0, a budget check when one was
    needed; None for a transfer recorded before it was kept); the rest of `seconds` is the
    studies' bookkeeping.
    front_measured: no trial with a carried mAP is on the front of the stored study as
    `search.front.pareto_front` computes it.
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
    map_margin: float | None
    map_sources: dict
    validations_skipped: int
    step_seconds: dict
    prepare_seconds: float | None
    front_measured: bool

    def to_dict(self) -> dict:
        data = asdict(self)
        data["skipped"] = [{"source_trial": n, "reason": r} for n, r in self.skipped]
        for row, trial in zip(data["trials"], self.trials, strict=True):
            row["measured"] = trial.measured
        return data


def transfer_report(
    src,
    dst,
    storage_url: str,
    *,
    skipped,
    seconds: float,
    source_seconds: float,
    continued: int,
    continue_seconds: float,
) -> TransferReport:
    """The report of the transfer of study `src` into study `dst` (Optuna studies); times in seconds.

    skipped: (source trial number, reason) of every source trial left out.
    """
    src_record, record = study_record(src), study_record(dst)
    carried = carried_trials(src, dst, record["budget_ms"])
    origin = {c.trial: c.source_trial for c in carried}
    map_source = {c.trial: c.map_source for c in carried}
    src_front = tuple(int(n) for n in pareto_front(trials_table(src))["trial"])
    unmeasured = {c.trial for c in carried if not c.measured}
    table = trials_table(dst)
    stored_front = {int(n) for n in pareto_front(table)["trial"]}
    table["feasible"] &= ~table["trial"].isin(unmeasured)  # a carried mAP is never on a front
    front = pareto_front(table)
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
            "map_source": map_source.get(int(r.trial), "searched"),
        }
        for r in front.itertuples()
    )
    sources = [c.map_source for c in carried]
    steps: dict[str, float] = {}
    for c in carried:
        for step, s in c.seconds.items():
            steps[step] = round(steps.get(step, 0.0) + s, 2)
    return TransferReport(
        source_study=src.study_name,
        study=dst.study_name,
        storage_url=storage_url,
        source_device=src_record["device"],
        device=record["device"],
        budget_ms=record["budget_ms"],
        baseline_latency_ms=record["baseline_latency_ms"],
        source_budget_ms=src_record["budget_ms"],
        source_baseline_latency_ms=src_record["baseline_latency_ms"],
        trials=carried,
        skipped=tuple(sorted(skipped)),
        latency_rank_correlation=latency_rank_correlation([(c.source_latency_ms, c.latency_ms) for c in carried]),
        seconds=round(seconds, 2),
        source_seconds=round(source_seconds, 2),
        time_fraction=seconds / source_seconds if source_seconds > 0 else None,
        continued=continued,
        continue_seconds=round(continue_seconds, 2),
        front=rows,
        source_front=src_front,
        lost_from_front=tuple(n for n in src_front if n not in here),
        gained_on_front=tuple(sorted(here - set(src_front))),
        new_on_front=tuple(r["trial"] for r in rows if r["transferred_from"] is None),
        map_margin=record.get("map_margin"),
        map_sources={m: sources.count(m) for m in MAP_SOURCES},
        validations_skipped=sources.count("carried"),
        step_seconds=steps,
        prepare_seconds=record.get("transfer_prepare_seconds"),
        front_measured=not stored_front & unmeasured,
    )


def carried_trials(src, dst, budget_ms: float) -> tuple[TransferredTrial, ...]:
    """The COMPLETE trials of `dst` carried from `src`, in trial order; feasible: complete within `budget_ms`."""
    sources = {t.number: t.user_attrs for t in src.get_trials(deepcopy=False)}
    carried = []
    for t in dst.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        a = t.user_attrs
        if "transferred_from" not in a:
            continue
        s = sources[a["transferred_from"]]
        carried.append(
            TransferredTrial(
                **{k: a[k] for k in ("status", "policy_id", "map50_95", "map_source", "latency_ms", "changed")},
                source_trial=a["transferred_from"],
                trial=t.number,
                reference=s.get("reference", ""),
                feasible=a["status"] == "complete" and a["latency_ms"] <= budget_ms,
                source_map50_95=s["map50_95"],
                source_latency_ms=s["latency_ms"],
                changes=tuple(a["changes"]),
                seconds=dict(a.get("seconds", {})),
            )
        )
    return tuple(carried)


def latency_rank_correlation(pairs) -> float | None:
    """Spearman's rho of (source ms, target ms) pairs; None below 3 pairs or when it is undefined."""
    from scipy.stats import spearmanr

    if len(pairs) < 3:
        return None
    rho = float(spearmanr([a for a, _ in pairs], [b for _, b in pairs]).statistic)
    return None if math.isnan(rho) else rho
