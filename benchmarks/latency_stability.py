"""How stable is a latency measurement from one process to the next?

For each artifact (e.g. the FP32 baseline and its all-INT8 version) on each CPU device,
measure p50 in N separate processes, one after another (each a fresh runtime, no cache),
and report the spread of those p50s: max/min - 1. The target is <= 3% on an idle machine;
the load average before and after is printed, because another busy process on the box
is the usual cause of a miss.

    python benchmarks/latency_stability.py base.onnx base-int8.onnx \
        --devices ort-cpu openvino-cpu --processes 5 --output benchmarks/results/latency_stability.md

Prints a markdown table (and writes it with --output), with the threads used and the
exact command.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

TARGET_SPREAD = 0.03


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", nargs="+", type=Path, help="ONNX files, e.g. FP32 baseline and all-INT8")
    parser.add_argument("--devices", nargs="+", default=["ort-cpu", "openvino-cpu"], help="CPU device names")
    parser.add_argument("--processes", type=int, default=5, help="separate processes per artifact and device")
    parser.add_argument("--runs", type=int, default=100, help="timed-run floor per process")
    parser.add_argument("--min-seconds", type=float, default=5.0, help="timing floor per process, seconds")
    parser.add_argument("--output", type=Path, help="also write the markdown report here")
    parser.add_argument("--worker", nargs=2, metavar=("ARTIFACT", "DEVICE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return _worker(Path(args.worker[0]), args.worker[1], args.runs, args.min_seconds)

    missing = [str(p) for p in args.artifacts if not p.is_file()]
    if missing:
        parser.error(f"no such file: {', '.join(missing)}")
    load_before = os.getloadavg()
    rows = []
    for artifact in args.artifacts:
        for device in args.devices:
            results = [_in_fresh_process(artifact, device, args.runs, args.min_seconds) for _ in range(args.processes)]
            rows.append((artifact, device, results))
    report = _report(rows, argv if argv is not None else sys.argv[1:], load_before, os.getloadavg())
    print(report)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(report + "\n")
    return 0


def _worker(artifact: Path, device_name: str, runs: int, min_seconds: float) -> int:
    from evaluators import TimingSettings, get_device

    settings = TimingSettings(min_runs=runs, min_seconds=min_seconds, max_runs=max(runs, 100_000))
    measurement = get_device(device_name, cache=False).measure(artifact, settings=settings)
    print(json.dumps(measurement.to_dict()))
    return 0


def _in_fresh_process(artifact: Path, device: str, runs: int, min_seconds: float) -> dict:
    command = [sys.executable, __file__, str(artifact), "--worker", str(artifact), device,
               "--runs", str(runs), "--min-seconds", str(min_seconds)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"measuring {artifact} on {device} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _threads(fingerprint: dict) -> str:
    settings = fingerprint["settings"]
    return str(settings.get("intra_op_threads") or settings.get("inference_num_threads") or "?")


def _report(rows, argv, load_before, load_after) -> str:
    first = rows[0][2][0]["fingerprint"]
    lines = [
        "# Latency stability across processes",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        f"- hardware: {first['hardware']}",
        f"- command: `{shlex.join(['python', 'benchmarks/latency_stability.py', *argv])}`",
        f"- load average (1/5/15 min) before: {'/'.join(f'{x:.2f}' for x in load_before)}, "
        f"after: {'/'.join(f'{x:.2f}' for x in load_after)}",
        f"- each process: fresh runtime, no cache; spread = max/min - 1 of the per-process p50; "
        f"target <= {TARGET_SPREAD:.0%} on an idle machine",
        "",
        "| artifact | device | runtime | threads | runs/process | p50 per process (ms) | median p50 (ms) "
        "| spread | <= 3% |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for artifact, device, results in rows:
        p50s = [r["p50_ms"] for r in results]
        spread = max(p50s) / min(p50s) - 1
        fp = results[0]["fingerprint"]
        lines.append(
            f"| {artifact.name} | {device} | {fp['runtime']} {fp['version'].split('-')[0]} | {_threads(fp)} "
            f"| {min(r['runs'] for r in results)} | {', '.join(f'{p:.3f}' for p in p50s)} "
            f"| {statistics.median(p50s):.3f} | {spread:.1%} | {'yes' if spread <= TARGET_SPREAD else 'no'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
