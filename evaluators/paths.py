"""Where squeezefit writes its files: generated data, run outputs, caches (all git-ignored).

Everything lives under one *home*: `SQUEEZEFIT_HOME` if set; otherwise the source checkout
when squeezefit runs from one (the README's editable install), else `~/.squeezefit`.
"""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def squeezefit_home() -> Path:
    """The directory every other path here is under (see the module docstring)."""
    if env := os.environ.get("SQUEEZEFIT_HOME"):
        return Path(env).expanduser().resolve()
    if (_PACKAGE_ROOT / "pyproject.toml").is_file() and os.access(_PACKAGE_ROOT, os.W_OK):
        return _PACKAGE_ROOT
    return Path.home() / ".squeezefit"


def state_dir() -> Path:
    """Caches and settings: the latency cache, Ultralytics' settings, TensorRT timing caches."""
    return squeezefit_home() / ".squeezefit"


def runs_dir() -> Path:
    """Where Ultralytics training and validation runs of squeezefit are written."""
    return squeezefit_home() / "runs"


def data_dir() -> Path:
    """Where generated data sets are written."""
    return squeezefit_home() / "data"


def studies_dir() -> Path:
    """The default study storage (SQLite) and the trials' output folders."""
    return squeezefit_home() / "studies"
