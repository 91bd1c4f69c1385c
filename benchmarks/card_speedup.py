"""Does an exported card's speedup hold up against a plain alternating loop?

Reads a bundle written by `squeezefit export` (or by a search): `card.json` (the speedup
the card states, and its device), `model.onnx` and `baseline-fp32.onnx`. Loads both files
straight into the runtime — no squeezefit code in the timed path — with the device's
settings (one intra-op thread; for OpenVINO the bundle's IR and the compile properties the
card records), and
alternates them run by run for `--seconds`, after a warm-up; the plain speedup is
median(baseline) / median(model). The card holds when the two agree within 5%.

    python benchmarks/card_speedup.py out/default/best --seconds 20 --output benchmarks/results/card_speedup.md

Run it alone on the machine (another busy process doubles the numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np

TOLERANCE = 0.05


def ort_runner(path: Path, threads: int):
    """A callable running `path` once on ONNX Runtime's CPU provider with fixed inputs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {
        i.name: np.random.default_rng(0).random([d if isinstance(d, int) else 1 for d in i.shape], np.float32)
        for i in session.get_inputs()
    }
    return lambda: session.run(None, feed)


def openvino_runner(path: Path, config: dict):
    """A callable running `path` once on OpenVINO's CPU plugin compiled with `config`."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {k: str(v) for k, v in config.items()})
    request = compiled.create_infer_request()
    for port in compiled.inputs:
        shape = [d if d > 0 else 1 for d in port.get_partial_shape().get_min_shape()]
        request.set_tensor(port, ov.Tensor(np.random.default_rng(0).random(shape, np.float32)))
    return request.infer


def alternate(first, second, seconds: float, warmup: int = 30) -> tuple[list[float], list[float]]:
    """Run the two callables in turn (A B, B A, ...) for `seconds` after `warmup` runs each; ms per run."""
    for _ in range(warmup):
        first()
        second()
    times: tuple[list[float], list[float]] = ([], [])
    start, rounds = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        order = ((0, first), (1, second)) if rounds % 2 == 0 else ((1, second), (0, first))
        for index, run in order:
            began = time.perf_counter_ns()
            run()
            times[index].append((time.perf_counter_ns() - began) / 1e6)
        rounds += 1
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path, help="a bundle directory with card.json, model.onnx, baseline-fp32.onnx")
    parser.add_argument("--seconds", type=float, default=20.0, help="time alternating for this long")
    parser.add_argument("--output", type=Path, help="append the markdown result here")
    args = parser.parse_args(argv)
    card = json.loads((args.bundle / "card.json").read_text())
    device = card["device"]
    kind, _, count = device.partition(":")
    threads = int(count) if count else 1
    model, baseline = args.bundle / "model.onnx", args.bundle / "baseline-fp32.onnx"
    if kind == "ort-cpu":
        runners = ort_runner(model, threads), ort_runner(baseline, threads)
    elif kind == "openvino-cpu":
        ir = args.bundle / "model_openvino_model" / "model.xml"  # the IR keeps a bf16 policy's FP32 nodes
        runners = (
            openvino_runner(ir if ir.is_file() else model, card["runtime_config"]["model"]),
            openvino_runner(baseline, card["runtime_config"]["baseline"]),
        )
    else:
        parser.error(f"this check runs ort-cpu and openvino-cpu bundles, not {device}")
    model_ms, baseline_ms = alternate(*runners, args.seconds)
    plain = statistics.median(baseline_ms) / statistics.median(model_ms)
    stated = card["speedup"]
    agree = abs(stated / plain - 1) <= TOLERANCE
    line = (
        f"| {card['study']} trial {card['trial']} | {device} | {stated:.3f}x ({card['speedup_low']:.3f}-"
        f"{card['speedup_high']:.3f}) at {card['timed_together_at']} | {plain:.3f}x over {len(model_ms)} rounds "
        f"at {time.strftime('%Y-%m-%d %H:%M:%S')} | {stated / plain - 1:+.1%} | {'PASS' if agree else 'FAIL'} |"
    )
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    report = "\n".join(
        [
            "| bundle | device | card speedup (95%) | plain alternating loop | card / plain - 1 | within 5% |",
            "|---|---|---|---|---|---|",
            line,
            "",
            f"threads: {threads}; cpus: {os.cpu_count()}; load average before: {os.getloadavg()[0]:.2f}; "
            f"command: `{command}`",
        ]
    )
    print(report)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        with args.output.open("a") as out:
            out.write(report + "\n\n")
    return 0 if agree else 1


if __name__ == "__main__":
    raise SystemExit(main())
