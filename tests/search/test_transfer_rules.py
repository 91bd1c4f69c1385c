"""`squeezefit transfer`: naming, the precision rule, the lazy validation rule, and user errors (no study is carried here)."""

from __future__ import annotations

import optuna

from evaluators.registry import available_devices
from search.cli import main
from search.study import STUDY_ATTR
from search.transfer import MAP_MARGIN, map_precisions, target_name, worth_validating
from spaces.policy import Policy


def test_target_name_and_precision_rule():
    assert target_name("default", "remote:http://h:8765") == "default-on-remote-http---h-8765"
    policy = Policy(precision={"model.0": "int8", "model.1": "fp16", "model.2": "fp32"})
    mapped, changes = map_precisions(policy, ("fp32", "fp16"))
    assert dict(mapped.precision) == {"model.0": "fp32", "model.1": "fp16", "model.2": "fp32"}
    assert changes == ("precision int8 -> fp32 on 1 unit(s) (not offered)",)
    same, none = map_precisions(policy, ("int8", "fp16", "fp32"))
    assert same == policy and none == ()


def test_a_trial_is_validated_only_while_it_could_still_reach_the_front():
    measured = [(1.0, 0.30), (2.0, 0.40)]  # (p50 ms, mAP50-95) of feasible trials measured here
    assert worth_validating(0.10, 0.5, measured, margin=0.0), "nothing measured is as fast: it could be on the front"
    assert not worth_validating(0.29, 1.5, measured, margin=0.0), "a faster measured trial is better"
    assert worth_validating(0.29, 1.5, measured, margin=0.02), "... unless it gains the margin here"
    assert not worth_validating(0.30, 1.0, measured, margin=0.0), "equal latency and mAP is dominated"
    assert worth_validating(0.35, 1.9, measured, margin=0.0) and not worth_validating(0.35, 2.0, measured, margin=0.0)
    assert not worth_validating(0.0, 9.0, measured) and worth_validating(0.0, 9.0, measured, margin=1.0)
    assert 0 < MAP_MARGIN < 0.05


def test_user_errors_are_one_sentence_and_exit_2(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 's.db'}"

    def fails(*argv: str) -> str:
        assert main(["transfer", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "Traceback" not in err
        return err

    assert "no study named 'nope'" in fails("--study", "nope", "--storage", url, "--device", "ort-cpu")
    optuna.create_study(study_name="plain", storage=url)
    assert "not created by squeezefit" in fails("--study", "plain", "--storage", url, "--device", "ort-cpu")
    empty = optuna.create_study(study_name="empty", storage=url, directions=["maximize", "minimize"])
    empty.set_user_attr(STUDY_ATTR, {"device": "ort-cpu", "budget_ms": 1.0})
    assert "unknown device 'tpu-9'" in fails("--study", "empty", "--storage", url, "--device", "tpu-9")
    unusable = [s.prefix for s in available_devices() if not s.usable and s.prefix != "remote"]
    if unusable:
        assert "not usable on this machine" in fails("--study", "empty", "--storage", url, "--device", unusable[0])
    assert "no complete trial" in fails("--study", "empty", "--storage", url, "--device", "ort-cpu")
    margin = ("--study", "empty", "--storage", url, "--device", "ort-cpu", "--map-margin", "-0.1")
    assert "margin must be zero or more" in fails(*margin)
