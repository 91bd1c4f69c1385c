"""Structured channel pruning of Ultralytics YOLO detectors: the knob and its range.

A *pruning unit* is a set of output channels that can be removed together, derived
from the model itself with torch-pruning's dependency graph. At block granularity (the
default) a unit is one layer of the Ultralytics model, `model.<i>` (a Conv, a C3k2/C2f,
SPPF, C2PSA), or one scale of the Detect head, `model.<i>.p<level>` (its intermediate convs at
that stride, see `spaces.channel_groups.head_scales`); at layer granularity a unit is
one prunable conv (its Ultralytics `Conv` path, e.g. `model.2.cv0`). Coupled layers
(residual adds, a depthwise conv tied to its producer, a neck output feeding the head)
always share one unit: the unit of the earliest conv producing those channels.

A *ratio* is the fraction of a unit's output channels removed, in [0, MAX_RATIO): every
channel group of the unit keeps `round(C * (1 - ratio))` channels, rounded to a multiple
of `round_to` (at least `round_to`, at most C). Both the producer's outputs and its
consumers' inputs shrink, so parameters and MACs fall by about 1 - (1 - p)^2 for a
uniform ratio p.

Never pruned (see `spaces.channel_groups`): the last conv of every Detect branch, the
DFL, and the Attention modules of C2PSA. The neck stays prunable because only those last
convs are held fixed.

The search range of a unit's ratio is declared here too (`ratio_params`): a float
`prune.<unit>` in RATIO_RANGE, narrowed per unit by sensitivity; the reference policies
prune every unit at REFERENCE_RATIOS. How channels are ranked within a group is a
`spaces.importance.Criterion`.

MACs are multiply-accumulates of one image at `imgsz` x `imgsz` px, as plain integers
(Ultralytics' GFLOPs are 2 x MACs / 1e9); params are plain parameter counts.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

from evaluators.vocabulary import UserError
from spaces.channel_groups import (
    ChannelGroup,
    channel_groups,
    check_granularity,
    head_scales,
    ignored_layers,
    prepare_model,
    trace_inputs,
    unit_kind,
    unit_name,
    within,
)
from spaces.depth import remove_inner_blocks
from spaces.importance import Criterion, get_criterion
from spaces.params import FloatRange, Param

MAX_RATIO = 0.9
"""Ratios must be below this: removing more than 90 % of a unit's channels leaves a
layer too thin to recover by fine-tuning, and 1.0 would delete it."""

RATIO_RANGE: tuple[float, float, float | None] = (0.0, 0.75, 0.05)
"""(low, high, step) of every unit's searched ratio; step None is continuous."""

REFERENCE_RATIOS = (0.25, 0.5, 0.75)
"""Uniform ratios a study always evaluates (what a user tries by hand), where the range reaches them."""


@dataclass(frozen=True)
class PruningUnit:
    """Output channels pruned with one shared ratio.

    name: `model.<i>` or a head scale `model.<i>.p<level>` (block granularity), or a `Conv` module path (layer
        granularity).
    channels: prunable output channels, summed over the unit's channel groups.
    kind: "backbone", "neck" or "head".
    layers: module paths (in the block-prepared model, see `spaces.yolo_blocks`) of the
        conv that produces each channel group of the unit; paths, not modules, so that a
        unit is picklable and holds for every copy of the model.
    """

    name: str
    channels: int
    kind: str
    layers: tuple[str, ...]


@dataclass(frozen=True)
class PrunedModel:
    """The result of `apply_pruning`.

    model: the pruned DetectionModel (a new object; blocks replaced by chunk-free twins).
    ratios: the ratio requested for every unit (0.0 for units not named).
    macs, base_macs: multiply-accumulates per image at `imgsz` px, after / before (int).
    params, base_params: parameter counts after / before (int).
    channels: output channels kept per unit (compare with `PruningUnit.channels`).
    """

    model: nn.Module = field(compare=False, repr=False)
    ratios: dict[str, float]
    macs: int
    params: int
    base_macs: int
    base_params: int
    channels: dict[str, int]


def pruning_units(model: nn.Module, granularity: str = "block") -> list[PruningUnit]:
    """The prunable units of `model` (a DetectionModel or `YOLO`), in model order.

    The model is not modified (a copy is analysed). The same model structure always
    gives the same units, so units computed once serve every copy of the model.
    """
    check_granularity(granularity)
    prepared = prepare_model(model)
    units = _by_unit(channel_groups(prepared), granularity, head_scales(prepared))
    return [
        PruningUnit(name, sum(g.channels for g in groups), unit_kind(prepared, name), tuple(g.layer for g in groups))
        for name, groups in units.items()
    ]


def apply_pruning(
    model: nn.Module,
    ratios: Mapping[str, float],
    *,
    imgsz: int = 640,
    importance: str | Criterion = "magnitude",
    round_to: int | None = 8,
    granularity: str = "block",
    example_batch: Mapping[str, torch.Tensor] | None = None,
    depth: Mapping[str, int] | None = None,
) -> PrunedModel:
    """Prune a copy of `model`; the input model is left untouched.

    ratios: unit name -> fraction of output channels removed, in [0, MAX_RATIO); units
        not named keep all channels. Names come from `pruning_units(model, granularity)`.
    imgsz: square input side (px) at which MACs are counted and the default gradient batch is made.
    importance: how channels are ranked inside a group, a `spaces.importance.Criterion` or
        its name: "magnitude" (L2 norm of the weights), "lamp" (layer-adaptive magnitude),
        "taylor" (|weight x gradient| of the Ultralytics detection loss), "hessian" (weight^2 x
        the loss's diagonal Hessian, empirical Fisher). A criterion that needs gradients gets them
        from `example_batch` (see `spaces.importance`; None: random images and boxes).
    round_to: kept channels are a multiple of this (None: any count).
    depth: depth unit -> inner blocks removed (`spaces.depth`), before the channels are pruned; a ratio of a
        unit inside a removed inner block (layer granularity) is ignored. MACs and params before are the model's
        with every block.

    The returned model is in the input's train/eval mode, has `model.args` set to a full
    Ultralytics config (the detection loss reads it), and saves with `torch.save(model)`.
    Raises UserError for an unknown unit, a ratio outside [0, MAX_RATIO), or a bad option.
    """
    pruning = IterativePruning(
        model,
        ratios,
        steps=1,
        imgsz=imgsz,
        importance=importance,
        round_to=round_to,
        granularity=granularity,
        example_batch=example_batch,
        depth=depth,
    )
    return pruning.step()


class IterativePruning:
    """`apply_pruning` in `steps` steps, for fine-tuning between them ("prune some, fine-tune, prune again").

    Step i removes channels until every layer keeps what a ratio of `ratio x i / steps` of its
    ORIGINAL channels keeps (torch-pruning's linear schedule), ranking channels by their
    importance in the model as it is then, so a caller that trains `model` in place between
    steps (e.g. `model.load_state_dict(tuned.state_dict())`) prunes by the trained weights.
    After the last step the channel counts, MACs and params are exactly `apply_pruning`'s
    one-shot result for the same ratios (the structure, hence the latency, of the policy);
    which channels are kept may differ. Arguments as in `apply_pruning`; steps >= 1. The `depth` is removed
    at construction, before the first step.
    """

    def __init__(
        self,
        model: nn.Module,
        ratios: Mapping[str, float],
        *,
        steps: int,
        imgsz: int = 640,
        importance: str | Criterion = "magnitude",
        round_to: int | None = 8,
        granularity: str = "block",
        example_batch: Mapping[str, torch.Tensor] | None = None,
        depth: Mapping[str, int] | None = None,
    ):
        check_granularity(granularity)
        if steps < 1:
            raise UserError(f"iterative pruning needs at least 1 step, not {steps}.")
        if round_to is not None and round_to < 1:
            raise UserError(f"round_to must be a positive channel count or None, not {round_to}.")
        self.criterion = get_criterion(importance)
        self.model = prepare_model(model)
        self.steps, self.done = steps, 0
        self.imgsz, self.example_batch = imgsz, example_batch
        self._image = torch.zeros(1, 3, imgsz, imgsz, device=next(self.model.parameters()).device)
        with traceable(self.model):
            self._base_macs, self._base_params = tp.utils.count_ops_and_params(self.model, self._image)
        if depth:
            gone = remove_inner_blocks(self.model, depth)
            ratios = {unit: r for unit, r in ratios.items() if not within(unit, gone)}
        with traceable(self.model):
            self._build(ratios, round_to, granularity)

    def _build(self, ratios: Mapping[str, float], round_to: int | None, granularity: str) -> None:
        groups = channel_groups(self.model)
        self._by_unit = _by_unit(groups, granularity, head_scales(self.model))
        self.ratios = _checked_ratios(ratios, list(self._by_unit))
        self._producers = {group.layer: group.members[0] for group in groups}

        ratio_dict: dict[nn.Module, float] = {}
        for unit, unit_groups in self._by_unit.items():
            for group in unit_groups:
                kept = kept_channels(group.channels, self.ratios[unit], round_to)
                if kept < group.channels:
                    # torch-pruning keeps int(C * (1 - r)) channels: +0.5 makes that exactly `kept`.
                    ratio_dict.update(dict.fromkeys(group.members, 1.0 - (kept + 0.5) / group.channels))
        self._pruner = None
        if ratio_dict:
            self._pruner = tp.pruner.BasePruner(
                self.model,
                trace_inputs(self.model),
                importance=self.criterion.make(),
                iterative_steps=self.steps,
                pruning_ratio=0.0,
                pruning_ratio_dict=ratio_dict,
                ignored_layers=ignored_layers(self.model),
                round_to=None,  # done above, to the nearest multiple rather than always down
            )

    def step(self) -> PrunedModel:
        """Prune `model` in place to the next step; its state after it (`model` is the same object every step)."""
        if self.done >= self.steps:
            raise RuntimeError(f"all {self.steps} pruning steps are done")
        self.done += 1
        model = self.model
        with traceable(model):
            if self._pruner is not None:
                self.criterion.fill_gradients(model, self.example_batch, self.imgsz)
                self._pruner.step()
            macs, params = tp.utils.count_ops_and_params(model, self._image)
        channels = {
            unit: sum(self._producers[g.layer].out_channels for g in unit_groups)
            for unit, unit_groups in self._by_unit.items()
        }
        return PrunedModel(
            model, self.ratios, int(macs), int(params), int(self._base_macs), int(self._base_params), channels
        )


@contextlib.contextmanager
def traceable(model: nn.Module):
    """The model in eval mode (tracing must not move BN statistics) with every parameter requiring grad (the
    dependency graph and gradient criteria need it); afterwards its mode and frozen parameters as before, no grads."""
    was_training = model.training
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    model.eval().requires_grad_(True)
    try:
        yield model
    finally:
        model.zero_grad(set_to_none=True)
        for name, param in model.named_parameters():
            param.requires_grad_(name not in frozen)
        model.train(was_training)


def kept_channels(channels: int, ratio: float, round_to: int | None = 8) -> int:
    """Channels a group of `channels` keeps at `ratio`: nearest multiple of `round_to`.

    Never fewer than `round_to` (or 1), never more than `channels`; ratio 0 keeps all.
    Monotone: a larger ratio never keeps more channels.
    """
    if ratio <= 0:
        return channels
    step = round_to or 1
    kept = step * math.floor(channels * (1.0 - ratio) / step + 0.5)
    return min(channels, max(step, kept))


def uniform_ratios(units: Sequence[PruningUnit], ratio: float) -> dict[str, float]:
    """The same ratio for every unit."""
    return {unit.name: ratio for unit in units}


def ratio_params(
    units: Sequence[PruningUnit],
    ratio_range: tuple[float, float, float | None] = RATIO_RANGE,
    ranges: Mapping[str, tuple] | None = None,
) -> tuple[Param, ...]:
    """The declared search parameters of pruning: one float `prune.<unit>` per unit, in unit order.

    Each is a ratio in [low, high] on a grid of `step` (None: continuous), default 0.0 (a unit
    a policy does not name is not pruned). `ranges` overrides the range of named units with
    `(low, high)` or `(low, high, step)`; a range with low == high fixes that unit (asked
    with step None, as Optuna wants a single-value range). Raises UserError for a range
    outside [0, MAX_RATIO) or one that names an unknown unit.
    """
    ranges = dict(ranges or {})
    if unknown := sorted(set(ranges) - {unit.name for unit in units}):
        raise UserError(f"Pruning ranges name unknown units: {', '.join(unknown)}.")
    low, high, step = ratio_range
    params = []
    for unit in units:
        lo, hi, *rest = ranges.get(unit.name, (low, high, step))
        unit_step = rest[0] if rest else step
        if not 0.0 <= lo <= hi < MAX_RATIO:
            raise UserError(
                f"Pruning range ({lo}, {hi}) for unit '{unit.name}' must satisfy 0 <= low <= high < {MAX_RATIO}."
            )
        search = FloatRange(lo, hi, step=unit_step if hi > lo else None)
        params.append(Param(f"prune.{unit.name}", float, 0.0, search, description=f"ratio of {unit.name} pruned"))
    return tuple(params)


def _by_unit(
    groups: Sequence[ChannelGroup], granularity: str, scales: Mapping[str, Sequence[str]]
) -> dict[str, list[ChannelGroup]]:
    units: dict[str, list[ChannelGroup]] = {}
    for group in groups:
        units.setdefault(unit_name(group.layer, granularity, scales), []).append(group)
    return units


def _checked_ratios(ratios: Mapping[str, float], names: Sequence[str]) -> dict[str, float]:
    ratios = _split_blocks(ratios, names)
    unknown = sorted(set(ratios) - set(names))
    if unknown:
        raise UserError(f"Unknown pruning unit(s) {', '.join(unknown)}; this model's units are {', '.join(names)}.")
    for name, ratio in ratios.items():
        if isinstance(ratio, bool) or not (isinstance(ratio, numbers.Real) and 0.0 <= ratio < MAX_RATIO):
            raise UserError(f"Pruning ratio {ratio!r} for unit '{name}' is outside [0, {MAX_RATIO}).")
    return {name: float(ratios.get(name, 0.0)) for name in names}


def _split_blocks(ratios: Mapping[str, float], names: Sequence[str]) -> dict[str, float]:
    """`ratios` with a block that is several units (the Detect head: one per scale) named as a whole, `model.<i>`,
    replaced by its units at that ratio: a policy stored when the head was one unit prunes as it did then."""
    split = {}
    for name, ratio in ratios.items():
        parts = [unit for unit in names if unit.startswith(f"{name}.")] if name not in names else []
        split.update(dict.fromkeys(parts or [name], ratio))
    return split
