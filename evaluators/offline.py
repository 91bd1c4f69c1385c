"""Keep Ultralytics offline and quiet, and say where squeezefit writes its files.

Ultralytics reads its config directory and auto-install switch when it is imported, so
`ensure_offline()` must run before the first `import ultralytics`; every squeezefit module
that uses Ultralytics calls it at the top. It lives in `evaluators` because that package
is the one every other package may import (data flows spaces -> evaluators -> search).

Nothing is downloaded at run time: no fonts (a font from matplotlib stands in), no weights (models are built
from YAML or loaded from local files), no data sets (data YAMLs carry no `download:` key),
no requirements (auto-install is off), no telemetry (sync is off).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

_PACKAGE_ROOT = Path(__file__).resolve().parents[1]

# Arguments every Ultralytics train/val call of squeezefit passes: no AMP check (it would
# download yolo11n.pt), no plots (they fetch a font), deterministic, quiet.
TRAIN_DEFAULTS: dict = {"amp": False, "plots": False, "deterministic": True, "verbose": False}
VAL_DEFAULTS: dict = {"plots": False, "verbose": False}


def squeezefit_home() -> Path:
    """Directory for generated data, run outputs and Ultralytics' settings.

    `SQUEEZEFIT_HOME` if set; otherwise the source checkout when squeezefit runs from one
    (the README's editable install), else `~/.squeezefit`.
    """
    if env := os.environ.get("SQUEEZEFIT_HOME"):
        return Path(env).expanduser().resolve()
    if (_PACKAGE_ROOT / "pyproject.toml").is_file() and os.access(_PACKAGE_ROOT, os.W_OK):
        return _PACKAGE_ROOT
    return Path.home() / ".squeezefit"


def ensure_offline() -> None:
    """Set the environment and Ultralytics settings so that nothing is fetched.

    Idempotent. Environment variables a user set explicitly are respected.
    """
    home = squeezefit_home()
    config_dir = home / ".squeezefit" / "ultralytics"
    config_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("YOLO_CONFIG_DIR", str(config_dir))
    _provide_fonts(Path(os.environ["YOLO_CONFIG_DIR"]).expanduser() / "Ultralytics")  # Ultralytics' USER_CONFIG_DIR
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    os.environ.setdefault("YOLO_VERBOSE", "false")
    # Ultralytics' own Ray Tune callback would report every epoch inside a trial.
    from ultralytics.utils import SETTINGS

    wanted = {
        "sync": False,
        "raytune": False,
        "clearml": False,
        "comet": False,
        "dvc": False,
        "mlflow": False,
        "wandb": False,
        "tensorboard": False,
        "vscode_msg": False,
        "openvino_msg": False,
        "runs_dir": str(home / "runs"),
        "datasets_dir": str(home / "data"),
        "weights_dir": str(home / ".squeezefit" / "weights"),
    }
    if any(SETTINGS.get(k) != v for k, v in wanted.items()):
        SETTINGS.update(wanted)


def _provide_fonts(config_dir: Path) -> None:
    """Put a font where Ultralytics looks before it downloads one.

    Every dataset check (`check_det_dataset`) asks for Arial.ttf, and fetches it when it is
    not in the config directory; matplotlib ships DejaVu Sans, which serves for labels.
    """
    import importlib.util

    spec = importlib.util.find_spec("matplotlib")
    if spec is None or spec.origin is None:
        return
    source = Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
    config_dir.mkdir(parents=True, exist_ok=True)
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        target = config_dir / name
        if source.is_file() and not target.exists():
            shutil.copyfile(source, target)


def runs_dir() -> Path:
    """Where Ultralytics training runs of squeezefit are written (git-ignored)."""
    return squeezefit_home() / "runs"


def data_dir() -> Path:
    """Where generated data sets are written (git-ignored)."""
    return squeezefit_home() / "data"
