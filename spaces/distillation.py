"""The distillation knob: recovery fine-tuning of a pruned student, and its search range.

`finetune` trains the given (pruned) DetectionModel with Ultralytics' own trainer — the
same losses, augmentation and validator a user gets from `yolo train` — and, when
distillation is on, Ultralytics' built-in feature distillation: an L2 loss between the
student's and the teacher's Detect inputs through 1x1 projectors, weighted by `weight`
(Ultralytics' `dis`), so a narrow pruned student learns from the unpruned teacher.

Recovery fine-tuning differs from training from scratch in three defaults: no warm-up
(a warm-up restarts from a high bias learning rate and undoes the trained weights), no
mosaic (short runs on the real image distribution), and AdamW with a small learning rate.
After every epoch the student's mAP50-95 on the validation split (PyTorch, not the
artifact) goes to `on_epoch`; returning True stops training there, which is how a search
gives up on a trial that cannot reach the front. Raising from `on_epoch` propagates.

The search parameters of the knob are declared here too (`distillation_params`).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.utils.torch_utils import unwrap_model

from evaluators.vocabulary import UserError
from spaces.params import Categorical, Condition, FloatRange, IntRange, Param
from spaces.qat import QuantizationAware, strip_fake_quant

# Arguments every Ultralytics training of squeezefit passes: no AMP check (it would
# download yolo11n.pt), no plots (they fetch a font), deterministic, quiet.
TRAIN_DEFAULTS: dict = {"amp": False, "plots": False, "deterministic": True, "verbose": False}

# Search ranges, next to the knob they act on.
WEIGHT_RANGE = (0.5, 12.0)  # Ultralytics' `dis`; its default is 6.0
LR_RANGE = (1e-4, 3e-3)  # AdamW lr0


@dataclass(frozen=True)
class DistillationSettings:
    """How a pruned student is fine-tuned. `epochs` 0 means no fine-tuning at all.

    enabled: distil from `teacher` (a checkpoint path; None = the study's baseline).
    weight: distillation loss weight (Ultralytics `dis`), > 0.
    lr0: AdamW initial learning rate, decayed linearly to lr0 * 0.1.
    """

    enabled: bool = True
    weight: float = 6.0
    epochs: int = 3
    lr0: float = 1e-3
    teacher: str | None = None

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.weight <= 0 or self.lr0 <= 0:
            raise UserError(f"distillation needs epochs >= 0, weight > 0 and lr0 > 0, got {self}.")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class FinetuneResult:
    """The fine-tuned student (FP32, eval mode) and what training saw."""

    model: torch.nn.Module
    epoch_maps: tuple[float, ...]  # val mAP50-95 of the student after each epoch (PyTorch)
    weights: Path | None  # Ultralytics' best.pt of the run (pickled module, FP16)
    stopped_early: bool
    seconds: float


class _GivenModelTrainer(DetectionTrainer):
    """A DetectionTrainer that trains the module it is handed instead of building one from YAML."""

    given_model: torch.nn.Module
    before_step: Callable[[], None] | None = None

    def get_model(self, cfg=None, weights=None, verbose=True):
        return self.given_model  # `model` in the args is only a name; nothing is built from it

    def optimizer_step(self):
        if self.before_step is not None:  # the gradients of this step are all there: a regularizer adds to them
            self.before_step()
        super().optimizer_step()


def distillation_params(max_epochs: int, teachers: Sequence[str | None] = (None,)) -> tuple[Param, ...]:
    """The declared search parameters of the fine-tune, in the order a trial asks for them.

    `distill.epochs` in [0, max_epochs], asked only when max_epochs > 0; 0 means no fine-tune
    (right for an unpruned policy), and then nothing else is asked and the settings are
    `DistillationSettings(enabled=False, epochs=0)`. Then `distill.enabled`; `distill.weight`
    (log-uniform in WEIGHT_RANGE) when enabled; `distill.teacher` when enabled and there is
    more than one teacher (else the first); `distill.lr0` (log-uniform in LR_RANGE).
    Each parameter is named after the `DistillationSettings` field it sets.
    """
    d = DistillationSettings()

    def fine_tunes(otherwise) -> Condition:
        return Condition("distill.epochs > 0", lambda epochs: epochs > 0, ("distill.epochs",), otherwise)

    def enabled(otherwise) -> Condition:
        return Condition("distill.enabled", lambda on: on, ("distill.enabled",), otherwise)

    return (
        Param(
            "distill.epochs",
            int,
            d.epochs,
            IntRange(0, max_epochs),
            (Condition("max_epochs > 0", lambda: max_epochs > 0, (), 0),),
            "fine-tune epochs",
        ),
        Param("distill.enabled", bool, d.enabled, Categorical((True, False)), (fine_tunes(False),), "distil"),
        Param(
            "distill.weight",
            float,
            d.weight,
            FloatRange(*WEIGHT_RANGE, log=True),
            (fine_tunes(d.weight), enabled(d.weight)),
            "distillation loss weight (Ultralytics `dis`)",
        ),
        Param(
            "distill.teacher",
            str | None,
            d.teacher,
            Categorical(tuple(teachers)),
            (
                fine_tunes(d.teacher),
                enabled(teachers[0]),
                Condition("more than one teacher", lambda: len(teachers) > 1, (), teachers[0]),
            ),
            "teacher checkpoint (None: the study's baseline)",
        ),
        Param(
            "distill.lr0",
            float,
            d.lr0,
            FloatRange(*LR_RANGE, log=True),
            (fine_tunes(d.lr0),),
            "AdamW initial learning rate",
        ),
    )


def finetune(
    student: torch.nn.Module,
    teacher: str | Path | None,
    settings: DistillationSettings,
    data_yaml: Path,
    *,
    imgsz: int,
    workdir: Path,
    batch: int = 16,
    seed: int = 0,
    on_epoch: Callable[[int, float], bool | None] | None = None,
    regularizer: Callable[[torch.nn.Module], Callable[[], None]] | None = None,
    quantization: QuantizationAware | None = None,
) -> FinetuneResult:
    """Fine-tune a copy of `student` on `data_yaml`; the input module is not modified.

    `teacher` is a checkpoint path (used when `settings.enabled`; `settings.teacher`
    overrides it). Training runs on the train split of `data_yaml` and validates on its val
    split (a caller that wants a fidelity subset passes a subset YAML); Ultralytics' run
    goes to `workdir/train`. Progress is one line per epoch on stdout.
    regularizer(model) is called once with the module that is trained (a copy of `student`) before training;
    the function it returns runs before every optimizer step, when the step's gradients are complete
    (`spaces.sparsity`).
    quantization: train the INT8 units' convs through INT8 rounding (`spaces.qat`); the returned student is plain
    (its convs float again), to be quantized after training like any other.
    """
    start = time.perf_counter()
    model = copy.deepcopy(student).float()
    if settings.epochs == 0:
        return FinetuneResult(model.eval(), (), None, False, time.perf_counter() - start)
    teacher = settings.teacher or teacher
    if settings.enabled and (teacher is None or not Path(teacher).is_file()):
        raise UserError(f"distillation needs a teacher checkpoint, and {teacher!r} is not a file.")

    Path(workdir).mkdir(parents=True, exist_ok=True)
    if quantization is not None:
        swapped = quantization.apply(model)
        print(f"    quantization-aware: {swapped} convs train through INT8 rounding", flush=True)
    for p in model.parameters():
        p.requires_grad_(True)
    args = dict(
        TRAIN_DEFAULTS,
        model="given-student.yaml",
        data=str(data_yaml),
        imgsz=imgsz,
        epochs=settings.epochs,
        batch=batch,
        seed=seed,
        device="cpu",
        workers=0,
        optimizer="AdamW",
        lr0=settings.lr0,
        lrf=0.1,
        warmup_epochs=0,
        close_mosaic=settings.epochs,
        patience=settings.epochs + 1,
        pretrained=False,
        val=True,
        project=str(workdir),
        name="train",
        exist_ok=True,
        save=True,
        distill_model=str(teacher) if settings.enabled else None,
        dis=settings.weight,
    )
    threads = torch.get_num_threads()
    trainer = _GivenModelTrainer(overrides=args)
    torch.set_num_threads(threads)  # its select_device sets the process's count; a caller's own count is kept
    trainer.given_model = model
    trainer.before_step = regularizer(model) if regularizer is not None else None
    epoch_maps: list[float] = []
    stopped = False

    def report(tr) -> None:
        nonlocal stopped
        if stopped or len(epoch_maps) >= settings.epochs:  # Ultralytics calls once more for its final validation
            return
        value = float(tr.metrics.get("metrics/mAP50-95(B)", 0.0))
        epoch_maps.append(value)
        print(f"    fine-tune epoch {len(epoch_maps)}/{settings.epochs}: val mAP50-95 {value:.4f}", flush=True)
        if on_epoch is not None and on_epoch(len(epoch_maps), value) and len(epoch_maps) < settings.epochs:
            tr.stop = stopped = True

    trainer.add_callback("on_fit_epoch_end", report)
    try:
        trainer.train()
    finally:
        torch.set_num_threads(threads)  # its final validation sets them again
    tuned = _best_student(trainer)
    strip_fake_quant(tuned)
    return FinetuneResult(
        tuned,
        tuple(epoch_maps),
        Path(trainer.best) if Path(trainer.best).is_file() else None,
        stopped,
        time.perf_counter() - start,
    )


def _best_student(trainer: DetectionTrainer) -> torch.nn.Module:
    """The best epoch's student in FP32: Ultralytics keeps it (EMA weights, FP16) in best.pt."""
    best = Path(trainer.best)
    if best.is_file():
        ckpt = torch.load(best, map_location="cpu", weights_only=False)
        model = ckpt.get("ema") or ckpt["model"]
    else:
        model = trainer.ema.ema if trainer.ema else trainer.model
    model = unwrap_model(model)
    model = getattr(model, "student_model", model)
    return model.float().eval()
