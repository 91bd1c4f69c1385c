"""`squeezefit measure MODEL.onnx --device NAME`: latency (and with --data, accuracy) of one artifact.

Prints one line, or with --json one JSON object with at least p50_ms, p90_ms, runs,
device and fingerprint (plus map50_95, map50, precision, recall, images with --data).
A missing or invalid file and an unknown device are user errors (exit code 2).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from evaluators import TimingSettings, get_device

HELP = "measure an ONNX artifact's latency on a device (and its mAP with --data)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = TimingSettings()
    parser.add_argument("model", type=Path, help="the ONNX artifact")
    parser.add_argument(
        "--device",
        default="ort-cpu",
        help="ort-cpu[:threads], openvino-cpu[:threads], tensorrt, remote:http://HOST:PORT, ...",
    )
    parser.add_argument("--data", type=Path, help="data set YAML: also measure mAP on its val split")
    parser.add_argument("--max-images", type=int, help="with --data: only the first N images of the val split")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a line")
    parser.add_argument("--runs", type=int, default=defaults.min_runs, help="at least this many timed runs")
    parser.add_argument("--min-seconds", type=float, default=defaults.min_seconds, help="time for at least this long")
    parser.add_argument("--max-runs", type=int, default=defaults.max_runs, help="never more timed runs than this")
    parser.add_argument("--warmup", type=int, default=defaults.warmup_max_runs, help="at most this many warm-up runs")
    parser.add_argument(
        "--sustained",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="also run back to back this long and report throughput and drift",
    )
    parser.add_argument("--no-cache", action="store_true", help="time now even if the structure was measured before")
    parser.add_argument("--token", help="token of a remote agent (default: $SQUEEZEFIT_AGENT_TOKEN)")


def run(args: argparse.Namespace) -> int:
    settings = TimingSettings(
        min_runs=args.runs,
        min_seconds=args.min_seconds,
        max_runs=max(args.max_runs, args.runs),
        warmup_max_runs=args.warmup,
        warmup_min_runs=min(TimingSettings.warmup_min_runs, args.warmup),
        sustained_seconds=args.sustained,
    )
    options = {"cache": False} if args.no_cache else {}
    if args.device.startswith("remote:") and args.token:
        options["token"] = args.token
    device = get_device(args.device, **options)
    latency = device.measure(args.model, settings=settings)
    result = {"artifact": str(args.model), **latency.to_dict()}
    if args.data is not None:
        result.update(_accuracy(args.model, args.data, device.accuracy_runtime, args.max_images))
    print(json.dumps(result) if args.json else _line(args.model, result))
    return 0


def _accuracy(model: Path, data: Path, runtime: str, max_images: int | None) -> dict:
    from evaluators.accuracy import measure_accuracy

    acc = measure_accuracy(model, data, split="val", runtime=runtime, max_images=max_images)
    fields = ("map50_95", "map50", "precision", "recall", "images")
    return {"accuracy_runtime": runtime, **{k: getattr(acc, k) for k in fields}}


def _line(model: Path, r: dict) -> str:
    text = (
        f"{model.name} on {r['device']}: p50 {r['p50_ms']:.3f} ms, p90 {r['p90_ms']:.3f} ms, "
        f"IQR {r['iqr_ms']:.3f} ms over {r['runs']} runs, peak memory +{r['peak_memory_mb']:.1f} MB"
    )
    if r.get("sustained_seconds") is not None:
        text += (
            f", sustained {r['sustained_throughput_ips']:.1f}/s over {r['sustained_seconds']:.0f} s "
            f"(drift {r['sustained_drift']:+.1%})"
        )
    text += f" [{'cached, ' if r['cached'] else ''}fingerprint {r['fingerprint_hash']}]"
    if "map50_95" in r:
        text += f"; mAP50-95 {r['map50_95']:.4f}, mAP50 {r['map50']:.4f} on {r['images']} images"
    return text
