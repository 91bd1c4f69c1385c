"""`squeezefit measure MODEL --reference REF`: a paired measurement from the command line.

Real tiny nets (torch-exported, 32 px; the wide one is clearly slower than the narrow one)
timed on ort-cpu with tiny floors. The successful runs and one error go through a fresh
`squeezefit` process; the other user errors call the same entry point in-process (faster;
they fail before any runtime loads, so this process's memory stays as later tests expect).
Without --reference the output is unchanged: see test_remote.py's CLI tests.
"""

from __future__ import annotations

import json
import re

import pytest

from search.cli import main
from tests.conftest import run_cli
from tests.evaluators.test_paired import export_conv_net

TINY_ARGS = ["--device", "ort-cpu", "--runs", "5", "--min-seconds", "0.2", "--warmup", "6"]
PAIRED_FIELDS = {"ratio", "ratio_low", "ratio_high", "p50_ms", "reference_p50_ms", "runs", "device", "fingerprint"}


@pytest.fixture(scope="module")
def nets(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("nets")
    return {
        "narrow": export_conv_net(folder / "narrow.onnx", 8),
        "wide": export_conv_net(folder / "wide.onnx", 64),
        "big_input": export_conv_net(folder / "big_input.onnx", 8, size=64),
    }


def test_json_gives_the_ratio_and_is_cached_the_second_time(nets, tmp_path):
    args = ["measure", str(nets["wide"]), "--reference", str(nets["narrow"]), "--json", *TINY_ARGS]
    first = run_cli(args, tmp_path, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    result = json.loads(first.stdout)
    assert result.keys() >= PAIRED_FIELDS and result["device"] == "ort-cpu"
    assert result["artifact"] == str(nets["wide"]) and result["reference"] == str(nets["narrow"])
    assert result["ratio"] > 1 and result["ratio_low"] <= result["ratio"] <= result["ratio_high"]
    assert result["runs"] >= 5 and result["p50_ms"] > result["reference_p50_ms"] and not result["cached"]

    second = run_cli(args, tmp_path, timeout=300)  # same home: same latency cache
    assert second.returncode == 0, second.stderr[-3000:]
    again = json.loads(second.stdout)
    assert again["cached"] and again["ratio"] == result["ratio"]


def test_the_line_names_both_files_the_ratio_and_the_drift(nets, tmp_path):
    args = ["measure", str(nets["narrow"]), "--reference", str(nets["wide"]), "--no-cache", *TINY_ARGS]
    done = run_cli(args, tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    line = done.stdout.strip()
    pattern = (
        r"narrow\.onnx vs wide\.onnx on ort-cpu: (\d+\.\d{3})x \(95% \d+\.\d{3}-\d+\.\d{3}\), "
        r"p50 \d+\.\d{3} ms vs \d+\.\d{3} ms over (\d+) alternated runs, host drift [+-]\d+\.\d% "
        r"\[fingerprint [0-9a-f]{16}\]"
    )
    match = re.fullmatch(pattern, line)
    assert match, line
    assert float(match[1]) < 1 and int(match[2]) >= 5  # the narrow net is the faster one


def test_a_missing_reference_is_one_sentence_and_exit_code_2(nets, tmp_path):
    done = run_cli(["measure", str(nets["wide"]), "--reference", str(tmp_path / "missing.onnx")], tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip() == f"squeezefit measure: ONNX file {tmp_path / 'missing.onnx'} does not exist."


def test_bad_references_are_user_errors(nets, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SQUEEZEFIT_LATENCY_CACHE", str(tmp_path / "latency.sqlite"))
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(nets["narrow"].read_bytes()[:200])
    wide = str(nets["wide"])
    assert main(["measure", wide, "--reference", str(corrupt), *TINY_ARGS]) == 2
    assert main(["measure", wide, "--reference", str(nets["big_input"]), *TINY_ARGS]) == 2
    assert main(["measure", wide, "--reference", str(nets["narrow"]), "--sustained", "1", *TINY_ARGS]) == 2
    captured = capsys.readouterr()
    errors = captured.err.strip().splitlines()
    assert captured.out == "" and len(errors) == 3 and all(e.startswith("squeezefit measure: ") for e in errors)
    assert "not a valid ONNX model" in errors[0]
    assert "same input shape" in errors[1] and "float32[1, 3, 64, 64]" in errors[1]
    assert "--sustained" in errors[2] and "--reference" in errors[2]
