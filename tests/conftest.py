"""Shared test set-up: offline Ultralytics, one torch thread (the box has two cores), shared fixtures."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

from evaluators.environment import ensure_offline

ensure_offline()  # the test session is an entry point: before anything imports Ultralytics

import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SLOW_DEADLINE = "SQUEEZEFIT_SLOW_DEADLINE"
"""Environment variable: a Unix time after which no slow test starts (CI sets it so its run fits its time limit)."""


def pytest_runtest_setup(item):
    """Skip, with the reason, a slow test that would start after `SLOW_DEADLINE` (slow tests run where time allows)."""
    deadline = os.environ.get(SLOW_DEADLINE)
    if deadline and item.get_closest_marker("slow") is not None and time.time() > float(deadline):
        pytest.skip(f"the run's time for slow tests is spent ({SLOW_DEADLINE} passed)")


@dataclass(frozen=True)
class SmokeStudy:
    """A finished `squeezefit search studies/smoke.yaml` run in its own home directory."""

    name: str
    storage: str
    home: Path
    out: Path
    stdout: str


def cli_env(home: Path) -> dict:
    """The environment of a `squeezefit` process the tests start: SQUEEZEFIT_HOME=home, unbuffered output."""
    env = dict(os.environ, SQUEEZEFIT_HOME=str(home), PYTHONUNBUFFERED="1")
    env.pop("YOLO_CONFIG_DIR", None)
    return env


def run_cli(args: list[str], home: Path, timeout: int = 900, **kwargs) -> subprocess.CompletedProcess:
    """`squeezefit ARGS` in a fresh process with SQUEEZEFIT_HOME=home (its own data, runs, latency cache)."""
    return subprocess.run(
        [sys.executable, "-m", "search.cli", *args],
        cwd=REPO,
        env=cli_env(home),
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def recorded_precision_segments(record: dict) -> tuple:
    """The precision segments of a study's space (`spaces.segments.precision_segments`) from its record, which
    stores the pruning segments (`Segment.to_list`)."""
    from spaces.segments import Segment, precision_segments

    return precision_segments([Segment.from_list(row) for row in record["segments"]])


@dataclass(frozen=True)
class Embedded:
    """The committed baseline checkpoint, its record, and the embedded data set it was trained on."""

    checkpoint: Path
    record: object  # search.embedded.baseline.BaselineRecord
    data_yaml: Path


@pytest.fixture(scope="session")
def embedded() -> Embedded:
    """The embedded default: generated once per machine under the squeezefit home (same seed, same bytes)."""
    from evaluators.paths import data_dir
    from search.embedded.baseline import REPO_BASELINE, BaselineRecord
    from search.embedded.data import DatasetSpec, generate_dataset

    if not REPO_BASELINE.is_file():
        pytest.fail(f"the committed baseline {REPO_BASELINE} is missing")
    record = BaselineRecord.load(REPO_BASELINE)
    data_yaml = generate_dataset(data_dir(), DatasetSpec(imgsz=record.imgsz, seed=record.seed))
    return Embedded(REPO_BASELINE, record, data_yaml)


@pytest.fixture
def baseline_model(embedded):
    """A fresh copy of the committed baseline's DetectionModel (tests may modify it)."""
    from ultralytics.nn.tasks import load_checkpoint

    return load_checkpoint(embedded.checkpoint)[0]


@pytest.fixture(scope="session")
def smoke_study(tmp_path_factory) -> SmokeStudy:
    """The smoke study, run once per test session and shared by the search, export and transfer tests."""
    from search.embedded.baseline import REPO_BASELINE

    if not REPO_BASELINE.is_file():
        pytest.fail(f"the committed baseline {REPO_BASELINE} is missing")
    home = tmp_path_factory.mktemp("smoke-home")
    storage = f"sqlite:///{home}/studies.db"
    result = run_cli(
        ["search", "studies/smoke.yaml", "--study", "smoke-test", "--storage", storage, "--out", str(home / "out")],
        home,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return SmokeStudy("smoke-test", storage, home, home / "out", result.stdout)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The URL of a PostgreSQL server started for this test session (skipped where none can be started)."""
    import shutil
    import tempfile

    from tests.postgres_server import postgres_server, unavailable

    if why := unavailable():
        pytest.skip(why)
    root = Path(tempfile.mkdtemp(prefix="squeezefit-postgres-"))  # not under pytest's root-only folder
    try:
        with postgres_server(root) as url:
            yield url
    finally:
        shutil.rmtree(root, ignore_errors=True)
