"""What a recovery fine-tunes with (`search.recover.RecoverySettings.distillation`): the source trial's choice of
distillation where it fine-tuned, distillation where it never did, these epochs, the source's rate and weight."""

from search.recover import RecoverySettings
from spaces.distillation import DistillationSettings


def test_a_recovery_follows_the_source_trials_choice_of_distillation():
    settings = RecoverySettings(epochs=6)
    without = settings.distillation(DistillationSettings(enabled=False, epochs=3, lr0=2e-4))
    assert (without.enabled, without.epochs, without.lr0) == (False, 6, 2e-4)
    distilled = settings.distillation(DistillationSettings(enabled=True, weight=3.0, epochs=2, lr0=5e-4))
    assert (distilled.enabled, distilled.weight, distilled.epochs, distilled.lr0) == (True, 3.0, 6, 5e-4)
    never_tuned = settings.distillation(DistillationSettings(enabled=False, epochs=0))
    assert never_tuned.enabled and never_tuned.weight == DistillationSettings().weight and never_tuned.epochs == 6
    overridden = RecoverySettings(epochs=2, lr0=1e-3, weight=9.0).distillation(DistillationSettings(lr0=2e-4))
    assert (overridden.enabled, overridden.weight, overridden.lr0) == (True, 9.0, 1e-3)
