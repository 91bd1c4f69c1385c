"""Pick a policy from a study and write the deployable bundle.

A bundle directory holds `policy.yaml` (re-appliable with `squeezefit` or the spaces API),
`model.pt` (the fine-tuned pruned module, whole-module pickle; load with
`torch.load(..., weights_only=False)` with squeezefit installed), `model.onnx` (the
artifact that was timed and scored; `ultralytics.YOLO("model.onnx")` validates and predicts
it as is) and `card.md`, which says what was measured, where, and with which versions.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from evaluators.vocabulary import UserError
from search.front import best_under, trials_table
from search.study import study_record
from spaces.policy import Policy


def choose_trial(study, *, budget_ms: float | None = None, trial: int | None = None):
    """The trial row to export: the given number, or the best-mAP complete trial under `budget_ms`."""
    table = trials_table(study)
    if trial is not None:
        rows = table[table["trial"] == trial]
        if rows.empty:
            raise UserError(f"study {study.study_name!r} has no finished trial number {trial}.")
        row = rows.iloc[0]
        if row["status"] != "complete":
            raise UserError(
                f"trial {trial} is {row['status']}: only complete trials have a fine-tuned, scored artifact to export."
            )
        return row
    row = best_under(table, budget_ms)
    if row is None:
        raise UserError(f"no complete trial of study {study.study_name!r} fits a {budget_ms:.2f} ms budget.")
    return row


def export_bundle(study, out: Path, *, budget_ms: float | None = None, trial: int | None = None) -> Path:
    """Write the bundle of the chosen trial into `out` (created; existing bundle files are replaced)."""
    if (budget_ms is None) == (trial is None):
        raise UserError("give exactly one of --budget-ms and --trial.")
    row = choose_trial(study, budget_ms=budget_ms, trial=trial)
    attrs = study.trials[int(row["trial"])].user_attrs
    for key in ("artifact", "weights"):
        if not attrs.get(key) or not Path(attrs[key]).is_file():
            raise UserError(
                f"trial {int(row['trial'])}'s {key} file {attrs.get(key)!r} is gone; re-run the study to rebuild it."
            )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    policy = Policy.from_dict(attrs["policy"])
    policy.to_yaml(out / "policy.yaml")
    shutil.copyfile(attrs["artifact"], out / "model.onnx")
    shutil.copyfile(attrs["weights"], out / "model.pt")
    (out / "card.md").write_text(_card(study, int(row["trial"]), attrs, policy))
    return out


def _card(study, number: int, attrs: dict, policy: Policy) -> str:
    import onnxruntime
    import torch
    import ultralytics

    record = study_record(study)
    base = record["baseline_latency_ms"]
    lines = [
        f"# {study.study_name} — trial {number} (policy {policy.policy_id})",
        "",
        f"- mAP50-95 **{attrs['map50_95']:.4f}**, mAP50 {attrs['map50']:.4f} — measured on `model.onnx` ({record['data_yaml']}, val split"
        + (f", first {record['config']['val_images']} images" if record["config"].get("val_images") else "")
        + ")",
        f"- latency p50 **{attrs['latency_ms']:.2f} ms**, p90 {attrs['latency_p90_ms']:.2f} ms on `{record['device']}` "
        f"(baseline FP32 {base:.2f} ms: {base / attrs['latency_ms']:.2f}x faster; budget {record['budget_ms']:.2f} ms)",
        f"- size {attrs['size_mb']:.2f} MB, {attrs['params']:,} parameters, {attrs['macs'] / 1e9:.3f} GMACs at {record['imgsz']} px",
        f"- device fingerprint: `{yaml.safe_dump(attrs['fingerprint'], default_flow_style=True).strip()}`",
        f"- versions: ultralytics {ultralytics.__version__}, torch {torch.__version__}, onnxruntime {onnxruntime.__version__}",
        "",
        "## Distillation",
        "",
        *(f"- {k}: {v}" for k, v in policy.distillation.to_dict().items()),
        f"- per-epoch val mAP50-95 (PyTorch): {', '.join(f'{m:.4f}' for m in attrs.get('epoch_maps', [])) or 'no fine-tune'}",
        "",
        "## Per-unit pruning ratio and precision",
        "",
        "| unit | pruning ratio | precision |",
        "|---|---|---|",
    ]
    units = list(dict.fromkeys(record["pruning_units"] + record["precision_units"]))
    for unit in units:
        lines.append(f"| {unit} | {policy.pruning.get(unit, 0.0):.2f} | {policy.precision.get(unit, 'fp32')} |")
    return "\n".join(lines) + "\n"
