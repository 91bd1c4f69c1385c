"""How much of a search does reusing it on a new device cost, and how much does the front move?

Transfers a finished study (by default `default`, from `squeezefit search studies/default.yaml`)
to each given device with `squeezefit transfer --json`, each in a fresh process with a fresh
latency cache (so every latency is really measured), into a throw-away study that is deleted
afterwards (--keep keeps it). Reports per device: the transfer's wall time as a fraction of
the source search's (target <= 10%) and where it went (timing-only or copied artifacts, the
one timing session, full builds of the trials validated, validation, preparation, the rest:
process start-up and bookkeeping), how many mAPs were reused, validated again or carried
without validation (the lazy rule, `search.transfer.MAP_MARGIN`), whether every trial on the
new front has a measured mAP (required), the Spearman rank correlation of p50 latency between
the two devices over the carried trials, and how many front members change.

    python benchmarks/transfer.py --study default [--storage URL] [--devices openvino-cpu ort-cpu:2] \
        [--output benchmarks/results/transfer.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_FRACTION = 0.10
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "transfer.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="default", help="the finished source study (default: default)")
    parser.add_argument("--storage", help="Optuna storage URL (default: SQLite under studies/)")
    parser.add_argument("--devices", nargs="+", default=["openvino-cpu", "ort-cpu:2"], help="devices to transfer to")
    parser.add_argument("--select", choices=("all", "front+topK"), default="all", help="which source trials to carry")
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help="markdown report (default benchmarks/results/transfer.md)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the transferred studies and their outputs")
    parser.add_argument(
        "--source-wall-min",
        type=float,
        help="the source command's own wall time in minutes (e.g. `time make demo`: preparation, guided starts, "
        "trials, recovery, export), reported beside the sum of its trials' durations",
    )
    args = parser.parse_args(argv)

    from search.study import StudyConfig, load_study, study_record
    from search.transfer import study_seconds

    storage = args.storage or StudyConfig().storage_url
    source = load_study(args.study, storage)  # a UserError here is the user's: say it plainly
    load_before = os.getloadavg()
    rows = []
    for device in args.devices:
        name = f"{args.study}-bench-{device.replace(':', '-').replace('/', '-')}-{int(time.time())}"
        rows.append(_transfer(args.study, storage, device, name, args.select))
        if not args.keep:
            _delete(name, storage)
    text = _report(
        source,
        study_record(source),
        (study_seconds(source), _seconds_without_recovery(source), args.source_wall_min),
        rows,
        argv if argv is not None else sys.argv[1:],
        load_before,
        os.getloadavg(),
    )
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text + "\n")
    return 0


def _transfer(study: str, storage: str, device: str, name: str, select: str) -> dict:
    """Run one transfer in a fresh process with a fresh latency cache; its report plus the outer wall time."""
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, SQUEEZEFIT_LATENCY_CACHE=str(Path(tmp) / "latency.sqlite"), OMP_NUM_THREADS="1")
        command = [
            sys.executable,
            "-m",
            "search.cli",
            "transfer",
            "--study",
            study,
            "--storage",
            storage,
            "--device",
            device,
            "--name",
            name,
            "--select",
            select,
            "--json",
        ]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"transfer to {device} failed:\n{done.stderr[-3000:]}")
    return {"device": device, "wall_s": wall, "report": json.loads(done.stdout)}


def _seconds_without_recovery(study) -> float:
    """The sum of the durations of a study's trials that are not recoveries (`squeezefit recover`)."""
    return sum(
        t.duration.total_seconds()
        for t in study.get_trials(deepcopy=False)
        if t.duration is not None and "recovery" not in t.user_attrs
    )


def _delete(name: str, storage: str) -> None:
    import optuna

    from search.study import load_study, study_record

    outdir = Path(study_record(load_study(name, storage))["outdir"])
    optuna.delete_study(study_name=name, storage=storage)
    shutil.rmtree(outdir, ignore_errors=True)


def _versions() -> str:
    from importlib.metadata import version

    return ", ".join(
        f"{p} {version(p)}" for p in ("torch", "ultralytics", "onnxruntime", "openvino", "nncf", "optuna", "scipy")
    )


def _report(source, record: dict, source_times, rows: list[dict], argv, load_before, load_after) -> str:
    """source_times: (sum of the source's trial durations, the same without recoveries, the source command's wall
    minutes or None), in seconds but the last."""
    from evaluators.hardware import cpu_description

    config = record["config"]
    source_s, searched_s, wall_min = source_times
    recovered = sum("recovery" in t.user_attrs for t in source.trials)
    lines = [
        "# Reusing a study on a new device",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        f"- machine: {cpu_description()}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}; "
        f"torch threads 1 (OMP_NUM_THREADS=1)",
        f"- versions: Python {platform.python_version()}, {_versions()}",
        f"- command: `{shlex.join(['python', 'benchmarks/transfer.py', *argv])}`",
        f"- load average (1/5/15 min) before: {'/'.join(f'{x:.2f}' for x in load_before)}, "
        f"after: {'/'.join(f'{x:.2f}' for x in load_after)}",
        f"- source: study `{source.study_name}` on `{record['device']}`, {len(source.trials)} trials, "
        f"{config['imgsz']} px, {config['finetune_epochs']} fine-tune epoch(s) on {config['train_images'] or 'all'} images, "
        f"validation on {config['val_images'] or 'all'} images; search time {source_s / 60:.1f} min (sum of its trials' durations"
        + (
            f", of which {(source_s - searched_s) / 60:.1f} min recovering {recovered} polic{'y' if recovered == 1 else 'ies'}"
            if recovered
            else ""
        )
        + ")"
        + (f"; the source command's own wall time {wall_min:.1f} min" if wall_min else ""),
        "- each transfer: a fresh `squeezefit transfer --json` process with an empty latency cache; wall = the whole process;"
        f" target <= {TARGET_FRACTION:.0%} of the source's search time, every trial on the new front with a measured mAP",
        "",
        "| device | carried | mAP reused / validated / carried | validations skipped | skipped | "
        "source search (min) | transfer wall (min) | fraction of search | <= 10% | without recovery "
        "| of the source command | every front mAP measured "
        "| artifacts / latency / full builds / validation / preparation / rest (min) "
        "| latency rank corr. (Spearman) | source front | new front | left the front | joined the front |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        r, wall = row["report"], row["wall_s"]
        fraction = wall / source_s if source_s > 0 else float("nan")
        rho = r["latency_rank_correlation"]
        m, steps = r["map_sources"], r["step_seconds"]
        split = [steps.get(step, 0.0) for step in ("artifact", "latency", "deploy", "validate")]
        split.append(r.get("prepare_seconds") or 0.0)
        split.append(wall - sum(split))
        lines.append(
            f"| {row['device']} | {len(r['trials'])} | {m['reused']} / {m['revalidated']} / {m['carried']} "
            f"| {r['validations_skipped']} | {len(r['skipped'])} | {source_s / 60:.2f} | {wall / 60:.2f} "
            f"| {fraction:.1%} | {'yes' if fraction <= TARGET_FRACTION else 'no'} "
            f"| {wall / searched_s if searched_s > 0 else float('nan'):.1%} "
            f"| {f'{wall / 60 / wall_min:.1%}' if wall_min else '-'} | {'yes' if r['front_measured'] else 'NO'} "
            f"| {' / '.join(f'{x / 60:.2f}' for x in split)} | {'n/a' if rho is None else f'{rho:.3f}'} "
            f"| {len(r['source_front'])} | {len(r['front'])} | {_trials(r['lost_from_front'])} | {_trials(r['gained_on_front'])} |"
        )
    for row in rows:
        r = row["report"]
        lines += [
            "",
            f"## {r['source_device']} -> {row['device']} (budget {r['budget_ms']:.2f} ms, baseline FP32 "
            f"{r['baseline_latency_ms']:.2f} ms; source budget {r['source_budget_ms']:.2f} ms; mAP margin "
            f"{r['map_margin']})",
            "",
            "trials in the order the transfer settled their mAP (fastest here first); mAP `carried`: the source's, "
            "not validated here (it could not reach the front), never on a front or exported",
            "",
            "| source trial | reference | status | mAP50-95 source -> here | mAP | p50 ms source -> here | changes |",
            "|---|---|---|---|---|---|---|",
        ]
        for t in r["trials"]:
            lines.append(
                f"| {t['source_trial']} | {t['reference'] or '-'} | {t['status']} | {t['source_map50_95']:.4f} -> {t['map50_95']:.4f} "
                f"| {t['map_source']} | {t['source_latency_ms']:.2f} -> {t['latency_ms']:.2f} | {'; '.join(t['changes']) or '-'} |"
            )
        for s in r["skipped"]:
            lines.append(f"\nskipped source trial {s['source_trial']}: {s['reason']}")
    return "\n".join(lines)


def _trials(numbers) -> str:
    return f"{len(numbers)}: trial {', '.join(str(n) for n in numbers)}" if numbers else "0"


if __name__ == "__main__":
    sys.exit(main())
