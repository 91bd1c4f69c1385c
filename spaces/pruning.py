"""Structured channel pruning of Ultralytics YOLO detectors: the knob and its range.

A *pruning unit* is a set of output channels that can be removed together, derived
from the model itself with torch-pruning's dependency graph. At block granularity (the
default) a unit is one layer of the Ultralytics model, `model.<i>` (a Conv, a C3k2/C2f,
SPPF, C2PSA, or the Detect head's intermediate convs); at layer granularity a unit is
one prunable conv (its Ultralytics `Conv` path, e.g. `model.2.cv0`). Coupled layers
(residual adds, a depthwise conv tied to its producer, a neck output feeding the head)
always share one unit: the unit of the earliest conv producing those channels.

A *ratio* is the fraction of a unit's output channels removed, in [0, MAX_RATIO): every
channel group of the unit keeps `round(C * (1 - ratio))` channels, rounded to a multiple
of `round_to` (at least `round_to`, at most C). Both the producer's outputs and its
consumers' inputs shrink, so parameters and MACs fall by about 1 - (1 - p)^2 for a
uniform ratio p.

Never pruned: the last conv of every Detect branch (`cv2[i][-1]`, `cv3[i][-1]`: their
outputs are box distributions and class scores), the DFL, and the Attention modules of
C2PSA (their head count and key size are fixed; the dependency search hangs on them).
The neck stays prunable because only those last convs are held fixed.

MACs are multiply-accumulates of one image at `imgsz` x `imgsz` px, as plain integers
(Ultralytics' GFLOPs are 2 x MACs / 1e9); params are plain parameter counts.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn
from ultralytics.cfg import get_cfg
from ultralytics.nn.modules.block import Attention
from ultralytics.nn.modules.head import Detect
from ultralytics.utils import DEFAULT_CFG

from evaluators.vocabulary import UserError
from spaces.yolo_blocks import replace_split_blocks

MAX_RATIO = 0.9
"""Ratios must be below this: removing more than 90 % of a unit's channels leaves a
layer too thin to recover by fine-tuning, and 1.0 would delete it."""

GRANULARITIES = ("block", "layer")
IMPORTANCES = ("magnitude", "taylor", "lamp")


@dataclass(frozen=True)
class PruningUnit:
    """Output channels pruned with one shared ratio.

    name: `model.<i>` (block granularity) or a `Conv` module path (layer granularity).
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


@dataclass(frozen=True)
class _Group:
    """One torch-pruning channel group: its producer's path and the convs it shrinks."""

    layer: str
    channels: int
    members: tuple[nn.Module, ...]  # every conv whose output channels the group removes


def pruning_units(model: nn.Module, granularity: str = "block") -> list[PruningUnit]:
    """The prunable units of `model` (a DetectionModel or `YOLO`), in model order.

    The model is not modified (a copy is analysed). The same model structure always
    gives the same units, so units computed once serve every copy of the model.
    """
    _check_granularity(granularity)
    prepared = _prepare(model)
    units: dict[str, list[_Group]] = {}
    for group in _channel_groups(prepared, _trace_inputs(prepared)):
        units.setdefault(_unit_name(group.layer, granularity), []).append(group)
    return [
        PruningUnit(name, sum(g.channels for g in groups), _kind(prepared, name), tuple(g.layer for g in groups))
        for name, groups in units.items()
    ]


def apply_pruning(
    model: nn.Module,
    ratios: Mapping[str, float],
    *,
    imgsz: int = 640,
    importance: str = "magnitude",
    round_to: int | None = 8,
    granularity: str = "block",
    example_batch: Mapping[str, torch.Tensor] | None = None,
) -> PrunedModel:
    """Prune a copy of `model`; the input model is left untouched.

    ratios: unit name -> fraction of output channels removed, in [0, MAX_RATIO); units
        not named keep all channels. Names come from `pruning_units(model, granularity)`.
    imgsz: square input side (px) at which MACs are counted and the Taylor batch is made.
    importance: how channels are ranked inside a group: "magnitude" (L2 norm of the
        weights), "lamp" (layer-adaptive magnitude), "taylor" (|weight x gradient| of the
        Ultralytics detection loss on `example_batch`, an Ultralytics training batch
        dict with img (B,3,H,W) in [0,1], batch_idx, cls and normalized xywh bboxes;
        without one, four random images with two random boxes each are used, which
        ranks channels of an untrained model sensibly but a trained one poorly).
    round_to: kept channels are a multiple of this (None: any count).

    The returned model is in the input's train/eval mode, has `model.args` set to a full
    Ultralytics config (the detection loss reads it), and saves with `torch.save(model)`.
    Raises UserError for an unknown unit, a ratio outside [0, MAX_RATIO), or a bad option.
    """
    _check_granularity(granularity)
    if importance not in IMPORTANCES:
        raise UserError(f"Unknown pruning importance {importance!r}; choose one of {', '.join(IMPORTANCES)}.")
    if round_to is not None and round_to < 1:
        raise UserError(f"round_to must be a positive channel count or None, not {round_to}.")
    pruned = _prepare(model)
    was_training = pruned.training
    frozen = {name for name, p in pruned.named_parameters() if not p.requires_grad}
    pruned.eval().requires_grad_(True)  # eval: tracing must not move BN statistics

    groups = _channel_groups(pruned, _trace_inputs(pruned))
    by_unit: dict[str, list[_Group]] = {}
    for group in groups:
        by_unit.setdefault(_unit_name(group.layer, granularity), []).append(group)
    full_ratios = _checked_ratios(ratios, list(by_unit))

    device = next(pruned.parameters()).device
    image = torch.zeros(1, 3, imgsz, imgsz, device=device)
    base_macs, base_params = tp.utils.count_ops_and_params(pruned, image)

    ratio_dict: dict[nn.Module, float] = {}
    for unit, unit_groups in by_unit.items():
        for group in unit_groups:
            kept = kept_channels(group.channels, full_ratios[unit], round_to)
            if kept < group.channels:
                # torch-pruning keeps int(C * (1 - r)) channels: +0.5 makes that exactly `kept`.
                ratio_dict.update(dict.fromkeys(group.members, 1.0 - (kept + 0.5) / group.channels))
    producers = {group.layer: group.members[0] for group in groups}

    if ratio_dict:
        if importance == "taylor":
            _loss_gradients(pruned, example_batch, imgsz)
        pruner = tp.pruner.BasePruner(
            pruned,
            _trace_inputs(pruned),
            importance=_importance(importance),
            pruning_ratio=0.0,
            pruning_ratio_dict=ratio_dict,
            ignored_layers=_ignored_layers(pruned),
            round_to=None,  # done above, to the nearest multiple rather than always down
        )
        pruner.step()
    pruned.zero_grad(set_to_none=True)
    for name, param in pruned.named_parameters():
        param.requires_grad_(name not in frozen)
    pruned.train(was_training)

    macs, params = tp.utils.count_ops_and_params(pruned, image)
    channels = {
        unit: sum(producers[g.layer].out_channels for g in unit_groups) for unit, unit_groups in by_unit.items()
    }
    return PrunedModel(pruned, full_ratios, int(macs), int(params), int(base_macs), int(base_params), channels)


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


def suggest_ratios(
    trial,
    units: Sequence[PruningUnit],
    low: float = 0.0,
    high: float = 0.75,
    step: float | None = 0.05,
    ranges: Mapping[str, tuple] | None = None,
) -> dict[str, float]:
    """Ask an Optuna trial (define-by-run) for one ratio per unit.

    Parameters are named `prune.<unit name>`, each a float in [low, high] on a grid of
    `step` (None: continuous). `ranges` overrides the range of named units with
    `(low, high)` or `(low, high, step)`; a range with low == high fixes that unit.
    Raises UserError for a range outside [0, MAX_RATIO) or naming an unknown unit.
    """
    ranges = dict(ranges or {})
    unknown = sorted(set(ranges) - {unit.name for unit in units})
    if unknown:
        raise UserError(f"Pruning ranges name unknown units: {', '.join(unknown)}.")
    ratios = {}
    for unit in units:
        lo, hi, *rest = ranges.get(unit.name, (low, high, step))
        unit_step = rest[0] if rest else step
        if not 0.0 <= lo <= hi < MAX_RATIO:
            raise UserError(
                f"Pruning range ({lo}, {hi}) for unit '{unit.name}' must satisfy 0 <= low <= high < {MAX_RATIO}."
            )
        ratios[unit.name] = trial.suggest_float(f"prune.{unit.name}", lo, hi, step=unit_step if hi > lo else None)
    return ratios


def _check_granularity(granularity: str) -> None:
    if granularity not in GRANULARITIES:
        raise UserError(f"Unknown pruning granularity {granularity!r}; choose one of {', '.join(GRANULARITIES)}.")


def _checked_ratios(ratios: Mapping[str, float], names: Sequence[str]) -> dict[str, float]:
    unknown = sorted(set(ratios) - set(names))
    if unknown:
        raise UserError(f"Unknown pruning unit(s) {', '.join(unknown)}; this model's units are {', '.join(names)}.")
    for name, ratio in ratios.items():
        if isinstance(ratio, bool) or not (isinstance(ratio, numbers.Real) and 0.0 <= ratio < MAX_RATIO):
            raise UserError(f"Pruning ratio {ratio!r} for unit '{name}' is outside [0, {MAX_RATIO}).")
    return {name: float(ratios.get(name, 0.0)) for name in names}


def _prepare(model: nn.Module) -> nn.Module:
    """A deep copy with chunk-free blocks (YOLO.val/predict fuse in place: never share)."""
    inner = getattr(model, "model", None)
    if not isinstance(inner, nn.Sequential) and isinstance(inner, nn.Module):
        model = inner  # an ultralytics `YOLO` wrapper holds the DetectionModel in `.model`
    if not isinstance(getattr(model, "model", None), nn.Sequential) or not isinstance(model.model[-1], Detect):
        raise UserError("Pruning needs an Ultralytics detection model (a DetectionModel or YOLO object).")
    prepared = copy.deepcopy(model)
    replace_split_blocks(prepared)
    prepared.criterion = None  # the loss caches the model's layout; rebuild it on first use
    if not hasattr(prepared, "args") or isinstance(prepared.args, dict):
        args = get_cfg(DEFAULT_CFG)
        for key, value in (getattr(prepared, "args", None) or {}).items():
            setattr(args, key, value)
        prepared.args = args
    return prepared


def _trace_inputs(model: nn.Module) -> torch.Tensor:
    """The smallest image every detection level accepts: the structure does not depend on size."""
    side = 2 * int(max(model.stride.max().item(), 32))
    return torch.zeros(1, 3, side, side, device=next(model.parameters()).device)


def _ignored_layers(model: nn.Module) -> list[nn.Module]:
    head = model.model[-1]
    fixed: list[nn.Module] = [head.dfl]
    for attr in ("cv2", "cv3", "one2one_cv2", "one2one_cv3"):
        branches = getattr(head, attr, None) or []
        fixed.extend(branch[-1] for branch in branches)
    fixed.extend(m for m in model.modules() if isinstance(m, Attention))
    return [sub for module in fixed for sub in module.modules()]


def _channel_groups(model: nn.Module, inputs: torch.Tensor) -> list[_Group]:
    """Every prunable channel group, in model order, named after its producing conv."""
    was_training = model.training
    model.eval().requires_grad_(True)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=inputs)
    order = {module: i for i, module in enumerate(model.modules())}
    paths = {module: path for path, module in model.named_modules()}
    groups = []
    for group in graph.get_all_groups(ignored_layers=_ignored_layers(model), root_module_types=[nn.Conv2d]):
        members = [
            dep.target.module
            for dep, _ in group
            if graph.is_out_channel_pruning_fn(dep.handler) and isinstance(dep.target.module, nn.Conv2d)
        ]
        # The producer is the earliest conv that is not depthwise (a depthwise conv only
        # passes its input's channels on); list it first.
        members.sort(key=lambda m: (m.groups > 1 and m.groups == m.out_channels, order[m]))
        path = paths[members[0]]
        layer = path.removesuffix(".conv") if path.endswith(".conv") else path
        groups.append(_Group(layer, graph.get_out_channels(members[0]), tuple(members)))
    model.train(was_training)
    groups.sort(key=lambda g: order[g.members[0]])
    return groups


def _unit_name(layer: str, granularity: str) -> str:
    return ".".join(layer.split(".")[:2]) if granularity == "block" else layer


def _kind(model: nn.Module, unit: str) -> str:
    index = int(unit.split(".")[1])
    if isinstance(model.model[index], Detect):
        return "head"
    return "backbone" if index < len(model.yaml["backbone"]) else "neck"


def _importance(name: str) -> tp.importance.Importance:
    if name == "taylor":
        return tp.importance.GroupTaylorImportance()
    if name == "lamp":
        return tp.importance.LAMPImportance(p=2)
    return tp.importance.GroupMagnitudeImportance(p=2)


def _loss_gradients(model: nn.Module, batch: Mapping[str, torch.Tensor] | None, imgsz: int) -> None:
    """Fill `.grad` with the gradient of the detection loss on `batch` (eval-mode BN)."""
    device = next(model.parameters()).device
    if batch is None:
        batch = _random_batch(4, imgsz, model.model[-1].nc, seed=0)
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    model.zero_grad(set_to_none=True)
    loss, _ = model.loss(batch)
    loss.sum().backward()
    model.criterion = None


def _random_batch(images: int, imgsz: int, nc: int, seed: int) -> dict[str, torch.Tensor]:
    """An Ultralytics training batch of noise images with two random boxes each."""
    gen = torch.Generator().manual_seed(seed)
    boxes = images * 2
    centers = 0.25 + 0.5 * torch.rand(boxes, 2, generator=gen)
    sizes = 0.1 + 0.4 * torch.rand(boxes, 2, generator=gen)
    return {
        "img": torch.rand(images, 3, imgsz, imgsz, generator=gen),
        "batch_idx": torch.arange(images).repeat_interleave(2).float(),
        "cls": torch.randint(0, nc, (boxes, 1), generator=gen).float(),
        "bboxes": torch.cat((centers, sizes), 1),
    }
