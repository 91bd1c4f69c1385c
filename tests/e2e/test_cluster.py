"""A study on a real Ray cluster: a head node and a second node on this machine, the second alone
holding `device:ort-cpu`; the study in a real PostgreSQL server (tests/postgres_server.py).

The smoke study runs with two trials at once: trials fine-tune on both nodes, every latency is
measured on the device's node, one measurement at a time, and the study is whole in PostgreSQL.
A third node killed while a trial fine-tunes on it loses only that trial: FAIL with the reason. A trial trained
on the device's node exports from the driver (one shared squeezefit home). The device's node killed during a
search stops it with one sentence, keeping every finished trial.
Bad addresses and a cluster without the device are one sentence and exit code 2.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import psutil
import pytest
from optuna.trial import TrialState

from search.study import load_study, study_record
from tests.conftest import REPO, cli_env, recorded_precision_segments, run_cli
from tests.postgres_server import free_port

pytestmark = pytest.mark.slow  # minutes: a two-node cluster and the smoke study on it

DEVICE = "ort-cpu"
SPARE_NODE = ("--num-cpus", "1", "--block", "--disable-usage-stats")  # a node for fine-tuning only


def _ray(*args: str, env: dict) -> subprocess.CompletedProcess:
    ray = Path(sys.executable).with_name("ray")
    return subprocess.run([str(ray), *args], env=env, capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def cluster_nodes():
    """(address, the device node's `squeezefit worker` process) of a head (one CPU) and of a node with one CPU that
    owns the device, sharing a fresh token (Ray starts clusters with token authentication); stopped afterwards."""
    token = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    saved = {k: os.environ.get(k) for k in token}
    os.environ.update(token)  # the CLI processes the tests start inherit it
    env = dict(os.environ)
    port = free_port()
    address = f"127.0.0.1:{port}"
    temp = tempfile.mkdtemp(prefix="squeezefit-ray-")
    common = ["--num-cpus", "1", "--disable-usage-stats"]
    worker = None
    try:
        head = _ray(
            "start", "--head", "--port", str(port), "--include-dashboard", "false", "--temp-dir", temp, *common, env=env
        )
        assert head.returncode == 0, head.stderr[-2000:]
        # the device's node, started the way a user starts it
        worker = subprocess.Popen(
            [sys.executable, "-m", "search.cli", "worker", "--device", DEVICE, "--address", address, "--num-cpus", "1"],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while f"device:{DEVICE}" not in _ray("status", "--address", address, env=env).stdout:
            assert worker.poll() is None and time.monotonic() < deadline, "squeezefit worker did not join"
            time.sleep(2)
        yield address, worker
    finally:
        _ray("stop", "--force", env=env)
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=60)
        shutil.rmtree(temp, ignore_errors=True)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def cluster(cluster_nodes):
    """The address of the module's cluster (`cluster_nodes`)."""
    return cluster_nodes[0]


@pytest.fixture(scope="module")
def study_on_cluster(cluster, postgres_url, tmp_path_factory):
    home = tmp_path_factory.mktemp("cluster-home")
    name = "smoke-on-cluster"
    result = run_cli(
        [
            *("search", "studies/smoke.yaml", "--study", name, "--storage", postgres_url, "--address", cluster),
            *("--concurrency", "2", "--out", str(home / "out")),
        ],
        home,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return load_study(name, postgres_url), postgres_url


def _device_node(cluster) -> str:
    """The node id of the node holding the device, asked of the cluster by a fresh process (Ray reads its
    authentication settings once per process, and this one may have run a local Ray before)."""
    ask = (
        f"import ray; ray.init(address={cluster!r}, logging_level='ERROR'); "
        f"print(next(n['NodeID'] for n in ray.nodes() if n['Alive'] and n['Resources'].get('device:{DEVICE}')))"
    )
    answer = subprocess.run(
        [sys.executable, "-c", ask], capture_output=True, text=True, timeout=120, env=dict(os.environ)
    )
    assert answer.returncode == 0, answer.stderr[-2000:]
    return answer.stdout.strip().splitlines()[-1]


def test_trials_run_on_both_nodes_and_are_measured_on_the_device_node_one_at_a_time(cluster, study_on_cluster):
    study, url = study_on_cluster
    device_node = _device_node(cluster)
    trials = study.get_trials(deepcopy=False)
    assert trials and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials), "none left RUNNING"
    finished = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(finished) == 7
    # the run's home is fresh and every process of the run shares it: a latency read from the cache (the final
    # artifact of an INT8 trial has its screen's structure) was timed in this run too, and says where and when
    for t in finished:
        assert t.user_attrs["timing"]["measured_on"]["node"] == device_node, t.number
    assert len({t.user_attrs["trained_on"]["node"] for t in finished}) == 2, "trials ran on both nodes"
    for t in finished:  # shown with -s: which trial ran where
        where, timed = t.user_attrs["trained_on"]["node"], t.user_attrs["timing"]["measured_on"]
        print(
            f"trial {t.number}: {t.user_attrs['status']:<10} trained on {'device' if where == device_node else 'head'}"
            f" node, measured on the device node {timed['started']} - {timed['ended']}"
        )
    windows = sorted(
        {
            (t.user_attrs["timing"]["measured_on"]["started"], t.user_attrs["timing"]["measured_on"]["ended"])
            for t in finished
        }
    )
    assert len(windows) >= 3
    for (_, end), (start, _) in itertools.pairwise(windows):
        assert start >= end, "two measurements on the device overlapped"
    # the study is whole in PostgreSQL, as Optuna itself reads it
    plain = optuna.load_study(study_name=study.study_name, storage=url)
    assert len(plain.trials) == len(trials) and plain.user_attrs["squeezefit"]["device"] == f"ray:{DEVICE}"


def test_a_trial_trained_on_the_other_node_exports_from_the_driver(cluster, study_on_cluster, tmp_path):
    """Weights and artifacts live in the shared squeezefit home; the export re-times the card on the device's node,
    joining the cluster the study recorded."""
    study, url = study_on_cluster
    device_node = _device_node(cluster)
    trial = next(
        t
        for t in study.get_trials(deepcopy=False)
        if t.state == TrialState.COMPLETE
        and t.user_attrs["status"] == "complete"
        and t.user_attrs["trained_on"]["node"] == device_node
    )
    assert Path(trial.user_attrs["weights"]).is_file() and Path(trial.user_attrs["artifact"]).is_file()
    out = tmp_path / "bundle"
    result = run_cli(
        ["export", "--study", study.study_name, "--storage", url, "--trial", str(trial.number), "--out", str(out)],
        tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (out / "model.onnx").is_file() and "ray:ort-cpu" in (out / "card.md").read_text()


def _alive_nodes(cluster) -> int:
    ask = (
        f"import ray; ray.init(address={cluster!r}, logging_level='ERROR'); print(sum(n['Alive'] for n in ray.nodes()))"
    )
    answer = subprocess.run(
        [sys.executable, "-c", ask], capture_output=True, text=True, timeout=120, env=dict(os.environ)
    )
    assert answer.returncode == 0, answer.stderr[-2000:]
    return int(answer.stdout.strip().splitlines()[-1])


def _busy_trial(node: psutil.Process) -> bool:
    """Whether a Ray Tune trial actor under the node's process tree is computing (fine-tuning, building)."""
    for proc in node.children(recursive=True):
        try:
            if "ImplicitFunc" in " ".join(proc.cmdline()) and proc.cpu_percent(interval=0.5) > 30:
                return True
        except psutil.Error:
            continue
    return False


def _kill_tree(root: psutil.Process) -> None:
    for proc in [*root.children(recursive=True), root]:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGKILL)


def test_a_node_killed_mid_trial_loses_only_that_trial(cluster, postgres_url, tmp_path_factory):
    """A third node with one CPU joins, the search runs three trials at once (one on each node's CPU); the third
    node is killed while a trial computes on it. The search finishes, the trial it ran is FAIL with the reason."""
    before = _alive_nodes(cluster)
    spare = subprocess.Popen(
        [str(Path(sys.executable).with_name("ray")), "start", "--address", cluster, *SPARE_NODE],
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    home = tmp_path_factory.mktemp("fault-home")
    name = "smoke-node-killed"
    search = None
    try:
        deadline = time.monotonic() + 120
        while _alive_nodes(cluster) < before + 1:
            assert spare.poll() is None and time.monotonic() < deadline, "the third node did not join"
            time.sleep(2)
        options = ("--storage", postgres_url, "--address", cluster, "--concurrency", "3", "--out", str(home / "out"))
        options += ("--space", "segments")  # the structured space, end to end (it does not change the faults)
        search = subprocess.Popen(
            [sys.executable, "-m", "search.cli", "search", "studies/smoke.yaml", "--study", name, *options],
            cwd=REPO,
            env=cli_env(home),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        node = psutil.Process(spare.pid)
        deadline = time.monotonic() + 420
        while not _busy_trial(node):
            assert search.poll() is None and time.monotonic() < deadline, "no trial ran on the third node"
        killed = time.monotonic()
        _kill_tree(node)
        output, _ = search.communicate(timeout=600)
    finally:
        if search is not None and search.poll() is None:
            search.kill()
        if spare.poll() is None:
            _kill_tree(psutil.Process(spare.pid))
    assert search.returncode == 0, output[-5000:]
    study = load_study(name, postgres_url)
    trials = study.get_trials(deepcopy=False)
    states = [t.state for t in trials]
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states, "none left RUNNING"
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert failed, output[-5000:]
    for t in failed:
        assert t.user_attrs["status"] == "failed" and "died" in t.user_attrs["error"], t.user_attrs
        print(f"trial {t.number}: FAIL after the node was killed: {t.user_attrs['error']}")  # shown with -s
        assert t.datetime_complete.timestamp() >= time.time() - (time.monotonic() - killed) - 1
    assert "[trial failed] the Ray worker running the trial died" in output
    dims = study_record(study)["dimensions"]
    assert f"segments space of {dims['total']} dimensions" in output and 0 < dims["precision"] < 24
    held = {s.name for s in recorded_precision_segments(study_record(study))}
    assert all(k.split(".", 1)[1] in held for k in trials[-1].params if k.startswith("precision."))
    # the search went on: every trial asked for is settled, most of them finished
    assert len(trials) == 7 and sum(s == TrialState.COMPLETE for s in states) >= 7 - len(failed)


def test_a_cluster_without_the_device_is_one_sentence_and_exit_2(cluster, tmp_path):
    start = time.monotonic()
    result = run_cli(
        ["search", "studies/smoke.yaml", "--address", cluster, "--device", "openvino-cpu"], tmp_path, timeout=120
    )
    assert result.returncode == 2 and time.monotonic() - start < 60
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "no node of the Ray cluster holds 'device:openvino-cpu'" in lines[-1], result.stderr[-2000:]
    assert not list(tmp_path.rglob("*.db"))


def test_an_unreachable_address_is_one_sentence_and_exit_2(tmp_path):
    start = time.monotonic()
    result = run_cli(["search", "studies/smoke.yaml", "--address", f"127.0.0.1:{free_port()}"], tmp_path, timeout=120)
    assert result.returncode == 2 and time.monotonic() - start < 60
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot reach the Ray cluster at 127.0.0.1:" in lines[0], result.stderr
    assert not list(tmp_path.rglob("*.db"))


def _complete_trials(name: str, url: str) -> int:
    if name not in {s.study_name for s in optuna.get_all_study_summaries(url)}:
        return 0
    return len(optuna.load_study(study_name=name, storage=url).get_trials(states=(TrialState.COMPLETE,)))


def test_the_device_node_gone_stops_the_search_with_one_sentence(cluster_nodes, postgres_url, tmp_path_factory):
    """Last in this module: it stops the device's node. While a search runs, the node holding the device goes:
    the search stops measuring, says why in one sentence (exit code 2), and the study keeps its finished trials."""
    address, worker = cluster_nodes
    home = tmp_path_factory.mktemp("device-gone-home")
    name = "smoke-device-gone"
    options = ("--storage", postgres_url, "--address", address, "--out", str(home / "out"))
    search = subprocess.Popen(
        [sys.executable, "-m", "search.cli", "search", "studies/smoke.yaml", "--study", name, *options],
        cwd=REPO,
        env=cli_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 420
        while (finished := _complete_trials(name, postgres_url)) < 1:
            assert search.poll() is None and time.monotonic() < deadline, "no trial finished"
            time.sleep(1)
        _kill_tree(psutil.Process(worker.pid))
        out, err = search.communicate(timeout=600)
    finally:
        if search.poll() is None:
            search.kill()
    lines = [line for line in err.splitlines() if line.strip()]
    assert search.returncode == 2, out[-3000:] + err[-3000:]
    assert lines[-1].startswith("squeezefit search: the search stopped, its device is gone (") and (
        "'device:ort-cpu'" in lines[-1] and lines[-1].endswith("--resume continues it once the device is back.")
    ), lines[-1]
    study = optuna.load_study(study_name=name, storage=postgres_url)
    states = [t.state for t in study.trials]
    assert TrialState.RUNNING not in states and states.count(TrialState.COMPLETE) >= finished, "nothing lost"
    ran = [s for s in states if s != TrialState.WAITING]  # WAITING: reference policies enqueued for a resume
    assert len(ran) < 7, "no new trial started once the device was gone"
    assert any("DeviceUnavailable" in t.user_attrs.get("error", "") for t in study.trials)
