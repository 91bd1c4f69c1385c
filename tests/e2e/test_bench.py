"""One toy-size `squeezefit bench` run end to end (minutes: marked slow)."""

import json
import math

import pytest

from search.bench.peers import OLIVE, ONNX_INT8, OPENVINO, OPENVINO_INT8
from search.bench.points import FP32, PEER, PER_UNIT, RANDOM, SEARCH, UNIFORM, BenchResult, check_targets
from search.study import load_study, study_record
from tests.conftest import REPO, run_cli

SMOKE_BASELINE = REPO / "studies" / "baseline" / "yolo11n-digits.pt"


@pytest.mark.slow
def test_bench_end_to_end_on_the_smoke_config(tmp_path):
    if not SMOKE_BASELINE.is_file():
        pytest.fail(f"the committed smoke baseline {SMOKE_BASELINE} is missing; train it with `squeezefit baseline`")
    out, report = tmp_path / "out", tmp_path / "results" / "bench.md"
    args = [
        "bench",
        "studies/smoke.yaml",
        "--trials",
        "7",
        "--out",
        str(out),
        "--storage",
        f"sqlite:///{tmp_path}/studies.db",
        "--report",
        str(report),
        "--recover-epochs",
        "1",
        "--per-unit",
    ]
    result = run_cli(args, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    bench = BenchResult.from_dict(json.loads(report.with_suffix(".json").read_text()))
    assert bench.trials == 7 and bench.early_stop and (out / "latency-cache.sqlite").is_file()  # timed in this run
    assert bench.baseline_latency_ms > 0 and bench.of(FP32)[0].map50_95 == bench.baseline_map
    uniform = [p for p in bench.of(UNIFORM) if not p.recovered]
    # every reference policy but fp32 (all-<p> for each precision the device offers, three prunings), plus
    # pruning 0.5 without distillation; which precisions ort-cpu offers is decided by its probe on this CPU
    offered = [p for p in ("int8", "bf16", "fp16") if p in bench.fingerprint["settings"]["precisions"]]
    references = 1 + len(offered) + 3
    assert len(uniform) == references - 1 + 1 and all(p.status == "complete" and p.seconds > 0 for p in uniform)
    assert math.isclose(bench.budget_ms, 0.7 * bench.baseline_latency_ms, rel_tol=1e-6)
    searched, rand = [p for p in bench.of(SEARCH) if not p.recovered], bench.of(RANDOM)
    assert len(searched) == len(rand) == 7
    refs = lambda points: {(p.label, p.policy_id) for p in points if not p.label.startswith("trial ")}  # noqa: E731
    assert refs(searched) == refs(rand) and len(refs(searched)) == references  # the same enqueued references
    # The per-unit contender: the same search over the per-unit space, as many trials, the same references.
    per_unit = bench.of(PER_UNIT)
    assert len(per_unit) == 7 and refs(per_unit) == refs(searched)
    spaces = {
        c: study_record(load_study(bench.studies[c], bench.storage))["config"]["space"] for c in (SEARCH, PER_UNIT)
    }
    assert spaces == {SEARCH: "segments", PER_UNIT: "per-unit"}, spaces
    by_id = {p.policy_id: p for p in uniform}
    for p in searched:
        if p.policy_id in by_id and p.status == "complete":  # reused, not re-measured
            assert (p.map50_95, p.latency_ms) == (by_id[p.policy_id].map50_95, by_id[p.policy_id].latency_ms)
    # Recovery: the best uniform and searched policy under each budget, one recovery per policy, scores kept
    # apart from the hypervolume.
    recovered = [p for p in bench.points if p.recovered]
    assert recovered and {p.contender for p in recovered} <= {UNIFORM, SEARCH}
    assert len({(p.contender, p.policy_id) for p in recovered}) == len(recovered)
    assert all(p.label.endswith(" recovered") and p.seconds > 0 for p in recovered)
    # The one-command peers: exported by Ultralytics, validated on their own files, timed in one session.
    peers = bench.of(PEER)
    assert {p.label for p in peers} == {ONNX_INT8, OPENVINO_INT8, OPENVINO}
    assert all(0 < p.map50_95 <= 1 and p.latency_ms > 0 and p.seconds > 0 for p in peers)
    details = {d["label"]: d for d in bench.peers}
    assert details[OLIVE]["skipped"] and details[OPENVINO]["precision"] in ("bf16", "f32")
    assert all(d["ratio_low"] <= d["ratio"] <= d["ratio_high"] for d in details.values() if not d["skipped"])
    text = report.read_text()
    assert "squeezefit bench studies/smoke.yaml --trials 7" in text and "## Targets" in text and "| 0.25·L0 |" in text
    assert (
        "per-unit space (tpe)" in text
        and "## One-command peers" in text
        and f"skipped: {details[OLIVE]['skipped']}" in text
    )
    assert report.with_suffix(".png").stat().st_size > 10_000
    for target in check_targets(bench):  # the verdicts printed are the ones the results give
        assert f"{'PASS' if target.passed else 'FAIL'}  {target.name}: {target.detail}" in result.stdout
