"""Sensitivity: how much mAP each unit loses when it alone is pruned, alone is INT8, or alone loses its inner
blocks — the data.

Per unit (a `model.<i>` block, see `spaces.pruning`): the validation mAP50-95 of the model
with only that unit pruned at a few ratios, and with only that unit in INT8 (everything
else FP32), without any fine-tuning, against the unpruned FP32 artifact's mAP. The
analysis that measures it runs evaluations, so it lives in `search.sensitivity`; this
module holds the result and what the search space derives from it.

A result is stored with the model it describes (`sensitivity_path(checkpoint)`) and
carries the model's fingerprint (a hash of its weights), so a stale file is detected.
The search uses it through `ratio_ranges_from`, which narrows each unit's pruning range, and
`depth_units_within`, which keeps the blocks whose inner blocks can go.

With few images the mAP is noisy (a drop of 0.005 on 64 images is within noise), so
thresholds much below that mean little.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from evaluators.vocabulary import Int8Recipe, UserError
from spaces.onnx_export import detection_model
from spaces.pruning import MAX_RATIO, RATIO_RANGE, REFERENCE_RATIOS

DEFAULT_RATIOS = REFERENCE_RATIOS
"""Ratios measured per unit unless asked otherwise: those the reference policies prune at."""
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
    def from_dict(cls, data: Mapping) -> SensitivitySettings:
        return cls(
            **{**data, "ratios": tuple(float(r) for r in data["ratios"]), "recipe": Int8Recipe(**data["recipe"])}
        )


@dataclass(frozen=True)
class Sensitivity:
    """Per-unit mAP50-95 (in [0, 1]) with one unit compressed at a time, no fine-tuning.

    base_map: the unpruned FP32 artifact's mAP50-95, the reference.
    pruning: unit -> {ratio: mAP50-95 with only that unit pruned at that ratio}.
    int8: unit -> mAP50-95 with only that unit INT8 (empty when not measured).
    fingerprint: `model_fingerprint` of the model measured. seconds: wall time of the analysis.
    depth: depth unit -> mAP50-95 with only that unit's inner blocks removed, all of them (`spaces.depth`; empty
    when not measured: a record from before depth was measured).
    """

    base_map: float
    pruning: Mapping[str, Mapping[float, float]]
    int8: Mapping[str, float]
    settings: SensitivitySettings
    fingerprint: str
    seconds: float = 0.0
    depth: Mapping[str, float] = field(default_factory=dict)

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
            "depth": dict(self.depth),
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> Sensitivity:
        try:
            return cls(
                base_map=float(data["base_map"]),
                pruning={u: {float(r): float(m) for r, m in maps.items()} for u, maps in data["pruning"].items()},
                int8={u: float(m) for u, m in data["int8"].items()},
                settings=SensitivitySettings.from_dict(data["settings"]),
                fingerprint=str(data["fingerprint"]),
                seconds=float(data.get("seconds", 0.0)),
                depth={u: float(m) for u, m in data.get("depth", {}).items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UserError(
                f"a sensitivity record must hold base_map, pruning, int8, settings and fingerprint ({exc})."
            ) from None

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path, model=None) -> Sensitivity:
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
        """A plain-text table: unit, mAP drop per ratio, INT8 drop, drop without the inner blocks."""
        units = list(dict.fromkeys([*self.pruning, *self.int8, *self.depth]))
        ratios = self.settings.ratios
        head = (
            f"{'unit':<10}"
            + "".join(f"{'prune ' + format(r, 'g'):>12}" for r in ratios)
            + (f"{'int8':>10}" if self.int8 else "")
            + (f"{'no inner':>10}" if self.depth else "")
        )
        rows = [f"base mAP50-95 {self.base_map:.4f}; drops below (base - measured)", head]
        for unit in units:
            cells = "".join(
                f"{self.drop(unit, r):>12.4f}" if r in self.pruning.get(unit, {}) else f"{'-':>12}" for r in ratios
            )
            if self.int8:
                cells += f"{self.int8_drop(unit):>10.4f}" if unit in self.int8 else f"{'-':>10}"
            if self.depth:
                cells += f"{self.base_map - self.depth[unit]:>10.4f}" if unit in self.depth else f"{'-':>10}"
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


def ratio_ranges_from(
    sensitivity: Sensitivity,
    max_drop: float = 0.02,
    *,
    low: float = RATIO_RANGE[0],
    high: float = RATIO_RANGE[1],
    step: float | None = RATIO_RANGE[2],
    min_high: float = MIN_HIGH,
) -> dict[str, tuple[float, float, float | None]]:
    """Per-unit pruning ranges `(low, high, step)` for `SearchSpace.ratio_ranges` (`spaces.pruning.ratio_params`).

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


def depth_units_within(sensitivity: Sensitivity, units: Mapping[str, int], max_drop: float = 0.02) -> dict[str, int]:
    """The depth units of `units` (unit -> inner blocks, `spaces.depth.depth_units`) a search may make shallower:
    those whose untuned mAP50-95 drop without their inner blocks (`Sensitivity.depth`) stays <= `max_drop`, and
    those never measured (nothing argues against them), as `ratio_ranges_from` keeps an unmeasured unit's range."""
    if max_drop < 0:
        raise UserError(f"max_drop must be >= 0 (a mAP50-95 drop in [0, 1]), got {max_drop}.")
    return {
        unit: count
        for unit, count in units.items()
        if unit not in sensitivity.depth or sensitivity.base_map - sensitivity.depth[unit] <= max_drop + _TOLERANCE
    }
