"""Segments: contiguous stretches of a YOLO graph that a structured space searches as one.

A per-unit space asks a ratio and a precision for every block (18 ratios, 24 precisions
for YOLO11n): most sampled policies then mix precisions block by block, and every
precision boundary adds Q/DQ or casts that cost more than the mixed precision saves.
A structured space asks one ratio and one precision per *segment*, a run of consecutive
blocks `model.<i>` (the graph's topological order) at one resolution:

- the backbone, up to the first `nn.Upsample`, split where the output stride changes;
  the blocks at stride 4 or less form one segment, "stem";
- the neck, from that `Upsample` up to the head, split the same way (its top-down path
  and its bottom-up path each visit the strides in turn: "neck-1-p4", "neck-2-p3", ...);
- the head (`Detect`), one segment per scale, "head-p3", "head-p4", ...: the head is one block,
  so these segments split it by the module paths of each scale's branches (`Segment.paths`,
  from `spaces.channel_groups.head_scales`).

Segments are named by part and pyramid level (stride 2^k is "p<k>"). A segment's ratio
applies to every pruning unit in it, its precision to every precision unit in it, so a
policy is uniform inside each segment and has at most one precision boundary between
two segments. `segment_of` maps any unit name (`model.<i>` or a conv path inside it).

Precision is chosen per segment of `precision_segments`: the same, except that the head's
scales are one segment again, "head" (precision units are whole blocks, and one precision for
the head keeps its outputs' concatenation free of casts), and the block
reading the image has its own, "input". That block sits at the graph's edge, where its input
is float anyway, so its own precision makes no island: it only moves the first quantize
after it. It is the one block whose best precision differs from its neighbours' on CPUs:
a 3-channel INT8 convolution packs badly (ONNX Runtime, 1 thread, a pruned ReLU YOLO11n at
192 px, profiled: the stem conv 300 us in INT8, 107 us in FP32; the whole model side by side
0.391 -> 0.356 x L0 with that block in FP32).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from spaces.channel_groups import head_scales, within
from spaces.params import Categorical, FloatRange, Param

STEM_MAX_STRIDE = 4
"""Blocks whose output stride is at most this form the stem segment."""
INPUT_SEGMENT = "input"
"""The precision segment of the block that reads the image (`precision_segments`)."""
HEAD_SEGMENT = "head"
"""The precision segment of the whole Detect head (`precision_segments`); its pruning segments are "head-p<level>"."""


@dataclass(frozen=True)
class Segment:
    """A run of consecutive blocks searched as one: `name`, and its block indices `first`..`last` (inclusive).

    paths: where the segment is part of one block (a head scale), the unit names and module paths inside it that
    it holds (a unit is held when it is one of them or lies below one); empty: all of its blocks.
    """

    name: str
    first: int
    last: int
    paths: tuple[str, ...] = ()

    def holds(self, unit: str) -> bool:
        """Whether the unit `unit` (`model.<i>`, a head scale or a module path below them) lies in this segment."""
        if not self.first <= block_index(unit) <= self.last:
            return False
        return not self.paths or within(unit, self.paths)

    def to_list(self) -> list:
        """JSON-ready, as a study record stores it: [name, first, last, paths]; `from_list` reads it back."""
        return [self.name, self.first, self.last, list(self.paths)]

    @classmethod
    def from_list(cls, row: Sequence) -> Segment:
        """The segment `to_list` wrote (a row of a record stored before `paths` existed has three items)."""
        name, first, last, *paths = row
        return cls(name, int(first), int(last), tuple(paths[0]) if paths else ())


def block_index(unit: str) -> int:
    """The block index i of a unit name `model.<i>[...]`; ValueError for another name."""
    parts = unit.split(".")
    if len(parts) < 2 or parts[0] != "model" or not parts[1].isdigit():
        raise ValueError(f"{unit!r} is not a unit of a YOLO model (model.<i>...)")
    return int(parts[1])


def graph_segments(model: nn.Module, imgsz: int) -> tuple[Segment, ...]:
    """The segments of an Ultralytics DetectionModel, from its blocks' output strides at `imgsz` px."""
    blocks = list(model.model)
    strides = block_strides(model, imgsz)
    head = len(blocks) - 1
    neck_start = next((i for i, b in enumerate(blocks) if isinstance(b, nn.Upsample)), head)
    segments: list[Segment] = []
    for part, first, last in (("backbone", 0, neck_start - 1), ("neck", neck_start, head - 1)):
        run = first
        for i in range(first, last + 1):
            if i == last or _level(strides[i + 1]) != _level(strides[i]):
                segments.append(Segment(_name(part, strides[i], len(segments)), run, i))
                run = i + 1
    segments.extend(
        Segment(f"{HEAD_SEGMENT}-{unit.rsplit('.', 1)[1]}", head, head, (unit, *branches))
        for unit, branches in head_scales(model).items()
    )
    return _merge_stem(segments, strides)


def block_strides(model: nn.Module, imgsz: int) -> list[int]:
    """Output stride of every block of `model` (input side / output side) in one eval forward at `imgsz` px."""
    strides: dict[int, int] = {}
    hooks = [
        block.register_forward_hook(lambda _m, _i, out, i=i: strides.__setitem__(i, _stride(out, imgsz)))
        for i, block in enumerate(model.model)
    ]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, imgsz, imgsz, device=next(model.parameters()).device))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return [strides.get(i, 0) for i in range(len(model.model))]


def precision_segments(segments: Sequence[Segment]) -> tuple[Segment, ...]:
    """The segments precision is chosen per: `segments` with the parts of one block (the head's scales) joined into
    one whole-block segment (`HEAD_SEGMENT` for the head), and their first block, the one reading the image, split
    off as `INPUT_SEGMENT` (unchanged where it is alone already, or `segments` is empty)."""
    joined: list[Segment] = []
    for segment in segments:
        if segment.paths:  # a part of one block, named "<block's segment>-<part>"
            if joined and (joined[-1].first, joined[-1].last) == (segment.first, segment.last):
                continue  # the block is joined already
            segment = Segment(segment.name.rsplit("-", 1)[0], segment.first, segment.last)
        joined.append(segment)
    if not joined or joined[0].first == joined[0].last:
        return tuple(joined)
    first = joined[0]
    return (
        Segment(INPUT_SEGMENT, first.first, first.first),
        Segment(first.name, first.first + 1, first.last),
        *joined[1:],
    )


def segment_of(segments: Sequence[Segment], unit: str) -> Segment:
    """The segment holding `unit`; ValueError when none does."""
    for segment in segments:
        if segment.holds(unit):
            return segment
    raise ValueError(f"no segment holds unit {unit!r}")


def members(segments: Sequence[Segment], units: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Segment name -> the `units` it holds (in the given order); segments holding none are left out."""
    held: dict[str, list[str]] = {}
    for unit in units:
        held.setdefault(segment_of(segments, unit).name, []).append(unit)
    return {s.name: tuple(held[s.name]) for s in segments if s.name in held}


def segment_ratio_params(
    segments: Sequence[Segment],
    units: Sequence[str],
    ratio_range: tuple[float, float, float | None],
    ranges: Mapping[str, tuple] | None = None,
) -> tuple[Param, ...]:
    """One float `prune.<segment>` per segment holding a pruning unit: the ratio of each of its units.

    Its range is the narrowest of its units' (`ranges`, from sensitivity, overrides a unit's
    `ratio_range`): a segment is pruned only as far as its most sensitive unit allows.
    """
    ranges = dict(ranges or {})
    low, high, step = ratio_range
    params = []
    for name, held in members(segments, units).items():
        bounds = [ranges.get(unit, (low, high, step)) for unit in held]
        lo, hi = max(b[0] for b in bounds), min(b[1] for b in bounds)
        hi = max(lo, hi)
        search = FloatRange(lo, hi, step=step if hi > lo else None)
        params.append(Param(f"prune.{name}", float, 0.0, search, description=f"ratio pruned of every unit of {name}"))
    return tuple(params)


def segment_precision_params(
    segments: Sequence[Segment], units: Sequence[str], offered: Sequence[str]
) -> tuple[Param, ...]:
    """One categorical `precision.<segment>` over `offered` per segment holding a precision unit."""
    search = Categorical(tuple(dict.fromkeys(offered)))
    return tuple(
        Param(f"precision.{name}", str, "fp32", search, description=f"precision of every unit of {name}")
        for name in members(segments, units)
    )


def _stride(out, imgsz: int) -> int:
    tensor = out[0] if isinstance(out, (list, tuple)) else out
    return round(imgsz / tensor.shape[-1]) if isinstance(tensor, torch.Tensor) and tensor.dim() == 4 else 0


def _level(stride: int) -> int:
    return round(math.log2(stride)) if stride > 0 else 0


def _name(part: str, stride: int, index: int) -> str:
    level = f"p{_level(stride)}"
    return f"backbone-{level}" if part == "backbone" else f"neck-{index}-{level}"


def _merge_stem(segments: list[Segment], strides: list[int]) -> tuple[Segment, ...]:
    """The backbone segments at stride <= STEM_MAX_STRIDE as one "stem"; neck segments numbered from 1."""
    stem = [s for s in segments if s.name.startswith("backbone-") and strides[s.last] <= STEM_MAX_STRIDE]
    rest = [s for s in segments if s not in stem]
    merged = [Segment("stem", stem[0].first, stem[-1].last)] if stem else []
    neck = 0
    for segment in rest:
        if segment.name.startswith("neck-"):
            neck += 1
            segment = Segment(f"neck-{neck}-{segment.name.rsplit('-', 1)[1]}", segment.first, segment.last)
        merged.append(segment)
    return tuple(merged)
