"""The baseline a study compresses: a YOLO trained from scratch on the embedded data set.

`train_baseline` trains a model built from Ultralytics' YAML (no pretrained weights are
downloaded), validates the result, and writes next to the checkpoint a small JSON file
with its recorded mAP, image size, epochs, data-set digest and the exact command, so a
test can check that the committed checkpoint still scores what it says.
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path

from ultralytics import YOLO

from evaluators.accuracy import VAL_DEFAULTS
from evaluators.paths import runs_dir
from evaluators.vocabulary import UserError
from spaces.distillation import TRAIN_DEFAULTS

# Families the baseline command can build; each is an Ultralytics model YAML.
FAMILIES = ("yolo11n", "yolo11s", "yolov8n", "yolov8s")
REPO_BASELINE = Path(__file__).resolve().parents[2] / "studies" / "baseline" / "yolo11n-digits.pt"


@dataclass(frozen=True)
class BaselineRecord:
    """What a committed baseline claims; stored as `<checkpoint>.json`."""

    family: str
    checkpoint: str
    imgsz: int
    epochs: int
    batch: int
    seed: int
    map50_95: float
    map50: float
    data: str
    data_digest: str
    train_seconds: float
    command: str
    versions: dict
    date: str

    @staticmethod
    def path_for(checkpoint: Path) -> Path:
        return Path(checkpoint).with_suffix(".json")

    @classmethod
    def load(cls, checkpoint: Path) -> BaselineRecord:
        path = cls.path_for(checkpoint)
        if not path.is_file():
            raise UserError(f"no baseline record {path} next to the checkpoint; train it with `squeezefit baseline`.")
        return cls(**json.loads(path.read_text()))

    def save(self, checkpoint: Path) -> None:
        self.path_for(checkpoint).write_text(json.dumps(asdict(self), indent=2) + "\n")


def validate(checkpoint: Path, data_yaml: Path, imgsz: int, batch: int = 16) -> tuple[float, float]:
    """(mAP50-95, mAP50) of a checkpoint on the data set's val split, through Ultralytics' validator."""
    metrics = YOLO(str(checkpoint)).val(
        data=str(data_yaml),
        imgsz=imgsz,
        batch=batch,
        device="cpu",
        workers=0,
        project=str(runs_dir()),
        name="val",
        exist_ok=True,
        **VAL_DEFAULTS,
    )
    return float(metrics.box.map), float(metrics.box.map50)


def train_baseline(
    family: str,
    data_yaml: Path,
    out: Path,
    *,
    imgsz: int = 192,
    epochs: int = 60,
    batch: int = 32,
    seed: int = 0,
    data_digest: str = "",
    command: str = "",
) -> BaselineRecord:
    """Train `family` from scratch on `data_yaml`, copy best.pt to `out`, record its scores next to it."""
    if family not in FAMILIES:
        raise UserError(f"unknown model family {family!r}; choose one of {', '.join(FAMILIES)}.")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    model = YOLO(f"{family}.yaml")

    printed: set[int] = set()

    def progress(trainer) -> None:
        done = trainer.epoch + 1
        if done in printed:  # Ultralytics calls once more for its final validation
            return
        printed.add(done)
        elapsed = time.perf_counter() - start
        value = trainer.metrics.get("metrics/mAP50-95(B)", 0.0)
        print(
            f"  epoch {done}/{epochs}: val mAP50-95 {value:.4f}, ETA {elapsed / done * (epochs - done) / 60:.1f} min",
            flush=True,
        )

    model.add_callback("on_fit_epoch_end", progress)
    model.train(
        data=str(data_yaml),
        imgsz=imgsz,
        epochs=epochs,
        batch=batch,
        seed=seed,
        device="cpu",
        workers=2,
        cache="ram",
        pretrained=False,
        project=str(runs_dir()),
        name=f"baseline-{family}",
        exist_ok=True,
        **TRAIN_DEFAULTS,
    )
    train_seconds = time.perf_counter() - start
    shutil.copyfile(Path(model.trainer.best), out)
    map50_95, map50 = validate(out, data_yaml, imgsz)
    import torch
    import ultralytics

    record = BaselineRecord(
        family=family,
        checkpoint=out.name,
        imgsz=imgsz,
        epochs=epochs,
        batch=batch,
        seed=seed,
        map50_95=round(map50_95, 4),
        map50=round(map50, 4),
        data=Path(data_yaml).parent.name,
        data_digest=data_digest,
        train_seconds=round(train_seconds, 1),
        command=command or " ".join(sys.argv),
        versions={
            "ultralytics": ultralytics.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        date=date.today().isoformat(),
    )
    record.save(out)
    return record
