"""A study's converted baselines (`search.variants`) and where a trial starts from (`search.trial.start_model`), on a
real YOLO11n at 64 px: converted once by a real distillation run, reused after, and the start of the policies that
name the activation."""

from __future__ import annotations

import onnx
import pytest
import torch
from ultralytics.nn.modules.conv import Conv

from evaluators.vocabulary import UserError
from search.checkpoint import load_baseline
from search.trial import evaluate_policy, start_model
from search.variants import convert_baseline
from spaces.distillation import DistillationSettings
from spaces.policy import Policy
from tests.search.conftest import IMGSZ

NO_FINETUNE = DistillationSettings(enabled=False, epochs=0)


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SQUEEZEFIT_HOME", str(tmp_path / "home"))  # its own variants folder and latency cache


def acts(model) -> set[type]:
    return {type(m.act) for m in model.modules() if isinstance(m, Conv)}


def convert(checkpoint, data_yaml):
    return convert_baseline(checkpoint, data_yaml, activation="relu", imgsz=IMGSZ, epochs=1, val_images=2)


def test_conversion_trains_once_and_is_reused(checkpoint, data_yaml, capsys):
    variant = convert(checkpoint, data_yaml)
    first = capsys.readouterr().out
    assert "converting model.pt to relu: 1 epochs" in first and "val mAP50-95" in first
    converted = load_baseline(variant.checkpoint)
    assert torch.nn.ReLU in acts(converted) and torch.nn.SiLU not in acts(converted)
    baseline = load_baseline(checkpoint)
    changed = [
        not torch.equal(a, b)
        for a, b in zip(baseline.state_dict().values(), converted.state_dict().values(), strict=True)
    ]
    assert any(changed)  # trained, not only swapped
    assert len(variant.epoch_maps) == 1 and variant.map50_95 == max(variant.epoch_maps) and variant.seconds > 0
    stamp = (variant.checkpoint, torch.load(variant.checkpoint, weights_only=False)["date"])
    again = convert(checkpoint, data_yaml)
    assert "converting" not in capsys.readouterr().out
    assert again == variant and (again.checkpoint, torch.load(again.checkpoint, weights_only=False)["date"]) == stamp
    other = convert_baseline(checkpoint, data_yaml, activation="relu", imgsz=IMGSZ, epochs=2, val_images=2)
    assert other.checkpoint != variant.checkpoint  # other settings, another conversion


def test_a_policy_starts_from_the_converted_baseline_only_when_it_names_the_activation(
    context, checkpoint, data_yaml, tmp_path
):
    variant = convert(checkpoint, data_yaml)
    ctx = context(variants=(("relu", variant.checkpoint),))
    baseline = load_baseline(checkpoint)
    converted = load_baseline(variant.checkpoint)
    kept = start_model(Policy(), ctx)
    assert acts(kept) == acts(baseline) and torch.equal(*(m.model[0].conv.weight for m in (kept, baseline)))
    relu = Policy(activation="relu", distillation=NO_FINETUNE)
    started = start_model(relu, ctx)
    assert torch.nn.SiLU not in acts(started) and torch.equal(
        started.model[0].conv.weight, converted.model[0].conv.weight
    )
    structural = start_model(relu, context(), weights=False)  # timing only: no conversion needed
    assert torch.nn.SiLU not in acts(structural)
    assert torch.equal(structural.model[0].conv.weight, baseline.model[0].conv.weight)
    with pytest.raises(UserError, match="does not offer"):
        start_model(relu, context())
    result = evaluate_policy(relu, ctx)
    assert result.status == "complete" and result.policy["activation"] == "relu"
    ops = [n.op_type for n in onnx.load(result.artifact).graph.node]
    assert "Relu" in ops and ops.count("Sigmoid") == 1
