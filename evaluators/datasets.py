"""Reading a detection data set's YAML: the image files of a split, and fixed subsets of it.

A subset is always the first N images of a split sorted by file name, so two measurements
at the same N see the same images (the fidelity knob of validation and fine-tuning).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from evaluators.vocabulary import UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def split_images(data_yaml: Path, split: str) -> tuple[dict, list[Path]]:
    """The data YAML's contents and the image files of `split`, sorted by name."""
    try:
        data = yaml.safe_load(Path(data_yaml).read_text())
    except (OSError, yaml.YAMLError):
        raise UserError(f"data set file {data_yaml} cannot be read as YAML.") from None
    if not isinstance(data, dict) or split not in data:
        raise UserError(f"data set file {data_yaml} has no {split!r} split.")
    root = Path(data.get("path") or Path(data_yaml).parent)
    entry = Path(data[split]) if Path(data[split]).is_absolute() else root / data[split]
    if entry.is_dir():
        images = sorted(p for p in entry.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    elif entry.suffix == ".txt" and entry.is_file():
        images = [Path(line.strip()) for line in entry.read_text().splitlines() if line.strip()]
    else:
        raise UserError(f"the {split!r} split of {data_yaml} points to {entry}, which does not exist.")
    return data, images


def subset_data_yaml(data_yaml: Path, split: str, max_images: int | None, workdir: Path) -> Path:
    """A data YAML (written in `workdir`) whose `split` lists only its first `max_images` images.

    `max_images` None or 0 returns `data_yaml` itself (the whole split).
    """
    if not max_images:
        return Path(data_yaml)
    data, images = split_images(data_yaml, split)
    workdir.mkdir(parents=True, exist_ok=True)
    listing = workdir / f"{split}-first{max_images}.txt"
    listing.write_text("".join(f"{p.resolve()}\n" for p in images[:max_images]))
    subset = dict(data, path=str(Path(data.get("path") or Path(data_yaml).parent).resolve()), **{split: str(listing)})
    subset.pop("download", None)
    out = workdir / f"data-{split}-first{max_images}.yaml"
    out.write_text(yaml.safe_dump(subset, sort_keys=False))
    return out
