"""How channels are ranked inside a pruning group: torch-pruning `Importance` criteria by name.

A `Criterion` makes a fresh torch-pruning `Importance` (called on a group, it returns one
score per channel; the lowest-scored channels are removed) and says whether the scores read
`.grad`: such a criterion needs the gradients of the detection loss filled in before
pruning (`loss_gradients`), or, for the Hessian criterion, the per-image squared gradients
averaged (`fisher_gradients`). A new criterion is one more entry in `CRITERIA`.

Cost, on top of the pruning itself (about a second for YOLO11n): magnitude and lamp read
the weights only; taylor needs one forward and backward pass of the detection loss on the
example batch; hessian needs one per image of it (4 for the default batch of noise images).
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
    per_image: `.grad` must hold the mean over images of the squared per-image gradient
        (`fisher_gradients`) rather than the batch's gradient (`loss_gradients`).
    """

    name: str
    make: Callable[[], tp.importance.Importance]
    needs_gradients: bool
    description: str
    per_image: bool = False

    def fill_gradients(self, model: nn.Module, batch: Mapping[str, torch.Tensor] | None, imgsz: int) -> None:
        """Put in `.grad` what this criterion's scores read (nothing when it needs no gradients)."""
        if self.needs_gradients:
            (fisher_gradients if self.per_image else loss_gradients)(model, batch, imgsz)


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
        Criterion(
            "hessian",
            # torch-pruning's own accumulate_grad keeps only the last image's gradient (it keys its
            # dict by parameter but tests names); the importance reads `.grad` that fisher_gradients fills
            lambda: tp.importance.GroupHessianImportance(),
            True,
            "weight^2 x the Hessian's diagonal of the detection loss (empirical Fisher, optimal brain damage)",
            per_image=True,
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


def fisher_gradients(model: nn.Module, batch: Mapping[str, torch.Tensor] | None, imgsz: int) -> None:
    """Fill `.grad` with the mean over the images of `batch` of each image's squared loss gradient.

    That is the empirical Fisher information, the diagonal Hessian estimate of optimal brain
    damage (LeCun et al., 1990). batch: as for `loss_gradients` (None: its four noise images);
    one backward pass per image.
    """
    if batch is None:
        batch = _random_batch(4, imgsz, model.model[-1].nc, seed=0)
    images = batch["img"].shape[0]
    squares: dict[nn.Parameter, torch.Tensor] = {}
    for index in range(images):
        loss_gradients(model, _one_image(batch, index), imgsz)
        for param in model.parameters():
            if param.grad is not None:
                square = param.grad.detach().pow(2)
                squares[param] = squares[param] + square if param in squares else square
    model.zero_grad(set_to_none=True)
    for param, total in squares.items():
        param.grad = total / images


def _one_image(batch: Mapping[str, torch.Tensor], index: int) -> dict[str, torch.Tensor]:
    """The training batch of image `index` of `batch` alone (its boxes, batch_idx 0)."""
    mine = batch["batch_idx"] == index
    return {
        "img": batch["img"][index : index + 1],
        "batch_idx": torch.zeros(int(mine.sum()), dtype=batch["batch_idx"].dtype),
        "cls": batch["cls"][mine],
        "bboxes": batch["bboxes"][mine],
    }


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
