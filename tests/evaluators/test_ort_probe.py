"""The ort-cpu probe: which INT8 recipe and precisions the device offers, measured on this CPU.

One real probe (a few seconds) runs per module in a temporary squeezefit home; the tests
assert what it measured against what it decided, never an ISA assumption.
"""

from __future__ import annotations

import collections
import json
import time

import onnx
import onnxruntime as ort
import pytest

from evaluators import Int8Recipe, TimingSettings, UserError, get_device
from evaluators.hardware import cpu_description
from evaluators.ort import OrtDevice
from evaluators.ort_probe import (
    CANDIDATES,
    FP16,
    MIN_GAIN,
    PROBE_THREADS,
    PROBE_TIMING,
    PROBE_VERSION,
    REPROBE_ENV,
    ProbeReport,
    Ratio,
    cached_probe,
    decide,
    probe_graph,
    probe_path,
    run_probe,
)

QUICK = TimingSettings(warmup_min_runs=2, warmup_max_runs=6, warmup_window=2, min_runs=10, min_seconds=0.2)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    with pytest.MonkeyPatch.context() as env:
        folder = tmp_path_factory.mktemp("home")
        env.setenv("SQUEEZEFIT_HOME", str(folder))
        env.delenv(REPROBE_ENV, raising=False)
        yield folder


@pytest.fixture(scope="module")
def probed(home):
    """A default ort-cpu device whose first look at its precisions ran the probe."""
    device = OrtDevice("ort-cpu", cache=False)
    start = time.perf_counter()
    report = device.probe_report()
    return device, report, time.perf_counter() - start


def _report(**changes) -> ProbeReport:
    fields = dict(
        cpu="test cpu",
        onnxruntime=ort.__version__,
        threads=1,
        ratios={},
        int8_recipe=None,
        precisions=("fp32",),
        fp32_p50_ms=1.0,
        rounds=1,
        wall_s=0.0,
    )
    return ProbeReport(**{**fields, **changes})


# ---- the decision ---------------------------------------------------------------------


def test_decide_offers_int8_with_the_fastest_recipe_and_fp16_only_where_it_gains():
    first, second, third = CANDIDATES
    clear = {first: Ratio(0.9, 0.88, 0.92, 0.9), second: Ratio(0.7, 0.68, 0.72, 0.7), FP16: Ratio(0.6, 0.5, 0.7, 0.6)}
    assert decide(clear) == (second, ("int8", "fp16", "fp32"))
    tied = {first: Ratio(0.71, 0.69, 0.73, 0.7), second: Ratio(0.7, 0.68, 0.72, 0.7)}
    assert decide(tied) == (first, ("int8", "fp32"))
    # INT8 slower on the probe graph is still offered with its fastest recipe (the search times it on the
    # real model); FP16 needs a shown gain
    slower = {first: Ratio(1.05, 1.02, 1.08, 1.0), third: Ratio(1.5, 1.4, 1.6, 1.5), FP16: Ratio(1.0, 0.97, 1.03, 1.0)}
    assert decide(slower) == (first, ("int8", "fp32"))
    equal = {FP16: Ratio(0.99, 0.985, 1 - MIN_GAIN / 2, 1.0)}  # FP16 run by FP32 kernels: no gain, not offered
    assert decide(equal) == (None, ("fp32",))
    assert decide({}) == (None, ("fp32",))


# ---- the probe on this CPU ------------------------------------------------------------


def test_the_probe_is_short_and_complete(probed):
    _, report, elapsed = probed
    assert report.cpu == cpu_description() and report.onnxruntime == ort.__version__ and report.threads == 1
    assert report.failed == {}, report.failed  # every candidate quantizes and loads on a CPU
    assert set(report.ratios) == {*CANDIDATES, FP16}
    assert report.rounds >= PROBE_TIMING.min_runs and report.fp32_p50_ms > 0
    for r in report.ratios.values():
        assert 0 < r.low <= r.ratio <= r.high and r.p50_ms > 0
    assert report.probe_version == PROBE_VERSION
    assert elapsed < 30  # about 5 s at one thread; the bound leaves room for a busy host


def test_the_device_offers_what_its_probe_decided(probed):
    device, report, _ = probed
    assert report.int8_recipe is None or report.int8_recipe in CANDIDATES
    assert device.int8_recipe == report.recipe
    assert device.precisions == report.precisions and "fp32" in device.precisions
    assert ("int8" in device.precisions) == (device.int8_recipe is not None)
    settings = device.fingerprint().settings
    assert settings["int8_recipe"] == (report.recipe.to_dict() if report.recipe else None)
    assert settings["precisions"] == list(device.precisions)
    assert device.recipe_for() == (report.recipe or Int8Recipe())


def test_the_decision_follows_the_probes_own_figures(probed):
    _, report, _ = probed
    assert decide(report.ratios) == (report.int8_recipe, report.precisions)
    int8 = {name: report.ratios[name] for name in CANDIDATES}
    assert report.int8_recipe is not None  # every candidate builds and loads on a CPU (see above)
    chosen = int8[report.int8_recipe]
    fastest = min(int8.values(), key=lambda r: r.ratio)
    assert chosen is fastest or chosen.low <= fastest.high  # the fastest, or tied with it
    assert (FP16 in report.precisions) == (report.ratios[FP16].high < 1 - MIN_GAIN)


def test_signed_qdq_is_not_chosen_where_onnxruntime_leaves_its_convs_unfused(probed, tmp_path):
    """Unfused, S8S8 Q/DQ runs FP32's convs plus the Q/DQ ops: it cannot beat FP32."""
    from evaluators.ort_probe import _build_variants

    _, report, _ = probed
    paths = _build_variants(tmp_path, {})
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(paths["s8s8-qdq"]), options, providers=["CPUExecutionProvider"])
    ops = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)
    if ops["Conv"] == 0:
        pytest.skip(f"this onnxruntime fuses signed Q/DQ convs on this CPU ({dict(ops)})")
    assert report.ratios["s8s8-qdq"].ratio > 1
    assert report.int8_recipe != "s8s8-qdq"


# ---- the stored report ----------------------------------------------------------------


def test_a_second_device_reads_the_stored_report(probed, home):
    _, report, _ = probed
    path = probe_path(report.cpu, report.onnxruntime)
    assert path.is_relative_to(home) and ProbeReport.from_dict(json.loads(path.read_text())) == report
    written = path.stat().st_mtime_ns
    start = time.perf_counter()
    again = get_device("ort-cpu", cache=False)
    assert again.probe_report() == report  # wall_s included: nothing was timed again
    assert time.perf_counter() - start < 1.0 and path.stat().st_mtime_ns == written
    assert again.fingerprint() == probed[0].fingerprint()


def test_every_thread_count_shares_the_one_thread_probe(probed):
    device, report, _ = probed
    assert report.threads == PROBE_THREADS
    two = get_device("ort-cpu:2", cache=False)
    assert two.probe_report() == report and two.precisions == device.precisions
    settings, mine = two.fingerprint().settings, device.fingerprint().settings
    assert settings["int8_recipe"] == mine["int8_recipe"] and settings["precisions"] == mine["precisions"]
    assert settings["intra_op_threads"] == 2 and two.fingerprint().hash != device.fingerprint().hash


def test_reprobe_and_stale_reports_measure_again(home, monkeypatch):
    measured = []

    def measure() -> ProbeReport:
        measured.append(_report(wall_s=float(len(measured))))
        return measured[-1]

    key = ("test cpu", ort.__version__)
    first = cached_probe(*key, measure)
    assert cached_probe(*key, measure) == first and len(measured) == 1
    monkeypatch.setenv(REPROBE_ENV, "1")
    assert cached_probe(*key, measure).wall_s == 1.0 and len(measured) == 2
    monkeypatch.delenv(REPROBE_ENV)
    stale = {**_report().to_dict(), "probe_version": PROBE_VERSION - 1}
    probe_path(*key).write_text(json.dumps(stale))
    assert cached_probe(*key, measure).wall_s == 2.0 and len(measured) == 3
    probe_path(*key).write_text("{not json")
    assert cached_probe(*key, measure).wall_s == 3.0
    assert json.loads(probe_path(*key).read_text())["wall_s"] == 3.0


def test_a_variant_the_runtime_refuses_is_reported_not_chosen():
    device = OrtDevice("ort-cpu", precisions=("fp32",), cache=False)

    def open_artifact(path, inputs):
        if path.stem == FP16:
            raise UserError(f"onnxruntime cannot load {path}: refused for this test")
        return device.open(path, inputs)

    report = run_probe(open_artifact, cpu="test", onnxruntime=ort.__version__, threads=1, settings=QUICK)
    assert set(report.failed) == {FP16} and "refused for this test" in report.failed[FP16]
    assert FP16 not in report.ratios and "fp16" not in report.precisions
    assert set(report.ratios) == set(CANDIDATES) and report.rounds >= QUICK.min_runs


def test_the_probe_graph_is_a_valid_conv_net():
    model = probe_graph()
    onnx.checker.check_model(model, full_check=True)
    ops = collections.Counter(n.op_type for n in model.graph.node)
    assert ops["Conv"] >= 8 and ops["Sigmoid"] == ops["Mul"] == ops["Conv"] - 1 and ops["Concat"] == ops["Add"] == 1


# ---- pinning --------------------------------------------------------------------------


def test_a_pinned_device_does_not_probe(tmp_path, monkeypatch):
    monkeypatch.setenv("SQUEEZEFIT_HOME", str(tmp_path))
    device = get_device("ort-cpu:3", precisions=["fp32", "int8"], cache=False)
    assert device.precisions == ("int8", "fp32") and device.int8_recipe == Int8Recipe()
    assert device.probe_report() is None
    assert not probe_path(cpu_description(), ort.__version__).exists()
    assert device.fingerprint().settings["int8_recipe"] == Int8Recipe().to_dict()
    signed = Int8Recipe(activations="int8")
    assert OrtDevice(precisions=("fp32", "int8"), int8_recipe=signed, cache=False).int8_recipe == signed
    plain = OrtDevice(precisions=("fp32",), cache=False)
    assert plain.precisions == ("fp32",) and plain.int8_recipe is None
    assert plain.fingerprint().settings["int8_recipe"] is None


@pytest.mark.parametrize(
    "pins",
    [
        {"precisions": ("int8",)},
        {"precisions": ("fp32", "int4")},
        {"precisions": ("fp32", "bf16")},  # ONNX Runtime has no bf16 execution mode
        {"precisions": ("fp32",), "int8_recipe": Int8Recipe()},
        {"int8_recipe": Int8Recipe()},
    ],
)
def test_bad_pins_are_user_errors(pins):
    with pytest.raises(UserError):
        OrtDevice("ort-cpu", cache=False, **pins)
