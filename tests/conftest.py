"""Shared test set-up: offline Ultralytics, one torch thread (the box has two cores)."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

from evaluators.environment import ensure_offline

ensure_offline()

import torch  # noqa: E402

torch.set_num_threads(1)

import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class SmokeStudy:
    """A finished `squeezefit search studies/smoke.yaml` run in its own home directory."""

    name: str
    storage: str
    home: Path
    out: Path
    stdout: str


def run_cli(args: list[str], home: Path, timeout: int = 900, **kwargs) -> subprocess.CompletedProcess:
    """`squeezefit ARGS` in a fresh process with SQUEEZEFIT_HOME=home (its own data, runs, latency cache)."""
    env = dict(os.environ, SQUEEZEFIT_HOME=str(home), PYTHONUNBUFFERED="1")
    env.pop("YOLO_CONFIG_DIR", None)
    return subprocess.run(
        [sys.executable, "-m", "search.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


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
