"""Sensitivity analysis: how much mAP each unit loses when it alone is pruned, or alone is INT8.

This is the first thing a practitioner measures before pruning: per unit (a `model.<i>`
block, see `spaces.pruning`), the validation mAP50-95 of the model with only that unit
pruned at a few ratios, and with only that unit in INT8 (everything else FP32), without
any fine-tuning. Every point is a real deployable artifact: `apply_pruning` (or the INT8
map) -> ONNX (`spaces.precision.build_artifact` semantics) -> `measure_accuracy` on the
same fixed subset of the validation split (the first `max_images` images, a fidelity
knob). The reference is the unpruned FP32 artifact's mAP, exported and measured once.

A result is stored with the model it describes (`sensitivity_path(checkpoint)`) and
carries the model's fingerprint (a hash of its weights), so a stale file is detected.
The search uses it in two ways: `ratio_ranges_from` narrows each unit's pruning range, and
`int8_sensitive_units` names the units that should stay in float.

Cost: one apply_pruning + export + validation per (unit, ratio), one INT8 build +
validation per unit; about 5 s per point for YOLO11n at 192 px on 64 images, 1 CPU thread.
With few images the mAP is noisy (a drop of 0.005 on 64 images is within noise), so
thresholds much below that mean little.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from evaluators.accuracy import measure_accuracy
from evaluators.exceptions import UserError
from evaluators.offline import ensure_offline, runs_dir
from evaluators.recipe import Int8Recipe

ensure_offline()

from spaces.onnx_export import detection_model, export_onnx, precision_units  # noqa: E402
from spaces.precision import build_artifact  # noqa: E402
from spaces.pruning import MAX_RATIO, apply_pruning, pruning_units  # noqa: E402

DEFAULT_RATIOS = (0.25, 0.5, 0.75)
MIN_HIGH = 0.1
"""`ratio_ranges_from` never narrows a unit's upper ratio below this: every unit stays searchable."""
_TOLERANCE = 1e-9  # a drop of exactly max_drop passes, whatever the float subtraction rounds to


@dataclass(frozen=True)
class SensitivitySettings:
    """How a `Sensitivity` was measured (all of it bears on the numbers).

    imgsz: square input side in px. ratios: pruning ratios measured, each in (0, MAX_RATIO).
    int8: whether per-unit INT8 was measured. max_images: validation images (the first N of
    `split`, by name; None = all). calibration_images: how many images calibrated INT8.
    recipe: the INT8 recipe. importance / round_to: as in `apply_pruning`.
    runtime: what ran the artifacts ("onnxruntime" or "openvino").
    """

    imgsz: int
    ratios: tuple[float, ...]
    int8: bool
    max_images: int | None
    split: str
    calibration_images: int
    recipe: Int8Recipe
    importance: str
    round_to: int | None
    runtime: str
    data: str

    def to_dict(self) -> dict:
        return {**asdict(self), "ratios": list(self.ratios), "recipe": self.recipe.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping) -> "SensitivitySettings":
        return cls(**{**data, "ratios": tuple(float(r) for r in data["ratios"]), "recipe": Int8Recipe(**data["recipe"])})


@dataclass(frozen=True)
class Sensitivity:
    """Per-unit mAP50-95 (in [0, 1]) with one unit compressed at a time, no fine-tuning.

    base_map: the unpruned FP32 artifact's mAP50-95, the reference.
    pruning: unit -> {ratio: mAP50-95 with only that unit pruned at that ratio}.
    int8: unit -> mAP50-95 with only that unit INT8 (empty when not measured).
    fingerprint: `model_fingerprint` of the model measured. seconds: wall time of the analysis.
    """

    base_map: float
    pruning: Mapping[str, Mapping[float, float]]
    int8: Mapping[str, float]
    settings: SensitivitySettings
    fingerprint: str
    seconds: float = 0.0

    def drop(self, unit: str, ratio: float) -> float:
        """mAP50-95 lost (base - pruned; negative when pruning happened to help)."""
        return self.base_map - self.pruning[unit][ratio]

    def int8_drop(self, unit: str) -> float:
        return self.base_map - self.int8[unit]

    def to_dict(self) -> dict:
        return {
            "base_map": self.base_map,
            # JSON keys are strings; repr of a float reads back to the same float.
            "pruning": {unit: {repr(r): m for r, m in maps.items()} for unit, maps in self.pruning.items()},
            "int8": dict(self.int8),
            "settings": self.settings.to_dict(),
            "fingerprint": self.fingerprint,
            "seconds": self.seconds,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> "Sensitivity":
        try:
            return cls(
                base_map=float(data["base_map"]),
                pruning={u: {float(r): float(m) for r, m in maps.items()} for u, maps in data["pruning"].items()},
                int8={u: float(m) for u, m in data["int8"].items()},
                settings=SensitivitySettings.from_dict(data["settings"]),
                fingerprint=str(data["fingerprint"]),
                seconds=float(data.get("seconds", 0.0)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UserError(f"a sensitivity record must hold base_map, pruning, int8, settings and fingerprint ({exc}).") from None

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path, model=None) -> "Sensitivity":
        """Read a saved analysis; with `model`, raise UserError unless it was measured on that model."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"sensitivity file {path} does not exist.")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise UserError(f"sensitivity file {path} is not valid JSON.") from None
        result = cls.from_dict(data)
        if model is not None and result.fingerprint != model_fingerprint(model):
            raise UserError(f"sensitivity file {path} was measured on other weights than this model; analyze it again.")
        return result

    def table(self) -> str:
        """A plain-text table: unit, mAP drop per ratio, INT8 drop."""
        units = list(dict.fromkeys([*self.pruning, *self.int8]))
        ratios = self.settings.ratios
        head = f"{'unit':<10}" + "".join(f"{'prune ' + format(r, 'g'):>12}" for r in ratios) + (f"{'int8':>10}" if self.int8 else "")
        rows = [f"base mAP50-95 {self.base_map:.4f}; drops below (base - measured)", head]
        for unit in units:
            cells = "".join(f"{self.drop(unit, r):>12.4f}" if r in self.pruning.get(unit, {}) else f"{'-':>12}" for r in ratios)
            if self.int8:
                cells += f"{self.int8_drop(unit):>10.4f}" if unit in self.int8 else f"{'-':>10}"
            rows.append(f"{unit:<10}{cells}")
        return "\n".join(rows)


def sensitivity_path(checkpoint: str | Path) -> Path:
    """Where the analysis of `checkpoint` is stored: beside it, `<name>.sensitivity.json`."""
    return Path(checkpoint).with_suffix(".sensitivity.json")


def model_fingerprint(model) -> str:
    """16 hex digits of SHA-256 over the model's state (names, shapes, FP32 values).

    FP32 values, so a checkpoint stored in FP16 and the same one cast to FP32 agree.
    """
    digest = hashlib.sha256()
    for name, tensor in detection_model(model).state_dict().items():
        digest.update(f"{name}{tuple(tensor.shape)};".encode())
        values = tensor.detach().cpu()
        digest.update((values.float() if values.is_floating_point() else values).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


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
    split: str = "val",
    units: Iterable[str] | None = None,
    importance: str = "magnitude",
    round_to: int | None = 8,
    runtime: str = "onnxruntime",
    workdir: str | Path | None = None,
    progress: bool = True,
) -> Sensitivity:
    """Measure the mAP50-95 of `model` with one unit pruned (at each ratio) or INT8 at a time.

    model: a DetectionModel or YOLO (not modified). units: a subset of unit names (default:
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
        result = measure_accuracy(path, data_yaml, split=split, imgsz=imgsz, runtime=runtime, max_images=max_images, workdir=workdir)
        if not keep:
            _remove_artifact(path)
        return result.map50_95

    prunable = [u.name for u in pruning_units(det)]
    base_path = export_onnx(det, workdir / "base.onnx", imgsz=imgsz, names=names)
    graph_units = set(precision_units(base_path))
    chosen = list(prunable) if units is None else list(dict.fromkeys(units))
    unknown = [u for u in chosen if u not in prunable and u not in graph_units]
    if unknown:
        raise UserError(f"unknown unit(s) {', '.join(unknown)}; this model's units are {', '.join(prunable)}.")
    base_map = measure(base_path, keep=True)
    if progress:
        print(f"sensitivity: base FP32 mAP50-95 {base_map:.4f} on {max_images or 'all'} {split} images", flush=True)

    pruned_maps: dict[str, dict[float, float]] = {}
    int8_maps: dict[str, float] = {}
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
            build_artifact(det, {unit: "int8"}, point, imgsz=imgsz, names=names, calibration_images=calibration_images, recipe=recipe)
            int8_maps[unit] = measure(point)
        if progress:
            cells = [f"prune {r:g}: {m:.4f} ({m - base_map:+.4f})" for r, m in pruned_maps.get(unit, {}).items()]
            if unit in int8_maps:
                cells.append(f"int8: {int8_maps[unit]:.4f} ({int8_maps[unit] - base_map:+.4f})")
            print(f"  {unit:<10} {' | '.join(cells)}  [{time.perf_counter() - unit_start:.1f} s]", flush=True)
    settings = SensitivitySettings(
        imgsz=int(imgsz),
        ratios=ratios,
        int8=bool(int8),
        max_images=max_images,
        split=split,
        calibration_images=len(calibration_images) if int8 else 0,
        recipe=recipe,
        importance=importance,
        round_to=round_to,
        runtime=runtime,
        data=str(Path(data_yaml).resolve()),
    )
    return Sensitivity(base_map, pruned_maps, int8_maps, settings, model_fingerprint(det), time.perf_counter() - start)


def ratio_ranges_from(
    sensitivity: Sensitivity,
    max_drop: float = 0.02,
    *,
    low: float = 0.0,
    high: float = 0.75,
    step: float | None = 0.05,
    min_high: float = MIN_HIGH,
) -> dict[str, tuple[float, float, float | None]]:
    """Per-unit pruning ranges `(low, high, step)` for `SearchSpace.ratio_ranges` / `suggest_ratios`.

    The rule, per measured unit: walk its measured ratios upwards while the mAP50-95 drop
    (base - measured, no fine-tuning) stays <= `max_drop`; stop at the first that exceeds it
    (a later ratio that happens to pass does not count: noise is not evidence).
    - every measured ratio passed: the unit keeps the full `high` (nothing argues against it);
    - otherwise its upper ratio is the largest passing ratio (0 if none), raised to
      `min_high` so that every unit stays searchable, and capped at `high`.
    The upper ratio is then rounded down onto the grid `low + k * step` (never below `low`).
    Fine-tuning recovers part of a drop, so `max_drop` is a bound on the *untuned* loss.
    """
    if max_drop < 0:
        raise UserError(f"max_drop must be >= 0 (a mAP50-95 drop in [0, 1]), got {max_drop}.")
    if not 0.0 <= low <= high < MAX_RATIO or not 0.0 < min_high < MAX_RATIO:
        raise UserError(f"ratio range ({low}, {high}) and min_high {min_high} must lie in [0, {MAX_RATIO}).")
    if step is not None and step <= 0:
        raise UserError(f"step must be positive or None, got {step}.")
    ranges = {}
    for unit, maps in sensitivity.pruning.items():
        passing = 0.0
        all_pass = True
        for ratio in sorted(maps):
            if sensitivity.base_map - maps[ratio] > max_drop + _TOLERANCE:
                all_pass = False
                break
            passing = ratio
        unit_high = high if all_pass else min(high, max(passing, min_high))
        if step is not None:
            unit_high = low + step * math.floor((unit_high - low) / step + 1e-9)
        ranges[unit] = (low, round(max(low, unit_high), 4), step)
    return ranges


def int8_sensitive_units(sensitivity: Sensitivity, max_drop: float = 0.02) -> list[str]:
    """Units whose INT8 alone costs more than `max_drop` mAP50-95: keep them in float. In model order."""
    if max_drop < 0:
        raise UserError(f"max_drop must be >= 0 (a mAP50-95 drop in [0, 1]), got {max_drop}.")
    return [unit for unit in sensitivity.int8 if sensitivity.int8_drop(unit) > max_drop + _TOLERANCE]


def _remove_artifact(path: Path) -> None:
    path.unlink(missing_ok=True)
    ov_dir = path.with_name(f"{path.stem}_openvino_model")  # measure_accuracy(runtime="openvino") converts beside it
    if ov_dir.is_dir():
        shutil.rmtree(ov_dir)
