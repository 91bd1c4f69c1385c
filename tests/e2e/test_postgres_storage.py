"""PostgreSQL as the study storage: a real server started for the session (tests/postgres_server.py)."""

from __future__ import annotations

import socket
import time

import optuna
import pytest

from search.study import load_study, open_storage, study_record
from tests.conftest import run_cli


def test_a_study_in_postgresql_is_read_by_optuna_and_by_front(smoke_study, postgres_url, tmp_path):
    name = "smoke-in-postgres"
    optuna.copy_study(
        from_study_name=smoke_study.name,
        from_storage=smoke_study.storage,
        to_storage=postgres_url,
        to_study_name=name,
    )
    plain = optuna.load_study(study_name=name, storage=postgres_url)  # what optuna-dashboard does with the URL
    source = load_study(smoke_study.name, smoke_study.storage)
    assert len(plain.trials) == len(source.trials) and study_record(plain) == study_record(source)
    result = run_cli(["front", "--study", name, "--storage", postgres_url], smoke_study.home, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = [str(t.number) for t in source.best_trials]
    assert f"study '{name}'" in result.stdout or name in result.stdout
    assert all(n in result.stdout for n in expected)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed once the socket is


def test_an_unreachable_postgresql_is_one_sentence_and_exit_2_at_once(tmp_path):
    url = f"postgresql://someone:secret@127.0.0.1:{_closed_port()}/studies"
    start = time.monotonic()
    result = run_cli(["search", "studies/smoke.yaml", "--storage", url], tmp_path, timeout=120)
    assert result.returncode == 2 and time.monotonic() - start < 60
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot open the study storage" in lines[0], result.stderr
    assert "secret" not in result.stderr and "***" in result.stderr  # the password is not printed
    assert not list(tmp_path.rglob("*.db")) and not (tmp_path / "runs").exists()


def test_a_missing_driver_names_the_extra(monkeypatch):
    import sys

    from evaluators.vocabulary import UserError

    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if the driver were not installed
    with pytest.raises(UserError, match=r"squeezefit\[postgres\]"):
        open_storage("postgresql://postgres@127.0.0.1:1/x")
