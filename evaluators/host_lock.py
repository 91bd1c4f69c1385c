"""One measurement at a time per host: an exclusive lock shared by every process on the machine.

The lock is an `fcntl` lock on a file in a machine-wide directory, so it holds whatever
process or checkout a measurement comes from. CPU devices share the key "cpu" (they share
cores); a GPU device locks "cuda:N".
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import tempfile
import time
from pathlib import Path


def lock_dir() -> Path:
    """Machine-wide lock directory: `SQUEEZEFIT_LOCK_DIR`, else <tmp>/squeezefit-locks."""
    path = Path(os.environ.get("SQUEEZEFIT_LOCK_DIR") or Path(tempfile.gettempdir()) / "squeezefit-locks")
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def device_lock(host: str, timeout_s: float | None = None):
    """Hold the exclusive lock of `host` ("cpu", "cuda:0"); wait for it, at most `timeout_s`.

    Works across processes and across threads of one process (each call opens its own
    file description). Raises `TimeoutError` when the wait exceeds `timeout_s`.
    """
    path = lock_dir() / (re.sub(r"[^A-Za-z0-9_.-]", "_", host) + ".lock")
    with open(path, "a+") as handle:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | (0 if deadline is None else fcntl.LOCK_NB))
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"the {host} measurement lock ({path}) is held by another measurement") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
