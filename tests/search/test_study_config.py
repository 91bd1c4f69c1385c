"""StudyConfig validation and overrides; the stored sensitivity narrowing a study's space."""

import shutil
from dataclasses import replace

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
        ({"space": "grid"}, "unknown space 'grid'"),
        ({"starts": "random"}, "unknown starts 'random' \\(choose from guided, references\\)"),
        ({"recover_epochs": -1}, "recover_epochs .*at least 0"),
        ({"activations": ["relu"], "activation_epochs": 0}, "activation_epochs must be at least 1"),
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


def test_pruning_options_from_the_file_and_the_flags(tmp_path):
    from search.cli import build_parser
    from search.commands import config_overrides

    study = tmp_path / "s.yaml"
    study.write_text("pruning_importance: lamp\npruning_round_to: 16\nbudget_fraction: 0.5\n")
    config = StudyConfig.from_yaml(study)
    assert (config.pruning_importance, config.pruning_round_to) == ("lamp", 16)
    assert (StudyConfig().pruning_importance, StudyConfig().pruning_round_to) == ("magnitude", 8)  # the default study
    args = build_parser().parse_args(
        ["search", str(study), "--pruning-importance", "taylor", "--pruning-round-to", "4", "--trials", "2"]
    )
    overridden = StudyConfig.from_yaml(args.config, **config_overrides(args))
    assert (overridden.pruning_importance, overridden.pruning_round_to, overridden.trials) == ("taylor", 4, 2)
    assert overridden.budget_fraction == 0.5 and overridden.name == "s"  # flags left out leave the file's values
    with pytest.raises(UserError, match="pruning_round_to must be a positive channel count or null, got 0"):
        StudyConfig(pruning_round_to=0)
    assert StudyConfig(pruning_round_to=None).pruning_round_to is None


@pytest.mark.parametrize("command", ["search", "sensitivity"])
def test_unknown_pruning_importance_fails_before_any_work(tmp_path, capsys, monkeypatch, command):
    from search.cli import main

    monkeypatch.setenv("SQUEEZEFIT_HOME", str(tmp_path / "home"))
    study = tmp_path / "s.yaml"
    study.write_text(f"pruning_importance: random\nstorage: sqlite:///{tmp_path}/s.db\n")
    assert main([command, str(study)]) == 2
    assert capsys.readouterr().err == (
        f"squeezefit {command}: Unknown pruning importance 'random'; choose one of magnitude, lamp, taylor, hessian.\n"
    )
    assert not (tmp_path / "home" / "studies" / "runs").exists()


def test_unknown_activation_fails_before_any_work(tmp_path, capsys, monkeypatch):
    from search.cli import main

    monkeypatch.setenv("SQUEEZEFIT_HOME", str(tmp_path / "home"))
    study = tmp_path / "s.yaml"
    study.write_text(f"activations: [gelu]\nstorage: sqlite:///{tmp_path}/s.db\n")
    assert main(["search", str(study)]) == 2
    assert capsys.readouterr().err == "squeezefit search: unknown activation 'gelu' (choose from relu).\n"
    assert not (tmp_path / "home" / "studies").exists()  # nothing converted, nothing stored


def test_sensitivity_measured_with_other_pruning_options_is_refused(tmp_path):
    from ultralytics.nn.tasks import load_checkpoint

    checkpoint = shutil.copyfile(REPO_BASELINE, tmp_path / "model.pt")
    model, _ = load_checkpoint(checkpoint)
    settings = SensitivitySettings(192, (0.5,), False, 64, "val", 0, Int8Recipe(), "magnitude", 8, "onnxruntime", "d")
    Sensitivity(0.4, {"model.2": {0.5: 0.39}}, {}, settings, model_fingerprint(model)).save(
        sensitivity_path(checkpoint)
    )
    same = StudyConfig(model=str(checkpoint), sensitivity_max_drop=0.02)
    assert sensitivity_ranges(same, checkpoint, model)["model.2"][1] == pytest.approx(0.75)
    for options in ({"pruning_importance": "lamp"}, {"pruning_round_to": 4}):
        with pytest.raises(UserError, match="run `squeezefit sensitivity` again"):
            sensitivity_ranges(replace(same, **options), checkpoint, model)


def test_a_stored_record_gives_back_the_config_it_ran_with(tmp_path):
    config = StudyConfig.from_yaml("studies/smoke.yaml", recover_epochs=2)
    record = {
        "config": {**config.to_dict(), "a_field_of_a_later_version": 1},
        "checkpoint": str(REPO_BASELINE),
        "data_yaml": str(tmp_path / "data.yaml"),
    }
    again = StudyConfig.from_record(record, "sqlite:///elsewhere.db")
    assert again.storage_url == "sqlite:///elsewhere.db" and again.model == str(REPO_BASELINE)
    assert again.data == "embedded" and again.recover_epochs == 2 and again.trials == config.trials
    record["config"]["data"] = "relative/data.yaml"  # a relative path was relative to the search's cwd
    assert StudyConfig.from_record(record, "sqlite:///x.db").data == str(tmp_path / "data.yaml")


def test_a_resumed_study_keeps_the_space_it_was_searched_in():
    from search.commands.search import check_same_space

    config = StudyConfig(name="old")
    assert config.space == "segments"  # the structured space is the default
    check_same_space(config, {"config": {"space": "segments"}})
    with pytest.raises(UserError, match="searched in the per-unit space; pass --space per-unit to resume it"):
        check_same_space(config, {"config": {}})  # a record from before the space setting was per-unit
    check_same_space(StudyConfig(space="per-unit"), {"config": {"space": "per-unit"}})
