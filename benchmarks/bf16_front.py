"""What does bf16 cost a study's front? Each bf16 front member validated in bf16 and in FP32 on OpenVINO.

For every member of the study's Pareto front whose policy has bf16 units, the deployed
artifact is validated on OpenVINO twice on the study's validation images: as recorded (the
inference precision its metadata names: bf16, with its FP32 units kept FP32) and with that
metadata removed (the same weights compiled at f32). The difference is what bf16 costs;
the target is at most 0.005 mAP50-95. It also reports whether bf16 was offered at all
(only on CPUs with AVX512-BF16 or AMX) and the front's members' precisions.

    python benchmarks/bf16_front.py --study default-openvino --output benchmarks/results/bf16_front.md
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path

TARGET_DROP = 0.005


def without_execution_metadata(artifact: Path, out: Path) -> Path:
    """A copy of the ONNX artifact without the keys that make OpenVINO run it in bf16."""
    import onnx

    from evaluators.vocabulary import FP32_NODES_KEY, INFERENCE_PRECISION_KEY

    model = onnx.load(str(artifact))
    kept = [p for p in model.metadata_props if p.key not in (INFERENCE_PRECISION_KEY, FP32_NODES_KEY)]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, str(out))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", required=True, help="a study on openvino-cpu")
    parser.add_argument("--storage", help="Optuna storage URL (default: the studies database)")
    parser.add_argument("--output", type=Path, help="also write the markdown report here")
    args = parser.parse_args(argv)

    from evaluators.accuracy import measure_accuracy
    from evaluators.environment import ensure_offline
    from evaluators.hardware import cpu_description
    from search.front import pareto_front, trials_table
    from search.study import StudyConfig, load_study, study_record

    ensure_offline()
    storage = args.storage or StudyConfig().storage_url
    study = load_study(args.study, storage)
    record = study_record(study)
    front = pareto_front(trials_table(study))
    rows, worst = [], 0.0
    for row in front.itertuples():
        precision = study.trials[int(row.trial)].user_attrs["policy"]["precision"]
        counts = {p: list(precision.values()).count(p) for p in sorted(set(precision.values()))}
        line = f"| {row.trial} | {row.map50_95:.4f} | {row.latency_ms:.2f} | {counts} |"
        if "bf16" not in counts:
            rows.append(line + " - | - |")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            f32 = without_execution_metadata(Path(row.artifact), Path(tmp) / "model.onnx")
            acc = measure_accuracy(
                f32,
                Path(record["data_yaml"]),
                imgsz=record["imgsz"],
                runtime="openvino",
                max_images=record["config"].get("val_images"),
                workdir=Path(tmp),
            )
        drop = acc.map50_95 - row.map50_95
        worst = max(worst, drop)
        rows.append(line + f" {acc.map50_95:.4f} | {drop:+.4f} |")
    has_bf16 = "bf16" in record["offered"]
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    report = "\n".join(
        [
            f"# bf16 on the front of study `{args.study}` ({record['device']}, {cpu_description()})",
            "",
            f"bf16 offered: {has_bf16}. Budget {record['budget_ms']:.2f} ms (L0 {record['baseline_latency_ms']:.2f} ms).",
            "",
            "| trial | mAP50-95 as deployed | p50 (ms) | units per precision | mAP50-95 same artifact at f32 | f32 - deployed |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            f"Largest cost of bf16 on the front: {worst:+.4f} mAP50-95 (target <= {TARGET_DROP}): "
            f"{'PASS' if worst <= TARGET_DROP else 'FAIL'}.",
            "",
            f"Command: `{command}`",
        ]
    )
    print(report)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(report + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
