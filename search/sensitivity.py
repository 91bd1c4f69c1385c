"""Sensitivity analysis: measure how much mAP each unit loses when it alone is pruned, alone is INT8, or alone
loses its inner blocks.

This is the first thing a practitioner measures before pruning (the data it produces, and
what the search derives from it, are in `spaces.sensitivity`). Every point is a real
deployable artifact: `apply_pruning` (or the INT8 map) -> ONNX (`build_artifact`
semantics) -> `measure_accuracy` on the same fixed subset of the validation split (the
first `max_images` images, a fidelity knob). The reference is the unpruned FP32 artifact's
mAP, exported and measured once.

Cost: one apply_pruning + export + validation per (unit, ratio), one INT8 build +
validation per unit, one export + validation per depth unit; about 5 s per point for YOLO11n at 192 px on 64 images, 1 CPU thread.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from evaluators.accuracy import measure_accuracy
from evaluators.paths import runs_dir
from evaluators.vocabulary import Int8Recipe, UserError
from spaces.depth import depth_units
from spaces.onnx_export import detection_model, export_onnx, precision_units
from spaces.precision import build_artifact
from spaces.pruning import MAX_RATIO, apply_pruning, pruning_units
from spaces.sensitivity import DEFAULT_RATIOS, Sensitivity, SensitivitySettings, model_fingerprint

SPLIT = "val"  # every point is validated on the first `max_images` images of this split


def analyze_sensitivity(
    model,
    data_yaml: str | Path,
    *,
    imgsz: int,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    int8: bool = True,
    calibration_images: Sequence[str | Path] = (),
    recipe: Int8Recipe = Int8Recipe(),
    max_images: int | None = 64,
    units: Iterable[str] | None = None,
    importance: str = "magnitude",
    round_to: int | None = 8,
    runtime: str = "onnxruntime",
    workdir: str | Path | None = None,
    progress: bool = True,
    depth: bool = True,
) -> Sensitivity:
    """Measure the mAP50-95 of `model` with one unit pruned (at each ratio), INT8, or (`depth`, for a unit with
    inner blocks, `spaces.depth`) without its inner blocks at a time.

    model: a DetectionModel or YOLO (not modified). importance / round_to: as in
    `apply_pruning` (a study passes its `pruning_importance` / `pruning_round_to`). units: a subset of unit names (default:
    every pruning unit); a unit is pruned if it is a pruning unit and made INT8 if it is
    also a unit of the exported graph. Blocks without convs (Upsample, Concat) are not
    pruning units and are left out by default. calibration_images: image files for INT8
    calibration, required when `int8`. Artifacts are written to `workdir` (default
    `runs/sensitivity`) and removed once measured, except the reference `base.onnx`.
    Prints one line per unit when `progress`. Raises UserError for an unknown unit, a ratio
    outside (0, MAX_RATIO), nothing to measure, or INT8 without calibration images.
    """
    start = time.perf_counter()
    ratios = tuple(sorted({float(r) for r in ratios}))
    if any(not 0.0 < r < MAX_RATIO for r in ratios):
        raise UserError(f"sensitivity ratios {list(ratios)} must each lie in (0, {MAX_RATIO}).")
    if not ratios and not int8:
        raise UserError("a sensitivity analysis needs at least one pruning ratio or int8=True.")
    if int8 and not calibration_images:
        raise UserError("INT8 sensitivity needs calibration images; pass at least one image file.")
    det = detection_model(model)
    names = dict(det.names) if getattr(det, "names", None) else {i: str(i) for i in range(det.model[-1].nc)}
    workdir = Path(workdir or runs_dir() / "sensitivity")
    workdir.mkdir(parents=True, exist_ok=True)

    def measure(path: Path, keep: bool = False) -> float:
        result = measure_accuracy(
            path, data_yaml, split=SPLIT, imgsz=imgsz, runtime=runtime, max_images=max_images, workdir=workdir
        )
        if not keep:
            _remove_artifact(path)
        return result.map50_95

    prunable = [u.name for u in pruning_units(det)]
    shallow = depth_units(det) if depth else {}
    base_path = export_onnx(det, workdir / "base.onnx", imgsz=imgsz, names=names)
    graph_units = set(precision_units(base_path))
    chosen = list(prunable) if units is None else list(dict.fromkeys(units))
    unknown = [u for u in chosen if u not in prunable and u not in graph_units]
    if unknown:
        raise UserError(f"unknown unit(s) {', '.join(unknown)}; this model's units are {', '.join(prunable)}.")
    base_map = measure(base_path, keep=True)
    if progress:
        print(f"sensitivity: base FP32 mAP50-95 {base_map:.4f} on {max_images or 'all'} {SPLIT} images", flush=True)

    pruned_maps: dict[str, dict[float, float]] = {}
    int8_maps: dict[str, float] = {}
    depth_maps: dict[str, float] = {}
    point = workdir / "point.onnx"
    for unit in chosen:
        unit_start = time.perf_counter()
        if unit in prunable and ratios:
            pruned_maps[unit] = {}
            for ratio in ratios:
                pruned = apply_pruning(det, {unit: ratio}, imgsz=imgsz, importance=importance, round_to=round_to)
                export_onnx(pruned.model, point, imgsz=imgsz, names=names)  # what build_artifact writes for all-FP32
                pruned_maps[unit][ratio] = measure(point)
        if int8 and unit in graph_units:
            build_artifact(
                det,
                {unit: "int8"},
                point,
                imgsz=imgsz,
                names=names,
                calibration_images=calibration_images,
                recipe=recipe,
            )
            int8_maps[unit] = measure(point)
        if unit in shallow:
            without = apply_pruning(det, {}, imgsz=imgsz, depth={unit: shallow[unit]})
            export_onnx(without.model, point, imgsz=imgsz, names=names)
            depth_maps[unit] = measure(point)
        if progress:
            cells = [f"prune {r:g}: {m:.4f} ({m - base_map:+.4f})" for r, m in pruned_maps.get(unit, {}).items()]
            if unit in int8_maps:
                cells.append(f"int8: {int8_maps[unit]:.4f} ({int8_maps[unit] - base_map:+.4f})")
            if unit in depth_maps:
                cells.append(f"no inner blocks: {depth_maps[unit]:.4f} ({depth_maps[unit] - base_map:+.4f})")
            print(f"  {unit:<10} {' | '.join(cells)}  [{time.perf_counter() - unit_start:.1f} s]", flush=True)
    settings = SensitivitySettings(
        imgsz=int(imgsz),
        ratios=ratios,
        int8=bool(int8),
        max_images=max_images,
        split=SPLIT,
        calibration_images=len(calibration_images) if int8 else 0,
        recipe=recipe,
        importance=importance,
        round_to=round_to,
        runtime=runtime,
        data=str(Path(data_yaml).resolve()),
    )
    return Sensitivity(
        base_map, pruned_maps, int8_maps, settings, model_fingerprint(det), time.perf_counter() - start, depth_maps
    )


def _remove_artifact(path: Path) -> None:
    path.unlink(missing_ok=True)
    ov_dir = path.with_name(f"{path.stem}_openvino_model")  # measure_accuracy(runtime="openvino") converts beside it
    if ov_dir.is_dir():
        shutil.rmtree(ov_dir)
