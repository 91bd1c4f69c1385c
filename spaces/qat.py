"""Quantization-aware fine-tuning: the INT8 units' convolutions train through INT8 rounding.

Post-training INT8 (`spaces.precision.build_artifact`) rounds weights and activations that
were trained in float. Where that costs accuracy, fine-tuning with the rounding simulated
lets the weights settle where it does no harm. `QuantizationAware.apply` swaps every
`nn.Conv2d` of the policy's INT8 units — the convs `build_artifact` would quantize: those of
the float head (`spaces.precision.FloatHead`) stay plain — for a `FakeQuantConv2d`, which is
the same convolution with

- its weights rounded to the recipe's 8-bit grid: symmetric on [-127, 127] (as ONNX
  Runtime's and NNCF's quantizers write them), one scale per output channel when
  `recipe.per_channel`, else one per tensor, or asymmetric over [min, max] when the recipe's
  weights are asymmetric;
- its input rounded to an 8-bit grid over a range that follows the batches' min/max
  (exponential moving average, RANGE_MOMENTUM; set from calibration images before training,
  frozen in eval mode): asymmetric over 256 levels, or symmetric about 0 when
  `recipe.symmetric_activations`.

Rounding passes gradients straight through (the straight-through estimator); values clipped
by the grid get none. The deployed artifact is still built by post-training quantization of
the stripped (`strip_fake_quant`) model on the study's calibration set: the simulation
shapes the weights, the quantizer writes the graph. Weights agree with the quantizer's
exactly for per-channel symmetric grids, including after Conv+BatchNorm fusion, because such
a grid scales with each channel. Activation grids are those of the convs' inputs only; the
quantizer also rounds other tensors (Add, Concat), so the simulation is close, not exact.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from evaluators.vocabulary import Int8Recipe
from spaces.precision import FloatHead

RANGE_MOMENTUM = 0.01  # weight of a training batch's min/max in the input range's moving average


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """x rounded to the grid `(q - zero_point) * scale`, q integer in [qmin, qmax] (scale and zero_point broadcast).

    The gradient passes straight through where round(x / scale) + zero_point lies in [qmin, qmax] and is 0 where the
    grid clips (as `torch.fake_quantize_per_tensor_affine`); scale and zero_point get none.
    """
    q = torch.round(x.detach() / scale.detach()) + zero_point.detach()
    value = (q.clamp(qmin, qmax) - zero_point.detach()) * scale.detach()
    return torch.where((q >= qmin) & (q <= qmax), x + (value - x).detach(), value)


class FakeQuantConv2d(nn.Conv2d):
    """An `nn.Conv2d` that computes on 8-bit-rounded weights and inputs (see the module docstring).

    Built from a conv by `from_conv`, sharing its parameters. Buffers `input_low` / `input_high`
    hold the input range; `calibrating` (set by `QuantizationAware.calibrate`) makes a forward
    widen them to the batch's min/max instead of rounding.
    """

    def __init__(self, *args, recipe: Int8Recipe = Int8Recipe(), **kwargs):
        super().__init__(*args, **kwargs)
        self.per_channel = recipe.per_channel
        self.symmetric_weights = recipe.symmetric_weights
        self.symmetric_activations = recipe.symmetric_activations
        self.calibrating = False
        self.register_buffer("input_low", torch.zeros(()))
        self.register_buffer("input_high", torch.zeros(()))

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, recipe: Int8Recipe) -> FakeQuantConv2d:
        fq = cls(**_conv_args(conv), recipe=recipe)
        fq.weight = conv.weight
        fq.bias = conv.bias
        fq.train(conv.training)
        return fq

    def plain(self) -> nn.Conv2d:
        """The float conv with these parameters."""
        conv = nn.Conv2d(**_conv_args(self))
        conv.weight = self.weight
        conv.bias = self.bias
        return conv.train(self.training)

    def quantized_weight(self) -> torch.Tensor:
        """The weights on their 8-bit grid (float values)."""
        w = self.weight
        dims = tuple(range(1, w.dim())) if self.per_channel else tuple(range(w.dim()))
        if self.symmetric_weights:
            scale = (w.detach().abs().amax(dim=dims, keepdim=True) / 127).clamp_min(1e-12)
            return fake_quantize(w, scale, torch.zeros_like(scale), -127, 127)
        low = w.detach().amin(dim=dims, keepdim=True).clamp_max(0)
        high = w.detach().amax(dim=dims, keepdim=True).clamp_min(0)
        scale = ((high - low) / 255).clamp_min(1e-12)
        return fake_quantize(w, scale, torch.round(-low / scale) - 128, -128, 127)

    def quantized_input(self, x: torch.Tensor) -> torch.Tensor:
        """x on its 8-bit grid over the stored range."""
        low, high = self.input_low.clamp_max(0), self.input_high.clamp_min(0)
        if self.symmetric_activations:
            scale = (torch.maximum(-low, high) / 127).clamp_min(1e-12)
            return fake_quantize(x, scale, torch.zeros_like(scale), -127, 127)
        scale = ((high - low) / 255).clamp_min(1e-12)
        return fake_quantize(x, scale, torch.round(-low / scale), 0, 255)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low, high = x.detach().amin(), x.detach().amax()
        if self.calibrating:
            self.input_low.copy_(torch.minimum(self.input_low, low))
            self.input_high.copy_(torch.maximum(self.input_high, high))
            return self._conv_forward(x, self.weight, self.bias)
        if self.training:
            self.input_low.lerp_(low.to(self.input_low.dtype), RANGE_MOMENTUM)
            self.input_high.lerp_(high.to(self.input_high.dtype), RANGE_MOMENTUM)
        return self._conv_forward(self.quantized_input(x), self.quantized_weight(), self.bias)


def _conv_args(conv: nn.Conv2d) -> dict:
    """The constructor arguments of a conv shaped like `conv` (its parameters are assigned after)."""
    return dict(
        in_channels=conv.in_channels,
        out_channels=conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )


@dataclass(frozen=True)
class QuantizationAware:
    """Which convs of a model train through INT8 rounding, and on which grid.

    precisions: unit -> precision, as a policy states it (units not named are FP32 and stay plain).
    recipe: the device's INT8 recipe (its grid: per-channel, symmetry).
    calibration: preprocessed images (N, 3, H, W) in [0, 1] that set the input ranges before training.
    """

    precisions: Mapping[str, str]
    recipe: Int8Recipe
    calibration: np.ndarray

    def apply(self, model: nn.Module) -> int:
        """Swap the INT8 units' convs of `model` (a DetectionModel) for `FakeQuantConv2d` in place and set their
        input ranges on the calibration images; the number of convs swapped."""
        head = FloatHead.of(model)
        int8 = {unit for unit, p in self.precisions.items() if p == "int8"}
        swapped = 0
        for path, module in list(model.named_modules()):
            if type(module) is not nn.Conv2d or ".".join(path.split(".")[:2]) not in int8 or head.keeps(path):
                continue
            parent, _, name = path.rpartition(".")
            setattr(model.get_submodule(parent), name, FakeQuantConv2d.from_conv(module, self.recipe))
            swapped += 1
        if swapped:
            self.calibrate(model)
        return swapped

    def calibrate(self, model: nn.Module) -> None:
        """Set every FakeQuantConv2d's input range to the min/max its input takes on the calibration images."""
        convs = [m for m in model.modules() if isinstance(m, FakeQuantConv2d)]
        mode = model.training
        for conv in convs:
            conv.input_low.fill_(float("inf"))
            conv.input_high.fill_(float("-inf"))
            conv.calibrating = True
        try:
            model.eval()
            with torch.no_grad():
                for image in torch.from_numpy(np.asarray(self.calibration, dtype=np.float32)).split(8):
                    model(image)
        finally:
            for conv in convs:
                conv.calibrating = False
            model.train(mode)


def strip_fake_quant(model: nn.Module) -> int:
    """Replace every FakeQuantConv2d of `model` by its plain conv in place; the number replaced."""
    stripped = 0
    for path, module in list(model.named_modules()):
        if isinstance(module, FakeQuantConv2d):
            parent, _, name = path.rpartition(".")
            setattr(model.get_submodule(parent), name, module.plain())
            stripped += 1
    return stripped
