"""The measurement agent over loopback, and `squeezefit measure` / `squeezefit agent` from the CLI.

The artifact is a real two-node ONNX graph (Conv + Relu) built with onnx.helper: the
agent's checks are about bytes and protocol, the YOLO-sized case is in test_devices.py.
Side-by-side timing uses the torch-exported nets of test_paired.py (8, 24 and 64 channels).
"""

from __future__ import annotations

import http.client
import json
import threading
import urllib.error
import urllib.request

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from evaluators import LatencyCache, TimingSettings, UserError, get_device, structure_hash
from evaluators.remote import REFERENCE_HEADER, TIMING_HEADER, RemoteDevice, make_server, reference_key
from search.cli import main
from tests.evaluators.test_paired import export_conv_net

TOKEN = "agent-test-token"
QUICK = TimingSettings(warmup_min_runs=1, warmup_max_runs=3, warmup_window=1, min_runs=3, min_seconds=0, max_runs=3)
NET_WIDTHS = {"narrow": 8, "middle": 24, "wide": 64}
QUICK_ARGS = ["--runs", "3", "--min-seconds", "0", "--max-runs", "3", "--warmup", "3"]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    weight = numpy_helper.from_array(np.random.default_rng(0).random((8, 3, 3, 3), dtype=np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["images", "w"], ["c"], name="/conv/Conv", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["out"], name="/act/Relu"),
        ],
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 8, 32, 32])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    path = tmp_path_factory.mktemp("model") / "tiny.onnx"
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    """An agent serving ort-cpu on loopback with a 1 MB upload limit; yields its URL."""
    cache = LatencyCache(tmp_path_factory.mktemp("agent") / "cache.sqlite")
    server = make_server(get_device("ort-cpu", cache=cache), "127.0.0.1", 0, TOKEN, max_upload_mb=1, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def small_agent(tmp_path_factory):
    """An agent that keeps only 2 uploaded references, without a cache; yields its URL."""
    server = make_server(get_device("ort-cpu", cache=False), "127.0.0.1", 0, TOKEN, max_references=2, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def nets(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("nets")
    paths = {name: export_conv_net(folder / f"{name}.onnx", width) for name, width in NET_WIDTHS.items()}
    return {**paths, "big_input": export_conv_net(folder / "big_input.onnx", 8, size=64)}


@pytest.fixture(scope="module")
def unloadable(tmp_path_factory):
    """A valid ONNX file (the checker passes) whose only op no runtime implements."""
    graph = helper.make_graph(
        [helper.make_node("Frobnicate", ["images"], ["out"], domain="com.example")],
        "unloadable",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 32, 32])],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=8)
    onnx.checker.check_model(model)
    path = tmp_path_factory.mktemp("unloadable") / "frobnicate.onnx"
    onnx.save(model, str(path))
    return path


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    # The CLI uses the default cache file: point it into the test's folder.
    monkeypatch.setenv("SQUEEZEFIT_LATENCY_CACHE", str(tmp_path / "latency.sqlite"))
    monkeypatch.delenv("SQUEEZEFIT_AGENT_TOKEN", raising=False)


def request(
    url: str, path: str, *, data: bytes | None = None, token: str | None = TOKEN, headers: dict | None = None
) -> tuple[int, dict]:
    headers = {**({"Authorization": f"Bearer {token}"} if token else {}), **(headers or {})}
    if data is not None:
        headers[TIMING_HEADER] = json.dumps(QUICK.to_dict())
    req = urllib.request.Request(url + path, data=data, headers=headers, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_info_describes_the_served_device(agent):
    status, info = request(agent, "/info")
    local = get_device("ort-cpu", cache=False)
    assert status == 200 and info["device"] == "ort-cpu"
    assert info["fingerprint"] == local.fingerprint().to_dict() and info["fingerprint_hash"] == local.fingerprint().hash
    assert tuple(info["precisions"]) == local.precisions and info["int8_recipe"] == local.int8_recipe.to_dict()


def test_missing_or_wrong_token_is_401_and_the_agent_keeps_serving(agent, model_path):
    assert request(agent, "/info", token=None)[0] == 401
    assert request(agent, "/measure", data=model_path.read_bytes(), token=None)[0] == 401
    assert request(agent, "/measure", data=model_path.read_bytes(), token="wrong")[0] == 401
    status, body = request(agent, "/measure", data=model_path.read_bytes())
    assert status == 200 and body["p50_ms"] > 0 and body["runs"] == 3


def test_oversize_upload_is_413_before_the_body_is_read(agent, model_path):
    host, port = agent.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.putrequest("POST", "/measure")
    connection.putheader("Authorization", f"Bearer {TOKEN}")
    connection.putheader("Content-Length", str(10 * 2**30))  # 10 GB announced, nothing sent
    connection.endheaders()
    response = connection.getresponse()  # would time out if the agent waited for the body
    assert response.status == 413 and "limit" in json.loads(response.read())["error"]
    connection.close()
    assert request(agent, "/measure", data=model_path.read_bytes())[0] == 200


@pytest.mark.parametrize("payload", [b"definitely not onnx", b"", b"\x08\x07"])
def test_non_onnx_bytes_are_400_and_the_agent_keeps_serving(agent, payload):
    status, body = request(agent, "/measure", data=payload)
    assert status == 400 and "not a valid ONNX model" in body["error"]
    assert request(agent, "/info")[0] == 200


def test_remote_device_measures_with_the_agents_fingerprint(agent, model_path, tmp_path):
    remote = get_device(f"remote:{agent}", token=TOKEN, cache=LatencyCache(tmp_path / "client.sqlite"))
    local = get_device("ort-cpu", cache=False)
    assert remote.fingerprint() == local.fingerprint()
    assert remote.precisions == local.precisions and remote.int8_recipe == local.int8_recipe
    m = remote.measure(model_path, settings=QUICK)
    assert m.device == f"remote:{agent}" and m.fingerprint == local.fingerprint() and m.runs == 3
    assert remote.measure(model_path, settings=QUICK).cached


def test_remote_device_errors_are_user_errors(agent):
    with pytest.raises(UserError, match="token"):
        get_device(f"remote:{agent}")  # no token given, none in the environment
    with pytest.raises(UserError, match="401"):
        get_device(f"remote:{agent}", token="wrong").fingerprint()
    with pytest.raises(UserError, match="cannot reach"):
        RemoteDevice("http://127.0.0.1:9", token=TOKEN).fingerprint()


def test_cli_measure_json_round_trip(model_path, capsys):
    assert main(["measure", str(model_path), "--device", "ort-cpu", "--json", *QUICK_ARGS]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["p50_ms"] <= first["p90_ms"] and first["runs"] == 3 and first["device"] == "ort-cpu"
    assert first["fingerprint"]["runtime"] == "onnxruntime" and first["cached"] is False
    assert "ratio" not in first and "reference" not in first  # unpaired without --reference
    assert main(["measure", str(model_path), "--device", "ort-cpu", "--json", *QUICK_ARGS]) == 0
    assert json.loads(capsys.readouterr().out)["cached"] is True


def test_cli_measure_through_the_agent_prints_a_line(agent, model_path, capsys):
    argv = ["measure", str(model_path), "--device", f"remote:{agent}", "--token", TOKEN, *QUICK_ARGS]
    assert main(argv) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"tiny.onnx on remote:{agent}: p50 ") and "3 runs" in line


def test_cli_user_errors_exit_2_with_one_sentence(model_path, tmp_path, capsys):
    assert main(["measure", str(tmp_path / "missing.onnx"), "--device", "ort-cpu"]) == 2
    assert main(["measure", str(model_path), "--device", "abacus"]) == 2
    assert main(["agent", "--device", "ort-cpu", "--port", "0"]) == 2  # no token anywhere
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and all(e.startswith("squeezefit ") for e in errors)
    assert "does not exist" in errors[0] and "unknown device" in errors[1] and "token" in errors[2]


# ---- side by side on the agent ---------------------------------------------------------


def upload(url: str, path) -> str:
    status, body = request(url, "/reference", data=path.read_bytes())
    assert status == 200, body
    return body["reference"]


def together(url: str, keys) -> tuple[int, dict]:
    body = json.dumps({"references": keys, "timing": QUICK.to_dict()}).encode()
    return request(url, "/together", data=body, headers={"Content-Type": "application/json"})


def test_a_reference_is_kept_under_the_key_of_its_bytes(agent, nets):
    key = upload(agent, nets["narrow"])
    assert key == reference_key(nets["narrow"].read_bytes()) and upload(agent, nets["narrow"]) == key
    assert upload(agent, nets["wide"]) != key
    status, info = request(agent, "/info")
    assert status == 200 and info["max_references"] == 8


@pytest.mark.parametrize("payload", [b"definitely not onnx", b""])
def test_non_onnx_references_are_400_as_for_a_candidate(agent, payload):
    status, body = request(agent, "/reference", data=payload)
    assert status == 400 and "not a valid ONNX model" in body["error"]
    assert request(agent, "/info")[0] == 200


def test_measure_with_a_reference_header_is_paired(agent, nets):
    key = upload(agent, nets["narrow"])
    status, body = request(agent, "/measure", data=nets["wide"].read_bytes(), headers={REFERENCE_HEADER: key})
    assert status == 200 and body["ratio"] > 1 and body["ratio_low"] <= body["ratio"] <= body["ratio_high"]
    assert body["reference_structure"] == structure_hash(nets["narrow"]) and body["runs"] == 3
    status, body = request(agent, "/measure", data=nets["wide"].read_bytes(), headers={REFERENCE_HEADER: "0" * 16})
    assert status == 400 and body["code"] == "unknown_reference" and "upload it" in body["error"]


def test_together_times_uploaded_references_against_the_first(agent, nets):
    keys = [upload(agent, nets[name]) for name in ("narrow", "middle", "wide")]
    status, body = together(agent, keys)
    ratios = [m["ratio"] for m in body["measurements"]]
    assert status == 200 and ratios[0] == 1.0 and 1 < ratios[1] < ratios[2]
    assert not any(m["cached"] for m in body["measurements"])
    status, body = together(agent, [keys[0], "f" * 16])
    assert status == 400 and body["code"] == "unknown_reference"
    for bad in (b"{", b"{}", b'{"references": []}', b'{"references": ["a"], "timing": {"min_runs": 0}}'):
        status, body = request(agent, "/together", data=bad)
        assert status == 400 and body["error"] and "code" not in body
    status, body = together(agent, [keys[0], upload(agent, nets["big_input"])])
    assert status == 400 and "same input shape" in body["error"]


def test_a_reference_the_runtime_cannot_load_is_refused_as_a_candidate_is(agent, nets, unloadable):
    status, body = request(agent, "/measure", data=unloadable.read_bytes())
    assert status == 400 and "onnxruntime cannot load" in body["error"]
    key = upload(agent, unloadable)  # valid ONNX bytes: kept, refused when loaded to be timed
    status, body = request(agent, "/measure", data=nets["narrow"].read_bytes(), headers={REFERENCE_HEADER: key})
    assert status == 400 and "onnxruntime cannot load" in body["error"]
    assert together(agent, [key, upload(agent, nets["narrow"])])[0] == 400
    assert request(agent, "/info")[0] == 200


def test_remote_device_measures_paired_and_together_on_the_agent(agent, nets, unloadable, tmp_path):
    remote = RemoteDevice(agent, token=TOKEN, cache=LatencyCache(tmp_path / "client.sqlite"))
    m = remote.measure_paired(nets["wide"], nets["narrow"], settings=QUICK)
    assert m.ratio > 1 and m.device == f"remote:{agent}" and not m.cached and m.runs == 3
    assert m.fingerprint == get_device("ort-cpu", cache=False).fingerprint()
    again = remote.measure_paired(nets["wide"], nets["narrow"], settings=QUICK)
    assert again.cached and again.ratio == m.ratio

    narrow, middle, wide = remote.measure_together([nets["narrow"], nets["middle"], nets["wide"]], settings=QUICK)
    assert narrow.ratio == 1.0 and 1 < middle.ratio < wide.ratio and not wide.cached
    assert {x.device for x in (narrow, middle, wide)} == {f"remote:{agent}"}

    with pytest.raises(UserError, match="same input shape"):
        remote.measure_paired(nets["big_input"], nets["narrow"], settings=QUICK)
    with pytest.raises(UserError, match="400: onnxruntime cannot load"):
        remote.measure_paired(nets["narrow"], unloadable, settings=QUICK)


def test_more_artifacts_than_the_agent_keeps_share_sessions_with_the_first(small_agent, nets):
    remote = RemoteDevice(small_agent, token=TOKEN, cache=False)
    paths = [nets["narrow"], nets["middle"], nets["wide"]]
    results = remote.measure_together(paths, settings=QUICK)
    assert [r.ratio > 1 for r in results] == [False, True, True] and results[0].ratio == 1.0
    assert {r.reference_structure for r in results} == {structure_hash(nets["narrow"])}


def test_an_evicted_reference_is_uploaded_again(small_agent, nets):
    remote = RemoteDevice(small_agent, token=TOKEN, cache=False)
    assert remote.measure_paired(nets["wide"], nets["narrow"], settings=QUICK).ratio > 1
    key = reference_key(nets["narrow"].read_bytes())
    upload(small_agent, nets["middle"])
    upload(small_agent, nets["big_input"])  # the agent keeps two: narrow is gone
    status, body = request(small_agent, "/measure", data=nets["wide"].read_bytes(), headers={REFERENCE_HEADER: key})
    assert status == 400 and body["code"] == "unknown_reference"
    assert remote.measure_paired(nets["wide"], nets["narrow"], settings=QUICK).ratio > 1  # re-uploaded, retried


def test_agent_keeps_at_least_two_references():
    with pytest.raises(UserError, match="at least 2"):
        make_server(get_device("ort-cpu", cache=False), "127.0.0.1", 0, TOKEN, max_references=1)


def test_cli_measure_with_a_reference_through_the_agent(agent, nets, capsys):
    argv = ["measure", str(nets["wide"]), "--reference", str(nets["narrow"]), "--device", f"remote:{agent}"]
    assert main([*argv, "--token", TOKEN, "--json", *QUICK_ARGS]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ratio"] > 1 and result["device"] == f"remote:{agent}" and result["runs"] == 3
    assert main([*argv, "--token", TOKEN, *QUICK_ARGS]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"wide.onnx vs narrow.onnx on remote:{agent}: ") and "3 alternated runs" in line
