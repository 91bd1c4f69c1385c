"""Structured pruning of real YOLO11 / YOLOv8 models (built from YAML, nc=10, 64 px)."""

from __future__ import annotations

import copy
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import onnxruntime as ort
import optuna
import pytest
import torch
import torch_pruning as tp
from ultralytics.nn.modules.block import C2PSA, C2f
from ultralytics.nn.tasks import DetectionModel

from evaluators.vocabulary import UserError
from spaces.channel_groups import prepare_model
from spaces.importance import CRITERIA, Criterion, fisher_gradients, get_criterion, loss_gradients
from spaces.params import Params
from spaces.pruning import (
    MAX_RATIO,
    RATIO_RANGE,
    IterativePruning,
    PruningUnit,
    apply_pruning,
    kept_channels,
    pruning_units,
    ratio_params,
    uniform_ratios,
)
from spaces.yolo_blocks import C2fSplit, C2PSASplit, replace_split_blocks

IMGSZ = 64
CONFIGS = ["yolo11n.yaml", "yolov8n.yaml"]
REPO = Path(__file__).resolve().parents[2]


def build(cfg: str) -> DetectionModel:
    torch.manual_seed(0)
    model = DetectionModel(cfg, nc=10, verbose=False)
    # Non-trivial BN statistics, so that a wrong split or a stale statistic shows.
    gen = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.rand(module.num_features, generator=gen) - 0.5)
            module.running_var.copy_(0.5 + torch.rand(module.num_features, generator=gen))
    return model


def predict(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)[0]


@pytest.fixture(scope="module", params=CONFIGS)
def base(request) -> DetectionModel:
    return build(request.param)


@pytest.fixture(scope="module")
def units(base) -> list[PruningUnit]:
    return pruning_units(base)


@pytest.fixture(scope="module")
def pruned(base, units):
    return apply_pruning(base, uniform_ratios(units, 0.5), imgsz=IMGSZ)


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.rand(1, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(2))


def detect_final_layers(model) -> set[str]:
    head = len(model.model) - 1
    return {f"model.{head}.{branch}.{i}.2" for branch in ("cv2", "cv3") for i in range(model.model[-1].nl)}


def test_block_replacement_is_equivalent(base, image):
    twin = copy.deepcopy(base)
    replaced = replace_split_blocks(twin)
    assert replaced and not any(isinstance(m, (C2f, C2PSA)) for m in twin.modules())
    assert all(isinstance(twin.get_submodule(p), (C2fSplit, C2PSASplit)) for p in replaced)
    assert torch.allclose(predict(base, image), predict(twin, image), atol=1e-5)
    assert replace_split_blocks(twin) == []


def test_units_cover_backbone_neck_and_head_but_not_final_convs(base, units):
    names = [u.name for u in units]
    assert len(names) == len(set(names))
    assert {u.kind for u in units} == {"backbone", "neck", "head"}
    head = f"model.{len(base.model) - 1}"
    assert [u.name for u in units if u.kind == "head"] == [f"{head}.p{level}" for level in (3, 4, 5)]  # one per scale
    assert all(u.channels > 0 and u.layers for u in units)
    detect_inputs = {f"model.{i}" for i in base.model[-1].f}
    assert detect_inputs <= {u.name for u in units if u.kind == "neck"}

    layers = pruning_units(base, granularity="layer")
    assert len(layers) > len(units)
    assert sum(u.channels for u in layers) == sum(u.channels for u in units)
    paths = {p for u in layers for p in u.layers}
    assert not paths & detect_final_layers(base)
    assert not any(".dfl" in p or ".attn." in p for p in paths)


def test_uniform_ratio_shrinks_macs_and_params(base, units, image):
    results = [apply_pruning(base, uniform_ratios(units, r), imgsz=IMGSZ) for r in (0.0, 0.25, 0.5)]
    macs = [r.macs for r in results]
    params = [r.params for r in results]
    assert macs[0] == results[0].base_macs and params[0] == results[0].base_params
    assert macs[0] > macs[1] > macs[2] and params[0] > params[1] > params[2]
    # Per-channel ratio p removes about 1 - (1 - p)^2 of the parameters.
    assert 0.2 < params[2] / params[0] < 0.4
    # Ratio 0 is the same function.
    assert torch.allclose(predict(base, image), predict(results[0].model, image), atol=1e-5)
    assert results[0].channels == {u.name: u.channels for u in units}


@pytest.mark.parametrize("granularity", ["block", "layer"])
@pytest.mark.parametrize("importance", ["magnitude", "taylor", "lamp", "hessian"])
def test_random_policies_apply(base, image, granularity, importance):
    rng = random.Random(f"{granularity}-{importance}")
    units = pruning_units(base, granularity=granularity)
    ratios = {u.name: rng.choice([0.0, 0.2, 0.4, 0.6, 0.8]) for u in units}
    result = apply_pruning(base, ratios, imgsz=IMGSZ, importance=importance, granularity=granularity)
    assert result.ratios == ratios
    assert result.params < result.base_params and result.macs < result.base_macs
    for unit in units:
        assert 0 < result.channels[unit.name] <= unit.channels
        if ratios[unit.name] == 0.0:
            assert result.channels[unit.name] == unit.channels
    assert predict(result.model, image).shape == predict(base, image).shape


def _two_images() -> dict:
    return {
        "img": torch.rand(2, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(3)),
        "batch_idx": torch.tensor([0.0, 1.0, 1.0]),
        "cls": torch.tensor([[1.0], [4.0], [2.0]]),
        "bboxes": torch.tensor([[0.5, 0.5, 0.4, 0.3], [0.3, 0.6, 0.2, 0.2], [0.7, 0.3, 0.2, 0.3]]),
    }


def test_taylor_uses_the_example_batch(base, units):
    batch = _two_images()
    ratios = uniform_ratios(units, 0.5)
    taylor = apply_pruning(base, ratios, imgsz=IMGSZ, importance="taylor", example_batch=batch)
    magnitude = apply_pruning(base, ratios, imgsz=IMGSZ, importance="magnitude")
    assert taylor.params == magnitude.params  # same widths...
    kept_taylor, kept_magnitude = taylor.model.state_dict(), magnitude.model.state_dict()
    assert any(not torch.equal(kept_taylor[k], kept_magnitude[k]) for k in kept_taylor)  # ...other channels


def test_fisher_gradients_average_each_images_squared_gradient(base):
    model = prepare_model(base).eval().requires_grad_(True)
    batch = _two_images()
    weight = model.model[-1].cv3[0][-1].weight  # the class logits' conv: gradients far from zero
    per_image = []
    for index, boxes in ((0, [0]), (1, [1, 2])):
        one = {
            "img": batch["img"][index : index + 1],
            "batch_idx": torch.zeros(len(boxes)),
            "cls": batch["cls"][boxes],
            "bboxes": batch["bboxes"][boxes],
        }
        loss_gradients(model, one, IMGSZ)
        per_image.append(weight.grad.clone())
    fisher_gradients(model, batch, IMGSZ)
    fisher = (per_image[0] ** 2 + per_image[1] ** 2) / 2
    assert fisher.abs().max() > 1e-8 and torch.allclose(weight.grad, fisher, rtol=1e-4, atol=fisher.abs().max() * 1e-6)
    loss_gradients(model, batch, IMGSZ)  # the batch's gradient squared is not the same thing
    assert not torch.allclose(weight.grad**2, fisher, rtol=1e-2, atol=0)


def test_hessian_ranks_channels_by_curvature_not_slope(base, units):
    batch, ratios = _two_images(), uniform_ratios(units, 0.5)
    hessian = apply_pruning(base, ratios, imgsz=IMGSZ, importance="hessian", example_batch=batch)
    taylor = apply_pruning(base, ratios, imgsz=IMGSZ, importance="taylor", example_batch=batch)
    assert hessian.params == taylor.params  # same widths, other channels:
    kept_hessian, kept_taylor = hessian.model.state_dict(), taylor.model.state_dict()
    assert any(not torch.equal(kept_hessian[k], kept_taylor[k]) for k in kept_hessian)


def test_head_outputs_keep_their_width(base, pruned, image):
    head = pruned.model.model[-1]
    assert all(branch[-1].out_channels == 4 * head.reg_max for branch in head.cv2)
    assert all(branch[-1].out_channels == head.nc for branch in head.cv3)
    assert predict(pruned.model, image).shape == (1, 4 + 10, sum((IMGSZ // s) ** 2 for s in (8, 16, 32)))


def test_each_head_scale_prunes_alone_and_the_whole_head_by_its_block_name(base, units, image):
    head = len(base.model) - 1
    width = {k: base.model[-1].cv2[k][0].conv.out_channels for k in range(3)}
    p5 = apply_pruning(base, {f"model.{head}.p5": 0.5}, imgsz=IMGSZ)
    assert [p5.model.model[-1].cv2[k][0].conv.out_channels for k in range(3)] == [width[0], width[1], width[2] // 2]
    assert p5.ratios[f"model.{head}.p3"] == 0.0 and p5.macs < p5.base_macs
    # a policy stored when the head was one unit, `model.<i>`, prunes every scale at its ratio
    whole = apply_pruning(base, {f"model.{head}": 0.5}, imgsz=IMGSZ)
    scales = apply_pruning(base, {u.name: 0.5 for u in units if u.kind == "head"}, imgsz=IMGSZ)
    assert whole.channels == scales.channels and whole.macs == scales.macs
    assert predict(whole.model, image).shape == predict(base, image).shape


def test_pruned_model_trains_one_step(pruned):
    model = copy.deepcopy(pruned.model).train()
    batch = {
        "img": torch.rand(2, 3, IMGSZ, IMGSZ),
        "batch_idx": torch.tensor([0.0, 1.0]),
        "cls": torch.tensor([[0.0], [3.0]]),
        "bboxes": torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.4, 0.4, 0.3, 0.2]]),
    }
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    loss, _ = model.loss(batch)
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    optimizer.step()
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items() if v.is_floating_point())


def test_pruned_model_exports_onnx(pruned, image, tmp_path):
    model = copy.deepcopy(pruned.model).eval()
    model.model[-1].export = True  # what Ultralytics' exporter sets: one output tensor
    path = tmp_path / "pruned.onnx"
    torch.onnx.export(model, image, str(path), dynamo=False, opset_version=17, input_names=["images"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {"images": image.numpy()})
    with torch.no_grad():
        expected = model(image)
    assert torch.allclose(torch.from_numpy(onnx_out), expected, rtol=1e-3, atol=1e-3)


def test_saved_pruned_model_loads_in_a_fresh_process(pruned, image, tmp_path):
    torch.save(pruned.model, tmp_path / "pruned.pt")
    torch.save(image, tmp_path / "image.pt")
    script = textwrap.dedent(
        """
        import sys, torch
        model = torch.load(sys.argv[1], weights_only=False).eval()
        with torch.no_grad():
            torch.save(model(torch.load(sys.argv[2]))[0], sys.argv[3])
        """
    )
    args = [str(tmp_path / n) for n in ("pruned.pt", "image.pt", "out.pt")]
    done = subprocess.run([sys.executable, "-c", script, *args], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert torch.allclose(torch.load(tmp_path / "out.pt"), predict(pruned.model, image), atol=1e-5)


def test_input_model_is_untouched(base, units, image):
    model = copy.deepcopy(base).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    types = [type(m) for m in model.modules()]
    result = apply_pruning(model, uniform_ratios(units, 0.5), imgsz=IMGSZ, importance="taylor")
    assert result.model is not model and model.training and result.model.training
    assert [type(m) for m in model.modules()] == types
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize(
    "ratios, options",
    [
        ({"model.99": 0.1}, {}),
        ({"model.1": MAX_RATIO}, {}),
        ({"model.1": -0.1}, {}),
        ({"model.1": float("nan")}, {}),
        ({}, {"importance": "random"}),
        ({}, {"granularity": "channel"}),
    ],
)
def test_bad_input_is_a_user_error(base, ratios, options):
    with pytest.raises(UserError) as error:
        apply_pruning(base, ratios, imgsz=IMGSZ, **options)
    assert "\n" not in str(error.value)


def test_a_non_detection_model_is_a_user_error():
    with pytest.raises(UserError):
        pruning_units(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3)))


def test_ratio_params_in_an_optuna_study(base, units):
    study = optuna.create_study()
    head = units[-1].name
    ranges = {"model.0": (0.0, 0.0), head: (0.1, 0.3, 0.1)}
    params = Params(ratio_params(units, (0.0, 0.5, 0.25), ranges))
    for _ in range(3):
        trial = study.ask()
        values = params.sample(trial)
        ratios = {name.removeprefix("prune."): ratio for name, ratio in values.items()}
        assert list(trial.params) == [f"prune.{u.name}" for u in units]
        assert ratios["model.0"] == 0.0 and round(ratios[head], 6) in (0.1, 0.2, 0.3)
        assert all(ratios[u.name] in (0.0, 0.25, 0.5) for u in units if u.name not in ranges)
        study.tell(trial, apply_pruning(base, ratios, imgsz=IMGSZ).macs)
    assert all(p.default == 0.0 for p in params)  # a unit a policy leaves out is not pruned
    with pytest.raises(UserError):
        ratio_params(units, (0.0, MAX_RATIO, 0.05))
    with pytest.raises(UserError):
        ratio_params(units, RATIO_RANGE, {"model.99": (0.0, 0.1)})


def test_importance_registry():
    assert set(CRITERIA) == {"magnitude", "lamp", "taylor", "hessian"}
    assert {name for name, c in CRITERIA.items() if c.needs_gradients} == {"taylor", "hessian"}
    assert {name for name, c in CRITERIA.items() if c.per_image} == {"hessian"}
    assert all(isinstance(c.make(), tp.importance.Importance) for c in CRITERIA.values())
    assert get_criterion("lamp") is CRITERIA["lamp"] and get_criterion(CRITERIA["taylor"]) is CRITERIA["taylor"]
    with pytest.raises(UserError, match="magnitude"):
        get_criterion("random")


def test_a_criterion_object_prunes_like_its_name(base, units):
    ratios = uniform_ratios(units, 0.5)
    by_name = apply_pruning(base, ratios, imgsz=IMGSZ, importance="taylor").model.state_dict()
    by_entry = apply_pruning(base, ratios, imgsz=IMGSZ, importance=CRITERIA["taylor"]).model.state_dict()
    assert by_name.keys() == by_entry.keys() and all(torch.equal(by_name[k], by_entry[k]) for k in by_name)
    # A criterion outside the registry is one small object; L1 keeps other channels than L2 here.
    l1 = Criterion("l1", lambda: tp.importance.GroupMagnitudeImportance(p=1), False, "L1 norm of the weights")
    result = apply_pruning(base, ratios, imgsz=IMGSZ, importance=l1)
    l2 = apply_pruning(base, ratios, imgsz=IMGSZ)
    assert result.channels == l2.channels
    assert any(not torch.equal(v, l2.model.state_dict()[k]) for k, v in result.model.state_dict().items())


def test_kept_channels_round_to_the_nearest_multiple():
    assert kept_channels(64, 0.0) == 64
    assert kept_channels(64, 0.25) == 48
    assert kept_channels(64, 0.3) == 48  # 44.8 -> 48
    assert kept_channels(16, 0.05) == 16  # a small ratio does not halve a thin layer
    assert kept_channels(16, 0.85) == 8  # never below round_to
    assert kept_channels(10, 0.5, round_to=None) == 5
    kept = [kept_channels(96, r / 100) for r in range(0, 90)]
    assert kept == sorted(kept, reverse=True)


@pytest.mark.parametrize("cfg", ["yolo11s.yaml", "yolov8s.yaml"])
def test_small_scale_models_prune(cfg):
    model = build(cfg)
    units = pruning_units(model)
    assert {u.kind for u in units} == {"backbone", "neck", "head"}
    result = apply_pruning(model, uniform_ratios(units, 0.25), imgsz=IMGSZ)
    assert result.params < result.base_params


def test_iterative_pruning_ends_at_the_one_shot_structure_and_ranks_by_the_weights_between_steps(base, units, pruned):
    ratios = uniform_ratios(units, 0.5)
    iterative = IterativePruning(base, ratios, steps=3, imgsz=IMGSZ)
    first = iterative.step()
    assert first.model is iterative.model and pruned.macs < first.macs < first.base_macs
    # Between steps the caller trains the model in place: here two stem channels are zeroed in the whole group
    # (conv, BN, the next conv's inputs), so the magnitude criterion must remove exactly those in step 2.
    model = iterative.model.model
    zeroed = [0, 5]
    with torch.no_grad():
        for tensor in (model[0].conv.weight, model[0].bn.weight, model[0].bn.bias):
            tensor[zeroed] = 0.0
        model[1].conv.weight[:, zeroed] = 0.0
    second = iterative.step()
    assert pruned.macs < second.macs < first.macs
    assert first.channels["model.0"] - second.channels["model.0"] == len(zeroed)
    assert all(row.abs().sum() > 0 for row in model[0].conv.weight)  # the zeroed channels are the ones gone
    last = iterative.step()
    assert (last.macs, last.params, last.channels) == (pruned.macs, pruned.params, pruned.channels)
    assert all(last.channels[u.name] < second.channels[u.name] <= first.channels[u.name] for u in units[:3])
    with pytest.raises(RuntimeError, match="all 3 pruning steps are done"):
        iterative.step()
    with pytest.raises(UserError, match="at least 1 step"):
        IterativePruning(base, ratios, steps=0)
