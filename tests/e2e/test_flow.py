"""The whole flow at toy size: a search with ASHA over the fine-tune epochs, then recovery and export of its best."""

import json

import yaml
from optuna.trial import TrialState

from search.front import pareto_front, trials_table
from search.study import load_study, study_record
from tests.conftest import REPO, run_cli


def test_search_with_asha_then_recover_and_export(tmp_path):
    config = yaml.safe_load((REPO / "studies" / "smoke.yaml").read_text())
    config.update(name="smoke-flow", finetune_epochs=3, scheduler="asha", trials=8)
    path = tmp_path / "flow.yaml"
    path.write_text(yaml.safe_dump(config))
    storage = f"sqlite:///{tmp_path}/studies.db"
    args = ["search", str(path), "--storage", storage, "--out", str(tmp_path / "out"), "--no-early-stop"]
    result = run_cli([*args, "--recover-epochs", "1"], tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]

    study = load_study("smoke-flow", storage)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 8 + 1 and {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    for t in trials:
        attrs = t.user_attrs
        epochs = attrs["policy"]["distillation"]["epochs"]
        if t.state == TrialState.PRUNED:  # only the scheduler stops a fine-tune here (early stopping is off)
            assert attrs["reason"].startswith("stopped by the scheduler after epoch ")
            assert 1 <= len(attrs["epoch_maps"]) < epochs and attrs["latency_ms"] > 0
        elif attrs["status"] == "complete" and "recovered_from" not in attrs:
            assert len(attrs["epoch_maps"]) == epochs  # promoted through every rung it reached
    table = trials_table(study)
    assert not set(table[table["status"] == "pruned"]["trial"]) & set(pareto_front(table)["trial"])

    # The best policy under the budget was recovered on the whole train split, then exported with its card.
    recovered = [t for t in trials if "recovered_from" in t.user_attrs]
    assert len(recovered) == 1
    source = study.trials[recovered[0].user_attrs["recovered_from"]]
    assert source.user_attrs["latency_ms"] <= study_record(study)["budget_ms"]
    assert recovered[0].user_attrs["recovery"]["train_images_used"] > config["train_images"]
    assert f"recovered as trial {recovered[0].number}" in result.stdout
    # exported: the better of the recovery and its source (a recovery can score lower than where it started)
    card = json.loads((tmp_path / "out" / "best" / "card.json").read_text())
    top = max(t.user_attrs["map50_95"] for t in (recovered[0], source))
    assert card["trial"] in {t.number for t in (recovered[0], source) if t.user_attrs["map50_95"] == top}
    if card["trial"] == recovered[0].number:
        assert card["recovered_from"] == source.number
        assert "## Recovery" in (tmp_path / "out" / "best" / "card.md").read_text()
    else:
        assert card["trial"] == source.number and "recovered_from" not in card
        assert f"the recovery did not improve it: trial {source.number} stays the best" in result.stdout
