"""`squeezefit measure MODEL.onnx --device NAME`: latency (and with --data, accuracy) of one artifact.

Prints one line, or with --json one JSON object with at least p50_ms, p90_ms, runs,
device and fingerprint (plus map50_95, map50, precision, recall, images with --data).

With `--reference REF.onnx` the artifact is timed against REF side by side
(`Device.measure_paired`, see `evaluators.paired`): the number is the ratio of their
medians, which holds from process to process where a single p50 drifts with the host.
The line then reads "model.onnx vs ref.onnx on ort-cpu: 0.812x (95% 0.800-0.824), p50
3.100 ms vs 3.818 ms over 1300 alternated runs, host drift +4.0% [fingerprint ...]"; the
JSON object is `PairedMeasurement.to_dict()` plus "artifact" and "reference" (at least
ratio, ratio_low, ratio_high, p50_ms, reference_p50_ms, runs, host_drift, device,
fingerprint). --runs / --min-seconds / --max-runs then count alternated rounds.
--sustained times one artifact back to back, so it is refused with --reference.

A missing or invalid file, an unknown device, a reference whose inputs differ from the
artifact's and --sustained with --reference are user errors (exit code 2).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from evaluators import TimingSettings, UserError, get_device

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
    parser.add_argument(
        "--reference",
        type=Path,
        help="time the artifact against this ONNX file side by side and report their latency ratio",
    )
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
    if args.reference is not None and args.sustained > 0:
        raise UserError("--sustained times one artifact back to back; it cannot be combined with --reference.")
    device = get_device(args.device, **options)
    result = _latency(device, args.model, args.reference, settings)
    if args.data is not None:
        result.update(_accuracy(args.model, args.data, device.accuracy_runtime, args.max_images))
    if args.json:
        print(json.dumps(result))
    else:
        print(_paired_line(args.model, args.reference, result) if args.reference else _line(args.model, result))
    return 0


def _latency(device, model: Path, reference: Path | None, settings: TimingSettings) -> dict:
    """The measurement's dict with "artifact" (and "reference") first: unpaired, or paired against `reference`."""
    if reference is None:
        return {"artifact": str(model), **device.measure(model, settings=settings).to_dict()}
    paired = device.measure_paired(model, reference, settings=settings)
    return {"artifact": str(model), "reference": str(reference), **paired.to_dict()}


def _accuracy(model: Path, data: Path, runtime: str, max_images: int | None) -> dict:
    from evaluators.accuracy import measure_accuracy

    acc = measure_accuracy(model, data, split="val", runtime=runtime, max_images=max_images)
    fields = ("map50_95", "map50", "precision", "recall", "images")
    return {"accuracy_runtime": runtime, **{k: getattr(acc, k) for k in fields}}


def _paired_line(model: Path, reference: Path, r: dict) -> str:
    text = (
        f"{model.name} vs {reference.name} on {r['device']}: {r['ratio']:.3f}x "
        f"(95% {r['ratio_low']:.3f}-{r['ratio_high']:.3f}), p50 {r['p50_ms']:.3f} ms vs "
        f"{r['reference_p50_ms']:.3f} ms over {r['runs']} alternated runs, host drift {r['host_drift']:+.1%}"
    )
    text += f" [{'cached, ' if r['cached'] else ''}fingerprint {r['fingerprint_hash']}]"
    return text + _accuracy_text(r)


def _accuracy_text(r: dict) -> str:
    if "map50_95" not in r:
        return ""
    return f"; mAP50-95 {r['map50_95']:.4f}, mAP50 {r['map50']:.4f} on {r['images']} images"


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
    return text + _accuracy_text(r)
