"""What a recovery fine-tunes with (`search.recover.RecoverySettings.distillation`): the source trial's choice of
distillation where it fine-tuned, distillation where it never did, these epochs, the source's rate (at least
RECOVERY_MIN_LR0) and weight; a reference never fine-tuned recovers
as its space fine-tunes a pruned policy of its activation (`search.recover.recovered_from`)."""

from dataclasses import replace

from search.recover import RECOVERY_MIN_LR0, RecoverySettings, recovered_from
from spaces.activation import SWAPPED_FINETUNE_LR0
from spaces.distillation import DistillationSettings
from spaces.pruning import PruningUnit
from spaces.space import SearchSpace


def test_a_recovery_follows_the_source_trials_choice_of_distillation():
    settings = RecoverySettings(epochs=6)
    without = settings.distillation(DistillationSettings(enabled=False, epochs=3, lr0=2e-4))
    assert (without.enabled, without.epochs, without.lr0) == (False, 6, RECOVERY_MIN_LR0)  # 2e-4 under-trains
    distilled = settings.distillation(DistillationSettings(enabled=True, weight=3.0, epochs=2, lr0=2e-3))
    assert (distilled.enabled, distilled.weight, distilled.epochs, distilled.lr0) == (True, 3.0, 6, 2e-3)
    slow = settings.distillation(DistillationSettings(enabled=True, epochs=2, lr0=5e-4))
    assert slow.lr0 == RECOVERY_MIN_LR0
    given = RecoverySettings(epochs=6, lr0=2e-4).distillation(DistillationSettings(enabled=False, epochs=3, lr0=2e-4))
    assert given.lr0 == 2e-4  # a rate the user asks for stands
    never_tuned = settings.distillation(DistillationSettings(enabled=False, epochs=0))
    assert never_tuned.enabled and never_tuned.weight == DistillationSettings().weight and never_tuned.epochs == 6
    overridden = RecoverySettings(epochs=2, lr0=1e-3, weight=9.0).distillation(DistillationSettings(lr0=2e-4))
    assert (overridden.enabled, overridden.weight, overridden.lr0) == (True, 9.0, 1e-3)


def _space(max_epochs: int = 3) -> SearchSpace:
    return SearchSpace(
        pruning_units=(PruningUnit("model.2", 32, "backbone", ("model.2.cv1",)),),
        precision_units=("model.2",),
        offered=("int8", "fp32"),
        max_epochs=max_epochs,
        activations=("relu",),
    )


def test_a_reference_never_fine_tuned_recovers_as_its_space_fine_tunes_its_activation():
    space = _space()
    refs = space.reference_policies()
    relu, all_int8 = refs["relu-int8"], refs["all-int8"]
    assert relu.distillation.epochs == 0 == all_int8.distillation.epochs  # references run as they are
    settings = RecoverySettings(epochs=6)
    swapped = settings.distillation(recovered_from(relu, space))
    assert (swapped.enabled, swapped.epochs, swapped.lr0) == (False, 6, max(SWAPPED_FINETUNE_LR0, RECOVERY_MIN_LR0))
    own = settings.distillation(recovered_from(all_int8, space))
    assert (own.enabled, own.epochs, own.lr0) == (True, 6, DistillationSettings().lr0)
    tuned = replace(relu, distillation=DistillationSettings(enabled=True, epochs=2, lr0=5e-4))
    assert settings.distillation(recovered_from(tuned, space)).enabled  # a trial's own choice stands


def test_a_swapped_guided_start_fine_tunes_without_distillation():
    space = _space()
    assert space.pruned_finetune() == DistillationSettings(epochs=3)
    assert space.pruned_finetune("relu") == DistillationSettings(enabled=False, epochs=3, lr0=SWAPPED_FINETUNE_LR0)
    assert _space(max_epochs=0).pruned_finetune("relu").epochs == 0
