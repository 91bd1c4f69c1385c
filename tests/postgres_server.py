"""A throwaway PostgreSQL server for tests: Debian's server binaries, a fresh cluster in a temporary
directory, on a free loopback port, trust authentication, stopped afterwards.

`.ci/run` installs the server (`apt-get install postgresql`) where it is missing. PostgreSQL
refuses to run as root, so as root the cluster is owned and run by the `postgres` user the
Debian package creates.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

SERVER_USER = "postgres"


def server_bin() -> Path | None:
    """The folder of the newest installed server's binaries (`initdb`, `pg_ctl`), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def unavailable() -> str:
    """Why no server can be started here ("" when one can)."""
    if server_bin() is None:
        return "the PostgreSQL server is not installed (.ci/run installs it: apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            return f"running as root and there is no {SERVER_USER!r} user to run the PostgreSQL server as"
    return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def postgres_server(root: Path) -> Iterator[str]:
    """Start a server with its cluster under `root` (created); yields its URL (database `postgres`)."""
    bin_dir = server_bin()
    data, sockets, log = root / "data", root / "sockets", root / "server.log"
    root.mkdir(parents=True, exist_ok=True)
    sockets.mkdir(exist_ok=True)
    as_user: list[str] = []
    if os.geteuid() == 0:
        user = pwd.getpwnam(SERVER_USER)
        for path in (root, sockets):
            os.chown(path, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", SERVER_USER, "--"]
    run = [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data)]
    subprocess.run(
        [*as_user, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync"],
        check=True,
        capture_output=True,
    )
    port = free_port()
    options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run([*run, "-o", options, "-l", str(log), "-w", "start"], check=True, capture_output=True)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*run, "-m", "immediate", "stop"], capture_output=True)
