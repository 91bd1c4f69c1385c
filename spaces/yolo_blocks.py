"""Chunk-free twins of Ultralytics' split blocks, so that torch-pruning can prune them.

C2f (and its subclasses C3k2, C2fPSA, C2fCIB) and C2PSA compute one 1x1 conv and cut
its output in two with `chunk`/`split` at a fixed size. Torch-pruning cannot prune
through a fixed-size cut (an unmodified C3k2 fails with `IndexError`), so each such
block is replaced by a twin whose first conv is two convs, one per half, with the
weights and the BatchNorm statistics of the original halves: same function, no cut.
The inner blocks (`m`: Bottleneck, C3k, PSABlock, ...) and the output conv are kept.

The twins live in this importable module on purpose: a pruned model is saved as a
whole pickled module, and `torch.load(weights_only=False)` in a fresh process must find
their classes (a class defined in a script or a test would not be found).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from ultralytics.nn.modules.block import C2PSA, C2f

# Attributes Ultralytics' parse_model puts on every layer of a DetectionModel; its forward
# reads `f` (where the input comes from) and `i` (whether the output is saved).
_LAYER_ATTRS = ("i", "f", "type", "np")


class _SplitBlock(nn.Module):
    """A block whose input conv is split in two (`cv0`, `cv1`), its inner modules `m` and output conv `cv2`."""

    def __init__(self, cv0: nn.Module, cv1: nn.Module, m: nn.Module, cv2: nn.Module):
        super().__init__()
        self.cv0 = cv0
        self.cv1 = cv1
        self.m = m
        self.cv2 = cv2


class C2fSplit(_SplitBlock):
    """C2f / C3k2 without `chunk`: `cv0` makes the first half, `cv1` the second half.

    Output equals the original block's output for the same weights (eval mode).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv0(x), self.cv1(x)]
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class C2PSASplit(_SplitBlock):
    """C2PSA without `split`: `cv0` makes the bypass half, `cv1` the half the PSA blocks see."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv2(torch.cat((self.cv0(x), self.m(self.cv1(x))), 1))


def split_conv_in_halves(conv: nn.Module) -> tuple[nn.Module, nn.Module]:
    """Two copies of an Ultralytics `Conv` (conv + BN + act), each with half the outputs.

    Works on a fused `Conv` too (no BN, conv with bias). The input is not modified.
    """
    halves = []
    out = conv.conv.out_channels
    if out % 2 or conv.conv.groups != 1:
        raise ValueError(f"cannot split a conv with {out} outputs and {conv.conv.groups} groups in halves")
    for part in (slice(0, out // 2), slice(out // 2, out)):
        half = copy.deepcopy(conv)
        half.conv = _slice_conv(conv.conv, part)
        if getattr(conv, "bn", None) is not None:
            half.bn = _slice_bn(conv.bn, part)
        halves.append(half)
    return halves[0], halves[1]


def _slice_conv(conv: nn.Conv2d, part: slice) -> nn.Conv2d:
    weight = conv.weight.detach()[part]
    new = nn.Conv2d(
        conv.in_channels,
        weight.shape[0],
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    ).to(weight.device, weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if conv.bias is not None:
            new.bias.copy_(conv.bias.detach()[part])
    new.weight.requires_grad_(conv.weight.requires_grad)
    return new


def _slice_bn(bn: nn.BatchNorm2d, part: slice) -> nn.BatchNorm2d:
    weight = bn.weight.detach()[part]
    new = nn.BatchNorm2d(weight.shape[0], bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    new = new.to(weight.device, weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        new.bias.copy_(bn.bias.detach()[part])
        new.running_mean.copy_(bn.running_mean[part])
        new.running_var.copy_(bn.running_var[part])
        new.num_batches_tracked.copy_(bn.num_batches_tracked)
    new.train(bn.training)
    return new


def split_block(block: nn.Module) -> nn.Module | None:
    """The chunk-free twin of `block`, or None when `block` needs none.

    The twin shares `m` and `cv2` with `block` (not copies): call it on a model you own.
    """
    if isinstance(block, C2f) and type(block).forward is C2f.forward:
        twin = C2fSplit(*split_conv_in_halves(block.cv1), block.m, block.cv2)
    elif isinstance(block, C2PSA) and type(block).forward is C2PSA.forward:
        twin = C2PSASplit(*split_conv_in_halves(block.cv1), block.m, block.cv2)
    else:
        return None
    for attr in _LAYER_ATTRS:
        if hasattr(block, attr):
            setattr(twin, attr, getattr(block, attr))
    twin.train(block.training)
    return twin


def replace_split_blocks(model: nn.Module) -> list[str]:
    """Replace, in place, every C2f-family and C2PSA block of `model` by its twin.

    Returns the module paths replaced (e.g. `["model.2", "model.4", ...]`). The model
    computes the same function afterwards (eval mode, float rounding aside); running it
    twice is harmless (the second call finds nothing to replace).
    """
    replaced = []
    for path, module in list(model.named_modules()):
        for name, child in list(module.named_children()):
            twin = split_block(child)
            if twin is not None:
                setattr(module, name, twin)
                replaced.append(f"{path}.{name}" if path else name)
    return replaced
