"""StudyConfig validation and overrides; the stored sensitivity narrowing a study's space."""

import shutil

import pytest

from evaluators.vocabulary import Int8Recipe, UserError
from search.embedded.baseline import REPO_BASELINE
from search.prepare import sensitivity_ranges
from search.study import StudyConfig
from spaces.sensitivity import Sensitivity, SensitivitySettings, model_fingerprint, sensitivity_path


def test_shipped_configs_are_valid():
    default = StudyConfig.from_yaml("studies/default.yaml")
    smoke = StudyConfig.from_yaml("studies/smoke.yaml")
    assert (
        default.name == "default"
        and default.budget_fraction == 0.6
        and default.sensitivity_max_drop == 0.02
        and default.device == "ort-cpu"
    )
    assert smoke.trials < default.trials and smoke.imgsz < default.imgsz


def test_flags_override_the_file_and_none_is_ignored():
    config = StudyConfig.from_yaml("studies/smoke.yaml", trials=3, device=None, budget_ms=4.0)
    assert config.trials == 3 and config.device == "ort-cpu" and config.budget_ms == 4.0
    assert config.with_overrides(seed=7, name=None).seed == 7


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"budget_fraction": 1.5}, "budget_fraction"),
        ({"budget_ms": -1}, "budget_ms"),
        ({"objectives": ["latency_ms", "map50_95"]}, "objectives must start"),
        ({"objectives": ["map50_95", "latency_ms", "joules"]}, "unknown objective"),
        ({"sampler": "grid"}, "unknown sampler"),
        ({"imgsz": 100}, "multiple of 32"),
        ({"trials": 0}, "at least 1"),
    ],
)
def test_invalid_settings_are_one_sentence(settings, message):
    with pytest.raises(UserError, match=message):
        StudyConfig(**settings)


def test_sensitivity_narrows_ranges(tmp_path):
    from ultralytics.nn.tasks import load_checkpoint

    checkpoint = shutil.copyfile(REPO_BASELINE, tmp_path / "model.pt")
    model, _ = load_checkpoint(checkpoint)
    config = StudyConfig(model=str(checkpoint), sensitivity_max_drop=0.02)
    assert sensitivity_ranges(StudyConfig(model=str(checkpoint)), checkpoint, model) == {}
    with pytest.raises(UserError, match="squeezefit sensitivity"):
        sensitivity_ranges(config, checkpoint, model)

    settings = SensitivitySettings(
        192, (0.25, 0.5), True, 64, "val", 32, Int8Recipe(), "magnitude", 8, "onnxruntime", "d"
    )
    measured = Sensitivity(
        base_map=0.40,
        pruning={"model.2": {0.25: 0.395, 0.5: 0.30}, "model.9": {0.25: 0.40, 0.5: 0.39}},
        int8={},
        settings=settings,
        fingerprint=model_fingerprint(model),
    )
    measured.save(sensitivity_path(checkpoint))
    ranges = sensitivity_ranges(config, checkpoint, model)
    assert ranges["model.2"][1] == pytest.approx(0.25)  # 0.5 lost 0.10: the range stops at 0.25
    assert ranges["model.9"][1] == pytest.approx(0.75)  # every measured ratio stayed within 0.02
