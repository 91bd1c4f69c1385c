"""The committed baseline loads with Ultralytics and scores what its record says."""

from ultralytics import YOLO

from search.embedded.baseline import REPO_BASELINE, validate
from search.embedded.data import dataset_digest


def test_baseline_loads_as_a_detector(embedded):
    record = embedded.record
    model = YOLO(str(REPO_BASELINE))
    assert model.task == "detect"
    assert len(model.names) == 10
    assert record.family == "yolo11n" and record.command.startswith("squeezefit baseline")


def test_baseline_map_matches_its_record(embedded):
    record, data_yaml = embedded.record, embedded.data_yaml
    assert dataset_digest(data_yaml.parent) == record.data_digest, (
        "the embedded data set changed since the baseline was recorded"
    )
    map50_95, map50 = validate(REPO_BASELINE, data_yaml, record.imgsz)
    assert abs(map50_95 - record.map50_95) <= 0.01
    assert abs(map50 - record.map50) <= 0.01
    assert map50_95 < 0.9  # compression must have room to trade accuracy for speed
