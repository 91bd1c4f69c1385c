"""Sparsity-regularized training: a model trained so that whole channel groups become removable.

DepGraph's group-norm regularizer (torch-pruning's `GroupNormPruner.regularize`) adds to the
gradients of every training step a penalty on the L2 norm of each channel group — a conv's
output channels together with everything that depends on them (BN, the consumers' inputs) —
scaled up to `ALPHA` times for the groups that already matter least. A few epochs of it
concentrate what a model knows in fewer channels, so structured pruning afterwards removes
channels that carry little and fine-tuning has less to recover. The groups are those
`spaces.pruning` prunes: the Detect head's last convs, the DFL and the attention blocks are
left alone.

`sparsify` trains a copy of a model with Ultralytics' trainer (its losses, augmentation and
validator, as `spaces.distillation.finetune`) plus the regularizer. Cost: the epochs of
training, plus one regularizer pass per optimizer step (an importance estimate per group:
a few tenths of a second per step for YOLO11n on one core).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch_pruning as tp
from torch import nn

from evaluators.vocabulary import UserError
from spaces.channel_groups import ignored_layers, prepare_model, trace_inputs
from spaces.distillation import DistillationSettings, finetune
from spaces.pruning import traceable

REG = 5e-4  # regularization coefficient (torch-pruning's `reg`)
ALPHA = 2**4  # the least important group's penalty is this many times the most important's


@dataclass(frozen=True)
class SparsifyResult:
    """The trained model (block-prepared for pruning, FP32, eval mode), its epoch curve and checkpoint."""

    model: nn.Module
    epoch_maps: tuple[float, ...]  # val mAP50-95 after each epoch (PyTorch)
    weights: Path | None  # Ultralytics' best.pt of the run: a checkpoint `load_checkpoint` reads
    seconds: float


def group_norm_regularizer(reg: float = REG) -> Callable[[nn.Module], Callable[[], None]]:
    """For `finetune(regularizer=...)`: given the module being trained, the step hook that adds the group-norm
    penalty (coefficient `reg`) to its gradients."""
    if reg <= 0:
        raise UserError(f"the sparsity regularization coefficient must be positive, got {reg}.")

    def attach(model: nn.Module) -> Callable[[], None]:
        with traceable(model):
            pruner = tp.pruner.GroupNormPruner(
                model,
                trace_inputs(model),
                importance=tp.importance.GroupMagnitudeImportance(p=2),
                reg=reg,
                pruning_ratio=0.0,
                ignored_layers=ignored_layers(model),
            )
        return lambda: pruner.regularize(model, alpha=ALPHA)

    return attach


def sparsify(
    model: nn.Module,
    data_yaml: Path,
    *,
    imgsz: int,
    epochs: int,
    workdir: Path,
    reg: float = REG,
    lr0: float = 1e-3,
    seed: int = 0,
) -> SparsifyResult:
    """Train a block-prepared copy of `model` for `epochs` on `data_yaml` with the group-norm regularizer."""
    if epochs < 1:
        raise UserError(f"sparsity training needs at least 1 epoch, got {epochs}.")
    prepared = prepare_model(model)  # the blocks torch-pruning can trace, as `spaces.pruning` prunes them
    settings = DistillationSettings(enabled=False, epochs=epochs, lr0=lr0)
    tuned = finetune(
        prepared,
        None,
        settings,
        data_yaml,
        imgsz=imgsz,
        workdir=workdir,
        seed=seed,
        regularizer=group_norm_regularizer(reg),
    )
    return SparsifyResult(tuned.model, tuned.epoch_maps, tuned.weights, tuned.seconds)


def group_norms(model: nn.Module) -> torch.Tensor:
    """The L2 norm of every prunable output channel's weights, all convs of `model` that `spaces.pruning` may
    prune, concatenated (a model-wide picture of how much each channel still carries)."""
    skip = set(ignored_layers(model))
    norms = [
        m.weight.detach().flatten(1).norm(dim=1)
        for m in model.modules()
        if isinstance(m, nn.Conv2d) and m not in skip and m.groups == 1
    ]
    return torch.cat(norms)
