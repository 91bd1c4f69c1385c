"""A study's converted baselines: its model with another activation, trained once, shared by every trial.

A study that offers activations (`StudyConfig.activations`, `spaces.activation`) needs, for
each, the baseline with its SiLUs swapped and its weights re-trained for the new function:
`convert_baseline` distils the swapped model from the baseline (the study's teacher) for
`activation_epochs` epochs on the whole train split, validating on the study's val images
after each epoch, and keeps Ultralytics' best checkpoint of the run. It is written once
under `<studies>/variants/` and named by what it depends on — the baseline's bytes, the
data set, image size, epochs, seed and activation — so every study and bench contender
with the same settings reuses it (and an interrupted conversion is never taken: the file
appears when it is complete).

On the embedded default a conversion to ReLU costs about 50 s an epoch on 2 cores.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from evaluators.datasets import subset_data_yaml
from evaluators.paths import studies_dir
from search.checkpoint import load_baseline
from spaces.activation import with_activation
from spaces.distillation import DistillationSettings, finetune


@dataclass(frozen=True)
class Variant:
    """A converted baseline: its checkpoint, best val mAP50-95 (PyTorch) and per-epoch curve, and the conversion's
    cost in seconds (of the run that made it)."""

    activation: str
    checkpoint: str
    map50_95: float
    epoch_maps: tuple[float, ...]
    seconds: float

    def to_dict(self) -> dict:
        return {
            "activation": self.activation,
            "checkpoint": self.checkpoint,
            "map50_95": self.map50_95,
            "epoch_maps": list(self.epoch_maps),
            "seconds": self.seconds,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Variant:
        return cls(
            data["activation"],
            data["checkpoint"],
            float(data["map50_95"]),
            tuple(data["epoch_maps"]),
            float(data["seconds"]),
        )


def variant_path(checkpoint: Path, data_yaml: Path, *, activation: str, imgsz: int, epochs: int, seed: int) -> Path:
    """Where the conversion of `checkpoint` to `activation` with these settings is stored (`.pt`; its `.json` beside)."""
    settings = {"activation": activation, "data": str(data_yaml), "imgsz": imgsz, "epochs": epochs, "seed": seed}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    digest.update(Path(checkpoint).read_bytes())
    return studies_dir() / "variants" / f"{Path(checkpoint).stem}-{activation}-{digest.hexdigest()[:12]}.pt"


def convert_baseline(
    checkpoint: Path,
    data_yaml: Path,
    *,
    activation: str,
    imgsz: int,
    epochs: int,
    seed: int = 0,
    val_images: int | None = None,
) -> Variant:
    """The baseline `checkpoint` converted to `activation` (module docstring): the stored one where it exists, else
    trained now (progress: one line per epoch). val_images: validate each epoch on the first N val images."""
    path = variant_path(checkpoint, data_yaml, activation=activation, imgsz=imgsz, epochs=epochs, seed=seed)
    summary = path.with_suffix(".json")
    if path.is_file() and summary.is_file():
        return Variant.from_dict(json.loads(summary.read_text()))
    print(
        f"converting {Path(checkpoint).name} to {activation}: {epochs} epochs on the whole train split, distilled "
        f"from it (once; kept as {path})",
        flush=True,
    )
    started = time.perf_counter()
    workdir = path.with_suffix("")
    val_yaml = subset_data_yaml(Path(data_yaml), "val", val_images, workdir)
    student = with_activation(load_baseline(checkpoint), activation)
    result = finetune(
        student,
        checkpoint,
        DistillationSettings(epochs=epochs),
        val_yaml,
        imgsz=imgsz,
        seed=seed,
        workdir=workdir,
    )
    variant = Variant(
        activation,
        str(path),
        round(max(result.epoch_maps), 4),
        tuple(round(m, 4) for m in result.epoch_maps),
        round(time.perf_counter() - started, 1),
    )
    partial = path.with_suffix(".partial.pt")
    shutil.copyfile(result.weights, partial)
    summary.write_text(json.dumps(variant.to_dict(), indent=1))
    partial.replace(path)  # last: the checkpoint's presence says the conversion is complete
    shutil.rmtree(workdir, ignore_errors=True)
    print(f"  {activation}: val mAP50-95 {variant.map50_95:.4f} (best epoch) in {variant.seconds:.0f} s", flush=True)
    return variant
