"""The rules of running on a Ray cluster that need no cluster: which commands join one and when, the
shared-directory check a trial makes where it runs, and the reason a crashed trial is recorded with."""

from __future__ import annotations

import pytest
import ray
from ray.exceptions import RayTaskError

from evaluators.vocabulary import UserError
from search.cli import main
from search.cluster import check_shared, joined
from search.searcher import failure_reason


def test_a_local_device_joins_no_cluster():
    with joined("ort-cpu", None) as device:
        assert device == "ort-cpu" and not ray.is_initialized()


def test_a_ray_device_without_an_address_is_a_user_error():
    expected = r"measures on ray:ort-cpu, on a Ray cluster: pass --address"
    with pytest.raises(UserError, match=expected), joined("ray:ort-cpu", None, None):
        pass


def test_a_stored_local_study_takes_no_address():
    with pytest.raises(UserError, match="measures on ort-cpu, not on a Ray cluster"), joined("ort-cpu", "h:1"):
        pass


def test_a_bad_address_is_refused_before_the_recorded_one_is_tried():
    with pytest.raises(UserError, match="must be HOST:PORT"), joined("ray:ort-cpu", "nohost", "127.0.0.1:6379"):
        pass


def test_transfer_to_a_cluster_checks_the_address_first(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SQUEEZEFIT_HOME", str(tmp_path))
    assert main(["transfer", "--study", "any", "--device", "ort-cpu", "--address", "nohost"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "must be HOST:PORT" in err, err


def test_a_trial_checks_the_shared_directory(tmp_path):
    check_shared(str(tmp_path))
    missing = tmp_path / "not-mounted" / "baseline.pt"
    with pytest.raises(FileNotFoundError, match=r"not-mounted/baseline.pt is not visible on .*same path"):
        check_shared(str(tmp_path), str(missing))


def test_the_reason_of_a_crashed_trial_is_its_first_line():
    assert failure_reason(ValueError("bad unit\ntraceback...")) == "ValueError: bad unit"
    wrapped = RayTaskError("train", "Traceback ...", KeyError("model.2"))
    assert failure_reason(wrapped) == "KeyError: 'model.2'"
    assert failure_reason(None) == "the trial failed and Ray recorded no error"
