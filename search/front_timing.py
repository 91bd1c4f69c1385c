"""The front timed together: its members and the baseline re-timed in one round-robin session.

A trial's latency is its ratio to the study's reference (the baseline's FP32 artifact)
times L0, each trial timed against the reference side by side when it ran. Before a
person picks from the front, the members are timed once more *together*, with the
baseline, in one session of the device (`Device.measure_together`: each round runs every
artifact once, the order reversed every other round), so the speedups shown share one
moment of the host and can be compared with each other and checked by a plain loop.

The session is stored on the study (user attribute `front_timing`, replaced by each new
session): when, on which device (name, fingerprint hash), the baseline's p50 in the
session, the rounds, the host drift, and per member trial number its p50 in the session
and its speedup over the baseline (1 / ratio) with the 95% interval.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from evaluators.base import TimingSettings
from evaluators.registry import get_device
from evaluators.vocabulary import UserError
from search.front import pareto_front, trials_table
from search.study import study_record

FRONT_TIMING_ATTR = "front_timing"
# Each round runs every member once; the floors are per round (see `evaluators.paired`).
# The session lasts this many times the study's `latency_min_seconds`.
SESSION_SECONDS_FACTOR = 3.0
SESSION_MIN_ROUNDS = 50


def session_settings(record: dict) -> TimingSettings:
    """The floors of a together-session for the study of `record`: 50 rounds and 3x its latency floor."""
    seconds = record["config"].get("latency_min_seconds", 2.0) * SESSION_SECONDS_FACTOR
    return TimingSettings(min_runs=SESSION_MIN_ROUNDS, min_seconds=seconds)


def reference_artifact(record: dict) -> Path:
    """The study's reference: the baseline's FP32 artifact on its device (UserError if it is gone)."""
    path = Path(record.get("reference_artifact") or Path(record["outdir"]) / "baseline-fp32.onnx")
    if not path.is_file():
        raise UserError(f"the study's reference artifact {path} is gone; run the study again to rebuild it.")
    return path


def time_front(study, *, also: Iterable[int] = (), settings: TimingSettings | None = None) -> dict:
    """Re-time the study's front (plus trial numbers in `also`) with the baseline in one session; store and return it.

    settings: the session's floors (default `session_settings` of the study).
    Members whose artifact file is gone are left out. Returns the stored session dict (see
    the module docstring); its `members` is empty when nothing could be timed.
    """
    record = study_record(study)
    table = trials_table(study)
    wanted = list(dict.fromkeys([*pareto_front(table)["trial"].astype(int), *also]))
    rows = table.set_index("trial")
    members = [n for n in wanted if n in rows.index and Path(rows.loc[n, "artifact"] or "").is_file()]
    device = get_device(record["device"])
    paths = [reference_artifact(record), *(Path(rows.loc[n, "artifact"]) for n in members)]
    measured = device.measure_together(paths, settings=settings or session_settings(record))
    baseline = measured[0]
    session = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "device": device.name,
        "fingerprint_hash": device.fingerprint().hash,
        "baseline_p50_ms": baseline.p50_ms,
        "rounds": baseline.runs,
        "host_drift": baseline.host_drift,
        "artifacts": len(paths),
        "members": {
            str(n): {
                "p50_ms": m.p50_ms,
                "speedup": 1 / m.ratio,
                "speedup_low": 1 / m.ratio_high,
                "speedup_high": 1 / m.ratio_low,
            }
            for n, m in zip(members, measured[1:], strict=True)
        },
    }
    study.set_user_attr(FRONT_TIMING_ATTR, session)
    return session


def describe_session(session: dict) -> str:
    """One sentence saying how the speedups of `session` were measured."""
    return (
        f"timed together with the baseline's FP32 artifact in one round-robin session on {session['device']} "
        f"at {session['when']} ({session['artifacts']} artifacts, {session['rounds']} rounds, each round every "
        f"artifact once, order reversed every other round; baseline p50 {session['baseline_p50_ms']:.2f} ms in that "
        f"session, host drift {session['host_drift']:+.1%})"
    )


def front_text(study, front) -> str:
    """`front` (rows of `pareto_front`) as text, with each member's speedup from the study's last session, if any."""
    if front.empty:
        return "  (empty)"
    shown = front[["trial", "map50_95", "latency_ms", "size_mb", "policy_id", "reference"]].copy()
    if front["recovered_from"].notna().any():  # a recovered point says which trial it recovered
        shown["recovered from"] = [f"#{n}" if pd.notna(n) else "" for n in front["recovered_from"]]
    session = study.user_attrs.get(FRONT_TIMING_ATTR)
    if not session:
        return shown.to_string(index=False)
    members = session["members"]
    shown.insert(
        3,
        "speedup (95%)",
        [
            f"{m['speedup']:.2f}x ({m['speedup_low']:.2f}-{m['speedup_high']:.2f})"
            if (m := members.get(str(n)))
            else "-"
            for n in shown["trial"]
        ],
    )
    return f"{shown.to_string(index=False)}\nspeedups {describe_session(session)}"
