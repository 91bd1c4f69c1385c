"""The structured space: segments of a real YOLO11n and YOLOv8n (YAML, nc=10, 64 px) and a SearchSpace that asks one
ratio and one precision per segment, in real Optuna studies."""

from __future__ import annotations

import optuna
import pytest
import torch
from optuna.trial import FixedTrial
from ultralytics.nn.tasks import DetectionModel

from spaces.onnx_export import export_onnx, precision_units
from spaces.pruning import pruning_units
from spaces.segments import INPUT_SEGMENT, Segment, block_strides, graph_segments, precision_segments, segment_of
from spaces.space import SearchSpace

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = [
    pytest.mark.filterwarnings("ignore:Fixed parameter"),
    pytest.mark.filterwarnings("ignore:The value .* is out of the range"),
]
IMGSZ = 64
YOLO11N = (
    ("stem", 0, 2),
    ("backbone-p3", 3, 4),
    ("backbone-p4", 5, 6),
    ("backbone-p5", 7, 10),
    ("neck-1-p4", 11, 13),
    ("neck-2-p3", 14, 16),
    ("neck-3-p4", 17, 19),
    ("neck-4-p5", 20, 22),
    ("head-p3", 23, 23),
    ("head-p4", 23, 23),
    ("head-p5", 23, 23),
)
PRECISION_SEGMENTS = (("input", 0, 0), ("stem", 1, 2), *YOLO11N[1:-3], ("head", 23, 23))


@pytest.fixture(scope="module")
def yolo11n(tmp_path_factory):
    torch.manual_seed(0)
    model = DetectionModel("yolo11n.yaml", nc=10, verbose=False)
    onnx_path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "m.onnx", imgsz=IMGSZ, names=list("0123456789"))
    return model, tuple(pruning_units(model)), tuple(precision_units(onnx_path))


@pytest.fixture(scope="module")
def structured(yolo11n) -> SearchSpace:
    model, prune, precision = yolo11n
    return SearchSpace(prune, precision, ("int8", "fp32"), segments=graph_segments(model, IMGSZ))


def test_yolo11n_splits_by_part_and_resolution(yolo11n):
    model = yolo11n[0]
    segments = graph_segments(model, IMGSZ)
    assert [(s.name, s.first, s.last) for s in segments] == list(YOLO11N)
    strides = block_strides(model, IMGSZ)
    assert strides[:11] == [2, 4, 4, 8, 8, 16, 16, 32, 32, 32, 32]
    for s in segments[1:-3]:  # one resolution inside a segment
        assert len({strides[i] for i in range(s.first, s.last + 1)}) == 1, s
    # the head's scales: each holds its unit and its branches' convs, at the stride its name says
    assert [s.paths for s in segments[-3:]] == [
        (f"model.23.p{level}", f"model.23.cv2.{k}", f"model.23.cv3.{k}") for k, level in enumerate((3, 4, 5))
    ]
    assert [int(x) for x in model.model[-1].stride] == [8, 16, 32]


def test_precision_segments_split_off_the_block_reading_the_image(yolo11n):
    segments = graph_segments(yolo11n[0], IMGSZ)
    assert [(s.name, s.first, s.last) for s in precision_segments(segments)] == list(PRECISION_SEGMENTS)
    alone = (Segment(INPUT_SEGMENT, 0, 0), Segment("rest", 1, 4))
    assert precision_segments(alone) == alone and precision_segments(()) == ()


def test_a_segment_round_trips_through_a_study_record(yolo11n):
    segments = graph_segments(yolo11n[0], IMGSZ)
    assert tuple(Segment.from_list(s.to_list()) for s in segments) == segments
    assert Segment.from_list(["head", 23, 23]) == Segment("head", 23, 23)  # a record from before head scales


def test_yolov8n_has_the_same_shape_of_segments():
    model = DetectionModel("yolov8n.yaml", nc=10, verbose=False)
    names = [s.name for s in graph_segments(model, IMGSZ)]
    assert names[0] == "stem" and names[-3:] == ["head-p3", "head-p4", "head-p5"]
    assert "backbone-p5" in names and "neck-2-p3" in names


def test_segments_cover_every_unit_once_in_order(yolo11n):
    model, prune, precision = yolo11n
    segments = graph_segments(model, IMGSZ)
    whole = precision_segments(segments)
    assert [s.first for s in whole[1:]] == [s.last + 1 for s in whole[:-1]] and whole[0].first == 0
    assert segment_of(segments, "model.2.cv0").name == "stem" and segment_of(whole, "model.23").name == "head"
    assert segment_of(segments, "model.23.p4").name == "head-p4"
    assert segment_of(segments, "model.23.cv3.2.0.1").name == "head-p5"  # a conv path (layer granularity)
    for unit in [u.name for u in prune] + [u.name for u in pruning_units(model, granularity="layer")]:
        assert sum(s.holds(unit) for s in segments) == 1, unit
    for unit in precision:
        assert sum(s.holds(unit) for s in whole) == 1, unit
    with pytest.raises(ValueError, match="not a unit"):
        Segment("x", 0, 1).holds("backbone.2")


def test_the_structured_space_states_fewer_dimensions(yolo11n, structured):
    _, prune, precision = yolo11n
    per_unit = SearchSpace(prune, precision, ("int8", "fp32"))
    assert per_unit.dimensions()["prune"] == len(prune) and per_unit.dimensions()["precision"] == len(precision)
    dims = structured.dimensions()
    # ratios: every segment but the neck runs without a prunable unit (11-13 holds model.13, 14-16 model.16, ...)
    assert dims["precision"] == len(PRECISION_SEGMENTS) and dims["prune"] <= len(YOLO11N)
    total = per_unit.dimensions()["total"]
    assert dims["total"] == dims["prune"] + dims["precision"] + dims["distill"] <= 0.55 * total  # about half


def test_a_sampled_policy_is_uniform_inside_each_segment(structured):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    mixed = 0
    for _ in range(12):
        trial = study.ask()
        policy = structured.sample(trial)
        knobs = [name.split(".", 1) for name in trial.params if name.startswith(("prune.", "precision."))]
        assert {knob for knob, _ in knobs} == {"prune", "precision"}
        assert {key for knob, key in knobs if knob == "prune"} <= {s[0] for s in YOLO11N}
        assert {key for knob, key in knobs if knob == "precision"} == {s[0] for s in PRECISION_SEGMENTS}
        for segment in structured.segments:
            ratios = {r for u, r in policy.pruning.items() if segment.holds(u)}
            assert len(ratios) <= 1, (segment, policy)
        for segment in precision_segments(structured.segments):
            kinds = {policy.precision.get(u, "fp32") for u in structured.precision_units if segment.holds(u)}
            assert len(kinds) == 1, (segment, policy)
        boundaries = sum(
            policy.precision.get(a, "fp32") != policy.precision.get(b, "fp32")
            for a, b in zip(structured.precision_units, structured.precision_units[1:], strict=False)
        )
        assert boundaries <= len(PRECISION_SEGMENTS) - 1
        mixed += boundaries > 0
        study.tell(trial, 0.0)
    assert mixed  # the space does mix precisions, segment by segment


def test_references_and_sampled_policies_round_trip(structured):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=2))
    policies = [*structured.reference_policies().values()]
    for _ in range(5):
        trial = study.ask()
        policies.append(structured.sample(trial))
        study.tell(trial, 0.0)
    for policy in policies:
        params = structured.to_params(policy)
        assert structured.sample(FixedTrial(params)).policy_id == policy.policy_id
        replayed, distributions = structured.replay(policy)
        assert replayed == params and set(distributions) == set(params)


def test_a_policy_mixed_inside_a_segment_is_not_in_the_space(structured):
    policy = structured.reference_policies()["all-int8"]
    inside_stem = dict(policy.precision, **{"model.1": "fp32"})
    with pytest.raises(RuntimeError, match="does not sample policy"):
        structured.replay(type(policy)(pruning=policy.pruning, precision=inside_stem))


def test_a_segments_range_is_its_most_sensitive_units(yolo11n):
    model, prune, precision = yolo11n
    narrowed = SearchSpace(
        prune,
        precision,
        ("int8", "fp32"),
        ratio_ranges={"model.3": (0.0, 0.2)},
        segments=graph_segments(model, IMGSZ),
    )
    search = next(p.search for p in narrowed.parameters() if p.name == "prune.backbone-p3")
    assert (search.low, search.high) == (0.0, 0.2)
