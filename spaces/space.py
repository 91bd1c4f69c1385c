"""The search space over one model for one device, as an Optuna define-by-run function.

`SearchSpace.sample(trial)` asks the trial for a ratio per pruning unit (`prune.<unit>`),
a precision per precision unit among those the device offers (`precision.<unit>`) and
the distillation settings (`distill.*`), and returns a `Policy`. Sampling does no heavy
work: the units are computed once, when the space is built from the model.

`reference_policies()` are the named points every study evaluates first (what users do by
hand): the model at FP32 and at each offered precision everywhere, and uniform pruning at
0.25 / 0.5 / 0.75 with the fastest offered precision. `to_params(policy)` turns any policy
back into the trial parameters that would sample it, so it can be enqueued.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from evaluators.vocabulary import UserError
from spaces.distillation import DistillationSettings, suggest_distillation
from spaces.policy import Policy
from spaces.precision import suggest_precisions, uniform_precisions
from spaces.pruning import PruningUnit, suggest_ratios, uniform_ratios

# Fastest first: a reference point uses the first precision the device offers in this order.
_SPEED_ORDER = ("int8", "fp16", "fp32")
REFERENCE_RATIOS = (0.25, 0.5, 0.75)


@dataclass(frozen=True)
class SearchSpace:
    """What can be searched for a model on a device.

    pruning_units: from `spaces.pruning.pruning_units(model)`.
    precision_units: unit names of the exported graph (`spaces.onnx_export.precision_units`).
    offered: precisions the device runs ("int8", "fp16", "fp32").
    ratio_range: (low, high, step) of every unit's pruning ratio; `ratio_ranges` narrows named units.
    max_epochs: the largest fine-tune a trial may ask for (>= 0; 0 = no fine-tune).
    teachers: distillation teachers to choose among (None = the study's baseline).
    """

    pruning_units: tuple[PruningUnit, ...]
    precision_units: tuple[str, ...]
    offered: tuple[str, ...]
    ratio_range: tuple[float, float, float] = (0.0, 0.75, 0.05)
    ratio_ranges: Mapping[str, tuple] = field(default_factory=dict)
    max_epochs: int = 3
    teachers: tuple[str | None, ...] = (None,)

    def __post_init__(self) -> None:
        if not self.offered:
            raise UserError("the device offers no precision to search over.")

    def sample(self, trial) -> Policy:
        """Define-by-run: the policy this Optuna trial asks for."""
        low, high, step = self.ratio_range
        ratios = suggest_ratios(trial, self.pruning_units, low, high, step, self.ratio_ranges)
        precisions = suggest_precisions(trial, self.precision_units, self.offered)
        if self.max_epochs > 0:
            distillation = suggest_distillation(trial, max_epochs=self.max_epochs, teachers=self.teachers)
        else:
            distillation = DistillationSettings(enabled=False, epochs=0)
        return Policy(pruning=ratios, precision=precisions, distillation=distillation)

    def to_params(self, policy: Policy) -> dict:
        """The Optuna parameters under which `sample` returns `policy` (for `enqueue_trial`)."""
        params = {f"prune.{u.name}": policy.pruning.get(u.name, 0.0) for u in self.pruning_units}
        if len(self.offered) > 1:
            params.update({f"precision.{u}": policy.precision.get(u, "fp32") for u in self.precision_units})
        if self.max_epochs > 0:
            d = policy.distillation
            params["distill.epochs"] = d.epochs
            if d.epochs > 0:
                params["distill.enabled"] = d.enabled
                if d.enabled:
                    params["distill.weight"] = d.weight
                    if len(self.teachers) > 1:
                        params["distill.teacher"] = d.teacher
                params["distill.lr0"] = d.lr0
        return params

    def fastest_precision(self) -> str:
        return next(p for p in _SPEED_ORDER if p in self.offered)

    def reference_policies(self) -> dict[str, Policy]:
        """Named uniform policies: what a user would try by hand."""
        distill = (
            DistillationSettings(epochs=self.max_epochs)
            if self.max_epochs
            else DistillationSettings(enabled=False, epochs=0)
        )
        none = DistillationSettings(enabled=False, epochs=0)
        units = self.precision_units
        refs = {"fp32": Policy(precision=uniform_precisions(units, "fp32"), distillation=none)}
        for precision in ("int8", "fp16"):
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
        return refs

    def unit_names(self) -> tuple[Sequence[str], Sequence[str]]:
        return tuple(u.name for u in self.pruning_units), self.precision_units
