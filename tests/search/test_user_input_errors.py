"""A corrupt or non-YOLO checkpoint and a malformed baseline record, given to `squeezefit search`,
`sensitivity` or `baseline`: one sentence on stderr and exit code 2, never a traceback, nothing trained."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from torch import nn

from evaluators.vocabulary import UserError
from search.cli import main
from search.embedded.baseline import REPO_BASELINE, BaselineRecord
from tests.conftest import run_cli


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    """Each test in its own squeezefit home: nothing lands in the checkout."""
    monkeypatch.setenv("SQUEEZEFIT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _checkpoint(tmp_path, kind: str):
    """A file that is not a YOLO detection checkpoint, and how the error starts (the exception named
    after it is whatever torch or Ultralytics raised)."""
    path = tmp_path / f"{kind}.pt"
    if kind == "garbage":
        path.write_bytes(b"not a checkpoint\n")
        return path, f"model checkpoint {path} cannot be loaded as an Ultralytics model ("
    if kind == "state-dict":
        torch.save({"weights": torch.zeros(3)}, path)
        return path, f"model checkpoint {path} cannot be loaded as an Ultralytics model ("
    torch.save({"model": nn.Linear(2, 2)}, path)
    return path, f"model checkpoint {path} holds a Linear, not a YOLO detection model."


def _config(tmp_path, model) -> str:
    config = tmp_path / "study.yaml"
    config.write_text(f"name: s\nmodel: {model}\nstorage: sqlite:///{tmp_path}/s.db\n")
    return str(config)


def _baseline_copy(tmp_path, record: str | None):
    """A copy of the committed baseline with `record` (text) beside it, or none."""
    checkpoint = shutil.copyfile(REPO_BASELINE, tmp_path / "model.pt")
    if record is not None:
        BaselineRecord.path_for(checkpoint).write_text(record)
    return checkpoint


def _fails(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("command", ["search", "sensitivity"])
@pytest.mark.parametrize("kind", ["garbage", "state-dict", "linear"])
def test_bad_checkpoint_in_a_study(tmp_path, capsys, command, kind):
    path, message = _checkpoint(tmp_path, kind)
    err = _fails(capsys, [command, _config(tmp_path, path)])
    assert err.startswith(f"squeezefit {command}: {message}") and err.endswith(".")


@pytest.mark.parametrize("command", ["search", "sensitivity"])
def test_malformed_record_of_the_studys_baseline(tmp_path, capsys, command):
    checkpoint = _baseline_copy(tmp_path, '{"family": ')
    record = BaselineRecord.path_for(checkpoint)
    expected = f"squeezefit {command}: baseline record {record} is not valid JSON; train the baseline again."
    assert _fails(capsys, [command, _config(tmp_path, checkpoint)]) == expected


def _valid_record() -> dict:
    return json.loads(BaselineRecord.path_for(REPO_BASELINE).read_text())


@pytest.mark.parametrize(
    "record, message",
    [
        ("{", "is not valid JSON; train the baseline again."),
        ("[1, 2]", "must be a JSON object; train the baseline again."),
        ({"imgsz": None}, "has no 'imgsz'; train the baseline again."),
        ({"imgsz": "192"}, "has imgsz '192', which is not a int."),
        ({"seed": True}, "has seed True, which is not a int."),
        ({"map50_95": "high"}, "has map50_95 'high', which is not a float."),
        ({"versions": []}, "has versions [], which is not a dict."),
        ({"comment": "x"}, "has an unknown field 'comment'."),
    ],
)
def test_record_load_names_what_is_wrong(tmp_path, record, message):
    if isinstance(record, dict):
        data = {**_valid_record(), **record}
        record = json.dumps({k: v for k, v in data.items() if v is not None})
    checkpoint = _baseline_copy(tmp_path, record)
    with pytest.raises(UserError) as exc:
        BaselineRecord.load(checkpoint)
    assert str(exc.value) == f"baseline record {BaselineRecord.path_for(checkpoint)} {message}"


def test_record_round_trips(tmp_path):
    record = BaselineRecord.load(REPO_BASELINE)
    record.save(tmp_path / "copy.pt")
    assert BaselineRecord.load(tmp_path / "copy.pt") == record
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.json"]  # no temporary file left


@pytest.mark.parametrize("kind", ["garbage", "linear"])
def test_baseline_keeps_a_file_it_did_not_train(tmp_path, capsys, kind):
    path, _ = _checkpoint(tmp_path, kind)
    before = path.read_bytes()
    err = _fails(capsys, ["baseline", "--out", str(path)])
    assert err == (
        f"squeezefit baseline: {path} exists and is not a YOLO detection checkpoint to replace; "
        "choose another --out or remove it."
    )
    assert path.read_bytes() == before


@pytest.mark.parametrize("record", [None, '{"family": '])
def test_baseline_keeps_a_checkpoint_without_a_valid_record(tmp_path, capsys, record, home):
    checkpoint = _baseline_copy(tmp_path, record)
    err = _fails(capsys, ["baseline", "--out", str(checkpoint)])
    assert err == (
        f"squeezefit baseline: {checkpoint} has no valid baseline record beside it, so it is not a baseline "
        "to replace; choose another --out or remove it."
    )
    assert not (home / "data").exists()  # refused before the data set was made


def test_baseline_refuses_a_path_it_cannot_write(tmp_path, capsys):
    onnx = tmp_path / "model.onnx"
    assert _fails(capsys, ["baseline", "--out", str(onnx)]) == (
        f"squeezefit baseline: the baseline checkpoint {onnx} must be a .pt file path "
        "(its record goes beside it as .json)."
    )
    (tmp_path / "file").write_text("")
    inside_a_file = tmp_path / "file" / "model.pt"
    err = _fails(capsys, ["baseline", "--out", str(inside_a_file)])
    assert err.startswith(f"squeezefit baseline: cannot make the folder {inside_a_file.parent} for the baseline (")
    family = _fails(capsys, ["baseline", "--family", "yolo11n.pt", "--out", str(tmp_path / "n.pt")])
    assert family == (
        "squeezefit baseline: unknown model family 'yolo11n.pt'; choose one of yolo11n, yolo11s, yolov8n, yolov8s."
    )


def test_the_cli_process_prints_one_line(tmp_path, home):
    """In a fresh process, where Ultralytics' own logging would also reach stderr."""
    path, message = _checkpoint(tmp_path, "garbage")
    for argv, expected in (
        (["search", _config(tmp_path, path)], f"squeezefit search: {message}"),
        (["sensitivity", _config(tmp_path, path)], f"squeezefit sensitivity: {message}"),
        (["baseline", "--out", str(path)], f"squeezefit baseline: {path} exists and is not a YOLO detection"),
    ):
        result = run_cli(argv, home, timeout=300)
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and result.stderr.startswith(expected), result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--device", "nonsense", "--address", "127.0.0.1:6379"], "unknown device 'nonsense'"),
        (["--device", "ray:ort-cpu", "--address", "127.0.0.1:6379"], "a worker owns a local device"),
        (["--device", "ort-cpu", "--address", "nohost"], "must be HOST:PORT"),
        (["--device", "ort-cpu", "--address", "127.0.0.1:6379", "--num-cpus", "-1"], "--num-cpus must be zero or more"),
    ],
)
def test_a_worker_with_bad_input_does_not_start_a_node(args, message, capsys):
    assert main(["worker", *args]) == 2
    assert message in capsys.readouterr().err


def test_search_with_address_auto_and_no_ray_address_is_a_user_error(monkeypatch, capsys):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert main(["search", "studies/smoke.yaml", "--address", "auto"]) == 2
    assert "--address auto needs RAY_ADDRESS" in capsys.readouterr().err
