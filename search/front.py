"""The Pareto front of a study: a table of its trials, the feasible non-dominated ones, a plot.

A point is on the front when it is feasible (complete, p50 latency within the budget, and
its mAP measured on its own artifact rather than carried over by a transfer) and no other
feasible finished trial has both higher-or-equal mAP50-95 and lower-or-equal latency with
one of them strictly better. Trials stopped early (PRUNED) are shown but never on the front.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from optuna.trial import TrialState

from search.study import study_record

COLUMNS = [
    "trial",
    "status",
    "feasible",
    "measured",
    "map50_95",
    "map50",
    "latency_ms",
    "latency_p90_ms",
    "size_mb",
    "macs",
    "params",
    "policy_id",
    "reference",
    "artifact",
    "weights",
    "recovered_from",
]


def trials_table(study) -> pd.DataFrame:
    """One row per finished trial (COMPLETE or PRUNED), with the squeezefit results it stored.

    recovered_from: the source trial's number for a recovered trial (`search.recover`), else NA.
    """
    budget = study_record(study)["budget_ms"]
    rows = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        attrs = t.user_attrs
        if "status" not in attrs:
            continue
        measured = attrs.get("map_source") != "carried"  # a transfer may carry a source's mAP unmeasured
        rows.append(
            {
                "trial": t.number,
                "status": attrs["status"],
                "feasible": attrs["status"] == "complete" and attrs["latency_ms"] <= budget and measured,
                "measured": measured,
                "map50_95": attrs["map50_95"],
                "map50": attrs["map50"],
                "latency_ms": attrs["latency_ms"],
                "latency_p90_ms": attrs["latency_p90_ms"],
                "size_mb": attrs["size_mb"],
                "macs": attrs["macs"],
                "params": attrs["params"],
                "policy_id": attrs["policy_id"],
                "reference": attrs.get("reference", ""),
                "artifact": attrs.get("artifact", ""),
                "weights": attrs.get("weights", ""),
                "recovered_from": attrs.get("recovered_from"),
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS).astype({"recovered_from": "Int64"})


def pareto_front(table: pd.DataFrame) -> pd.DataFrame:
    """The feasible non-dominated rows, fastest first."""
    feasible = table[table["feasible"]].sort_values(["latency_ms", "map50_95"], ascending=[True, False])
    keep, best = [], float("-inf")
    for index, row in feasible.iterrows():
        if row["map50_95"] > best:  # faster points came first: only a higher mAP is not dominated
            keep.append(index)
            best = row["map50_95"]
    return feasible.loc[keep]


def best_under(table: pd.DataFrame, budget_ms: float) -> pd.Series | None:
    """The highest-mAP complete trial with a measured mAP whose p50 latency is within `budget_ms`, or None."""
    fits = table[(table["status"] == "complete") & table["measured"] & (table["latency_ms"] <= budget_ms)]
    return None if fits.empty else fits.sort_values(["map50_95", "latency_ms"], ascending=[False, True]).iloc[0]


def latency_map_axes(figsize: tuple[float, float]):
    """A new off-screen (Agg) matplotlib figure and axes for a mAP-vs-latency plot; size in inches."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=figsize, dpi=110)


def save_latency_map_plot(fig, ax, png: Path, *, title: str, legend_size: float) -> Path:
    """Label the axes (p50 ms, mAP50-95), add grid, title and legend, write `png` (folders made), close `fig`."""
    import matplotlib.pyplot as plt

    ax.set_xlabel("p50 latency (ms)")
    ax.set_ylabel("mAP50-95 (deployed artifact)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size, loc="lower right")
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return png


def plot_front(table: pd.DataFrame, budget_ms: float, png: Path, *, title: str = "", html: Path | None = None) -> Path:
    """mAP50-95 vs p50 latency: all trials, the front, the budget line, references labelled, recovered
    trials as stars with an arrow from their source."""
    front = pareto_front(table)
    fig, ax = latency_map_axes((8, 5))
    styles = {"complete": ("o", "#4C72B0"), "infeasible": ("x", "#C44E52"), "pruned": ("v", "#8C8C8C")}
    for status, (marker, colour) in styles.items():
        part = table[table["status"] == status]
        if not part.empty:
            ax.scatter(
                part["latency_ms"],
                part["map50_95"],
                marker=marker,
                c=colour,
                alpha=0.7,
                label=f"{status} ({len(part)})",
            )
    recovered = table[table["recovered_from"].notna()]
    if not recovered.empty:
        ax.scatter(
            recovered["latency_ms"],
            recovered["map50_95"],
            marker="*",
            s=140,
            c="#DD8452",
            zorder=3,
            label=f"recovered ({len(recovered)})",
        )
        rows = table.set_index("trial")
        for _, row in recovered.iterrows():
            if row["recovered_from"] in rows.index:
                source = rows.loc[row["recovered_from"]]
                ax.annotate(
                    "",
                    (row["latency_ms"], row["map50_95"]),
                    xytext=(source["latency_ms"], source["map50_95"]),
                    arrowprops={"arrowstyle": "->", "color": "#DD8452", "lw": 1},
                )
    if not front.empty:
        ax.plot(front["latency_ms"], front["map50_95"], "-D", c="#55A868", lw=2, ms=7, label="Pareto front")
    ax.axvline(budget_ms, ls="--", c="k", lw=1, label=f"budget {budget_ms:.2f} ms")
    for _, row in table[table["reference"] != ""].iterrows():
        ax.annotate(
            row["reference"],
            (row["latency_ms"], row["map50_95"]),
            fontsize=7,
            xytext=(4, 4),
            textcoords="offset points",
        )
    png = save_latency_map_plot(fig, ax, png, title=title or "squeezefit study", legend_size=8)
    if html is not None:
        _plot_html(table, front, budget_ms, Path(html), title)
    return png


def _plot_html(table: pd.DataFrame, front: pd.DataFrame, budget_ms: float, html: Path, title: str) -> None:
    import plotly.graph_objects as go

    fig = go.Figure()
    for status, part in table.groupby("status"):
        fig.add_trace(
            go.Scatter(
                x=part["latency_ms"],
                y=part["map50_95"],
                mode="markers",
                name=status,
                text=[
                    f"trial {t} {r} {p}"
                    for t, r, p in zip(part["trial"], part["reference"], part["policy_id"], strict=False)
                ],
            )
        )
    if not front.empty:
        fig.add_trace(go.Scatter(x=front["latency_ms"], y=front["map50_95"], mode="lines+markers", name="Pareto front"))
    fig.add_vline(x=budget_ms, line_dash="dash", annotation_text=f"budget {budget_ms:.2f} ms")
    fig.update_layout(title=title or "squeezefit study", xaxis_title="p50 latency (ms)", yaxis_title="mAP50-95")
    fig.write_html(str(html), include_plotlyjs=True)  # self-contained: nothing fetched when opened offline
