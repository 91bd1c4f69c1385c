"""The main job end to end on the smoke config: states, objectives, front, export, resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search.cli import main
from search.embedded.baseline import REPO_BASELINE
from search.front import pareto_front, trials_table
from search.study import load_study, study_record
from tests.conftest import REPO, run_cli

SMOKE_TRIALS = 7


def test_trials_reach_their_designed_states(smoke_study):
    study = load_study(smoke_study.name, smoke_study.storage)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == SMOKE_TRIALS
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}  # none left RUNNING or WAITING
    statuses = [t.user_attrs["status"] for t in trials]
    assert "infeasible" in statuses and "complete" in statuses
    budget = study_record(study)["budget_ms"]
    for t in trials:
        attrs = t.user_attrs
        assert attrs["fingerprint"]["runtime"] == "onnxruntime" and attrs["policy_id"]
        assert Path(attrs["artifact"]).is_file()
        if t.state == TrialState.COMPLETE:
            assert t.values == [attrs["map50_95"], attrs["latency_ms"]]
            assert (t.constraints["latency_budget"] <= 0) == (attrs["latency_ms"] <= budget)  # the sampler knows
        if attrs["status"] == "complete":
            assert Path(attrs["weights"]).is_file() and attrs["latency_ms"] <= budget
    references = {t.user_attrs.get("reference") for t in trials} - {None}
    assert {"fp32", "all-int8", "prune-0.25-int8", "prune-0.5-int8", "prune-0.75-int8"} <= references
    # depth is searched by default: one knob per segment holding a C3k2/C2PSA block, asked of the sampled trial
    record = study_record(study)
    assert set(record["depth_units"]) == {f"model.{i}" for i in (2, 4, 6, 8, 10, 13, 16, 19, 22)}
    assert record["dimensions"]["depth"] == 8 and "8 depths" in smoke_study.stdout
    sampled = [t for t in trials if "reference" not in t.user_attrs]
    assert sampled and all(sum(name.startswith("depth.") for name in t.params) == 8 for t in sampled)
    assert "[trial 7/7]" in smoke_study.stdout and "best policy under the budget exported" in smoke_study.stdout
    assert "front re-timed together with the baseline" in smoke_study.stdout and "speedup (95%)" in smoke_study.stdout


def test_over_budget_policy_spends_no_finetuning(smoke_study):
    study = load_study(smoke_study.name, smoke_study.storage)
    infeasible = [t.user_attrs for t in study.trials if t.user_attrs.get("status") == "infeasible"]
    assert infeasible
    for attrs in infeasible:
        assert (
            "finetune" not in attrs["seconds"] and "budget" in attrs["reason"] and "no fine-tuning" in attrs["reason"]
        )
        assert sum(attrs["seconds"].values()) < 120  # prune + latency + validation: seconds, not a fine-tune
        trial_dir = Path(attrs["artifact"]).parent
        assert not (trial_dir / "train").exists() and not (trial_dir / "model.pt").exists()


def test_front_command(smoke_study, tmp_path, capsys):
    args = ["front", "--study", smoke_study.name, "--storage", smoke_study.storage]
    assert main([*args, "--json", "--plot", str(tmp_path / "front.png")]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows and {"trial", "map50_95", "latency_ms", "feasible", "policy_id"} <= set(rows[0])
    assert all(r["feasible"] for r in rows)
    assert (tmp_path / "front.png").stat().st_size > 10_000 and (tmp_path / "front.html").is_file()
    table = trials_table(load_study(smoke_study.name, smoke_study.storage))
    assert len(rows) == len(pareto_front(table)) >= 1
    assert main([*args, "--all", "--csv", str(tmp_path / "all.csv")]) == 0
    assert len((tmp_path / "all.csv").read_text().splitlines()) == SMOKE_TRIALS + 1
    capsys.readouterr()
    assert main([*args, "--retime"]) == 0  # the front and the baseline timed together, now
    shown = capsys.readouterr().out
    session = load_study(smoke_study.name, smoke_study.storage).user_attrs["front_timing"]
    assert "speedup (95%)" in shown and f"at {session['when']}" in shown
    assert set(session["members"]) == {str(r["trial"]) for r in rows}
    assert all(m["speedup_low"] <= m["speedup"] <= m["speedup_high"] for m in session["members"].values())


def test_export_bundle_validates_and_reproduces(smoke_study, tmp_path):
    from ultralytics import YOLO
    from ultralytics.nn.tasks import load_checkpoint

    from evaluators.artifact import structure_hash
    from spaces.policy import Policy
    from spaces.precision import build_artifact
    from spaces.pruning import apply_pruning

    study = load_study(smoke_study.name, smoke_study.storage)
    record = study_record(study)
    out = tmp_path / "bundle"
    assert (
        main(
            [
                "export",
                "--study",
                smoke_study.name,
                "--storage",
                smoke_study.storage,
                "--budget-ms",
                str(record["budget_ms"]),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert {p.name for p in out.iterdir()} >= {
        "policy.yaml",
        "model.onnx",
        "model.pt",
        "card.md",
        "card.json",
        "baseline-fp32.onnx",
    }
    card = (out / "card.md").read_text()
    assert "mAP50-95" in card and "p50" in card and record["device"] in card
    # The speedup on the card comes from the session that re-timed the front with the baseline at export.
    figures = json.loads((out / "card.json").read_text())
    session = load_study(smoke_study.name, smoke_study.storage).user_attrs["front_timing"]
    together = session["members"][str(figures["trial"])]
    assert figures["speedup"] == together["speedup"] and figures["speedup_low"] <= figures["speedup"]
    assert figures["speedup"] <= figures["speedup_high"] and f"**{figures['speedup']:.2f}x** faster" in card
    assert "one round-robin session" in card and "--reference baseline-fp32.onnx" in card
    front_trials = set(pareto_front(trials_table(study))["trial"].astype(int).astype(str))
    assert front_trials | {str(figures["trial"])} == set(session["members"])

    # The bundle's model is the artifact whose mAP the trial measured: Ultralytics' own
    # validator on the same images gives the same number.
    exported = Policy.from_yaml(out / "policy.yaml").policy_id
    trial = next(t for t in study.trials if t.user_attrs.get("policy_id") == exported)
    subset = Path(trial.user_attrs["artifact"]).parent / f"data-val-first{record['config']['val_images']}.yaml"
    metrics = YOLO(str(out / "model.onnx"), task="detect").val(
        data=str(subset),
        imgsz=record["imgsz"],
        batch=1,
        device="cpu",
        workers=0,
        plots=False,
        project=str(tmp_path),
        name="val",
    )
    assert metrics.box.map == pytest.approx(trial.user_attrs["map50_95"], abs=1e-6)
    images = sorted((Path(record["data_yaml"]).parent / "images" / "val").glob("*.jpg"))[:2]
    assert len(YOLO(str(out / "model.onnx"), task="detect").predict(images, imgsz=record["imgsz"], verbose=False)) == 2

    policy = Policy.from_yaml(out / "policy.yaml")
    baseline, _ = load_checkpoint(REPO_BASELINE)
    pruned = apply_pruning(baseline, policy.pruning, imgsz=record["imgsz"], depth=policy.depth)
    images = sorted((Path(record["data_yaml"]).parent / "images" / "train").glob("*.jpg"))[:4]
    again = build_artifact(
        pruned.model,
        policy.precision,
        tmp_path / "again.onnx",
        imgsz=record["imgsz"],
        names=baseline.names,
        calibration_images=images,
    )
    assert structure_hash(again.path) == structure_hash(out / "model.onnx")


def test_export_and_front_user_errors(smoke_study, tmp_path, capsys):
    study = load_study(smoke_study.name, smoke_study.storage)
    infeasible = next(t.number for t in study.trials if t.user_attrs.get("status") == "infeasible")
    base = ["export", "--study", smoke_study.name, "--storage", smoke_study.storage, "--out", str(tmp_path / "x")]
    assert main([*base, "--trial", str(infeasible)]) == 2
    assert main([*base, "--budget-ms", "0.0001"]) == 2
    assert main(["front", "--study", "no-such-study", "--storage", smoke_study.storage]) == 2
    err = capsys.readouterr().err
    assert "only complete trials" in err and "fits a 0.00 ms budget" in err and "no study named 'no-such-study'" in err
    assert not (tmp_path / "x").exists()


def test_existing_study_is_not_overwritten(smoke_study):
    before = len(load_study(smoke_study.name, smoke_study.storage).trials)
    result = run_cli(
        ["search", "studies/smoke.yaml", "--study", smoke_study.name, "--storage", smoke_study.storage],
        smoke_study.home,
        timeout=120,
    )
    assert result.returncode == 2 and "already exists" in result.stderr and "--resume" in result.stderr
    assert len(load_study(smoke_study.name, smoke_study.storage).trials) == before


@pytest.mark.slow  # a second search, killed and resumed: minutes
def test_killed_search_resumes_without_losing_trials(tmp_path):
    """SIGKILL the whole search mid-trial, then --resume: finished trials stay, the count is reached."""
    if not REPO_BASELINE.is_file():
        pytest.fail(f"the committed baseline {REPO_BASELINE} is missing")
    storage = f"sqlite:///{tmp_path}/studies.db"
    args = [
        "search",
        "studies/smoke.yaml",
        "--study",
        "killed",
        "--storage",
        storage,
        "--trials",
        "4",
        "--out",
        str(tmp_path / "out"),
    ]
    env = dict(os.environ, SQUEEZEFIT_HOME=str(tmp_path), PYTHONUNBUFFERED="1")
    env.pop("YOLO_CONFIG_DIR", None)
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "search.cli", *args],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.time() + 600
        finished = []
        while time.time() < deadline and proc.poll() is None:
            time.sleep(2)
            if "trial(s) to run" not in (tmp_path / "first.log").read_text():
                continue  # the study's tables are not created yet: don't race the search to create them
            trials = optuna.load_study(study_name="killed", storage=storage).get_trials(deepcopy=False)
            finished = [t for t in trials if t.state.is_finished()]
            if finished and any(t.state == TrialState.RUNNING for t in trials):
                break
        assert proc.poll() is None, (
            "the search ended before it could be killed mid-trial:\n" + (tmp_path / "first.log").read_text()[-3000:]
        )
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    kept = {t.number: (t.state, t.values) for t in finished}
    assert kept

    result = run_cli([*args, "--resume"], tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    trials = load_study("killed", storage).trials
    for number, (state, values) in kept.items():
        assert (trials[number].state, trials[number].values) == (state, values)
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(done) == 4
    assert all(t.state != TrialState.RUNNING for t in trials)


@pytest.mark.slow  # every segment timed at every grid ratio, then 7 trials: ~9 min on an AVX2-only CPU (the rules:
# tests/search/test_guided_bisection.py, tests/spaces/test_greedy.py, in seconds)
def test_guided_starts_are_measured_fit_their_targets_and_run_first(tmp_path):
    """`--starts guided`: starts timed on the device before the study, stored with it, enqueued after the references."""
    from search.guided import GRID, GuidedStart
    from spaces.greedy import DEPTH_GRID, DEPTH_SUFFIX, SegmentCosts
    from spaces.segments import INPUT_SEGMENT, graph_segments, precision_segments, segment_of

    storage = f"sqlite:///{tmp_path}/studies.db"
    args = ["search", "studies/smoke.yaml", "--study", "guided", "--storage", storage, "--out", str(tmp_path / "out")]
    result = run_cli([*args, "--starts", "guided", "--trials", "7"], tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert "guided starts:" in result.stdout
    study = load_study("guided", storage)
    record = study_record(study)
    starts = {n: GuidedStart.from_dict(s) for n, s in record["guided_starts"].items()}
    assert starts, result.stdout[-3000:]  # at 0.5 and 0.33 of L0 something always has to be pruned
    # what they were found with is stored for the repair of sampled policies over the budget (`search.repair`)
    costs = SegmentCosts.from_dict(record["segment_costs"])
    assert costs.savings.keys() == costs.losses.keys() == costs.held.keys() and len(costs.held) > 1
    deep = {s for s in costs.held if s.endswith(DEPTH_SUFFIX)}  # a segment's inner blocks removed: one grid point
    assert deep and all(set(costs.savings[s]) == set(costs.losses[s]) == set(DEPTH_GRID) for s in deep)
    assert all(set(costs.savings[s]) == set(costs.losses[s]) == set(GRID) for s in costs.held if s not in deep)
    assert "a sampled policy over the budget is repaired" in result.stdout
    from search.checkpoint import load_baseline

    model = load_baseline(REPO_BASELINE)
    segments = graph_segments(model, record["imgsz"])
    for name, start in starts.items():
        assert name.startswith("guided-") and start.measured_ms <= start.target_ms <= record["budget_ms"]
        # the device's fastest precision, no islands: the block reading the image may differ (it is timed apart)
        inner = {
            p
            for u, p in start.policy.precision.items()
            if segment_of(precision_segments(segments), u).name != INPUT_SEGMENT
        }
        assert len(inner) == 1, start.policy.precision
        shallower = start.policy.pruning or start.policy.depth
        assert shallower or len(set(start.policy.precision.values())) > 1, name  # unpruned: no reference
        for knob in (start.policy.pruning, start.policy.depth):  # one ratio, one depth per segment
            for unit, value in knob.items():
                segment = segment_of(segments, unit)
                assert all(v == value for u, v in knob.items() if segment_of(segments, u) == segment)
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    ran = [t.user_attrs.get("reference") for t in trials]
    references = [r for r in ran if r and not r.startswith("guided-")]
    assert ran[0] == "fp32" and ran[: len(references)] == references  # the uniform references first
    following = ran[len(references) :]
    expected = list(starts)[: len(following)]
    assert following[: len(expected)] == expected  # then the guided starts, in the order of their targets
    for trial in trials:
        if trial.user_attrs.get("reference") in starts:
            assert trial.user_attrs["policy_id"] == starts[trial.user_attrs["reference"]].policy.policy_id

    # --resume takes the starts from the study: nothing is built or timed for them again
    again = run_cli([*args, "--starts", "guided", "--trials", "7", "--resume"], tmp_path)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-5000:]
    assert "guided starts:" not in again.stdout
    assert study_record(load_study("guided", storage))["guided_starts"] == record["guided_starts"]
    assert study_record(load_study("guided", storage))["segment_costs"] == record["segment_costs"]


@pytest.mark.slow  # a conversion over the whole train split and a search: minutes (tests/search/test_variants.py: seconds)
def test_a_study_offering_relu_converts_its_baseline_once_and_runs_the_relu_reference(tmp_path):
    """`activations: [relu]`: the baseline is converted (one epoch here) before the first trial, stored with the
    study, reused on resume; the study runs the `relu-int8` reference from the converted weights, and its card
    says so."""
    import yaml

    config = yaml.safe_load((REPO / "studies" / "smoke.yaml").read_text())
    config.update(activations=["relu"], activation_epochs=1, trials=SMOKE_TRIALS + 1)  # one more reference
    path = tmp_path / "relu.yaml"
    path.write_text(yaml.safe_dump(config))
    storage = f"sqlite:///{tmp_path}/studies.db"
    args = ["search", str(path), "--study", "relu", "--storage", storage, "--out", str(tmp_path / "out")]
    result = run_cli(args, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert "converting yolo11n-digits.pt to relu: 1 epochs" in result.stdout
    study = load_study("relu", storage)
    record = study_record(study)
    variant = record["variants"]["relu"]
    assert Path(variant["checkpoint"]).is_file() and 0 < variant["map50_95"] <= 1
    assert record["dimensions"]["model"] == 1
    (relu,) = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("reference") == "relu-int8"]
    assert relu.state == TrialState.COMPLETE and relu.params["model.activation"] == "relu"
    assert relu.user_attrs["policy"]["activation"] == "relu" and relu.user_attrs["map50_95"] >= 0
    assert relu.user_attrs["status"] == "complete"  # ReLU INT8 runs well within 0.7 x L0

    again = run_cli([*args, "--trials", str(SMOKE_TRIALS + 2), "--resume"], tmp_path)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-5000:]
    assert "converting" not in again.stdout  # the conversion is kept

    card_dir = tmp_path / "card"
    export = run_cli(
        ["export", "--study", "relu", "--storage", storage, "--trial", str(relu.number), "--out", str(card_dir)],
        tmp_path,
    )
    assert export.returncode == 0, export.stdout[-3000:] + export.stderr[-5000:]
    card = (card_dir / "card.md").read_text()
    assert "activation: relu in place of SiLU" in card
