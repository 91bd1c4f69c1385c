"""The baseline a study compresses: a YOLO trained from scratch on the embedded data set.

`train_baseline` trains a model built from Ultralytics' YAML (no pretrained weights are
downloaded), validates the result, and writes next to the checkpoint a small JSON file
with its recorded mAP, image size, epochs, data-set digest and the exact command, so a
test can check that the committed checkpoint still scores what it says.

The checkpoint path is the user's: before any training, `check_target` refuses one that
would overwrite something other than a baseline (a corrupt or non-YOLO file, a checkpoint
without its record, a malformed record), so nothing is lost and no hour of training is
spent on an output that cannot be written.
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, fields
from datetime import date
from pathlib import Path

from ultralytics import YOLO

from evaluators.accuracy import VAL_DEFAULTS
from evaluators.paths import runs_dir
from evaluators.vocabulary import UserError
from search.checkpoint import load_baseline
from spaces.distillation import TRAIN_DEFAULTS

# Families the baseline command can build; each is an Ultralytics model YAML.
FAMILIES = ("yolo11n", "yolo11s", "yolov8n", "yolov8s")
REPO_BASELINE = Path(__file__).resolve().parents[2] / "studies" / "baseline" / "yolo11n-digits.pt"
# The JSON types a record's fields are stored as, by annotation (bools are not numbers here).
_JSON_TYPES = {"str": (str,), "int": (int,), "float": (int, float), "dict": (dict,)}
_VAL_BATCH = 16


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
        """The record beside `checkpoint`; UserError if it is missing, not a JSON object, or lacks,
        adds or mistypes a field."""
        path = cls.path_for(checkpoint)
        if not path.is_file():
            raise UserError(f"no baseline record {path} next to the checkpoint; train it with `squeezefit baseline`.")
        try:
            data = json.loads(path.read_text())
        except ValueError:  # JSON syntax, or bytes that are not text
            raise UserError(f"baseline record {path} is not valid JSON; train the baseline again.") from None
        if not isinstance(data, dict):
            raise UserError(f"baseline record {path} must be a JSON object; train the baseline again.")
        for f in fields(cls):
            if f.name not in data:
                raise UserError(f"baseline record {path} has no {f.name!r}; train the baseline again.")
            value = data[f.name]
            if isinstance(value, bool) or not isinstance(value, _JSON_TYPES[f.type]):
                raise UserError(f"baseline record {path} has {f.name} {value!r}, which is not a {f.type}.")
        if unknown := sorted(set(data) - {f.name for f in fields(cls)}):
            raise UserError(f"baseline record {path} has an unknown field {unknown[0]!r}.")
        return cls(**data)

    def save(self, checkpoint: Path) -> None:
        """Write the record beside `checkpoint`, atomically (a killed run never leaves half a record)."""
        path = self.path_for(checkpoint)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.replace(path)


def validate(checkpoint: Path, data_yaml: Path, imgsz: int) -> tuple[float, float]:
    """(mAP50-95, mAP50) of a checkpoint on the data set's val split, through Ultralytics' validator."""
    metrics = YOLO(str(checkpoint)).val(
        data=str(data_yaml),
        imgsz=imgsz,
        batch=_VAL_BATCH,
        device="cpu",
        workers=0,
        project=str(runs_dir()),
        name="val",
        exist_ok=True,
        **VAL_DEFAULTS,
    )
    return float(metrics.box.map), float(metrics.box.map50)


def check_target(family: str, out: Path) -> None:
    """UserError unless `family` is one of FAMILIES and `out` can take a new baseline.

    out must be a `.pt` path whose folder can be made (it is made), and either new or a
    baseline to replace: a YOLO detection checkpoint with a valid record beside it. A
    corrupt or non-YOLO file there, or a checkpoint without a valid record, may be the
    user's own: it is kept, and the error says so before anything is trained.
    """
    if family not in FAMILIES:
        raise UserError(f"unknown model family {family!r}; choose one of {', '.join(FAMILIES)}.")
    out = Path(out)
    if out.suffix != ".pt" or out.is_dir():
        raise UserError(f"the baseline checkpoint {out} must be a .pt file path (its record goes beside it as .json).")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot make the folder {out.parent} for the baseline ({exc.strerror}).") from None
    if not out.exists():
        return
    try:
        load_baseline(out)
    except UserError:
        raise UserError(
            f"{out} exists and is not a YOLO detection checkpoint to replace; choose another --out or remove it."
        ) from None
    try:
        BaselineRecord.load(out)
    except UserError:
        raise UserError(
            f"{out} has no valid baseline record beside it, so it is not a baseline to replace; "
            "choose another --out or remove it."
        ) from None


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
    """Train `family` from scratch on `data_yaml`, copy best.pt to `out`, record its scores next to it.

    UserError (before training) where `check_target` refuses `family` or `out`.
    """
    check_target(family, out)
    out = Path(out)
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
