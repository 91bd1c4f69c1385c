"""`squeezefit transfer`: naming, the precision rule, and user errors (no study is carried here)."""

from __future__ import annotations

import optuna

from evaluators.registry import available_devices
from search.cli import main
from search.study import STUDY_ATTR
from search.transfer import map_precisions, target_name
from spaces.policy import Policy


def test_target_name_and_precision_rule():
    assert target_name("default", "remote:http://h:8765") == "default-on-remote-http---h-8765"
    policy = Policy(precision={"model.0": "int8", "model.1": "fp16", "model.2": "fp32"})
    mapped, changes = map_precisions(policy, ("fp32", "fp16"))
    assert dict(mapped.precision) == {"model.0": "fp32", "model.1": "fp16", "model.2": "fp32"}
    assert changes == ("precision int8 -> fp32 on 1 unit(s) (not offered)",)
    same, none = map_precisions(policy, ("int8", "fp16", "fp32"))
    assert same == policy and none == ()


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
