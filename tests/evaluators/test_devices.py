"""Conformance suite of the Device contract, run against every device usable on this machine.

The artifact is a real, untrained YOLO11n exported to ONNX at 64 px. Devices whose
hardware or runtime is absent (TensorRT, ORT CUDA/TensorRT EPs) are skipped with the
reason their registration gives. "remote" is an agent on loopback serving ort-cpu.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import onnx
import pytest

from evaluators import (
    PRECISIONS,
    Int8Recipe,
    LatencyCache,
    LatencyMeasurement,
    TimingSettings,
    UserError,
    available_devices,
    device_lock,
    get_device,
    structure_hash,
)
from evaluators.accuracy import RUNTIMES
from evaluators.remote import RemoteDevice, make_server
from evaluators.timing import run_protocol

# Small floors keep the suite fast; the protocol is the same as with the defaults.
TINY = TimingSettings(warmup_min_runs=2, warmup_max_runs=6, warmup_window=2, min_runs=5, min_seconds=0.02, max_runs=200)
TOKEN = "conformance-token"


def _conformance_names() -> list[str]:
    """Every registered device kind (a threaded kind also at 2 threads); absent hardware skips."""
    names = []
    for status in available_devices():
        names.append(status.prefix)
        if status.usage.endswith("[:threads]"):
            names.append(f"{status.prefix}:2")
    return names


DEVICES = _conformance_names()


@pytest.fixture(scope="session")
def artifact(tmp_path_factory) -> Path:
    """yolo11n.yaml (untrained, built offline) exported to ONNX at 64 px."""
    from ultralytics import YOLO

    folder = tmp_path_factory.mktemp("artifact")
    cwd = os.getcwd()
    os.chdir(folder)  # Ultralytics writes the export next to the (relative) YAML name
    try:
        path = Path(YOLO("yolo11n.yaml").export(format="onnx", imgsz=64))
    finally:
        os.chdir(cwd)
    return (folder / path).resolve()


@pytest.fixture(scope="module")
def agent_url(tmp_path_factory):
    cache = LatencyCache(tmp_path_factory.mktemp("agent") / "cache.sqlite")
    server = make_server(get_device("ort-cpu", cache=cache), "127.0.0.1", 0, TOKEN, quiet=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance whose one node holds `device:ort-cpu`, as a cluster's device node does."""
    import ray

    ray.init(num_cpus=1, resources={"device:ort-cpu": 1}, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(params=DEVICES)
def device(request, tmp_path):
    cache = LatencyCache(tmp_path / "cache.sqlite")
    if request.param == "remote":
        return RemoteDevice(request.getfixturevalue("agent_url"), token=TOKEN, cache=cache)
    if request.param == "ray":  # ort-cpu, measured by Ray tasks on the node holding its resource
        request.getfixturevalue("local_ray")
        return get_device("ray:ort-cpu", cache=cache)
    prefix = request.param.split(":")[0]
    status = next(s for s in available_devices() if s.prefix == prefix)
    if not status.usable:
        pytest.skip(f"{request.param}: {status.reason}")
    return get_device(request.param, cache=cache)


def test_measurement_is_sane_and_cached(device, artifact):
    first = device.measure(artifact, settings=TINY)
    assert not first.cached
    assert 0 < first.p50_ms <= first.p90_ms
    assert first.mean_ms > 0 and first.iqr_ms >= 0
    assert first.runs >= TINY.min_runs and first.warmup_runs >= 1
    assert first.peak_memory_mb >= 0  # a small artifact may fit in memory the process freed before (test_memory.py)
    assert first.device == device.name
    assert first.fingerprint == device.fingerprint()
    assert first.sustained_seconds is None
    assert LatencyMeasurement.from_dict(first.to_dict()) == first

    second = device.measure(artifact, settings=TINY)
    assert second.cached
    assert (second.p50_ms, second.runs, second.fingerprint) == (first.p50_ms, first.runs, first.fingerprint)


def test_fingerprint_is_stable(device):
    first, second = device.fingerprint(), device.fingerprint()
    assert first == second and first.hash == second.hash and len(first.hash) == 16
    assert first.hardware and first.runtime and first.version


def test_precisions_and_int8_recipe_agree(device):
    assert "fp32" in device.precisions
    assert set(device.precisions) <= set(PRECISIONS)
    assert (device.int8_recipe is None) == ("int8" not in device.precisions)
    assert device.recipe_for() == (device.int8_recipe or Int8Recipe())
    own = Int8Recipe(calibration="percentile")
    assert device.recipe_for(own) is own  # a policy's own recipe wins
    assert device.accuracy_runtime in RUNTIMES


def test_missing_and_corrupt_artifacts_are_user_errors(device, artifact, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        device.measure(tmp_path / "missing.onnx", settings=TINY)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(artifact.read_bytes()[:50_000])
    with pytest.raises(UserError, match="not a valid ONNX model"):
        device.measure(corrupt, settings=TINY)


# ---- registry -------------------------------------------------------------------------


def test_unknown_device_names_the_known_ones():
    with pytest.raises(UserError, match="ort-cpu.*openvino-cpu"):
        get_device("jetson-nano")


@pytest.mark.parametrize("name", ["ort-cpu:0", "ort-cpu:two", "openvino-cpu:-1", "remote:10.0.0.1", "ray"])
def test_bad_device_arguments_are_user_errors(name):
    with pytest.raises(UserError):
        get_device(name, cache=False)


def test_thread_count_is_part_of_the_fingerprint():
    one, also_one, two = (get_device(n, cache=False).fingerprint() for n in ("ort-cpu", "ort-cpu:1", "ort-cpu:2"))
    assert one == also_one and one.hash != two.hash
    assert two.settings["intra_op_threads"] == 2


def test_unusable_devices_say_why():
    statuses = {s.prefix: s for s in available_devices()}
    assert statuses["ort-cpu"].usable and statuses["openvino-cpu"].usable
    assert all(s.reason for s in statuses.values() if not s.usable)


# ---- cache ----------------------------------------------------------------------------


def test_structure_hash_ignores_weights_but_not_structure(artifact, tmp_path):
    model = onnx.load(str(artifact))
    for init in model.graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT and len(init.raw_data) > 256:
            values = onnx.numpy_helper.to_array(init) * 0.5
            init.CopyFrom(onnx.numpy_helper.from_array(values, init.name))
    retrained = tmp_path / "retrained.onnx"
    onnx.save(model, str(retrained))
    assert structure_hash(retrained) == structure_hash(artifact)

    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    next(a for a in conv.attribute if a.name == "strides").ints[:] = [1, 1]
    assert structure_hash(model) != structure_hash(artifact)


def test_other_timing_settings_miss_the_cache(artifact, tmp_path):
    device = get_device("ort-cpu", cache=LatencyCache(tmp_path / "cache.sqlite"))
    device.measure(artifact, settings=TINY)
    longer = TimingSettings(**{**TINY.to_dict(), "min_runs": TINY.min_runs + 3})
    again = device.measure(artifact, settings=longer)
    assert not again.cached and again.runs >= longer.min_runs


# ---- protocol -------------------------------------------------------------------------


def test_sustained_mode_reports_throughput_and_drift(artifact):
    settings = TimingSettings(**{**TINY.to_dict(), "sustained_seconds": 0.2})
    m = get_device("ort-cpu", cache=False).measure(artifact, settings=settings)
    assert m.sustained_seconds >= 0.2 and m.sustained_throughput_ips > 0


def test_sustained_drift_is_last_window_over_first():
    """A run that takes 1 ms for its first 0.15 s and 2 ms after: the sustained drift is exactly +100%."""
    start = []

    def timed_run() -> float:
        now = time.perf_counter()
        start.append(now)
        time.sleep(0.002)
        return 1.0 if now - start[0] < 0.15 else 2.0

    settings = TimingSettings(
        warmup_min_runs=1, warmup_window=1, min_runs=1, min_seconds=0, max_runs=1, sustained_seconds=0.3
    )
    stats = run_protocol(timed_run, settings)
    assert stats.sustained_drift == 1.0 and stats.sustained_seconds >= 0.3


def test_run_count_floor_time_floor_and_caps():
    constant = TimingSettings(warmup_min_runs=1, warmup_window=2, min_runs=7, min_seconds=0, max_runs=7)
    stats = run_protocol(lambda: 1.0, constant)
    assert stats.runs == 7 and stats.warmup_runs == 4 and stats.p50_ms == stats.p90_ms == 1.0 and stats.iqr_ms == 0

    ramp = iter(range(1, 10**6))  # never stable: warm-up stops at its cap
    capped = TimingSettings(warmup_max_runs=20, min_runs=1, min_seconds=0.05, max_runs=10**6)
    stats = run_protocol(lambda: float(next(ramp)), capped)
    assert stats.warmup_runs == 20 and stats.runs > 1  # runs continued until the 50 ms floor


def test_device_lock_excludes_other_processes(tmp_path, monkeypatch):
    monkeypatch.setenv("SQUEEZEFIT_LOCK_DIR", str(tmp_path))
    probe = (
        "import sys; from evaluators.host_lock import device_lock\n"
        "try:\n    with device_lock('cpu', timeout_s=0.3): sys.exit(0)\nexcept TimeoutError: sys.exit(3)"
    )
    with device_lock("cpu"):
        assert subprocess.run([sys.executable, "-c", probe]).returncode == 3
    assert subprocess.run([sys.executable, "-c", probe]).returncode == 0


def test_an_opened_artifact_serves_several_protocol_runs(artifact):
    from evaluators import LocalDevice, check_artifact
    from evaluators.inputs import synthetic_inputs

    device = get_device("ort-cpu", cache=False)
    assert isinstance(device, LocalDevice) and device.host == "cpu"
    timed_run = device.open(artifact, synthetic_inputs(check_artifact(artifact)))
    first, second = run_protocol(timed_run, TINY), run_protocol(timed_run, TINY)
    assert first.p50_ms > 0 and second.p50_ms > 0 and first.runs >= TINY.min_runs
    assert not issubclass(RemoteDevice, LocalDevice)  # a remote device times on its own host


def test_stability_benchmark_reports_both_schedules(artifact, tmp_path):
    report = tmp_path / "stability.md"
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "latency_stability.py"
    done = subprocess.run(
        [
            sys.executable,
            str(script),
            str(artifact),
            "--devices",
            "ort-cpu",
            "--processes",
            "2",
            "--runs",
            "5",
            "--min-seconds",
            "0.05",
            "--rounds",
            "2",
            "--turn-seconds",
            "0.05",
            "--output",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    rows = [line.split(" | ") for line in report.read_text().splitlines() if line.startswith(f"| {artifact.name}")]
    assert [row[4] for row in rows] == ["sequential", "interleaved"]
    for row in rows:
        p50s = [float(p) for p in row[6].split(", ")]
        assert len(p50s) == 2 and min(p50s) > 0
        assert abs(float(row[8].rstrip("%")) / 100 - (max(p50s) / min(p50s) - 1)) < 0.005  # p50s print rounded
    assert rows[0][10].strip(" |") == "" and rows[1][10].strip(" |").endswith("%")
