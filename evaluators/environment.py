"""Keep Ultralytics offline and quiet: the one place that sets squeezefit's environment.

Ultralytics reads its config directory and auto-install switch when it is first imported,
so `ensure_offline()` must run before that. The entry points call it once: the CLI
(`search.cli.main`), the Ray trial function (a worker may be on another machine), the test
suite's conftest and the benchmark scripts. A program that imports squeezefit as a library
calls it first, too.

Nothing is downloaded at run time: no fonts (a font from matplotlib stands in), no weights
(models are built from YAML or loaded from local files), no data sets (data YAMLs carry no
`download:` key), no requirements (auto-install is off), no telemetry (sync is off).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from evaluators.paths import data_dir, runs_dir, state_dir


def ensure_offline() -> None:
    """Set the environment and Ultralytics settings so that nothing is fetched.

    Idempotent. Environment variables a user set explicitly are respected.
    """
    config_dir = state_dir() / "ultralytics"
    config_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("YOLO_CONFIG_DIR", str(config_dir))
    _provide_fonts(Path(os.environ["YOLO_CONFIG_DIR"]).expanduser() / "Ultralytics")  # Ultralytics' USER_CONFIG_DIR
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    os.environ.setdefault("YOLO_VERBOSE", "false")
    omp_given = "OMP_NUM_THREADS" in os.environ
    import torch  # noqa: F401  before Ultralytics: torch's threads follow the cores (or the user's OMP_NUM_THREADS)
    from ultralytics.utils import SETTINGS  # importing Ultralytics sets OMP_NUM_THREADS=1 where it is unset

    if not omp_given:  # unset again: Ray then gives each trial's worker its own CPU count
        os.environ.pop("OMP_NUM_THREADS", None)

    wanted = {
        "sync": False,
        "raytune": False,  # Ultralytics' own Ray Tune callback would report every epoch inside a trial
        "clearml": False,
        "comet": False,
        "dvc": False,
        "mlflow": False,
        "wandb": False,
        "tensorboard": False,
        "vscode_msg": False,
        "openvino_msg": False,
        "runs_dir": str(runs_dir()),
        "datasets_dir": str(data_dir()),
        "weights_dir": str(state_dir() / "weights"),
    }
    if any(SETTINGS.get(k) != v for k, v in wanted.items()):
        SETTINGS.update(wanted)
    _keep_torch_threads()


def _keep_torch_threads() -> None:
    """Make Ultralytics leave torch's thread count as the process has it.

    Its `select_device` (every trainer, validator and exporter calls it) sets torch to
    `NUM_THREADS` for CPU work: cpu_count - 1, so one thread on a 2-core machine, and for the
    rest of the process — a search's driver validated once and then recovered its policy on
    one core. Its torch_utils' copy of `NUM_THREADS` becomes the count torch has when this runs
    (OMP_NUM_THREADS where set, as Ray sets it for a trial's CPUs; else the cores); the
    library's other uses of `NUM_THREADS` (data loading) are left alone. Ultralytics' import
    also sets OMP_NUM_THREADS=1 where unset, which would size torch's pool (when torch is
    imported after it) and every Ray worker's: `ensure_offline` imports torch first and unsets it again.
    """
    import torch
    from ultralytics.utils import torch_utils

    torch_utils.NUM_THREADS = torch.get_num_threads()


def _provide_fonts(config_dir: Path) -> None:
    """Put a font where Ultralytics looks before it downloads one.

    Every dataset check (`check_det_dataset`) asks for Arial.ttf, and fetches it when it is
    not in the config directory; matplotlib ships DejaVu Sans, which serves for labels.
    """
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or spec.origin is None:
        return
    source = Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
    config_dir.mkdir(parents=True, exist_ok=True)
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        target = config_dir / name
        if source.is_file() and not target.exists():
            shutil.copyfile(source, target)
