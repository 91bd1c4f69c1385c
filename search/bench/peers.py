"""The one-command peers: what a user of Ultralytics already gets from one export command.

- "ultralytics onnx int8": `yolo export format=onnx int8=True data=...`, run on ONNX Runtime;
- "ultralytics openvino int8": `yolo export format=openvino int8=True data=...` (NNCF), run on OpenVINO;
- "ultralytics openvino": `yolo export format=openvino` (an FP32 IR), run on OpenVINO at its default inference
  precision: bf16 on CPUs with AVX512-BF16 or AMX, which a user gets for free;
- "olive static int8": Microsoft Olive's ONNX static quantization search, listed as skipped with the reason
  (this bench does not drive Olive yet; it needs the optional `olive-ai`).

Each is exported from the bench's baseline checkpoint (a copy, so nothing is written next to the
committed one) with Ultralytics' own defaults, its INT8 calibrated on the data set Ultralytics is
given (its default split, val). Its mAP50-95 comes from Ultralytics' validator on the exported
file itself (`YOLO(path).val`, Ultralytics' own runtime backend) on the bench's validation images.
Its latency comes from ONE round-robin session in which every peer and the bench device's FP32
reference artifact run in turn on this host, each on its runtime with the bench device's thread
count (`evaluators.timing.time_together`), as the ratio to the reference times L0: the bench's scale.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

ONNX_INT8, OPENVINO_INT8, OPENVINO = "ultralytics onnx int8", "ultralytics openvino int8", "ultralytics openvino"
OLIVE = "olive static int8"


@dataclass(frozen=True)
class Peer:
    """One peer: how it is made, where its file is, and what was measured.

    runtime: "onnxruntime" or "openvino". path: the exported file (ONNX, or the IR's .xml).
    skipped: why it was not measured ("" when it was). ratio / ratio_low / ratio_high: its
    p50 over the reference's in the shared session, with the 95% interval; precision: the
    inference precision OpenVINO compiled it with (None on ONNX Runtime).
    """

    label: str
    command: str
    runtime: str
    path: str = ""
    skipped: str = ""
    map50_95: float = 0.0
    map50: float = 0.0
    ratio: float = 0.0
    ratio_low: float = 0.0
    ratio_high: float = 0.0
    precision: str | None = None
    seconds: float = 0.0


_EXPORTS = (
    (ONNX_INT8, "onnxruntime", {"format": "onnx", "int8": True}),
    (OPENVINO_INT8, "openvino", {"format": "openvino", "int8": True}),
    (OPENVINO, "openvino", {"format": "openvino"}),
)


def export_peers(checkpoint: Path, data_yaml: Path, imgsz: int, out: Path) -> list[Peer]:
    """Every peer exported into `out` (or skipped with its reason); nothing measured yet."""
    import logging

    from ultralytics import YOLO

    logging.getLogger("nncf").setLevel(logging.WARNING)  # NNCF's per-node INFO lines would bury the bench's progress
    out.mkdir(parents=True, exist_ok=True)
    source = out / "baseline.pt"
    shutil.copyfile(checkpoint, source)
    peers = []
    for label, runtime, args in _EXPORTS:
        start = time.perf_counter()
        command = "yolo export " + " ".join(f"{k}={v}" for k, v in args.items()) + f" imgsz={imgsz} data=<bench data>"
        exported = Path(YOLO(str(source)).export(**args, imgsz=imgsz, data=str(data_yaml), device="cpu", batch=1))
        path = exported if exported.suffix == ".onnx" else next(exported.glob("*.xml"))
        peers.append(Peer(label, command, runtime, str(path), seconds=round(time.perf_counter() - start, 1)))
    peers.append(Peer(OLIVE, "olive quantize (static, ONNX Runtime)", "onnxruntime", skipped=_olive_skipped()))
    return peers


def _olive_skipped() -> str:
    try:
        import olive  # noqa: F401
    except ImportError:
        return "olive-ai is not installed (an optional extra)"
    return "this bench does not drive Olive's quantization search yet"


def validate_peers(peers: list[Peer], data_yaml: Path, imgsz: int, max_images: int | None, workdir: Path) -> list[Peer]:
    """Each measured peer with its mAP from Ultralytics' validator on its exported file (first `max_images` val images)."""
    from ultralytics import YOLO

    from evaluators.accuracy import VAL_DEFAULTS
    from evaluators.datasets import subset_data_yaml

    subset = subset_data_yaml(data_yaml, "val", max_images, workdir)
    done = []
    for peer in peers:
        if peer.skipped:
            done.append(peer)
            continue
        start = time.perf_counter()
        model_path = Path(peer.path) if peer.runtime == "onnxruntime" else Path(peer.path).parent
        metrics = YOLO(str(model_path), task="detect").val(
            data=str(subset),
            imgsz=imgsz,
            batch=1,
            device="cpu",
            workers=0,
            project=str(workdir),
            name=peer.label.replace(" ", "-"),
            exist_ok=True,
            **VAL_DEFAULTS,
        )
        seconds = peer.seconds + time.perf_counter() - start
        done.append(
            replace(peer, map50_95=float(metrics.box.map), map50=float(metrics.box.map50), seconds=round(seconds, 1))
        )
    return done


def time_peers(peers: list[Peer], device, reference: Path, settings) -> list[Peer]:
    """Each measured peer with its ratio to `reference` on `device` (a local device), from one shared session."""
    import onnx

    from evaluators.inputs import synthetic_inputs
    from evaluators.openvino import OpenVinoCpuDevice
    from evaluators.ort import OrtDevice
    from evaluators.paired import ratio_interval
    from evaluators.timing import time_together

    threads = getattr(device, "threads", 1)
    inputs = synthetic_inputs(onnx.load(str(reference)))
    measured = [p for p in peers if not p.skipped]
    ort, openvino = OrtDevice("ort-cpu", threads=threads, cache=False), OpenVinoCpuDevice(threads, cache=False)
    clocks, precisions = [device.open(reference, inputs)], []
    for peer in measured:
        if peer.runtime == "onnxruntime":
            clocks.append(ort.open(Path(peer.path), inputs))
            precisions.append(None)
        else:
            clock, precision = openvino.open_as_exported(Path(peer.path), inputs)
            clocks.append(clock)
            precisions.append(precision)
    ballast = device.open(reference, inputs)  # loaded last, never run (`evaluators.timing`, step 7)
    times = time_together(clocks, settings)
    del ballast
    timed = {}
    for peer, mine, precision in zip(measured, times[1:], precisions, strict=True):
        ratio, low, high = ratio_interval(mine, times[0])
        timed[peer.label] = replace(peer, ratio=ratio, ratio_low=low, ratio_high=high, precision=precision)
    return [timed.get(p.label, p) for p in peers]


def measure_peers(ctx, device, settings, *, log=print) -> list[Peer]:
    """Every peer for the bench's trial context `ctx` on `device`: exported, timed together, validated.

    On a device that does not run in this process (remote, Ray) every peer is skipped with that reason.
    """
    from evaluators.timing import LocalDevice

    out = Path(ctx.outdir) / "peers"
    if not isinstance(device, LocalDevice):
        reason = f"{device.name} does not run in this process; peers are timed on a local device"
        return [replace(p, skipped=reason) for p in _unmade(ctx.imgsz)]
    peers = export_peers(Path(ctx.checkpoint), Path(ctx.data_yaml), ctx.imgsz, out)
    peers = time_peers(peers, device, Path(ctx.reference_artifact), settings)
    peers = validate_peers(peers, Path(ctx.data_yaml), ctx.imgsz, ctx.val_images, out)
    for p in peers:
        log(
            f"[bench] peer {p.label}: skipped, {p.skipped}"
            if p.skipped
            else f"[bench] peer {p.label}: p50 {p.ratio * ctx.reference_ms:.2f} ms ({1 / p.ratio:.2f}x), "
            f"mAP50-95 {p.map50_95:.4f}" + (f", {p.precision}" if p.precision else "")
        )
    return peers


def _unmade(imgsz: int) -> list[Peer]:
    return [Peer(label, f"yolo export format={args['format']}", runtime) for label, runtime, args in _EXPORTS] + [
        Peer(OLIVE, "olive quantize (static, ONNX Runtime)", "onnxruntime")
    ]
