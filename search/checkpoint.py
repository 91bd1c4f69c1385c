"""The model checkpoint a study compresses: loaded from the path a user gave, or refused in one sentence.

A checkpoint is an Ultralytics `.pt` file holding a YOLO `DetectionModel` with class names.
Every command that takes one from user input (a study's `model`, `squeezefit baseline
--out`) loads it through `load_baseline`, so a missing, corrupt or non-YOLO file is a
`UserError`, never a traceback.
"""

from __future__ import annotations

from pathlib import Path

from ultralytics.nn.tasks import load_checkpoint

from evaluators.vocabulary import UserError


def load_baseline(checkpoint: str | Path):
    """The detection model in an Ultralytics checkpoint (FP32, eval mode).

    Raises UserError for a missing file, one that does not load as an Ultralytics
    checkpoint (not a `.pt`, corrupt, truncated, a bare state dict), or one holding a model
    other than a YOLO detection model with class names.
    """
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise UserError(f"model checkpoint {checkpoint} does not exist; train one with `squeezefit baseline`.")
    try:
        model, _ = load_checkpoint(checkpoint)
    except Exception as exc:  # torch.load raises pickle, zip and attribute errors alike
        raise UserError(
            f"model checkpoint {checkpoint} cannot be loaded as an Ultralytics model ({type(exc).__name__})."
        ) from None
    if type(model).__name__ != "DetectionModel" or not getattr(model, "names", None):
        raise UserError(f"model checkpoint {checkpoint} holds a {type(model).__name__}, not a YOLO detection model.")
    return model
