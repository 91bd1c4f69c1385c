"""The process environment `ensure_offline` sets for Ultralytics: here, that it leaves torch's threads alone."""

import os
import subprocess
import sys

from tests.conftest import REPO

PROBE = """
import torch
from evaluators.environment import ensure_offline
ensure_offline()
from ultralytics.utils import NUM_THREADS
from ultralytics.utils.torch_utils import select_device
before = torch.get_num_threads()
select_device("cpu", verbose=False)  # every Ultralytics trainer, validator and exporter calls it
print(NUM_THREADS, before, torch.get_num_threads())
"""


def test_ultralytics_cpu_work_keeps_the_processs_torch_threads(tmp_path):
    """Unpatched, `select_device` sets torch to cpu_count - 1 threads (capped at 8) for the rest of the process;
    the count asked for with OMP_NUM_THREADS (here one more than that) must hold after it."""
    wanted = min(8, max(1, (os.cpu_count() or 1) - 1)) + 1
    env = dict(os.environ, OMP_NUM_THREADS=str(wanted), SQUEEZEFIT_HOME=str(tmp_path))
    env.pop("YOLO_CONFIG_DIR", None)
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ultralytics_default, before, after = map(int, done.stdout.split()[-3:])
    assert ultralytics_default != wanted  # what the library would set
    assert before == after == wanted


UNSET = """
import os
from evaluators.environment import ensure_offline
ensure_offline()
import torch
from ultralytics.utils.torch_utils import select_device
select_device("cpu", verbose=False)
print(os.environ.get("OMP_NUM_THREADS", "unset"), torch.get_num_threads())
"""


def test_without_omp_num_threads_torch_keeps_its_default_and_ray_workers_get_their_cpus(tmp_path):
    """Importing Ultralytics sets OMP_NUM_THREADS=1 where unset: torch imported after it would run on one
    thread, and so would every Ray worker inheriting it. After `ensure_offline` the variable is unset again and
    torch has the count it has on its own."""
    env = dict(os.environ, SQUEEZEFIT_HOME=str(tmp_path))
    env.pop("OMP_NUM_THREADS", None)
    env.pop("YOLO_CONFIG_DIR", None)
    run = dict(cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    default = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], **run)
    ours = subprocess.run([sys.executable, "-c", UNSET], **run)
    assert ours.returncode == 0, ours.stderr[-3000:]
    variable, threads = ours.stdout.split()[-2:]
    assert variable == "unset" and int(threads) == int(default.stdout.split()[-1])
