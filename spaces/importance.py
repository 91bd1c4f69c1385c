"""How channels are ranked inside a pruning group: torch-pruning `Importance` criteria by name.

A `Criterion` makes a fresh torch-pruning `Importance` (called on a group, it returns one
score per channel; the lowest-scored channels are removed) and says whether the scores read
`.grad`: such a criterion needs the gradients of the detection loss filled in before
pruning (`loss_gradients`). A new criterion is one more entry in `CRITERIA`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from evaluators.vocabulary import UserError


@dataclass(frozen=True)
class Criterion:
    """A named channel-ranking criterion.

    make: a new torch-pruning `Importance` (importances may keep state between groups).
    needs_gradients: the scores read the parameters' `.grad`.
    """

    name: str
    make: Callable[[], tp.importance.Importance]
    needs_gradients: bool
    description: str


CRITERIA: dict[str, Criterion] = {
    c.name: c
    for c in (
        Criterion("magnitude", lambda: tp.importance.GroupMagnitudeImportance(p=2), False, "L2 norm of the weights"),
        Criterion("lamp", lambda: tp.importance.LAMPImportance(p=2), False, "layer-adaptive magnitude (LAMP)"),
        Criterion(
            "taylor",
            lambda: tp.importance.GroupTaylorImportance(),
            True,
            "|weight x gradient| of the detection loss (first-order Taylor)",
        ),
    )
}


def get_criterion(criterion: str | Criterion) -> Criterion:
    """The criterion named `criterion` (or the criterion itself); UserError for an unknown name."""
    if isinstance(criterion, Criterion):
        return criterion
    if criterion not in CRITERIA:
        raise UserError(f"Unknown pruning importance {criterion!r}; choose one of {', '.join(CRITERIA)}.")
    return CRITERIA[criterion]


def loss_gradients(model: nn.Module, batch: Mapping[str, torch.Tensor] | None, imgsz: int) -> None:
    """Fill `.grad` with the gradient of the detection loss on `batch` (BN as the model's mode has it).

    batch: an Ultralytics training batch dict (img (B,3,H,W) in [0,1], batch_idx, cls,
    normalized xywh bboxes); None: four noise images of `imgsz` px with two random boxes
    each, which ranks channels of an untrained model sensibly but a trained one poorly.
    """
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
