"""Policy: one point of the search space — what to prune, at which precision, how to recover.

A policy is frozen and canonical: ratios are rounded to 4 decimals, ratios of 0 are dropped
(an unnamed unit is not pruned), maps are sorted, and
its `policy_id` is the first 12 hex digits of the SHA-256 of its canonical JSON, so the
same policy written twice (or read back from YAML) has the same id. `validate` checks it
against a model's units and a device's precisions and raises one clear `UserError`.
"""

from __future__ import annotations

import hashlib
import json
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from evaluators.vocabulary import PRECISIONS, Int8Recipe, UserError
from spaces.activation import check_activation
from spaces.depth import check_depth
from spaces.distillation import DistillationSettings
from spaces.pruning import MAX_RATIO


@dataclass(frozen=True)
class Policy:
    """pruning: unit -> ratio in [0, MAX_RATIO) (fraction of output channels removed; unnamed units 0).
    precision: unit -> "int8" | "fp16" | "fp32" (unnamed units: fp32).
    distillation: the recovery fine-tune.
    recipe: the INT8 recipe, or None for the device's own.
    activation: the activation the convolutions run with instead of their SiLU (`spaces.activation`), or None
    for the model's own. Only a named activation is part of the policy's dict, so the ids of policies that keep
    the model's activations do not depend on this field.
    depth: depth unit -> how many of its inner blocks are removed, the last ones (`spaces.depth`; unnamed units:
    none; 0s are dropped). Like the activation, only a non-empty depth is part of the policy's dict.
    """

    pruning: Mapping[str, float] = field(default_factory=dict)
    precision: Mapping[str, str] = field(default_factory=dict)
    distillation: DistillationSettings = field(default_factory=DistillationSettings)
    recipe: Int8Recipe | None = None
    activation: str | None = None
    depth: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.activation is not None:
            check_activation(self.activation)
        for unit, ratio in self.pruning.items():
            if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real):
                raise UserError(f"pruning ratio {ratio!r} for unit {unit!r} is not a number.")
            if not 0.0 <= float(ratio) < MAX_RATIO:
                raise UserError(f"pruning ratio {ratio} for unit {unit!r} is outside [0, {MAX_RATIO}).")
        for unit, precision in self.precision.items():
            if precision not in PRECISIONS:
                raise UserError(f"precision {precision!r} for unit {unit!r} is not one of {', '.join(PRECISIONS)}.")
        for unit, removed in self.depth.items():
            if isinstance(removed, bool) or not isinstance(removed, numbers.Integral) or removed < 0:
                raise UserError(f"inner blocks removed {removed!r} for unit {unit!r} is not a count (0, 1, ...).")
        object.__setattr__(self, "depth", {k: int(v) for k, v in sorted(self.depth.items()) if v})
        # A ratio of 0 means the same as not naming the unit; dropping it keeps one id per policy.
        ratios = {k: round(float(v), 4) for k, v in sorted(self.pruning.items())}
        object.__setattr__(self, "pruning", {k: v for k, v in ratios.items() if v > 0.0})
        object.__setattr__(self, "precision", dict(sorted(self.precision.items())))

    def to_dict(self) -> dict:
        return {
            "pruning": dict(self.pruning),
            "precision": dict(self.precision),
            "distillation": self.distillation.to_dict(),
            "recipe": self.recipe.to_dict() if self.recipe else None,
            **({"activation": self.activation} if self.activation else {}),
            **({"depth": dict(self.depth)} if self.depth else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> Policy:
        try:
            recipe = data.get("recipe")
            return cls(
                pruning=dict(data.get("pruning") or {}),
                precision=dict(data.get("precision") or {}),
                distillation=DistillationSettings(**(data.get("distillation") or {})),
                recipe=Int8Recipe.from_dict(recipe) if recipe else None,
                activation=data.get("activation"),
                depth=dict(data.get("depth") or {}),
            )
        except (TypeError, AttributeError) as exc:
            raise UserError(
                f"a policy must be a mapping of pruning, precision, distillation, recipe, activation and depth ({exc})."
            ) from None

    @property
    def policy_id(self) -> str:
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    def to_yaml(self, path: Path) -> None:
        Path(path).write_text(yaml.safe_dump({"policy_id": self.policy_id, **self.to_dict()}, sort_keys=False))

    @classmethod
    def from_yaml(cls, path: Path) -> Policy:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"policy file {path} does not exist.")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError:
            raise UserError(f"policy file {path} is not valid YAML.") from None
        if not isinstance(data, dict):
            raise UserError(f"policy file {path} must hold a mapping of pruning, precision, distillation and recipe.")
        data.pop("policy_id", None)
        return cls.from_dict(data)

    def validate(
        self,
        pruning_units: Iterable[str],
        precision_units: Iterable[str],
        offered: Iterable[str],
        activations: Iterable[str] = (),
        depth_units: Mapping[str, int] | None = None,
    ) -> None:
        """Raise `UserError` if the policy names a unit the model lacks, a precision the device can't run, an
        activation the study does not offer (`activations`: those it converted its baseline to), or more inner
        blocks than a unit has (`depth_units`: `spaces.depth.depth_units` of the model)."""
        check_depth(self.depth, depth_units or {})
        if self.activation is not None and self.activation not in set(activations):
            raise UserError(
                f"the policy runs the model with {self.activation}, which the study does not offer "
                f"(set `activations: [{self.activation}]` in its config)."
            )
        if unknown := sorted(set(self.pruning) - set(pruning_units)):
            raise UserError(f"the policy prunes unit {unknown[0]!r}, which the model does not have.")
        if unknown := sorted(set(self.precision) - set(precision_units)):
            raise UserError(f"the policy sets the precision of unit {unknown[0]!r}, which the model does not have.")
        offered = set(offered)
        if bad := sorted({p for p in self.precision.values() if p not in offered}):
            raise UserError(
                f"the policy asks for {bad[0]}, which the device does not run (it offers {', '.join(sorted(offered))})."
            )
