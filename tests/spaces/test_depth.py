"""The depth knob (`spaces.depth`) on real YOLO11n / YOLOv8n models (YAML, nc=10, 64 px): which blocks have inner
blocks, what removing them computes, how it combines with channel pruning, and how a policy and a space carry it."""

from __future__ import annotations

import optuna
import pytest
import torch
from ultralytics.nn.tasks import DetectionModel

from evaluators.vocabulary import UserError
from spaces.channel_groups import prepare_model
from spaces.depth import depth_units, remove_inner_blocks
from spaces.onnx_export import export_onnx, load
from spaces.policy import Policy
from spaces.pruning import apply_pruning, pruning_units, uniform_ratios
from spaces.segments import graph_segments
from spaces.space import SearchSpace
from spaces.yolo_blocks import C2fSplit, C2PSASplit

optuna.logging.set_verbosity(optuna.logging.WARNING)
IMGSZ = 64


def build(cfg: str) -> DetectionModel:
    torch.manual_seed(0)
    model = DetectionModel(cfg, nc=10, verbose=False)
    gen = torch.Generator().manual_seed(1)
    for module in model.modules():  # non-trivial BN statistics, so a wrong slice shows
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.rand(module.num_features, generator=gen) - 0.5)
            module.running_var.copy_(0.5 + torch.rand(module.num_features, generator=gen))
    return model.eval()


@pytest.fixture(scope="module")
def yolo11n() -> DetectionModel:
    return build("yolo11n.yaml")


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.rand(1, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(2))


def predict(model, x):
    with torch.no_grad():
        return model.eval()(x)[0]


def test_depth_units_are_the_blocks_with_inner_blocks(yolo11n):
    units = depth_units(yolo11n)
    prepared = prepare_model(yolo11n)
    twins = {p for p, m in prepared.named_modules() if isinstance(m, (C2fSplit, C2PSASplit))}
    assert set(units) == twins == {f"model.{i}" for i in (2, 4, 6, 8, 10, 13, 16, 19, 22)}
    assert all(units[u] == len(prepared.get_submodule(u).m) == 1 for u in units)
    assert set(depth_units(build("yolov8n.yaml"))) == {f"model.{i}" for i in (2, 4, 6, 8, 12, 15, 18, 21)}


def test_removing_a_c3k2s_inner_block_equals_zeroing_what_it_fed(yolo11n, image):
    """The shallow block is the full block whose output conv ignores the inner block's channels."""
    shallow = prepare_model(yolo11n)
    assert remove_inner_blocks(shallow, {"model.6": 1}) == ["model.6.m.0"]
    zeroed = prepare_model(yolo11n)
    block = zeroed.get_submodule("model.6")
    kept = block.cv0.conv.out_channels + block.cv1.conv.out_channels
    with torch.no_grad():
        block.cv2.conv.weight[:, kept:] = 0
    assert len(shallow.get_submodule("model.6").m) == 0
    assert shallow.get_submodule("model.6").cv2.conv.in_channels == kept
    torch.testing.assert_close(predict(shallow, image), predict(zeroed, image), rtol=1e-4, atol=1e-4)
    outputs = {}
    for name, model in (("shallow", shallow), ("full", prepare_model(yolo11n))):
        model.get_submodule("model.6").register_forward_hook(lambda _m, _i, out, n=name: outputs.__setitem__(n, out))
        predict(model, image)
    assert (outputs["shallow"] - outputs["full"]).abs().mean() > 0.01 * outputs["full"].abs().mean()


def test_removing_c2psas_inner_block_leaves_its_half_as_it_comes(yolo11n, image):
    shallow = prepare_model(yolo11n)
    remove_inner_blocks(shallow, {"model.10": 1})
    block = shallow.get_submodule("model.10")
    x = torch.rand(1, block.cv0.conv.in_channels, 2, 2)
    with torch.no_grad():
        assert torch.equal(block.eval()(x), block.cv2(torch.cat((block.cv0(x), block.cv1(x)), 1)))


def test_depth_and_channels_prune_together_and_export(yolo11n, image, tmp_path):
    units = pruning_units(yolo11n)
    every = depth_units(yolo11n)
    pruned = apply_pruning(yolo11n, uniform_ratios(units, 0.5), imgsz=IMGSZ)
    both = apply_pruning(yolo11n, uniform_ratios(units, 0.5), imgsz=IMGSZ, depth=every)
    assert both.base_macs == pruned.base_macs and both.base_params == pruned.base_params  # before: the full model
    assert both.macs < pruned.macs and both.params < pruned.params
    assert predict(both.model, image).shape == predict(pruned.model, image).shape
    nodes = {}
    for name, result in (("channels", pruned), ("both", both)):
        path = export_onnx(result.model, tmp_path / f"{name}.onnx", imgsz=IMGSZ, names={i: str(i) for i in range(10)})
        nodes[name] = len(load(path).graph.node)
    assert nodes["both"] < nodes["channels"]


def test_a_ratio_inside_a_removed_inner_block_is_ignored(yolo11n):
    layers = [u.name for u in pruning_units(yolo11n, granularity="layer")]
    assert any(u.startswith("model.6.m.0.") for u in layers)
    unit = next(u for u in layers if u.startswith("model.6.m.0."))  # exists only with the inner block
    shallow = apply_pruning(yolo11n, {}, imgsz=IMGSZ, granularity="layer", depth={"model.6": 1})
    ignored = apply_pruning(yolo11n, {unit: 0.5}, imgsz=IMGSZ, granularity="layer", depth={"model.6": 1})
    assert ignored.macs == shallow.macs


@pytest.mark.parametrize(
    "depth, words",
    [({"model.3": 1}, "which has none"), ({"model.6": 2}, "1 inner block"), ({"model.6": 0.5}, "not possible")],
)
def test_a_depth_the_model_cannot_take_is_one_clear_error(yolo11n, depth, words):
    with pytest.raises(UserError, match=words):
        apply_pruning(yolo11n, {}, imgsz=IMGSZ, depth=depth)


def test_a_policys_depth_is_canonical_and_keeps_the_ids_of_policies_without_it(tmp_path):
    plain = Policy(pruning={"model.2": 0.25})
    assert Policy(pruning={"model.2": 0.25}, depth={"model.6": 0}) == plain
    assert Policy(pruning={"model.2": 0.25}, depth={"model.6": 0}).policy_id == plain.policy_id
    assert "depth" not in plain.to_dict()
    deep = Policy(pruning={"model.2": 0.25}, depth={"model.8": 1, "model.6": 1})
    assert deep.policy_id != plain.policy_id and list(deep.depth) == ["model.6", "model.8"]
    assert Policy.from_dict(deep.to_dict()) == deep
    deep.to_yaml(tmp_path / "p.yaml")
    assert Policy.from_yaml(tmp_path / "p.yaml").policy_id == deep.policy_id
    for bad in (-1, 0.5, True, "1"):
        with pytest.raises(UserError, match="not a count"):
            Policy(depth={"model.6": bad})
    with pytest.raises(UserError, match="2 of them"):
        Policy(depth={"model.6": 2}).validate([], [], ["fp32"], depth_units={"model.6": 1})


@pytest.mark.parametrize("structured", [False, True], ids=["per-unit", "segments"])
def test_the_space_asks_depth_and_samples_it_back(yolo11n, structured):
    units = depth_units(yolo11n)
    segments = graph_segments(yolo11n, IMGSZ) if structured else ()
    common = dict(
        pruning_units=tuple(pruning_units(yolo11n)),
        precision_units=tuple(f"model.{i}" for i in range(24)),
        offered=("int8", "fp32"),
        segments=segments,
    )
    plain, space = SearchSpace(**common), SearchSpace(**common, depth_units=units)
    asked = [p.name for p in space.parameters() if p.name.startswith("depth.")]
    if structured:  # one per segment holding a block with inner blocks; the head holds none
        assert asked == [f"depth.{s}" for s in ("stem", "backbone-p3", "backbone-p4", "backbone-p5")] + [
            f"depth.neck-{i}" for i in ("1-p4", "2-p3", "3-p4", "4-p5")
        ]
    else:
        assert asked == [f"depth.{u}" for u in units]
    assert space.dimensions()["depth"] == len(asked) and "depth" not in plain.dimensions()
    assert space.dimensions()["total"] == plain.dimensions()["total"] + len(asked)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    depths = set()
    for _ in range(8):
        trial = study.ask()
        policy = space.sample(trial)
        assert set(policy.depth) <= set(units) and all(0 < n <= units[u] for u, n in policy.depth.items())
        if structured:  # both blocks of backbone-p5 (model.8, model.10) move together
            assert ("model.8" in policy.depth) == ("model.10" in policy.depth)
        params, _ = space.replay(policy)
        assert space.sample(optuna.trial.FixedTrial(params)) == policy
        depths.add(len(policy.depth))
        study.tell(trial, 0.0)
    assert len(depths) > 1  # some policies remove more inner blocks than others
