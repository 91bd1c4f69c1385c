"""The activation knob: a policy may run the model's convolutions with ReLU instead of their SiLU.

On a CPU the SiLU after every convolution is a large, fixed share of a small detector's
latency, and it grows with compression: ONNX Runtime fuses a ReLU into its convolutions
and, in INT8, folds it into the quantization range, while a SiLU stays an elementwise pass
in float (between Q/DQ pairs in INT8); OpenVINO's bf16 and INT8 kernels gain the same way.
On the embedded default (YOLO11n, 192 px, one thread, AMX Xeon) the unpruned model with
ReLU ran 0.56 x L0 in ONNX Runtime INT8 where SiLU ran 0.73 x L0, and 0.48 x L0 in
OpenVINO bf16 where SiLU ran 0.81 x L0 (`benchmarks/results/activation.md`).

The swap changes the function the weights were trained for, so it is a change of starting
weights: a study that offers an activation converts its baseline once, by distillation from
it (`search.variants`), and a policy that names the activation is pruned, quantized and
fine-tuned from those weights. A policy that names none keeps the model's own activations.

The knob's search parameter is `model.activation`: `KEEP` (the model's own) or one of the
activations the study offers; it is not asked when the study offers none.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from ultralytics.nn.modules.conv import Conv

from evaluators.vocabulary import UserError
from spaces.params import Categorical, Param

ACTIVATIONS = {"relu": torch.nn.ReLU}
"""Activation name -> its module: what a policy may swap the model's SiLUs for."""
KEEP = "keep"
"""The `model.activation` value of a policy that keeps the model's own activations."""

SWAPPED_FINETUNE_LR0 = 2e-4
"""The learning rate of the default fine-tune of a policy whose activation is swapped (a guided start; a recovery
of a policy never fine-tuned), which runs without distillation: the student starts from the converted baseline,
already trained for its activation, and the SiLU baseline is a poor teacher for it. The ReLU guided start for
0.5 x L0 on ort-cpu (segments pruned 0.25-0.75, INT8), 3 epochs on 600 images: distilled at lr0 1e-3 (the SiLU
default) 0.2774, undistilled at 1e-3 0.3284, distilled at 2e-4 0.3412, undistilled at 2e-4 0.3628."""


def check_activation(name: str) -> str:
    """`name` if it is one of `ACTIVATIONS`; UserError naming the choices otherwise."""
    if name not in ACTIVATIONS:
        raise UserError(f"unknown activation {name!r} (choose from {', '.join(ACTIVATIONS)}).")
    return name


def with_activation(model: torch.nn.Module, name: str) -> torch.nn.Module:
    """A deep copy of `model` in which every Ultralytics `Conv` (and subclass) whose activation is a SiLU uses
    activation `name` instead; `model` is not modified. The copy keeps the weights, so it computes a different
    function until it is trained (`search.variants`).

    UserError for an unknown name, or a model with no SiLU convolution to swap.
    """
    module = ACTIVATIONS[check_activation(name)]
    swapped = copy.deepcopy(model)
    count = 0
    for m in swapped.modules():
        if isinstance(m, Conv) and isinstance(m.act, torch.nn.SiLU):
            m.act = module()
            count += 1
    if not count:
        raise UserError(f"the model has no SiLU convolution to swap for {name}.")
    return swapped


def activation_params(offered: Sequence[str]) -> tuple[Param, ...]:
    """The knob's search parameter: `model.activation` among `KEEP` and `offered` (none when nothing is offered)."""
    if not offered:
        return ()
    choices = (KEEP, *(check_activation(a) for a in offered))
    return (Param("model.activation", str, KEEP, Categorical(choices), (), "activation of the convolutions"),)
