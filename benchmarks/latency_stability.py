"""How stable is a latency measurement from one process to the next?

The question the project's numbers rest on: measured again in a fresh process, does an
artifact come out the same? Three schedules, each on each CPU device, in N separate
processes (each a fresh runtime, no cache):

- paired (the default whenever --reference is given): each process times a candidate
  (e.g. the baseline's all-INT8 artifact) against the reference (the FP32 baseline) side
  by side, `get_device(d, cache=False).measure_paired(candidate, reference)` (see
  `evaluators.paired`), and the number compared is their RATIO of medians. The processes
  run one after another. The spread is max/min - 1 of the N ratios; the target is <= 3%
  on each device. Reported beside it: each process's 95% interval width ((high - low) /
  ratio, their median) and the host drift it saw (the reference's own last fifth / first
  fifth - 1 within the process: what a single-artifact p50 would have been off by).
  Defaults: at least 300 rounds and 10 s of alternated timing per process (about 15 s a
  process for the 192 px baseline, ~4 ms FP32 + ~3.5 ms INT8 a round).
- sequential: one artifact per process, one whole protocol run (`Device.measure`) each,
  one process after another. The spread of the p50s then holds the process-to-process
  difference AND the host's drift over the minutes the benchmark takes. Defaults: 100
  runs and 5 s per process.
- interleaved: the N processes are loaded at once and take turns, round after round (the
  order reversed every other round), each turn one whole protocol run (warm-up until
  stable, then the timing floors) under the host's measurement lock; a process's p50 is
  the median of its turns' p50s. Host drift then falls on every process alike, and the
  spread is what differs between processes. The host's own drift over the run is reported
  beside it: max/min - 1 of the per-round medians.

The issue's check (INT8 vs FP32, five sequential processes, ratio spread <= 3% on ort-cpu
and openvino-cpu); a device's INT8 artifact is best built with its own recipe, so pass both:

    python benchmarks/latency_stability.py --reference base.onnx \
        --candidate base-int8-ort.onnx base-int8-nncf.onnx \
        --devices ort-cpu openvino-cpu --processes 5 --output benchmarks/results/latency_stability.md

The single-artifact schedules take the artifacts as positional arguments (without
--reference the default is both of them):

    python benchmarks/latency_stability.py base.onnx base-int8.onnx \
        --devices ort-cpu openvino-cpu --processes 5 --schedule both

Prints a markdown table per kind (and writes them with --output), with the threads used,
the load average and the exact command. Run it alone: another busy process on the box is
the usual cause of a miss.
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
SCHEDULES = ("sequential", "interleaved")
# Timing floors per process when not given: (runs or rounds, seconds).
PAIRED_FLOORS = (300, 10.0)
SEQUENTIAL_FLOORS = (100, 5.0)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.paired_worker:
        candidate, reference, device = args.paired_worker
        return _paired_worker(Path(candidate), Path(reference), device, *_floors(args, PAIRED_FLOORS))
    if args.worker:
        return _worker(Path(args.worker[0]), args.worker[1], *_floors(args, SEQUENTIAL_FLOORS))
    if args.turns:
        return _turn_taker(Path(args.turns[0]), args.turns[1], args.turn_seconds)

    schedules = _schedules(parser, args)
    missing = [str(p) for p in [*args.artifacts, *args.candidate, *filter(None, [args.reference])] if not p.is_file()]
    if missing:
        parser.error(f"no such file: {', '.join(missing)}")
    if args.processes < 2:
        parser.error("--processes must be at least 2 to have a spread")
    load_before = os.getloadavg()
    paired_rows = _run_paired(args) if "paired" in schedules else []
    rows = _run_single(args, [s for s in schedules if s != "paired"])
    report = _report(rows, paired_rows, argv if argv is not None else sys.argv[1:], load_before, os.getloadavg())
    print(report)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(report + "\n")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", nargs="*", type=Path, help="sequential/interleaved: ONNX files to time alone")
    parser.add_argument("--reference", type=Path, help="paired: the ONNX file every candidate is timed against")
    parser.add_argument("--candidate", nargs="+", type=Path, default=[], help="paired: ONNX files to time against it")
    parser.add_argument("--devices", nargs="+", default=["ort-cpu", "openvino-cpu"], help="CPU device names")
    parser.add_argument("--processes", type=int, default=5, help="separate processes per artifact and device")
    parser.add_argument(
        "--schedule",
        choices=("paired", *SCHEDULES, "both"),
        help="paired with --reference, else both (= sequential and interleaved); see the module docstring",
    )
    parser.add_argument(
        "--runs",
        type=int,
        help=f"paired: rounds floor per process (default {PAIRED_FLOORS[0]}); "
        f"sequential: timed-run floor (default {SEQUENTIAL_FLOORS[0]})",
    )
    parser.add_argument(
        "--min-seconds",
        type=float,
        help=f"paired / sequential: timing floor per process in seconds "
        f"(default {PAIRED_FLOORS[1]:g} / {SEQUENTIAL_FLOORS[1]:g})",
    )
    parser.add_argument("--rounds", type=int, default=20, help="interleaved: turns per process")
    parser.add_argument("--turn-seconds", type=float, default=0.5, help="interleaved: timing floor per turn, seconds")
    parser.add_argument("--output", type=Path, help="also write the markdown report here")
    parser.add_argument("--worker", nargs=2, metavar=("ARTIFACT", "DEVICE"), help=argparse.SUPPRESS)
    parser.add_argument("--turns", nargs=2, metavar=("ARTIFACT", "DEVICE"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--paired-worker", nargs=3, metavar=("CANDIDATE", "REFERENCE", "DEVICE"), help=argparse.SUPPRESS
    )
    return parser


def _schedules(parser: argparse.ArgumentParser, args) -> tuple[str, ...]:
    """The schedules to run; a schedule without its files is a usage error."""
    schedule = args.schedule or ("paired" if args.reference else "both")
    schedules = SCHEDULES if schedule == "both" else (schedule,)
    if "paired" in schedules and not (args.reference and args.candidate):
        parser.error("the paired schedule needs --reference REF.onnx and --candidate X.onnx [...]")
    if schedule != "paired" and not args.artifacts:
        parser.error(
            f"{' and '.join(schedules)} time the artifacts given as positional arguments: give some "
            "(or --reference and --candidate for the paired schedule)"
        )
    return schedules


def _floors(args, defaults: tuple[int, float]) -> tuple[int, float]:
    runs = args.runs if args.runs is not None else defaults[0]
    return runs, args.min_seconds if args.min_seconds is not None else defaults[1]


def _run_paired(args) -> list[dict]:
    runs, min_seconds = _floors(args, PAIRED_FLOORS)
    rows = []
    for candidate in args.candidate:
        for device in args.devices:
            results = [
                _paired_in_fresh_process(candidate, args.reference, device, runs, min_seconds)
                for _ in range(args.processes)
            ]
            rows.append(_paired_row(candidate, args.reference, device, results))
            print(_paired_table_line(rows[-1]), flush=True)
    return rows


def _run_single(args, schedules: list[str]) -> list[dict]:
    runs, min_seconds = _floors(args, SEQUENTIAL_FLOORS)
    rows = []
    for artifact in args.artifacts:
        for device in args.devices:
            for schedule in schedules:
                if schedule == "sequential":
                    p50s = [_in_fresh_process(artifact, device, runs, min_seconds) for _ in range(args.processes)]
                    rows.append(_row(artifact, device, schedule, p50s, host_drift=None))
                else:
                    p50s, drift = _interleaved(artifact, device, args.processes, args.rounds, args.turn_seconds)
                    rows.append(_row(artifact, device, schedule, p50s, host_drift=drift))
                print(_table_line(rows[-1]), flush=True)
    return rows


# ---------------------------------------------------------------------------------------
# Paired: candidate against reference, alternated, in one fresh process after another.


def _paired_worker(candidate: Path, reference: Path, device_name: str, runs: int, min_seconds: float) -> int:
    from evaluators import TimingSettings, get_device

    # max_runs only guards against a runaway on a tiny model; the floors decide.
    settings = TimingSettings(min_runs=runs, min_seconds=min_seconds, max_runs=max(runs, 20_000))
    measurement = get_device(device_name, cache=False).measure_paired(candidate, reference, settings=settings)
    print(json.dumps(measurement.to_dict()))
    return 0


def _paired_in_fresh_process(candidate: Path, reference: Path, device: str, runs: int, min_seconds: float) -> dict:
    command = [
        sys.executable,
        __file__,
        "--paired-worker",
        str(candidate),
        str(reference),
        device,
        "--runs",
        str(runs),
        "--min-seconds",
        str(min_seconds),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"timing {candidate} against {reference} on {device} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------
# Sequential: one whole measurement per fresh process.


def _worker(artifact: Path, device_name: str, runs: int, min_seconds: float) -> int:
    from evaluators import TimingSettings, get_device

    settings = TimingSettings(min_runs=runs, min_seconds=min_seconds, max_runs=max(runs, 100_000))
    measurement = get_device(device_name, cache=False).measure(artifact, settings=settings)
    print(json.dumps(measurement.to_dict()))
    return 0


def _in_fresh_process(artifact: Path, device: str, runs: int, min_seconds: float) -> dict:
    command = [
        sys.executable,
        __file__,
        str(artifact),
        "--worker",
        str(artifact),
        device,
        "--runs",
        str(runs),
        "--min-seconds",
        str(min_seconds),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"measuring {artifact} on {device} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------
# Interleaved: N loaded processes take turns.


def _turn_taker(artifact: Path, device_name: str, turn_seconds: float) -> int:
    """Load the artifact once, answer "ready", then time one protocol run per "turn" line."""
    from evaluators import LocalDevice, TimingSettings, check_artifact, device_lock, get_device
    from evaluators.inputs import synthetic_inputs
    from evaluators.timing import run_protocol

    device = get_device(device_name, cache=False)
    if not isinstance(device, LocalDevice):
        raise SystemExit(f"{device_name} does not run in this process; the interleaved schedule needs a local device")
    settings = TimingSettings(min_runs=20, min_seconds=turn_seconds)
    with device_lock(device.host):
        timed_run = device.open(artifact, synthetic_inputs(check_artifact(artifact)))
    fingerprint = device.fingerprint().to_dict()
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() != "turn":
            break
        with device_lock(device.host):
            stats = run_protocol(timed_run, settings)
        print(json.dumps({"p50_ms": stats.p50_ms, "runs": stats.runs, "fingerprint": fingerprint}), flush=True)
    return 0


def _interleaved(artifact: Path, device: str, processes: int, rounds: int, turn_seconds: float):
    """Per-process results (p50 = median of the turns' p50s) and the host drift over the rounds."""
    command = [
        sys.executable,
        __file__,
        str(artifact),
        "--turns",
        str(artifact),
        device,
        "--turn-seconds",
        str(turn_seconds),
    ]
    workers = []
    try:
        for _ in range(processes):  # loaded one at a time: a compile must not overlap another's timing
            worker = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            workers.append(worker)
            if worker.stdout.readline().strip() != "ready":
                raise SystemExit(f"a worker could not load {artifact} on {device}")
        turns = [[] for _ in workers]
        round_medians = []
        for number in range(rounds):
            order = range(processes) if number % 2 == 0 else reversed(range(processes))
            for index in order:
                workers[index].stdin.write("turn\n")
                workers[index].stdin.flush()
                turns[index].append(json.loads(workers[index].stdout.readline()))
            round_medians.append(statistics.median(t[-1]["p50_ms"] for t in turns))
    finally:
        for worker in workers:
            if worker.stdin:
                worker.stdin.close()
            worker.wait(timeout=60)
    results = [
        {
            "p50_ms": statistics.median(t["p50_ms"] for t in mine),
            "runs": sum(t["runs"] for t in mine),
            "fingerprint": mine[0]["fingerprint"],
        }
        for mine in turns
    ]
    return results, max(round_medians) / min(round_medians) - 1


# ---------------------------------------------------------------------------------------
# Report.


def _row(artifact: Path, device: str, schedule: str, results: list[dict], host_drift: float | None) -> dict:
    p50s = [r["p50_ms"] for r in results]
    return {
        "artifact": artifact.name,
        "device": device,
        "schedule": schedule,
        "p50s": p50s,
        "runs": min(r["runs"] for r in results),
        "fingerprint": results[0]["fingerprint"],
        "spread": max(p50s) / min(p50s) - 1,
        "host_drift": host_drift,
    }


def _threads(fingerprint: dict) -> str:
    settings = fingerprint["settings"]
    return str(settings.get("intra_op_threads") or settings.get("inference_num_threads") or "?")


def _table_line(row: dict) -> str:
    fp = row["fingerprint"]
    drift = "" if row["host_drift"] is None else f"{row['host_drift']:.1%}"
    return (
        f"| {row['artifact']} | {row['device']} | {fp['runtime']} {fp['version'].split('-')[0]} "
        f"| {_threads(fp)} | {row['schedule']} | {row['runs']} | {', '.join(f'{p:.3f}' for p in row['p50s'])} "
        f"| {statistics.median(row['p50s']):.3f} | {row['spread']:.1%} "
        f"| {'yes' if row['spread'] <= TARGET_SPREAD else 'no'} | {drift} |"
    )


def _paired_row(candidate: Path, reference: Path, device: str, results: list[dict]) -> dict:
    ratios = [r["ratio"] for r in results]
    return {
        "candidate": candidate.name,
        "reference": reference.name,
        "device": device,
        "ratios": ratios,
        "rounds": min(r["runs"] for r in results),
        "fingerprint": results[0]["fingerprint"],
        "spread": max(ratios) / min(ratios) - 1,
        "width": statistics.median((r["ratio_high"] - r["ratio_low"]) / r["ratio"] for r in results),
        "host_drifts": [r["host_drift"] for r in results],
    }


def _paired_table_line(row: dict) -> str:
    fp = row["fingerprint"]
    return (
        f"| {row['candidate']} | {row['reference']} | {row['device']} | {fp['runtime']} {fp['version'].split('-')[0]} "
        f"| {_threads(fp)} | {row['rounds']} | {', '.join(f'{r:.4f}' for r in row['ratios'])} "
        f"| {statistics.median(row['ratios']):.4f} | {row['spread']:.1%} "
        f"| {'PASS' if row['spread'] <= TARGET_SPREAD else 'FAIL'} | {row['width']:.1%} "
        f"| {', '.join(f'{d:+.1%}' for d in row['host_drifts'])} |"
    )


def _report(rows: list[dict], paired_rows: list[dict], argv, load_before, load_after) -> str:
    lines = [
        "# Latency stability across processes",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        f"- hardware: {(paired_rows or rows)[0]['fingerprint']['hardware']}",
        f"- command: `{shlex.join(['python', 'benchmarks/latency_stability.py', *argv])}`",
        f"- load average (1/5/15 min) before: {'/'.join(f'{x:.2f}' for x in load_before)}, "
        f"after: {'/'.join(f'{x:.2f}' for x in load_after)}",
    ]
    if paired_rows:
        lines += [
            f"- paired: each process (fresh runtime, no cache, one after another) times the candidate against "
            f"the reference alternated (`Device.measure_paired`); ratio = median(candidate) / median(reference); "
            f"spread = max/min - 1 of the per-process ratios, target <= {TARGET_SPREAD:.0%}; 95% width = median "
            "of (high - low) / ratio of each process's bootstrap interval; host drift = the reference's last "
            "fifth / first fifth - 1 within each process",
            "",
            "| candidate | reference | device | runtime | threads | rounds/process | ratio per process "
            "| median ratio | spread | <= 3% | 95% width | host drift per process |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
            *(_paired_table_line(row) for row in paired_rows),
        ]
    if rows:
        lines += [
            *([""] if paired_rows else []),
            f"- each process: fresh runtime, no cache; spread = max/min - 1 of the per-process p50; "
            f"target <= {TARGET_SPREAD:.0%} on an idle machine; host drift (interleaved only) = max/min - 1 of the "
            "per-round medians",
            "",
            "| artifact | device | runtime | threads | schedule | runs/process | p50 per process (ms) "
            "| median p50 (ms) | spread | <= 3% | host drift |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            *(_table_line(row) for row in rows),
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
