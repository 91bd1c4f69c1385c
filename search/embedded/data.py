"""The embedded default data set: digits over real photographs, generated, never downloaded.

Scikit-learn ships 1,797 handwritten digits (8x8, 17 grey levels) and scikit-image ships a
few dozen real photographs. `generate_dataset` composites the digits — scaled 12 to 64 px,
stretched, rotated, coloured, some faint — over random crops of the photographs, adds
clutter that looks like ink (strokes, rings, boxes, printed letters as hard negatives),
blur and sensor noise, and writes an Ultralytics detection data set: JPEG images, YOLO
label files and a `data.yaml` without a `download:` key.

Train and val use disjoint digit instances (the writers differ) and disjoint draws, so a
nano detector does not saturate: that is what lets compression visibly trade accuracy
for speed. The same arguments give the same bytes: every image draws from its own
`numpy.random.default_rng((seed, split, index))` and nothing depends on the clock or on
the order images are written in. Nor on the CPU, among those with AVX2 (every machine
squeezefit has run on): OpenCV renders without Intel IPP, whose SSE4.2, AVX2 and AVX-512
code paths each round the float resizes and warps differently (version 1 of the generator
used IPP, and its bytes followed the CPU).
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import yaml

from evaluators.vocabulary import UserError

NAMES = tuple(str(d) for d in range(10))
# Bump when the generator's output changes, so an old copy on disk is not reused.
GENERATOR_VERSION = 2
# Digit instances [0, 1400) draw the train split, the rest the val split.
_TRAIN_DIGITS = 1400
_PHOTOS = (
    "astronaut",
    "brick",
    "camera",
    "cat",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "page",
    "retina",
    "rocket",
    "text",
    "clock",
    "cell",
    "colorwheel",
)
_LETTERS = "ABCEFHKLMNPRTUVWXYZ"
_SPLIT_IDS = {"train": 0, "val": 1}


@dataclass(frozen=True)
class DatasetSpec:
    """What to generate. Sizes are image counts; `imgsz` is the square image side in px."""

    train: int = 1500
    val: int = 300
    imgsz: int = 192
    seed: int = 0

    def __post_init__(self) -> None:
        if self.train < 1 or self.val < 1:
            raise UserError(f"the data set needs at least one train and one val image, got {self.train}/{self.val}.")
        if not 64 <= self.imgsz <= 1024:
            raise UserError(f"image size must be between 64 and 1024 px, got {self.imgsz}.")

    @property
    def dirname(self) -> str:
        return f"digits-v{GENERATOR_VERSION}-{self.train}x{self.val}-{self.imgsz}px-seed{self.seed}"


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.images / 16.0).astype(np.float32), digits.target.astype(np.int64)


@lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    import skimage.data

    photos = []
    for name in _PHOTOS:
        img = np.asarray(getattr(skimage.data, name)())
        if img.dtype != np.uint8:
            img = (img * 255).astype(np.uint8) if img.dtype == bool else img.astype(np.uint8)
        if img.ndim == 2:
            img = np.stack([img] * 3, axis=-1)
        photos.append(np.ascontiguousarray(img[..., :3]))
    return tuple(photos)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random crop of a random photograph, flipped and colour-shifted (uint8, size x size x 3)."""
    photo = _photos()[rng.integers(len(_PHOTOS))]
    h, w = photo.shape[:2]
    side = int(rng.integers(min(h, w) // 3, min(h, w) + 1))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = cv2.resize(photo[y : y + side, x : x + side], (size, size), interpolation=cv2.INTER_AREA)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    crop = crop.astype(np.float32) * rng.uniform(0.6, 1.3) + rng.uniform(-40, 40)
    crop = crop[..., rng.permutation(3)]  # colour shift: shuffle channels
    return np.ascontiguousarray(np.clip(crop, 0, 255).astype(np.uint8))


def _draw_clutter(rng: np.random.Generator, img: np.ndarray) -> None:
    size = img.shape[0]
    for _ in range(int(rng.integers(2, 9))):
        colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
        thickness = int(rng.integers(1, 4))
        kind = rng.integers(4)
        p = rng.integers(0, size, 4)
        if kind == 0:
            cv2.line(img, (int(p[0]), int(p[1])), (int(p[2]), int(p[3])), colour, thickness, cv2.LINE_AA)
        elif kind == 1:
            cv2.circle(img, (int(p[0]), int(p[1])), int(rng.integers(4, size // 5)), colour, thickness, cv2.LINE_AA)
        elif kind == 2:
            cv2.rectangle(img, (int(p[0]), int(p[1])), (int(p[2]), int(p[3])), colour, thickness)
        else:  # a printed letter: digit-like ink that must not be detected
            letter = _LETTERS[int(rng.integers(len(_LETTERS)))]
            scale = float(rng.uniform(0.5, 1.6))
            cv2.putText(
                img, letter, (int(p[0]), int(p[1])), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thickness + 1, cv2.LINE_AA
            )


def _glyph(rng: np.random.Generator, digit: np.ndarray, size: int) -> np.ndarray:
    """A digit as an alpha mask in [0, 1]: scaled, stretched, rotated, with a margin for rotation."""
    h = int(rng.integers(12, min(64, size // 2) + 1))
    w = max(6, int(h * rng.uniform(0.6, 1.2)))
    glyph = cv2.resize(digit, (w, h), interpolation=cv2.INTER_CUBIC)
    pad = max(h, w) // 2
    glyph = cv2.copyMakeBorder(np.clip(glyph, 0, 1), pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    angle = float(rng.uniform(-20, 20))
    centre = (glyph.shape[1] / 2, glyph.shape[0] / 2)
    rotation = cv2.getRotationMatrix2D(centre, angle, 1.0)
    glyph = cv2.warpAffine(glyph, rotation, (glyph.shape[1], glyph.shape[0]), flags=cv2.INTER_LINEAR)
    return np.clip((glyph - 0.15) * 1.6, 0, 1)  # crisp edges, thin strokes kept


def _overlaps(box: tuple[int, int, int, int], boxes: list) -> bool:
    x0, y0, x1, y1 = box
    for bx0, by0, bx1, by1 in boxes:
        iw, ih = min(x1, bx1) - max(x0, bx0), min(y1, by1) - max(y0, by0)
        if iw > 0 and ih > 0 and iw * ih > 0.2 * min((x1 - x0) * (y1 - y0), (bx1 - bx0) * (by1 - by0)):
            return True
    return False


@contextmanager
def _without_ipp():
    """OpenCV without Intel IPP for the block: IPP picks its code path by CPU, and the paths round differently."""
    used = cv2.ipp.useIPP()
    cv2.ipp.setUseIPP(False)
    try:
        yield
    finally:
        cv2.ipp.setUseIPP(used)


def render_image(
    spec: DatasetSpec, split: str, index: int
) -> tuple[np.ndarray, list[tuple[int, float, float, float, float]]]:
    """One image (HxWx3 uint8, BGR) and its labels (class, cx, cy, w, h normalised to [0, 1])."""
    with _without_ipp():
        return _render(spec, split, index)


def _render(
    spec: DatasetSpec, split: str, index: int
) -> tuple[np.ndarray, list[tuple[int, float, float, float, float]]]:
    rng = np.random.default_rng((spec.seed, _SPLIT_IDS[split], index))
    images, targets = _digits()
    pool = np.arange(_TRAIN_DIGITS) if split == "train" else np.arange(_TRAIN_DIGITS, len(images))
    size = spec.imgsz
    canvas = _background(rng, size)
    if rng.random() < 0.7:
        _draw_clutter(rng, canvas)
    canvas = canvas.astype(np.float32)

    labels, boxes = [], []
    for _ in range(int(rng.integers(1, 7))):
        k = int(pool[rng.integers(len(pool))])
        alpha = _glyph(rng, images[k], size)
        gh, gw = alpha.shape
        if gh >= size or gw >= size:
            continue
        ys, xs = np.nonzero(alpha > 0.3)
        if len(ys) == 0:
            continue
        y, x = int(rng.integers(0, size - gh)), int(rng.integers(0, size - gw))
        box = (x + int(xs.min()), y + int(ys.min()), x + int(xs.max()) + 1, y + int(ys.max()) + 1)
        if _overlaps(box, boxes):
            continue
        # Ink colour: mostly contrasting with the patch, sometimes faint (the hard cases).
        patch = canvas[y : y + gh, x : x + gw]
        contrast = rng.uniform(0.25, 0.5) if rng.random() < 0.25 else rng.uniform(0.7, 1.0)
        ink = np.where(patch.mean((0, 1)) > 127, 0.0, 255.0) * contrast + patch.mean((0, 1)) * (1 - contrast)
        ink = np.clip(ink + rng.uniform(-60, 60, 3), 0, 255)
        a = alpha[..., None] * rng.uniform(0.75, 1.0)
        canvas[y : y + gh, x : x + gw] = patch * (1 - a) + ink * a
        boxes.append(box)
        bx0, by0, bx1, by1 = box
        labels.append(
            (int(targets[k]), (bx0 + bx1) / 2 / size, (by0 + by1) / 2 / size, (bx1 - bx0) / size, (by1 - by0) / size)
        )

    if rng.random() < 0.3:
        canvas = cv2.GaussianBlur(canvas, (3, 3), float(rng.uniform(0.3, 1.0)))
    canvas = canvas + rng.normal(0, rng.uniform(2, 12), canvas.shape)
    return np.clip(canvas, 0, 255).astype(np.uint8)[..., ::-1].copy(), labels


def generate_dataset(root: Path, spec: DatasetSpec = DatasetSpec(), *, progress: bool = False) -> Path:
    """Write the data set under `root/spec.dirname` (if not complete there already); return its data.yaml.

    A directory is reused only if its `data.yaml` exists, which is written last, so an
    interrupted run is regenerated rather than trusted.
    """
    out = Path(root) / spec.dirname
    data_yaml = out / "data.yaml"
    if data_yaml.is_file():
        return data_yaml
    for split, count in (("train", spec.train), ("val", spec.val)):
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, labels = render_image(spec, split, i)
            stem = f"{split}_{i:05d}"
            cv2.imwrite(str(out / "images" / split / f"{stem}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 92])
            lines = "".join(f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n" for c, x, y, w, h in labels)
            (out / "labels" / split / f"{stem}.txt").write_text(lines)
            if progress and (i + 1) % 100 == 0:
                print(f"  {split}: {i + 1}/{count} images", flush=True)
    meta = {"path": str(out.resolve()), "train": "images/train", "val": "images/val", "names": dict(enumerate(NAMES))}
    data_yaml.write_text(yaml.safe_dump(meta, sort_keys=False))
    return data_yaml


def dataset_digest(root: Path) -> str:
    """SHA-256 over every image and label file's relative path and bytes (data.yaml excluded: it holds an absolute path)."""
    root = Path(root)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".jpg", ".txt")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()
