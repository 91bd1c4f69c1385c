"""Sparsity-regularized training: the group-norm penalty reaches the gradients and shrinks channel groups."""

import pytest
import torch

from evaluators.datasets import subset_data_yaml
from evaluators.vocabulary import UserError
from spaces.distillation import DistillationSettings, finetune
from spaces.pruning import apply_pruning, pruning_units, uniform_ratios
from spaces.sparsity import group_norm_regularizer, group_norms, sparsify

IMGSZ = 96


@pytest.fixture(scope="module")
def data_yaml(embedded, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("subsets")
    return subset_data_yaml(subset_data_yaml(embedded.data_yaml, "train", 32, workdir), "val", 16, workdir)


def test_the_regularizer_shrinks_channel_groups_against_the_same_training_without_it(
    baseline_model, data_yaml, tmp_path
):
    # A coefficient large enough to dominate two optimizer steps, so the direction is unmistakable.
    strong = sparsify(baseline_model, data_yaml, imgsz=IMGSZ, epochs=1, workdir=tmp_path / "reg", reg=1.0)
    control = finetune(  # the same training (same seed, data, steps) without the regularizer
        _prepared(baseline_model),
        None,
        DistillationSettings(enabled=False, epochs=1),
        data_yaml,
        imgsz=IMGSZ,
        workdir=tmp_path / "plain",
    )
    before, regularized, unregularized = (
        group_norms(_prepared(baseline_model)),
        group_norms(strong.model),
        group_norms(control.model),
    )
    assert regularized.shape == unregularized.shape == before.shape  # nothing pruned: only shrunk
    assert regularized.sum() < unregularized.sum() and regularized.sum() < before.sum()
    assert len(strong.epoch_maps) == 1 and strong.weights is not None and strong.weights.is_file()
    # The trained model is ready for pruning as it is: the policy's structure, as from the baseline.
    units = pruning_units(strong.model)
    assert [u.name for u in units] == [u.name for u in pruning_units(baseline_model)]
    apply_pruning(strong.model, uniform_ratios(units, 0.5), imgsz=IMGSZ)


def _prepared(model):
    from spaces.channel_groups import prepare_model

    return prepare_model(model)


def test_bad_settings_are_one_sentence(baseline_model, data_yaml, tmp_path):
    with pytest.raises(UserError, match="must be positive"):
        group_norm_regularizer(0.0)
    with pytest.raises(UserError, match="at least 1 epoch"):
        sparsify(baseline_model, data_yaml, imgsz=IMGSZ, epochs=0, workdir=tmp_path)
    assert torch.is_tensor(group_norms(baseline_model))
