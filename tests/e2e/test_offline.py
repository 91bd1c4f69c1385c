"""Nothing is fetched at run time: a socket audit hook fails any non-loopback connection."""

import subprocess
import sys
import textwrap

import pytest

from search.embedded.baseline import REPO_BASELINE

# Runs in a fresh interpreter so the hook sees every import-time side effect too.
_GUARDED = textwrap.dedent(
    """
    import socket, sys
    attempts = []

    def _loopback(host):
        return isinstance(host, str) and (host.startswith("127.") or host in ("::1", "localhost", ""))

    def hook(event, args):
        if event == "socket.connect" and args[0].family in (socket.AF_INET, socket.AF_INET6):
            if not _loopback(args[1][0]):
                attempts.append(f"connect {args[1]}")
                raise OSError("network disabled by test")
        elif event == "socket.getaddrinfo" and not _loopback(args[0]):
            attempts.append(f"getaddrinfo {args[0]}")
            raise OSError("network disabled by test")

    sys.addaudithook(hook)

    from pathlib import Path
    from evaluators.environment import ensure_offline
    ensure_offline()
    from search.embedded.data import DatasetSpec, generate_dataset
    data_yaml = generate_dataset(Path(sys.argv[1]), DatasetSpec(train=8, val=8, imgsz=128))
    from ultralytics import YOLO
    model = YOLO(sys.argv[2])
    model.val(data=str(data_yaml), imgsz=128, batch=8, device="cpu", workers=0, plots=False,
              project=sys.argv[1], name="val")
    model.predict(sorted((data_yaml.parent / "images" / "val").glob("*.jpg"))[:2], imgsz=128, verbose=False)
    print("ATTEMPTS", len(attempts), attempts)
    sys.exit(1 if attempts else 0)
    """
)


def test_no_network_during_generation_load_and_validation(tmp_path):
    if not REPO_BASELINE.is_file():
        pytest.fail(f"the committed baseline {REPO_BASELINE} is missing")
    result = subprocess.run(
        [sys.executable, "-c", _GUARDED, str(tmp_path), str(REPO_BASELINE)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "ATTEMPTS 0" in result.stdout
