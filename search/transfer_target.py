"""The target of a transfer (`search.transfer`): which source trials to carry, the target's config and study.

A new target takes the source's StudyConfig with the new device, storage and name (and a
new budget rule when one is given); its study records what `squeezefit search` records plus
the source. An existing target of the same source and device is resumed with its stored
config (so the same output folder), and its stored record, which `search.prepare.prepare`
takes its L0 and budget from; one of another source or device is a UserError.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from optuna.trial import TrialState

from evaluators.vocabulary import UserError
from search.front import pareto_front, trials_table
from search.study import StudyConfig, create_study, load_study, study_exists, study_record

SELECTIONS = ("all", "front+topK")


def select_trials(study, select: str, top_k: int) -> dict:
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


def target_config(
    src_record, source, name, device, storage_url, budget_ms, budget_fraction
) -> tuple[StudyConfig, dict | None]:
    """The target's StudyConfig, and its record if the target study already exists."""
    if study_exists(name, storage_url):
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
        return StudyConfig.from_record(record, storage_url), record  # L0 and budget: `prepare(record=...)`
    config = StudyConfig.from_record(src_record, storage_url).with_overrides(name=name, device=device)
    if budget_ms is not None or budget_fraction is not None:
        config = replace(config, budget_ms=budget_ms, budget_fraction=budget_fraction)
    return config, None


def open_target(name, storage_url, existing, config, prepared, source, src_record):
    """The target study: reopened, or created with the record `search.tuner.run_search` stores plus its source."""
    if existing is not None:
        return load_study(name, storage_url)
    record = {
        **prepared.to_record(config),
        "source_study": source,
        "source_device": src_record["device"],
        "transfer_seconds": 0.0,
    }
    return create_study(name, storage_url, config.objectives, record)
