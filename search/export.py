"""Pick a policy from a study and write the deployable bundle.

A bundle directory holds `policy.yaml` (re-appliable with `squeezefit` or the spaces API),
`model.pt` (the fine-tuned pruned module, whole-module pickle; load with
`torch.load(..., weights_only=False)` with squeezefit installed), `model.onnx` (the
artifact that was timed and scored; `ultralytics.YOLO("model.onnx")` validates and predicts
it as is; on an OpenVINO device also `model_openvino_model/`, its IR with the FP32 nodes
marked), `baseline-fp32.onnx` (the study's reference, so the speedup can be checked:
`squeezefit measure model.onnx --reference baseline-fp32.onnx --device D`), `card.md`,
which says what was measured, where, with which versions and runtime settings (e.g. the
inference precision a bf16 policy must be compiled with), and `card.json`, the same
figures for a program.

The speedup on the card comes from a session in which the front, the chosen trial and the
baseline were re-timed together at export time (`search.front_timing`), not from numbers
taken minutes apart.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from evaluators.openvino_ir import write_openvino_ir
from evaluators.registry import get_device
from evaluators.vocabulary import UserError
from search.front import best_under, trials_table
from search.front_timing import FRONT_TIMING_ATTR, describe_session, reference_artifact, time_front
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
        if not row["measured"]:
            raise UserError(
                f"trial {trial}'s mAP was carried over from another device's study, not measured on its artifact: "
                "only a trial with a measured mAP can be exported."
            )
        return row
    row = best_under(table, budget_ms)
    if row is None:
        raise UserError(f"no complete trial of study {study.study_name!r} fits a {budget_ms:.2f} ms budget.")
    return row


def export_bundle(
    study, out: Path, *, budget_ms: float | None = None, trial: int | None = None, retime: bool = True
) -> Path:
    """Write the bundle of the chosen trial into `out` (created; existing bundle files are replaced).

    Re-times the front with the chosen trial and the baseline in one session first (seconds).
    retime=False takes the study's last session instead when it holds the chosen trial (a
    search that has just re-timed its front).
    """
    if (budget_ms is None) == (trial is None):
        raise UserError("give exactly one of --budget-ms and --trial.")
    row = choose_trial(study, budget_ms=budget_ms, trial=trial)
    attrs = study.trials[int(row["trial"])].user_attrs
    for key in ("artifact", "weights"):
        if not attrs.get(key) or not Path(attrs[key]).is_file():
            raise UserError(
                f"trial {int(row['trial'])}'s {key} file {attrs.get(key)!r} is gone; re-run the study to rebuild it."
            )
    number = int(row["trial"])
    session = study.user_attrs.get(FRONT_TIMING_ATTR) if not retime else None
    if session is None or str(number) not in session["members"]:
        session = time_front(study, also=[number])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    policy = Policy.from_dict(attrs["policy"])
    policy.to_yaml(out / "policy.yaml")
    shutil.copyfile(attrs["artifact"], out / "model.onnx")
    shutil.copyfile(attrs["weights"], out / "model.pt")
    record = study_record(study)
    shutil.copyfile(reference_artifact(record), out / "baseline-fp32.onnx")
    device = get_device(record["device"])
    if device.accuracy_runtime == "openvino":  # the IR a user runs, with the FP32 nodes marked
        write_openvino_ir(out / "model.onnx", out / "model_openvino_model")
    figures = card_figures(study, number, attrs, session)
    figures["runtime_config"] = {
        "model": device.runtime_settings(out / "model.onnx"),
        "baseline": device.runtime_settings(out / "baseline-fp32.onnx"),
    }
    (out / "card.json").write_text(json.dumps(figures, indent=1))
    (out / "card.md").write_text(_card(study, number, attrs, policy, figures, session))
    return out


def card_figures(study, number: int, attrs: dict, session: dict) -> dict:
    """What the card states, as data: scores, the latency on the study's scale, and the speedup from `session`."""
    record = study_record(study)
    together = session["members"][str(number)]
    return {
        "study": study.study_name,
        "trial": number,
        "policy_id": attrs["policy_id"],
        "device": record["device"],
        "map50_95": attrs["map50_95"],
        "map50": attrs["map50"],
        "latency_ms": attrs["latency_ms"],
        "baseline_latency_ms": record["baseline_latency_ms"],
        "budget_ms": record["budget_ms"],
        "speedup": together["speedup"],
        "speedup_low": together["speedup_low"],
        "speedup_high": together["speedup_high"],
        "p50_ms_together": together["p50_ms"],
        "baseline_p50_ms_together": session["baseline_p50_ms"],
        "timed_together_at": session["when"],
        "fingerprint_hash": session["fingerprint_hash"],
        **({"recovered_from": attrs["recovered_from"], "recovery": attrs["recovery"]} if "recovery" in attrs else {}),
    }


def _card(study, number: int, attrs: dict, policy: Policy, figures: dict, session: dict) -> str:
    import onnxruntime
    import torch
    import ultralytics

    record = study_record(study)
    base = record["baseline_latency_ms"]
    speedup = (
        f"**{figures['speedup']:.2f}x** faster than the baseline FP32 (95% interval "
        f"{figures['speedup_low']:.2f}-{figures['speedup_high']:.2f}): p50 {figures['p50_ms_together']:.2f} ms vs "
        f"{figures['baseline_p50_ms_together']:.2f} ms, {describe_session(session)}"
    )
    lines = [
        f"# {study.study_name} — trial {number} (policy {policy.policy_id})",
        "",
        f"- mAP50-95 **{attrs['map50_95']:.4f}**, mAP50 {attrs['map50']:.4f} — measured on `model.onnx` ({record['data_yaml']}, val split"
        + (f", first {record['config']['val_images']} images" if record["config"].get("val_images") else "")
        + ")",
        f"- speed on `{record['device']}`: {speedup}",
        "- reproduce: `squeezefit measure model.onnx --reference baseline-fp32.onnx "
        f"--device {record['device']} --no-cache`; `{record['device']}` runs `model.onnx` with "
        f"`{json.dumps(figures['runtime_config']['model'])}`"
        + (
            " (OpenVINO: `model_openvino_model/` is its IR; compile it with these properties)"
            if "INFERENCE_PRECISION_HINT" in figures["runtime_config"]["model"]
            else ""
        ),
        f"- on the study's scale: p50 **{attrs['latency_ms']:.2f} ms**, p90 {attrs['latency_p90_ms']:.2f} ms "
        f"(ratio to the baseline timed side by side during the search, times its L0 {base:.2f} ms; "
        f"budget {record['budget_ms']:.2f} ms)",
        f"- size {attrs['size_mb']:.2f} MB, {attrs['params']:,} parameters, {attrs['macs'] / 1e9:.3f} GMACs at {record['imgsz']} px",
        f"- device fingerprint: `{yaml.safe_dump(attrs['fingerprint'], default_flow_style=True).strip()}`",
        f"- versions: ultralytics {ultralytics.__version__}, torch {torch.__version__}, onnxruntime {onnxruntime.__version__}",
        *_repair_lines(attrs),
        *_activation_lines(policy, record),
        "",
        *_recovery_lines(attrs),
        "## Distillation",
        "",
        *(f"- {k}: {v}" for k, v in policy.distillation.to_dict().items()),
        f"- per-epoch val mAP50-95 (PyTorch): {', '.join(f'{m:.4f}' for m in attrs.get('epoch_maps', [])) or 'no fine-tune'}",
        "",
        "## Per-unit pruning ratio, inner blocks removed and precision",
        "",
        "| unit | pruning ratio | inner blocks removed | precision |",
        "|---|---|---|---|",
    ]
    units = list(dict.fromkeys(record["pruning_units"] + record["precision_units"]))
    for unit in units:
        removed = policy.depth.get(unit, 0)
        lines.append(
            f"| {unit} | {policy.pruning.get(unit, 0.0):.2f} | {removed or '-'} | {policy.precision.get(unit, 'fp32')} |"
        )
    return "\n".join(lines) + "\n"


def _activation_lines(policy: Policy, record: dict) -> list[str]:
    """The card's line on the policy's activation, where it swaps the model's own (`spaces.activation`)."""
    if policy.activation is None:
        return []
    variant = record.get("variants", {}).get(policy.activation, {})
    converted = f" ({variant['map50_95']:.4f} mAP50-95 after conversion)" if "map50_95" in variant else ""
    return [
        f"- activation: {policy.activation} in place of SiLU; pruned and fine-tuned from the baseline converted to "
        f"it{converted}"
    ]


def _repair_lines(attrs: dict) -> list[str]:
    """The card's line for a trial that repaired its sampled policy (`search.repair`); nothing for another."""
    proposal = attrs.get("repaired_from")
    if not proposal:
        return []
    return [
        f"- found by repair: the sampler proposed policy {proposal['policy_id']}, p50 {proposal['latency_ms']:.2f} ms "
        "(over the budget); pruned further along the guided greedy until it timed within it"
    ]


def _recovery_lines(attrs: dict) -> list[str]:
    """The card's recovery section (`search.recover`) for a recovered trial; nothing for another."""
    recovery = attrs.get("recovery")
    if not recovery:
        return []
    curve = ", ".join(f"{m:.4f}" for m in recovery["epoch_maps"])
    return [
        "## Recovery",
        "",
        f"- recovered from trial {attrs['recovered_from']}: mAP50-95 {recovery['map_before']:.4f} -> "
        f"**{attrs['map50_95']:.4f}**, mAP50 {recovery['map50_before']:.4f} -> {attrs['map50']:.4f} (both on the deployed artifact)",
        f"- how: {recovery['epochs']} more epochs of fine-tuning from {recovery['started_from']} on "
        f"{recovery['train_images_used']} train images, "
        + ("distilled from the baseline, " if attrs["policy"]["distillation"]["enabled"] else "without distillation, ")
        + ("INT8 simulated in training (QAT), " if recovery.get("qat") else "")
        + "INT8 calibrated again",
        f"- epoch curve, val mAP50-95 (PyTorch): {curve}",
        *(
            [f"- post-training INT8 cost: {recovery['int8_cost']:.4f} mAP50-95 (best epoch in PyTorch - artifact)"]
            if recovery.get("int8_cost") is not None
            else []
        ),
        f"- cost: {recovery['seconds'] / 60:.1f} min wall",
        "",
    ]
