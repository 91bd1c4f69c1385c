"""The search space over one model for one device, as an Optuna define-by-run function.

Every knob declares its own search parameters next to the code that acts on them
(`spaces.pruning.ratio_params`, `spaces.precision.precision_params`,
`spaces.distillation.distillation_params`, see `spaces.params`); the space lines them up in
the order a trial asks for them: a ratio per pruning unit (`prune.<unit>`, in unit order), a
precision per precision unit among those the device offers (`precision.<unit>`), then the
fine-tune (`distill.epochs`, `distill.enabled`, `distill.weight`, `distill.teacher`,
`distill.lr0`). Sampling, its inverse and the distributions all derive from those
declarations, so they cannot disagree:

- `sample(trial)` asks the trial and returns a `Policy` (no heavy work: the units are
  computed once, when the space is built from the model);
- `to_params(policy)` is its exact inverse, the parameters under which `sample` returns
  `policy` (for `enqueue_trial` or `FixedTrial`);
- `replay(policy)` adds the distributions they are recorded with (for `create_trial`).

Where the model has blocks with inner blocks (`depth_units`, `spaces.depth`), an int per such block
(`depth.<unit>`, after the precisions) says how many of them a policy removes.

`reference_policies()` are the named points every study evaluates first (what users do by
hand): the model at FP32 and at each offered precision everywhere, and uniform pruning at
REFERENCE_RATIOS with the fastest offered precision.

A structured space (`segments` given, see `spaces.segments`) asks one ratio
(`prune.<segment>`) and one precision (`precision.<segment>`, over the segments'
`precision_segments`: the block reading the image on its own) per segment instead of per
unit, and one depth (`depth.<segment>`) per segment holding a depth unit; every unit of a segment takes its
values (a depth capped at the unit's inner blocks), so a policy is uniform inside each segment.
The policy is still per unit, and the uniform references are in both spaces.

A study that offers activations (`spaces.activation`) adds `model.activation`, asked first:
the model's own activations or one the study converted its baseline to; each offered
activation adds a reference, the unpruned model with it at the fastest precision
(`<activation>-<precision>`, e.g. `relu-int8`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from optuna.distributions import BaseDistribution

from evaluators.vocabulary import PRECISIONS, UserError
from spaces.activation import KEEP, SWAPPED_FINETUNE_LR0, activation_params
from spaces.depth import depth_params, segment_depth_params
from spaces.distillation import DistillationSettings, distillation_params
from spaces.params import Params
from spaces.policy import Policy
from spaces.precision import precision_params, uniform_precisions
from spaces.pruning import RATIO_RANGE, REFERENCE_RATIOS, PruningUnit, ratio_params, uniform_ratios
from spaces.segments import Segment, members, precision_segments, segment_precision_params, segment_ratio_params

# Fastest first (PRECISIONS' order: int8, bf16, fp16, fp32): a reference point uses the first
# precision the device offers, unless the space names the device's own (`fastest`).
_SPEED_ORDER = PRECISIONS


@dataclass(frozen=True)
class SearchSpace:
    """What can be searched for a model on a device.

    pruning_units: from `spaces.pruning.pruning_units(model)`.
    precision_units: unit names of the exported graph (`spaces.onnx_export.precision_units`).
    offered: precisions the device runs ("int8", "bf16", "fp16", "fp32").
    ratio_range: (low, high, step) of every unit's pruning ratio; `ratio_ranges` narrows named units.
    max_epochs: the largest fine-tune a trial may ask for (>= 0; 0 = no fine-tune).
    teachers: distillation teachers to choose among (None = the study's baseline).
    segments: search one ratio per segment (`spaces.segments.graph_segments`) and one precision per segment of
        their `precision_segments`; empty: per unit.
    fastest: the device's fastest uniform precision (`Device.fastest_precision`), the precision of
        the pruned reference policies; "" (or one not offered): the first offered of int8, bf16, fp16, fp32.
    activations: activations a policy may swap the model's SiLUs for (`spaces.activation`); the study has
        converted its baseline to each. Empty: every policy keeps the model's own.
    depth_units: depth unit -> its inner blocks (`spaces.depth.depth_units`): the blocks a policy may make
        shallower. Empty: no policy removes any.

    Raises UserError on construction when fp32 is not offered, or when a declaration
    rejects its range (a ratio range outside [0, MAX_RATIO), an unknown unit, an unknown precision).
    """

    pruning_units: tuple[PruningUnit, ...]
    precision_units: tuple[str, ...]
    offered: tuple[str, ...]
    ratio_range: tuple[float, float, float | None] = RATIO_RANGE
    ratio_ranges: Mapping[str, tuple] = field(default_factory=dict)
    max_epochs: int = 3
    teachers: tuple[str | None, ...] = (None,)
    segments: tuple[Segment, ...] = ()
    fastest: str = ""
    activations: tuple[str, ...] = ()
    depth_units: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.offered:
            raise UserError("the device offers no precision to search over.")
        if "fp32" not in self.offered:  # the FP32 reference, and transfer's fallback precision
            raise UserError(f"the device offers {', '.join(self.offered)} but not fp32, which every study starts from.")
        self.parameters()

    def parameters(self) -> Params:
        """Every search parameter, as its knob declares it, in the order a trial asks for them."""
        if self.segments:
            units = [u.name for u in self.pruning_units]
            knobs = (
                *segment_ratio_params(self.segments, units, self.ratio_range, self.ratio_ranges),
                *segment_precision_params(precision_segments(self.segments), self.precision_units, self.offered),
                *segment_depth_params(members(self.segments, list(self.depth_units)), self.depth_units),
            )
        else:
            knobs = (
                *ratio_params(self.pruning_units, self.ratio_range, self.ratio_ranges),
                *precision_params(self.precision_units, self.offered),
                *depth_params(self.depth_units),
            )
        return Params(
            (*activation_params(self.activations), *knobs, *distillation_params(self.max_epochs, self.teachers))
        )

    def dimensions(self) -> dict[str, int]:
        """How many parameters the space searches, per knob ("prune", "precision", "distill", "depth" where the
        model has depth units, and "model" where activations are offered) and in all ("total")."""
        counts = {"prune": 0, "precision": 0, "distill": 0}
        for param in self.parameters():
            knob = param.name.split(".", 1)[0]
            counts[knob] = counts.get(knob, 0) + 1
        return {**counts, "total": sum(counts.values())}

    def sample(self, trial) -> Policy:
        """Define-by-run: the policy this Optuna trial (or `FixedTrial`) asks for."""
        return _policy(self._per_unit(self.parameters().sample(trial)))

    def to_params(self, policy: Policy) -> dict[str, Any]:
        """The Optuna parameters under which `sample` returns `policy` (for `enqueue_trial`), in asking order."""
        params = self.parameters()
        return params.asked(_values(params, policy, self._held()))

    def replay(self, policy: Policy) -> tuple[dict[str, Any], dict[str, BaseDistribution]]:
        """(params, distributions) of a trial that sampled `policy`, for `optuna.trial.create_trial`.

        The distributions are those `sample` records, except that a numeric range is widened
        to contain its value (a reference policy may sit outside a range that sensitivity
        narrowed). Raises RuntimeError if the space cannot sample `policy` (its recipe aside).
        """
        params = self.parameters()
        values = _values(params, policy, self._held())
        if replace(_policy(self._per_unit(params.settle(values))), recipe=policy.recipe).policy_id != policy.policy_id:
            raise RuntimeError(f"the space does not sample policy {policy.policy_id} back from its parameters")
        try:
            return params.asked(values), params.distributions(values)
        except ValueError as exc:
            raise RuntimeError(f"policy {policy.policy_id} lies outside the space: {exc}") from None

    def _held(self) -> dict[str, tuple[str, ...]]:
        """Parameter name -> the policy keys it sets (`<knob>.<unit>`): its own name, except in a structured space."""
        if not self.segments:
            return {}
        held = {}
        by_knob = (
            ("prune", self.segments, [u.name for u in self.pruning_units]),
            ("precision", precision_segments(self.segments), self.precision_units),
            ("depth", self.segments, list(self.depth_units)),
        )
        for knob, segments, units in by_knob:
            for name, unit_names in members(segments, units).items():
                held[f"{knob}.{name}"] = tuple(f"{knob}.{unit}" for unit in unit_names)
        return held

    def _per_unit(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """`values` of the space's parameters as per-unit values (a segment's value for each of its units, a depth
        capped at the unit's inner blocks)."""
        held = self._held()
        out: dict[str, Any] = {}
        for name, value in values.items():
            for key in held.get(name, (name,)):
                knob, unit = key.split(".", 1)
                out[key] = min(value, self.depth_units[unit]) if knob == "depth" else value
        return out

    def fastest_precision(self) -> str:
        """The precision of the pruned reference policies: `fastest` if offered, else the first offered in speed order."""
        if self.fastest in self.offered:
            return self.fastest
        return next(p for p in _SPEED_ORDER if p in self.offered)

    def pruned_finetune(self, activation: str | None = None) -> DistillationSettings:
        """The fine-tune a pruned reference (or guided start) gets: distillation for `max_epochs`, or none at 0; with a
        swapped `activation`, `max_epochs` without distillation at `SWAPPED_FINETUNE_LR0`."""
        if not self.max_epochs:
            return DistillationSettings(enabled=False, epochs=0)
        if activation is not None:
            return DistillationSettings(enabled=False, epochs=self.max_epochs, lr0=SWAPPED_FINETUNE_LR0)
        return DistillationSettings(epochs=self.max_epochs)

    def reference_policies(self) -> dict[str, Policy]:
        """Named uniform policies: what a user would try by hand."""
        distill = self.pruned_finetune()
        none = DistillationSettings(enabled=False, epochs=0)
        units = self.precision_units
        refs = {"fp32": Policy(precision=uniform_precisions(units, "fp32"), distillation=none)}
        for precision in ("int8", "bf16", "fp16"):
            if precision in self.offered:
                refs[f"all-{precision}"] = Policy(precision=uniform_precisions(units, precision), distillation=none)
        fast = self.fastest_precision()
        for ratio in REFERENCE_RATIOS:
            if ratio <= self.ratio_range[1]:
                refs[f"prune-{ratio:g}-{fast}"] = Policy(
                    pruning=uniform_ratios(self.pruning_units, ratio),
                    precision=uniform_precisions(units, fast),
                    distillation=distill,
                )
        for activation in self.activations:  # the converted model as it is, at the fastest precision
            refs[f"{activation}-{fast}"] = Policy(
                precision=uniform_precisions(units, fast), distillation=none, activation=activation
            )
        return refs


# A parameter `<knob>.<key>` sets `key` of one part of a Policy: the ratio or precision of
# unit `key`, the DistillationSettings field `key`, the inner blocks of unit `key` removed (knob "depth"), or
# (knob "model") the policy's activation.


def _values(params: Params, policy: Policy, held: Mapping[str, tuple[str, ...]]) -> dict[str, Any]:
    """Every declared parameter's value in `policy` (its default where the policy names none).

    held: parameter name -> the policy keys it sets, where that is not its own name (a segment's
    parameter reads its first unit; `replay` checks that the others agree).
    """
    parts = {
        "model": {"activation": policy.activation or KEEP},
        "prune": policy.pruning,
        "precision": policy.precision,
        "distill": policy.distillation.to_dict(),
        "depth": policy.depth,
    }
    values = {}
    for param in params:
        knob, key = held.get(param.name, (param.name,))[0].split(".", 1)
        values[param.name] = parts[knob].get(key, param.default)
    return values


def _policy(values: Mapping[str, Any]) -> Policy:
    """The policy whose parameters have `values` (one per declared parameter)."""
    parts: dict[str, dict[str, Any]] = {"model": {}, "prune": {}, "precision": {}, "distill": {}, "depth": {}}
    for name, value in values.items():
        knob, key = name.split(".", 1)
        parts[knob][key] = value
    activation = parts["model"].get("activation", KEEP)
    return Policy(
        pruning=parts["prune"],
        precision=parts["precision"],
        distillation=DistillationSettings(**parts["distill"]),
        activation=None if activation == KEEP else activation,
        depth=parts["depth"],
    )
