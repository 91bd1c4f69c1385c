"""Recovery of chosen policies on a copy of the smoke study: stored as linked trials, exported with their card."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from evaluators.artifact import structure_hash
from search.cli import main
from search.front import best_under, pareto_front, trials_table
from search.recover import recovered_trials
from search.study import load_study, study_record

RECOVER = ["--epochs", "1", "--recover-images", "32"]


@pytest.fixture(scope="module")
def study_copy(smoke_study, tmp_path_factory) -> str:
    """A copy of the smoke study's storage (the shared study keeps its trial count); its URL."""
    src = Path(smoke_study.storage.removeprefix("sqlite:///"))
    dst = tmp_path_factory.mktemp("recover") / "studies.db"
    shutil.copyfile(src, dst)
    return f"sqlite:///{dst}"


def _state_dict(path: str) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False).state_dict()


def test_recovered_trial_is_stored_linked_to_its_source_and_exported(smoke_study, study_copy, tmp_path, capsys):
    study = load_study(smoke_study.name, study_copy)
    budget = study_record(study)["budget_ms"]
    before = len(study.trials)
    chosen = int(best_under(trials_table(study), budget)["trial"])
    base = ["recover", "--study", smoke_study.name, "--storage", study_copy]
    assert main([*base, "--budget-ms", str(budget), *RECOVER]) == 0
    printed = capsys.readouterr().out
    study = load_study(smoke_study.name, study_copy)
    assert len(study.trials) == before + 1
    new = study.trials[-1]
    attrs = new.user_attrs
    source = study.trials[attrs["recovered_from"]]
    assert source.number == chosen
    assert attrs["status"] == "complete" and new.params == source.params  # the same point of the space
    assert new.values == [attrs["map50_95"], attrs["latency_ms"]]
    recovery = attrs["recovery"]
    assert recovery["map_before"] == source.user_attrs["map50_95"] and len(recovery["epoch_maps"]) == 1
    assert recovery["train_images_used"] == 32 and recovery["seconds"] > 0
    assert attrs["policy"]["distillation"]["enabled"] and attrs["policy"]["distillation"]["epochs"] == 1
    # Trained again from the trial's weights: other weights, a new artifact of the same structure.
    assert Path(attrs["artifact"]) != Path(source.user_attrs["artifact"])
    assert structure_hash(Path(attrs["artifact"])) == structure_hash(Path(source.user_attrs["artifact"]))
    a, b = _state_dict(attrs["weights"]), _state_dict(source.user_attrs["weights"])
    assert a.keys() == b.keys() and any(not torch.equal(a[k].float(), b[k].float()) for k in a)
    assert f"trial {source.number} -> trial {new.number}" in printed and "Pareto front" in printed
    row = trials_table(study).set_index("trial").loc[new.number]
    assert row["recovered_from"] == source.number and row["measured"]

    # The same recovery again is the stored trial: nothing trained, nothing added.
    assert main([*base, "--trial", str(source.number), *RECOVER]) == 0
    assert len(load_study(smoke_study.name, study_copy).trials) == before + 1
    # Choosing the recovered trial recovers its source: the same stored trial.
    assert main([*base, "--trial", str(new.number), *RECOVER]) == 0
    assert len(load_study(smoke_study.name, study_copy).trials) == before + 1
    capsys.readouterr()

    # export --recover-epochs: the chosen trial's recovery (stored here) is what is exported, with its card.
    out = tmp_path / "bundle"
    export = ["export", "--study", smoke_study.name, "--storage", study_copy, "--trial", str(source.number)]
    assert main([*export, "--out", str(out), "--recover-epochs", "1", "--recover-images", "32"]) == 0
    figures = json.loads((out / "card.json").read_text())
    assert figures["trial"] == new.number and figures["recovered_from"] == source.number
    card = (out / "card.md").read_text()
    assert "## Recovery" in card and f"recovered from trial {source.number}" in card
    assert f"{recovery['map_before']:.4f} -> **{attrs['map50_95']:.4f}**" in card
    assert (out / "model.onnx").read_bytes() == Path(attrs["artifact"]).read_bytes()
    assert len(load_study(smoke_study.name, study_copy).trials) == before + 1

    # The plot marks it; the front text names its source when it is on the front.
    main(["front", "--study", smoke_study.name, "--storage", study_copy, "--plot", str(tmp_path / "f.png")])
    shown = capsys.readouterr().out
    front = pareto_front(trials_table(load_study(smoke_study.name, study_copy)))
    if new.number in set(front["trial"]):
        assert f"#{source.number}" in shown
    assert (tmp_path / "f.png").stat().st_size > 10_000


def test_iterative_recovery_prunes_the_baseline_in_steps_to_the_same_structure(smoke_study, study_copy):
    study = load_study(smoke_study.name, study_copy)
    chosen = int(best_under(trials_table(study), study_record(study)["budget_ms"])["trial"])
    chosen = study.trials[chosen].user_attrs.get("recovered_from", chosen)
    base = ["recover", "--study", smoke_study.name, "--storage", study_copy, "--trial", str(chosen)]
    assert main([*base, "--epochs", "2", "--recover-images", "32", "--recover-prune-steps", "2"]) == 0
    new = load_study(smoke_study.name, study_copy).trials[-1]
    attrs, source = new.user_attrs, study.trials[chosen].user_attrs
    assert attrs["recovered_from"] == chosen and attrs["recovery"]["prune_steps"] == 2
    assert attrs["recovery"]["started_from"].startswith("the baseline, pruned in 2 steps")
    assert len(attrs["epoch_maps"]) == 2 and attrs["recovery"]["tag"].endswith("-steps2")
    # The steps end at the policy's structure: the artifact times as the source's does.
    assert structure_hash(Path(attrs["artifact"])) == structure_hash(Path(source["artifact"]))
    assert (attrs["macs"], attrs["params"]) == (source["macs"], source["params"])


def test_a_quantization_aware_recovery_is_stored_apart_and_its_card_says_so(smoke_study, study_copy, tmp_path, capsys):
    study = load_study(smoke_study.name, study_copy)
    chosen = next(
        t.number
        for t in study.trials
        if t.user_attrs.get("status") == "complete"
        and "recovered_from" not in t.user_attrs
        and "int8" in t.user_attrs["policy"]["precision"].values()
    )
    base = ["recover", "--study", smoke_study.name, "--storage", study_copy, "--trial", str(chosen), *RECOVER]
    assert main([*base, "--recover-qat"]) == 0
    printed = capsys.readouterr().out
    assert "INT8 simulated in training" in printed and "convs train through INT8 rounding" in printed
    study = load_study(smoke_study.name, study_copy)
    new = study.trials[-1]
    attrs, source = new.user_attrs, study.trials[chosen].user_attrs
    assert attrs["recovered_from"] == chosen and attrs["recovery"]["qat"]
    assert attrs["recovery"]["tag"].endswith("-qat") and isinstance(attrs["recovery"]["int8_cost"], float)
    assert structure_hash(Path(attrs["artifact"])) == structure_hash(Path(source["artifact"]))
    # a plain recovery with the same epochs is another trial: the two are told apart by their settings
    assert main(base) == 0
    stored = recovered_trials(load_study(smoke_study.name, study_copy), chosen)
    assert stored[attrs["recovery"]["tag"]] == new.number
    assert stored[attrs["recovery"]["tag"].removesuffix("-qat")] != new.number
    capsys.readouterr()

    out = tmp_path / "bundle"
    export = ["export", "--study", smoke_study.name, "--storage", study_copy, "--trial", str(new.number)]
    assert main([*export, "--out", str(out)]) == 0
    card = (out / "card.md").read_text()
    assert "INT8 simulated in training (QAT)" in card and "post-training INT8 cost" in card


def test_recover_user_errors_leave_the_study_alone(smoke_study, study_copy, capsys):
    study = load_study(smoke_study.name, study_copy)
    before = len(study.trials)
    infeasible = next(t.number for t in study.trials if t.user_attrs.get("status") == "infeasible")
    base = ["recover", "--study", smoke_study.name, "--storage", study_copy]
    assert main([*base, "--trial", str(infeasible), *RECOVER]) == 2
    assert main([*base, "--trial", "999", *RECOVER]) == 2
    assert main([*base, "--front", "--epochs", "0"]) == 2
    assert main([*base, "--budget-ms", "0.0001", *RECOVER]) == 2
    assert main([*base, "--front", "--epochs", "2", "--recover-prune-steps", "3"]) == 2
    err = capsys.readouterr().err
    assert "only a complete trial" in err and "no finished trial number 999" in err
    assert "at least 1 epoch" in err and "fits a 0.00 ms budget" in err and "got 3 steps" in err
    assert len(load_study(smoke_study.name, study_copy).trials) == before


def test_a_transfer_keeps_each_recovery_linked_to_its_carried_source(smoke_study, study_copy):
    study = load_study(smoke_study.name, study_copy)
    budget = study_record(study)["budget_ms"]
    base = ["recover", "--study", smoke_study.name, "--storage", study_copy]
    assert main([*base, "--budget-ms", str(budget), *RECOVER]) == 0  # the stored recovery, if the first test ran
    recovered = [t for t in load_study(smoke_study.name, study_copy).trials if "recovered_from" in t.user_attrs]
    target = f"{smoke_study.name}-moved"
    command = ["transfer", "--study", smoke_study.name, "--storage", study_copy, "--device", "ort-cpu:2"]
    assert main([*command, "--name", target, "--select", "all"]) == 0
    dst = load_study(target, study_copy)
    here = {t.user_attrs["transferred_from"]: t for t in dst.trials}
    for trial in recovered:
        moved = here[trial.number].user_attrs
        assert moved["recovery"] == trial.user_attrs["recovery"]
        # the link names the source's number in the new study, which was added before it
        source_here = moved["recovered_from"]
        assert dst.trials[source_here].user_attrs["transferred_from"] == trial.user_attrs["recovered_from"]
        assert source_here < here[trial.number].number
    table = trials_table(dst).set_index("trial")
    assert {int(n) for n in table["recovered_from"].dropna()} == {
        here[t.user_attrs["recovered_from"]].number for t in recovered
    }
