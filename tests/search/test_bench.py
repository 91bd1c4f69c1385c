"""The bench: fronts, 2-D hypervolume, best under a budget, targets and the report on hand-made
points (the toy-size run end to end is in tests/e2e/test_bench.py)."""

import json
import os
import random
from pathlib import Path

import numpy as np
import optuna
import pytest

from search.bench.points import (
    FP32,
    PEER,
    PER_UNIT,
    RANDOM,
    SEARCH,
    UNIFORM,
    BenchPoint,
    BenchResult,
    best_under,
    check_targets,
    front,
    hypervolume,
    hypervolume_2d,
    report_budgets,
    retained,
    speedup,
)
from search.bench.report import render_report, summary_rows, write_outputs
from search.bench.run import _fresh_latency_cache, uniform_policies
from search.cli import main


def P(contender, label, map50_95, latency_ms, status="complete"):
    return BenchPoint(contender, label, map50_95, latency_ms, status)


def test_hypervolume_2d_known_areas():
    assert hypervolume_2d([], (4.0, 0.0)) == 0.0
    assert hypervolume_2d([(1.0, 0.5)], (3.0, 0.0)) == pytest.approx(1.0)
    # Two boxes [1,4]x[0,.3] and [2,4]x[0,.6]: 0.9 + 1.2 - 0.6 overlap.
    two = [(2.0, 0.6), (1.0, 0.3)]
    assert hypervolume_2d(two, (4.0, 0.0)) == pytest.approx(1.5)
    # A dominated point, one beyond the reference latency and one at the reference mAP add nothing.
    assert hypervolume_2d([*two, (3.0, 0.2), (5.0, 0.9), (0.5, 0.0)], (4.0, 0.0)) == pytest.approx(1.5)
    assert hypervolume_2d(two, (4.0, 0.3)) == pytest.approx(2 * 0.3)  # a reference mAP above 0 shrinks the box


def test_hypervolume_2d_matches_optuna():
    rng = random.Random(0)
    points = [(rng.uniform(1, 10), rng.uniform(0, 1)) for _ in range(40)]
    reference = (11.0, 0.0)
    # Optuna minimises every axis: negate mAP.
    expected = optuna._hypervolume.compute_hypervolume(
        np.array([[lat, -m] for lat, m in points]), np.array([11.0, 0.0])
    )
    assert hypervolume_2d(points, reference) == pytest.approx(expected)


def test_front_and_best_under_budget():
    points = [
        P(SEARCH, "a", 0.50, 2.0),
        P(SEARCH, "b", 0.40, 1.0),
        P(SEARCH, "dominated", 0.35, 1.5),
        P(SEARCH, "slow", 0.60, 4.0),
        P(SEARCH, "pruned", 0.90, 0.5, "pruned"),
        P(SEARCH, "over", 0.95, 0.7, "infeasible"),
        P(SEARCH, "tie-slower", 0.50, 2.5),
    ]
    assert [p.label for p in front(points)] == ["b", "a", "slow"]
    assert [p.label for p in front(points, 3.0)] == ["b", "a"]
    assert best_under(points, 3.0).label == "a"  # tie on mAP: the faster one
    assert best_under(points, 1.2).label == "b"  # pruned and infeasible points never count
    assert best_under(points, 0.9) is None
    assert hypervolume(points, 3.0) == pytest.approx(hypervolume_2d([(1.0, 0.4), (2.0, 0.5)], (3.0, 0.0)))
    # the search's own budget first (its best is recovered there as in `make demo`), then the L0 fractions
    assert report_budgets(6.0, 10.0) == pytest.approx([6.0, 5.0, 3.3, 2.5])
    assert report_budgets(5.0, 10.0) == pytest.approx([5.0, 3.3, 2.5])
    assert speedup(2.0, 8.0) == 4.0 and retained(0.45, 0.5) == pytest.approx(0.9) and retained(0.3, 0.0) == 0.0


PEERS = (
    {
        "label": "ultralytics openvino",
        "command": "yolo export format=openvino imgsz=192 data=<bench data>",
        "runtime": "openvino",
        "skipped": "",
        "map50_95": 0.495,
        "ratio": 0.6,
        "ratio_low": 0.58,
        "ratio_high": 0.62,
        "precision": "bf16",
    },
    {
        "label": "olive static int8",
        "command": "olive",
        "runtime": "onnxruntime",
        "skipped": "olive-ai is not installed",
    },
)


def _result(search_points, random_points, uniform_points, peer_points=(), per_unit_points=()) -> BenchResult:
    points = (
        P(FP32, "fp32", 0.50, 10.0),
        *peer_points,
        *uniform_points,
        *search_points,
        *random_points,
        *per_unit_points,
    )
    return BenchResult(
        name="bench-test",
        command="squeezefit bench studies/x.yaml --trials 9",
        date="2026-01-01 00:00:00",
        config={"name": "x", "device": "ort-cpu"},
        sampler="tpe",
        trials=9,
        early_stop=True,
        baseline_latency_ms=10.0,
        baseline_map=0.50,
        budget_ms=5.0,
        fingerprint={
            "hardware": "Test CPU",
            "runtime": "onnxruntime",
            "version": "1",
            "settings": {"intra_op_threads": 1},
        },
        versions={"python": "3.11"},
        threads={"device": 1, "torch": 1, "cpus": 2},
        points=points,
        wall_seconds={FP32: 10.0, UNIFORM: 60.0, SEARCH: 300.0, RANDOM: 240.0},
        studies={SEARCH: "bench-test-tpe", RANDOM: "bench-test-random"},
        storage="sqlite:///x.db",
        peers=PEERS if peer_points else (),
    )


def _winning_result() -> BenchResult:
    uniform = [
        P(UNIFORM, "all-int8", 0.50, 7.0),
        P(UNIFORM, "prune-0.5-int8", 0.44, 4.0),
        P(UNIFORM, "prune-0.75-int8", 0.30, 2.0),
    ]
    search = [
        P(SEARCH, "trial 7", 0.49, 3.0),
        P(SEARCH, "trial 8", 0.46, 2.2),
        P(SEARCH, "trial 9", 0.49, 4.5, "pruned"),
    ]
    rand = [
        P(RANDOM, "trial 7", 0.25, 2.0),
        P(RANDOM, "trial 8", 0.2, 6.0, "infeasible"),
    ]
    peers = [P(PEER, "ultralytics openvino", 0.495, 6.0), P(PEER, "ultralytics onnx int8", 0.45, 9.0)]
    per_unit = [P(PER_UNIT, "trial 5", 0.40, 3.0), P(PER_UNIT, "trial 6", 0.2, 5.5, "infeasible")]
    return _result(search, rand, uniform, peers, per_unit)


def test_targets_pass_and_fail_as_measured():
    targets = check_targets(_winning_result())
    assert [t.passed for t in targets] == [True] * 10, targets
    assert "98.0%" in targets[0].detail and "trial 7" in targets[0].detail
    assert targets[7].detail == "trial 7 0.4900 at 3.00 ms vs ultralytics openvino 0.4950 at 6.00 ms"
    # Search no better than uniform anywhere, its front no larger than random's, a peer faster and better.
    losing = _result(
        [P(SEARCH, "trial 7", 0.30, 2.0)],
        [P(RANDOM, "trial 7", 0.30, 2.0)],
        [P(UNIFORM, "prune-0.75-int8", 0.30, 2.0)],
        [P(PEER, "ultralytics openvino", 0.49, 1.9)],
    )
    targets = check_targets(losing)
    assert [t.passed for t in targets] == [False] * 10
    assert "not run" in targets[9].detail  # no per-unit contender: the target is not met, and says why
    assert "ultralytics openvino (0.4900, 1.90 ms) over trial 7" in targets[6].detail
    # A front point at 95% of M0 that is slower than a peer there fails the speed target only.
    slower = _result([P(SEARCH, "trial 7", 0.49, 3.0)], [], [], [P(PEER, "ultralytics openvino", 0.48, 2.5)])
    assert [t.passed for t in check_targets(slower)][6:8] == [True, False]
    # Where no uniform policy fits, a searched point still has to keep the margin: 0.0 beats nothing by nothing.
    alone = check_targets(_result([P(SEARCH, "guided-0.33x", 0.0, 1.0), P(SEARCH, "trial 9", 0.2, 3.0)], [], []))
    assert [t.passed for t in alone][3:6] == [True, True, False]
    assert alone[5].detail == "search 0.0000 vs uniform none fits"
    nothing = check_targets(_result([], [], []))
    assert not any(t.passed for t in nothing)  # nothing fits, no peer: fail, not a crash
    assert nothing[6].detail == "no peer was measured"


def test_report_has_the_headline_figures(tmp_path):
    result = _winning_result()
    assert BenchResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result
    text = render_report(result, plot_name="bench.png")
    hv_search = hypervolume(result.of(SEARCH), 5.0)
    hv_random = hypervolume(result.of(RANDOM), 5.0)
    for needle in (
        "Targets passed: **10/10**",
        f"{hypervolume(result.of(PER_UNIT), 5.0):.5f}",
        "## Front of the squeezefit search, per-unit space (tpe)",
        "| trial 5 | 3.000 | 3.33x | 0.4000 | 80.0% |",
        "L0 = 10.000 ms",
        "M0 = 0.5000",
        "squeezefit bench studies/x.yaml --trials 9",
        "Test CPU",
        "| 0.33·L0 | 3.300 |",
        "| 0.5·L0 (search budget) | 5.000 |",  # the search's budget is the 0.5 row, listed once
        "0.4900 (98.0%, trial 7, 3.00 ms)",
        f"{hv_search:.5f}",
        f"{hv_random:.5f}",
        f"{hv_search / hv_random:.2f}x",
        "| PASS |",
        "| uniform | prune-0.5-int8 | 4.000 | 2.50x | 0.4400 | 88.0% |",
        "| one-command peer | ultralytics openvino | 6.000 | 1.67x | 0.4950 | 99.0% |",
        "| ultralytics openvino | `yolo export format=openvino imgsz=192 data=<bench data>` | openvino (bf16) | 6.000 | "
        "1.67x (1.61-1.72) | 0.4950 | 99.0% |",
        "| olive static int8 | `olive` | onnxruntime | skipped: olive-ai is not installed | | | |",
        "![",
    ):
        assert needle in text, needle
    rows = summary_rows(result)
    assert [r["policy"] for r in rows if r["contender"] == "random search"] == ["trial 7"]
    md, png, raw = write_outputs(result, tmp_path / "report" / "bench.md")
    assert md.read_text() == text and png.stat().st_size > 10_000
    assert BenchResult.from_dict(json.loads(raw.read_text())) == result


def test_uniform_policies_are_the_searches_references():
    from spaces.pruning import PruningUnit
    from spaces.space import SearchSpace

    units = tuple(PruningUnit(f"model.{i}", 64, "backbone", (f"model.{i}.conv",)) for i in (1, 3))
    space = SearchSpace(
        pruning_units=units,
        precision_units=("/model.0/conv/Conv", "/model.1/conv/Conv"),
        offered=("fp32", "fp16", "int8"),
    )
    uniform = uniform_policies(space)
    refs = space.reference_policies()
    assert set(uniform) == {
        "all-int8",
        "all-fp16",
        "prune-0.25-int8",
        "prune-0.5-int8",
        "prune-0.75-int8",
        "prune-0.5-int8-no-distill",
    }
    for name in set(uniform) & set(refs):
        assert uniform[name].policy_id == refs[name].policy_id  # same id: the searches reuse the uniform results
    half, no_kd = uniform["prune-0.5-int8"], uniform["prune-0.5-int8-no-distill"]
    assert half.distillation.enabled and not no_kd.distillation.enabled
    assert no_kd.distillation.epochs == half.distillation.epochs == space.max_epochs  # the same fine-tune budget
    assert (no_kd.pruning, no_kd.precision) == (half.pruning, half.precision)


def test_random_sampler_config_is_a_user_error(tmp_path, capsys):
    config = tmp_path / "random.yaml"
    config.write_text("name: r\nsampler: random\n")
    assert main(["bench", str(config), "--storage", f"sqlite:///{tmp_path}/s.db", "--out", str(tmp_path / "out")]) == 2
    assert "random search" in capsys.readouterr().err


def test_the_runs_latency_cache_is_named_by_an_absolute_path(tmp_path, monkeypatch):
    # Ray Tune runs each trial in a working directory of its own: a relative path would be a new cache per trial
    monkeypatch.chdir(tmp_path)
    with _fresh_latency_cache(Path("out") / "latency-cache.sqlite"):
        named = Path(os.environ["SQUEEZEFIT_LATENCY_CACHE"])
    assert named.is_absolute() and named == tmp_path / "out" / "latency-cache.sqlite"
