"""The embedded data set: deterministic bytes, sane labels, disjoint splits."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from evaluators.vocabulary import UserError
from search.embedded.data import NAMES, DatasetSpec, _render, dataset_digest, generate_dataset, render_image

SMALL = DatasetSpec(train=24, val=8, imgsz=128, seed=3)


def test_same_seed_same_bytes(tmp_path):
    a = generate_dataset(tmp_path / "a", SMALL)
    b = generate_dataset(tmp_path / "b", SMALL)
    assert dataset_digest(a.parent) == dataset_digest(b.parent)
    other = generate_dataset(tmp_path / "c", DatasetSpec(train=24, val=8, imgsz=128, seed=4))
    assert dataset_digest(other.parent) != dataset_digest(a.parent)


def test_layout_and_labels(tmp_path):
    data_yaml = generate_dataset(tmp_path, SMALL)
    meta = yaml.safe_load(data_yaml.read_text())
    assert "download" not in meta
    assert meta["names"] == dict(enumerate(NAMES)) and len(NAMES) >= 10
    root = Path(meta["path"])
    for split, count in (("train", SMALL.train), ("val", SMALL.val)):
        images = sorted((root / meta[split]).glob("*.jpg"))
        assert len(images) == count
    classes, boxes = [], 0
    for label in (root / "labels" / "train").glob("*.txt"):
        for line in label.read_text().splitlines():
            c, *xywh = line.split()
            classes.append(int(c))
            x, y, w, h = map(float, xywh)
            assert x - w / 2 >= 0 and x + w / 2 <= 1 and y - h / 2 >= 0 and y + h / 2 <= 1 and w > 0 and h > 0
            boxes += 1
    assert boxes >= SMALL.train  # at least one object per image on average
    assert len(set(classes)) >= 8


def test_images_vary_and_splits_differ():
    a, _ = render_image(SMALL, "train", 0)
    b, _ = render_image(SMALL, "train", 1)
    v, _ = render_image(SMALL, "val", 0)
    assert a.shape == (128, 128, 3) and a.dtype == np.uint8
    assert not np.array_equal(a, b) and not np.array_equal(a, v)


def test_interrupted_generation_is_not_trusted(tmp_path):
    data_yaml = generate_dataset(tmp_path, SMALL)
    digest = dataset_digest(data_yaml.parent)
    data_yaml.unlink()  # as if the run had died before finishing
    next(iter((data_yaml.parent / "images" / "val").glob("*.jpg"))).write_bytes(b"truncated")
    assert dataset_digest(generate_dataset(tmp_path, SMALL).parent) == digest


@pytest.mark.parametrize("kwargs", [{"train": 0}, {"imgsz": 16}])
def test_bad_spec_is_a_user_error(kwargs):
    with pytest.raises(UserError):
        DatasetSpec(**kwargs)


def test_images_do_not_depend_on_the_callers_opencv_settings():
    """Intel IPP rounds by CPU (SSE4.2, AVX2 and AVX-512 paths each differently), so the renderer runs without it
    whatever the caller chose, and gives the caller's choice back."""
    used = cv2.ipp.useIPP()
    try:
        cv2.ipp.setUseIPP(True)
        with_ipp = [render_image(SMALL, "train", i)[0] for i in range(SMALL.train)]
        assert cv2.ipp.useIPP(), "the caller's IPP setting was not restored"
        if cv2.ipp.useIPP():  # this OpenCV has IPP: show that it would have changed the bytes
            assert any(not np.array_equal(_render(SMALL, "train", i)[0], a) for i, a in enumerate(with_ipp))
        cv2.ipp.setUseIPP(False)
        assert all(np.array_equal(render_image(SMALL, "train", i)[0], a) for i, a in enumerate(with_ipp))
    finally:
        cv2.ipp.setUseIPP(used)
