"""The depth knob: how many inner blocks of each C3k2/C2f/C2PSA block a policy removes.

Channel pruning flattens out on CPUs: a convolution of a few channels still costs its
launch and memory traffic, so past about 0.35-0.4 x L0 (YOLO11n at 192 px, ONNX Runtime INT8,
1 thread) pruning more channels saves little. Removing whole operators does: a C3k2 block
(in its chunk-free twin, `spaces.yolo_blocks.C2fSplit`) computes `cv0(x)`, `cv1(x)`, then its
inner blocks `m` one after another on `cv1`'s output, and concatenates all of them into `cv2`.
Removing the last k inner blocks removes them and the inputs of `cv2` they fed (the rest of
the block is unchanged); a C2PSA block (`C2PSASplit`) loses its last k PSA blocks, its
PSA path becoming shorter (the identity with none left). Measured side by side, ORT INT8 with
the input block FP32: a mid channel policy 0.56 x L0, with the P4/P5 blocks' inner blocks
removed 0.49, with every block's 0.42; after the same 3-epoch distilled fine-tune the
P4/P5 removal cost 0.005 mAP50-95 (0.2476 -> 0.2427, docs/design-notes.md).

A *depth unit* is a block with inner blocks, named like its pruning unit (`model.<i>`);
`depth_units(model)` maps each to how many it has. A policy's depth map says, per unit, how
many of its inner blocks are removed, the last ones first (unnamed units: none). Depth is
applied to the chunk-free model before its channels are pruned (`spaces.pruning.IterativePruning`),
so channels are ranked in the model that is deployed.

The search parameters are declared here too (`depth_params`): an int `depth.<unit>` per unit
in [0, its inner blocks], or, in a structured space, one per segment (`segment_depth_params`).
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from evaluators.vocabulary import UserError
from spaces.channel_groups import prepare_model
from spaces.params import IntRange, Param
from spaces.yolo_blocks import C2fSplit, C2PSASplit


def depth_units(model: nn.Module) -> dict[str, int]:
    """Depth unit (`model.<i>`) -> how many inner blocks it has, in model order, for every C2f-family and C2PSA
    block of `model` (a DetectionModel or `YOLO`) with at least one. The model is not modified."""
    return {unit: count for unit, count in _inner_counts(prepare_model(model)).items() if count}


def _inner_counts(prepared: nn.Module) -> dict[str, int]:
    """Path -> inner blocks, of every chunk-free twin of a prepared model (with none too)."""
    return {path: len(m.m) for path, m in prepared.named_modules() if isinstance(m, (C2fSplit, C2PSASplit))}


def check_depth(depth: Mapping[str, int], units: Mapping[str, int]) -> dict[str, int]:
    """`depth` (unit -> inner blocks removed) checked against `units` (`depth_units`): UserError for an unknown unit,
    a count that is not a whole number, below 0 or above the unit's inner blocks. Returns it with the 0s dropped."""
    checked = {}
    for unit, removed in depth.items():
        if unit not in units:
            raise UserError(
                f"the policy removes inner blocks of {unit!r}, which has none (blocks with inner blocks: "
                f"{', '.join(units) or 'none'})."
            )
        if isinstance(removed, bool) or not isinstance(removed, numbers.Integral) or not 0 <= removed <= units[unit]:
            raise UserError(f"{unit!r} has {units[unit]} inner block(s): removing {removed!r} of them is not possible.")
        if removed:
            checked[unit] = int(removed)
    return checked


def remove_inner_blocks(prepared: nn.Module, depth: Mapping[str, int]) -> list[str]:
    """Remove, in place, the last `depth[unit]` inner blocks of each named block of a chunk-free model
    (`spaces.channel_groups.prepare_model`), and the output conv's inputs they fed; checked as by `check_depth`.
    Returns the module paths removed (`<unit>.m.<j>`)."""
    units = _inner_counts(prepared)
    gone = []
    for unit, removed in check_depth(depth, {u: n for u, n in units.items() if n}).items():
        gone += [f"{unit}.m.{j}" for j in range(units[unit] - removed, units[unit])]
        block = prepared.get_submodule(unit)
        kept = list(block.m)[: len(block.m) - removed]
        if isinstance(block, C2PSASplit):  # a chain on cv1's half: shorter, same width
            block.m = nn.Sequential(*kept)
            continue
        inputs = block.cv2.conv.in_channels
        width = (inputs - block.cv0.conv.out_channels - block.cv1.conv.out_channels) // len(block.m)
        block.cv2.conv = _first_inputs(block.cv2.conv, inputs - removed * width)
        block.m = nn.ModuleList(kept)
    return gone


def _first_inputs(conv: nn.Conv2d, keep: int) -> nn.Conv2d:
    """A copy of `conv` that reads only its first `keep` input channels (same weights for those)."""
    if conv.groups != 1:
        raise ValueError(f"cannot drop inputs of a grouped conv ({conv.groups} groups)")
    new = nn.Conv2d(
        keep,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    ).to(conv.weight.device, conv.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(conv.weight[:, :keep])
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    new.weight.requires_grad_(conv.weight.requires_grad)
    return new


def depth_params(units: Mapping[str, int]) -> tuple[Param, ...]:
    """The declared search parameters of depth: one int `depth.<unit>` per unit in [0, its inner blocks], default 0."""
    return tuple(
        Param(f"depth.{unit}", int, 0, IntRange(0, count), description=f"inner blocks of {unit} removed")
        for unit, count in units.items()
    )


def segment_depth_params(held: Mapping[str, Sequence[str]], units: Mapping[str, int]) -> tuple[Param, ...]:
    """One int `depth.<segment>` per segment of `held` (segment -> its depth units): inner blocks removed from each of
    its units (a unit with fewer removes all of its own), in [0, the most any of them has]."""
    return tuple(
        Param(
            f"depth.{segment}",
            int,
            0,
            IntRange(0, max(units[u] for u in members)),
            description=f"inner blocks removed from every block of {segment}",
        )
        for segment, members in held.items()
    )
