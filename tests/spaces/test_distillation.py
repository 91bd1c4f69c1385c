"""Recovery fine-tune of a pruned student, with and without distillation from the baseline."""

import pytest
import torch

from evaluators.datasets import subset_data_yaml
from evaluators.vocabulary import UserError
from search.embedded.baseline import REPO_BASELINE
from spaces.distillation import DistillationSettings, finetune
from spaces.pruning import apply_pruning, pruning_units, uniform_ratios

IMGSZ = 96


@pytest.fixture(scope="module")
def setup(embedded, tmp_path_factory):
    from ultralytics.nn.tasks import load_checkpoint

    workdir = tmp_path_factory.mktemp("subsets")
    data_yaml = subset_data_yaml(subset_data_yaml(embedded.data_yaml, "train", 32, workdir), "val", 16, workdir)
    baseline, _ = load_checkpoint(embedded.checkpoint)
    pruned = apply_pruning(baseline, uniform_ratios(pruning_units(baseline), 0.25), imgsz=IMGSZ)
    return data_yaml, pruned


def _params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("enabled", [True, False])
def test_finetune_reports_each_epoch(setup, tmp_path, enabled):
    data_yaml, pruned = setup
    before = {k: v.clone() for k, v in pruned.model.state_dict().items()}
    seen = []
    result = finetune(
        pruned.model,
        REPO_BASELINE,
        DistillationSettings(enabled=enabled, epochs=1),
        data_yaml,
        imgsz=IMGSZ,
        workdir=tmp_path,
        on_epoch=lambda e, m: seen.append((e, m)),
    )
    assert len(result.epoch_maps) == 1 and seen == [(1, result.epoch_maps[0])]
    assert result.epoch_maps[0] > 0.0, "the fine-tuned student no longer finds any digit"
    assert not result.stopped_early
    assert _params(result.model) == pruned.params  # the student keeps its pruned shape; no projector leaks in
    assert not result.model.training and result.weights and result.weights.is_file()
    changed = any(
        not torch.equal(before[k], v)
        for k, v in result.model.state_dict().items()
        if k in before and v.dtype.is_floating_point
    )
    assert changed, "fine-tuning did not change the weights"
    assert all(torch.equal(before[k], v) for k, v in pruned.model.state_dict().items()), (
        "the input student was modified"
    )


def test_on_epoch_can_stop_training_and_training_keeps_the_callers_threads(setup, tmp_path):
    """Ultralytics' CPU training sets torch to cpu_count - 1 threads; the caller's count holds during and after."""
    data_yaml, pruned = setup
    before, seen = torch.get_num_threads(), []
    torch.set_num_threads(2)
    try:
        result = finetune(
            pruned.model,
            REPO_BASELINE,
            DistillationSettings(enabled=False, epochs=3),
            data_yaml,
            imgsz=IMGSZ,
            workdir=tmp_path,
            on_epoch=lambda e, m: seen.append(torch.get_num_threads()) or True,
        )
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert result.stopped_early and len(result.epoch_maps) == 1
    assert seen == [2] and after == 2


def test_zero_epochs_and_missing_teacher(setup, tmp_path):
    data_yaml, pruned = setup
    result = finetune(
        pruned.model, None, DistillationSettings(enabled=False, epochs=0), data_yaml, imgsz=IMGSZ, workdir=tmp_path
    )
    assert result.epoch_maps == () and result.weights is None and _params(result.model) == pruned.params
    with pytest.raises(UserError, match="teacher"):
        finetune(
            pruned.model, tmp_path / "nope.pt", DistillationSettings(epochs=1), data_yaml, imgsz=IMGSZ, workdir=tmp_path
        )
    with pytest.raises(UserError):
        DistillationSettings(epochs=-1)


def test_quantization_aware_finetune_trains_through_int8_and_returns_a_plain_student(setup, tmp_path):
    from evaluators.datasets import split_images
    from evaluators.vocabulary import Int8Recipe
    from spaces.onnx_export import preprocess_images
    from spaces.qat import FakeQuantConv2d, QuantizationAware

    data_yaml, pruned = setup
    calibration = preprocess_images(split_images(data_yaml, "val")[1][:4], IMGSZ)
    all_int8 = {f"model.{i}": "int8" for i in range(len(pruned.model.model))}
    result = finetune(
        pruned.model,
        REPO_BASELINE,
        DistillationSettings(epochs=1),
        data_yaml,
        imgsz=IMGSZ,
        workdir=tmp_path,
        quantization=QuantizationAware(all_int8, Int8Recipe(), calibration),
    )
    assert len(result.epoch_maps) == 1 and result.epoch_maps[0] > 0.0
    assert not any(isinstance(m, FakeQuantConv2d) for m in result.model.modules()), "the student kept simulated convs"
    assert _params(result.model) == pruned.params
    checkpoint = torch.load(result.weights, map_location="cpu", weights_only=False)
    trained = [m for m in (checkpoint.get("ema") or checkpoint["model"]).modules() if isinstance(m, FakeQuantConv2d)]
    assert len(trained) > 50, "training did not run through INT8-rounded convs"
    assert all(m.input_high > m.input_low for m in trained), "an input range was never set"
    assert not any(isinstance(m, FakeQuantConv2d) for m in pruned.model.modules()), "the input student was modified"
