"""Peak resident memory added while an artifact is loaded and run, in MB."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path


class MemoryWatch:
    """Peak resident memory added inside a `with` block, in MB (`peak_mb` after exit).

    On Linux the kernel's high-water mark is reset on entry (/proc/self/clear_refs), so
    short peaks are seen; elsewhere the RSS after the block is used.
    """

    peak_mb: float = 0.0

    def __enter__(self):
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")
        self._start = _status_kb("VmRSS")
        return self

    def __exit__(self, *exc):
        end = _status_kb("VmHWM") or _status_kb("VmRSS")
        self.peak_mb = max(end - self._start, 0) / 1024 if self._start else 0.0
        return False


def _status_kb(field: str) -> int:
    try:
        match = re.search(rf"^{field}:\s+(\d+)", Path("/proc/self/status").read_text(), re.M)
        if match:
            return int(match.group(1))
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss if field == "VmHWM" else 0
