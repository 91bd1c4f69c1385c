"""The activation knob (`spaces.activation`) on a real YOLO11n: the swap, its export, and its place in policies and
in the search space."""

from __future__ import annotations

import onnx
import optuna
import pytest
import torch
from optuna.distributions import CategoricalDistribution
from optuna.trial import FixedTrial
from ultralytics.nn.modules.conv import Conv
from ultralytics.nn.tasks import DetectionModel

from evaluators.vocabulary import UserError
from spaces.activation import KEEP, activation_params, with_activation
from spaces.distillation import DistillationSettings
from spaces.onnx_export import export_onnx, precision_units
from spaces.policy import Policy
from spaces.pruning import pruning_units
from spaces.space import SearchSpace

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def model() -> DetectionModel:
    torch.manual_seed(0)
    return DetectionModel("yolo11n.yaml", nc=10, verbose=False).eval()


def conv_activations(model) -> list[type]:
    return [type(m.act) for m in model.modules() if isinstance(m, Conv)]


def test_swap_replaces_every_silu_of_a_copy_and_changes_the_function(model):
    before = conv_activations(model)
    swapped = with_activation(model, "relu")
    after = conv_activations(swapped)
    assert conv_activations(model) == before  # the input is not modified
    assert before.count(torch.nn.SiLU) > 50 and torch.nn.SiLU not in after
    assert after.count(torch.nn.ReLU) == before.count(torch.nn.SiLU)
    assert [a for a in after if a is not torch.nn.ReLU] == [a for a in before if a is not torch.nn.SiLU]
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(model(x)[0], swapped(x)[0])
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), swapped.state_dict().values(), strict=True)
    )


def test_swapped_export_runs_relu_and_keeps_the_units(model, tmp_path):
    names = [str(i) for i in range(10)]
    silu = onnx.load(export_onnx(model, tmp_path / "silu.onnx", imgsz=64, names=names))
    relu_path = export_onnx(with_activation(model, "relu"), tmp_path / "relu.onnx", imgsz=64, names=names)
    relu = onnx.load(relu_path)
    ops = [n.op_type for n in relu.graph.node]
    assert ops.count("Relu") == conv_activations(model).count(torch.nn.SiLU)
    assert ops.count("Sigmoid") == 1  # only the head's class scores; SiLU exports as Sigmoid + Mul
    assert [n.op_type for n in silu.graph.node].count("Sigmoid") > 50
    assert list(precision_units(relu_path)) == list(precision_units(tmp_path / "silu.onnx"))
    assert [u.name for u in pruning_units(with_activation(model, "relu"))] == [u.name for u in pruning_units(model)]


def test_unknown_activation_or_nothing_to_swap_is_a_user_error(model):
    with pytest.raises(UserError, match="unknown activation 'gelu'"):
        with_activation(model, "gelu")
    with pytest.raises(UserError, match="no SiLU"):
        with_activation(with_activation(model, "relu"), "relu")
    with pytest.raises(UserError, match="unknown activation"):
        Policy(activation="swish")


def test_policy_names_its_activation_only_when_it_swaps():
    keep = Policy(pruning={"model.2": 0.25}, precision={"model.2": "int8"})
    relu = Policy(pruning={"model.2": 0.25}, precision={"model.2": "int8"}, activation="relu")
    assert "activation" not in keep.to_dict()  # ids of policies without the knob are what they were before it
    assert relu.to_dict()["activation"] == "relu" and relu.policy_id != keep.policy_id
    assert Policy.from_dict(relu.to_dict()) == relu and Policy.from_dict(keep.to_dict()).activation is None


def test_policy_validate_refuses_an_activation_the_study_does_not_offer():
    relu = Policy(activation="relu")
    relu.validate((), (), ("fp32",), activations=("relu",))
    with pytest.raises(UserError, match="does not offer"):
        relu.validate((), (), ("fp32",))


def test_space_asks_the_activation_first_and_adds_its_reference(model, tmp_path):
    prune = tuple(pruning_units(model))
    prec = tuple(precision_units(export_onnx(model, tmp_path / "m.onnx", imgsz=64, names=[str(i) for i in range(10)])))
    plain = SearchSpace(pruning_units=prune, precision_units=prec, offered=("int8", "fp32"))
    space = SearchSpace(pruning_units=prune, precision_units=prec, offered=("int8", "fp32"), activations=("relu",))
    assert activation_params(()) == ()
    assert "model" not in plain.dimensions() and space.dimensions()["model"] == 1
    assert space.dimensions()["total"] == plain.dimensions()["total"] + 1
    refs = space.reference_policies()
    assert set(refs) - set(plain.reference_policies()) == {"relu-int8"}
    assert refs["relu-int8"].activation == "relu" and set(refs["relu-int8"].precision.values()) == {"int8"}
    assert not refs["relu-int8"].pruning and refs["relu-int8"].distillation == DistillationSettings(
        enabled=False, epochs=0
    )
    params = space.to_params(refs["relu-int8"])
    assert next(iter(params)) == "model.activation" and params["model.activation"] == "relu"
    assert space.to_params(refs["all-int8"])["model.activation"] == KEEP
    assert space.replay(refs["relu-int8"])[1]["model.activation"] == CategoricalDistribution([KEEP, "relu"])
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    sampled = [space.sample(study.ask()) for _ in range(12)]
    assert {p.activation for p in sampled} == {None, "relu"}
    for policy in sampled:
        assert space.sample(FixedTrial(space.to_params(policy))) == policy
