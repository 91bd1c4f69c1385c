"""Which output channels of an Ultralytics detector can be removed together, and which never.

A *channel group* is what torch-pruning's dependency graph couples: the output channels of
one producing conv plus every conv whose outputs must shrink with them (residual adds, a
depthwise conv tied to its producer, a neck output feeding the head). `spaces.pruning`
gathers groups into pruning units: one unit per `model.<i>` block (granularity "block") or
per producing conv (granularity "layer"). At block granularity the Detect head is one unit
per scale (`head_scales`), not one for the block: its branches at different strides differ
the most in what pruning them costs (on the embedded digits, pruning the P4 or P5 branches
at 0.75 leaves the untuned mAP50-95 unchanged; the P3 branch at 0.5 leaves 4% of it).

Held fixed, so never in a group: the last conv of every Detect branch (`cv2[i][-1]`,
`cv3[i][-1]`: their outputs are box distributions and class scores), the DFL, and the
Attention modules of C2PSA (their head count and key size are fixed; the dependency search
hangs on them).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn
from ultralytics.cfg import get_cfg
from ultralytics.nn.modules.block import Attention
from ultralytics.nn.modules.head import Detect
from ultralytics.utils import DEFAULT_CFG

from evaluators.vocabulary import UserError
from spaces.yolo_blocks import replace_split_blocks

GRANULARITIES = ("block", "layer")
HEAD_BRANCHES = ("cv2", "cv3", "one2one_cv2", "one2one_cv3")
"""The Detect head's per-scale branch lists (box, class, and the end-to-end head's twins where it has them)."""


@dataclass(frozen=True)
class ChannelGroup:
    """One torch-pruning channel group: its producer's module path and the convs it shrinks.

    layer: path of the producing conv in the block-prepared model (its Ultralytics `Conv`
    path, `.conv` dropped). channels: output channels of the group. members: every conv whose
    output channels the group removes, the producer first.
    """

    layer: str
    channels: int
    members: tuple[nn.Module, ...]


def check_granularity(granularity: str) -> None:
    """UserError unless `granularity` is one of GRANULARITIES."""
    if granularity not in GRANULARITIES:
        raise UserError(f"Unknown pruning granularity {granularity!r}; choose one of {', '.join(GRANULARITIES)}.")


def prepare_model(model: nn.Module) -> nn.Module:
    """A deep copy with chunk-free blocks (YOLO.val/predict fuse in place: never share).

    Accepts a DetectionModel or a `YOLO` wrapper; UserError for anything else. The copy
    has `args` set to a full Ultralytics config, which the detection loss reads.
    """
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


def trace_inputs(model: nn.Module) -> torch.Tensor:
    """The smallest image every detection level accepts: the structure does not depend on size."""
    side = 2 * int(max(model.stride.max().item(), 32))
    return torch.zeros(1, 3, side, side, device=next(model.parameters()).device)


def ignored_layers(model: nn.Module) -> list[nn.Module]:
    """Every module whose channels stay as they are (see the module docstring)."""
    head = model.model[-1]
    fixed: list[nn.Module] = [head.dfl]
    for attr in HEAD_BRANCHES:
        fixed.extend(branch[-1] for branch in getattr(head, attr, None) or [])
    fixed.extend(m for m in model.modules() if isinstance(m, Attention))
    return [sub for module in fixed for sub in module.modules()]


def channel_groups(model: nn.Module) -> list[ChannelGroup]:
    """Every prunable channel group of a prepared model, in model order, named after its producing conv."""
    was_training = model.training
    model.eval().requires_grad_(True)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=trace_inputs(model))
    order = {module: i for i, module in enumerate(model.modules())}
    paths = {module: path for path, module in model.named_modules()}
    groups = []
    for group in graph.get_all_groups(ignored_layers=ignored_layers(model), root_module_types=[nn.Conv2d]):
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
        groups.append(ChannelGroup(layer, graph.get_out_channels(members[0]), tuple(members)))
    model.train(was_training)
    groups.sort(key=lambda g: order[g.members[0]])
    return groups


def head_scales(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """The Detect head's scales as block-granularity units: `model.<i>.p<level>` (stride 2^level) -> the module paths
    of that scale's branches (`model.<i>.cv2.<k>`, `model.<i>.cv3.<k>`, and the end-to-end head's `one2one_` twins
    where it has them), in branch order. `model` is a DetectionModel whose Detect knows its strides."""
    index = len(model.model) - 1
    head = model.model[index]
    scales = {}
    for k, stride in enumerate(head.stride.tolist()[: head.nl]):
        branches = tuple(f"model.{index}.{attr}.{k}" for attr in HEAD_BRANCHES if getattr(head, attr, None))
        scales[f"model.{index}.p{round(math.log2(stride))}"] = branches
    return scales


def unit_name(layer: str, granularity: str, scales: Mapping[str, Sequence[str]]) -> str:
    """The pruning unit a group's producing layer belongs to: itself for "layer"; for "block" its block `model.<i>`,
    or the head scale (of `scales`, `head_scales`) whose branch holds it."""
    if granularity != "block":
        return layer
    return next((unit for unit, branches in scales.items() if within(layer, branches)), ".".join(layer.split(".")[:2]))


def within(path: str, scopes: Sequence[str]) -> bool:
    """Whether the dotted module path (or unit name) `path` is one of `scopes` or lies below one."""
    return any(path == scope or path.startswith(f"{scope}.") for scope in scopes)


def unit_kind(model: nn.Module, unit: str) -> str:
    """ "backbone", "neck" or "head": where the unit's `model.<i>` block sits."""
    index = int(unit.split(".")[1])
    if isinstance(model.model[index], Detect):
        return "head"
    return "backbone" if index < len(model.yaml["backbone"]) else "neck"
