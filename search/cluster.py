"""Running a study on a Ray cluster: connecting to it, and naming where things ran.

`squeezefit search CONFIG --address ADDR` (or `address:` in the config; "auto" reads
RAY_ADDRESS) connects this process to an existing cluster before anything is prepared
(`connect`): the trials then run wherever the cluster has a free CPU, and the device is
reached as `ray:<device>` (`evaluators.ray_device`), so every latency measurement runs on
the node that advertises the `device:<device>` resource, one at a time across the cluster.
Without an address the search starts its own local Ray, as before.

The cluster's token: Ray 2.59+ starts clusters with token authentication; the driver and
every node need the same token (`RAY_AUTH_TOKEN`, or the file `ray get-auth-token` writes).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator

from evaluators.vocabulary import UserError

# Seconds to wait for the cluster's GCS port before calling the address unreachable.
REACH_TIMEOUT_S = 5.0
# Environment the driver hands to every process it starts on the cluster (a node's own environment
# is that of its `ray start`): the squeezefit home, so trials and measurements use this run's state.
PROPAGATED_ENV = ("SQUEEZEFIT_HOME",)


def resolve_address(address: str) -> str:
    """`address` as host:port; "auto" is RAY_ADDRESS. UserError when it is not host:port."""
    if address == "auto":
        address = os.environ.get("RAY_ADDRESS", "")
        if not address:
            raise UserError("--address auto needs RAY_ADDRESS to name the cluster (host:port).")
    address = address.removeprefix("ray://")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"the Ray cluster address {address!r} must be HOST:PORT (the head node's GCS port).")
    return address


def connect(address: str, device: str) -> str:
    """Connect this process to the Ray cluster at `address`; the name to measure `device` by there ("ray:<device>").

    UserError, within `REACH_TIMEOUT_S` plus Ray's handshake, when the cluster cannot be reached or
    refuses the connection, or when no node holds the device's resource (the connection is closed).
    """
    import ray

    from evaluators.ray_device import check_cluster_has

    address = resolve_address(address)
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=REACH_TIMEOUT_S).close()
    except OSError as exc:
        raise UserError(f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}).") from None
    # the trials' and measurements' processes share this one's squeezefit home (state, caches, runs)
    env = {name: os.environ[name] for name in PROPAGATED_ENV if name in os.environ}
    try:
        ray.init(
            address=address,
            logging_level="ERROR",
            log_to_driver=True,
            include_dashboard=False,
            runtime_env={"env_vars": env} if env else None,
        )
    except Exception as exc:  # ConnectionError, an authentication error, a version mismatch
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot join the Ray cluster at {address}: {reason.rstrip('.')}.") from None
    plain = device.removeprefix("ray:")
    try:
        check_cluster_has(plain)
    except UserError:
        ray.shutdown()
        raise
    return f"ray:{plain}"


@contextlib.contextmanager
def joined(device: str, address: str | None, recorded: str | None = None, *, stored: bool = True) -> Iterator[str]:
    """Connected, for the block, to the cluster a `ray:` device lives on; yields the device to measure by.

    A command that times a stored study's device (export, front --retime) joins its cluster:
    `address` (the command's --address), else `recorded` (the address the study was searched with).
    A device not on Ray needs no cluster: `device` is yielded unchanged. A new device (`stored` False:
    transfer's target) given with an `address` is measured on the cluster as ray:<device>, as
    `search --address` does. UserError when a `ray:` device has no address to join, or when a stored
    study's local device is given an address.
    """
    if not device.startswith("ray:"):
        if address and stored:
            raise UserError(f"the study measures on {device}, not on a Ray cluster: --address is for one that does.")
        if not address:
            yield device
            return
    address = address or recorded
    if not address:
        raise UserError(f"the study measures on {device}, on a Ray cluster: pass --address HOST:PORT (or auto).")
    try:
        yield connect(address, device)
    finally:
        disconnect()


def disconnect() -> None:
    """Leave the cluster (a no-op when not connected)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def check_shared(*paths: str) -> None:
    """FileNotFoundError unless every one of `paths` (the driver's) is visible in this process.

    The nodes of a cluster share files through one directory: the squeezefit home (data, baseline,
    caches) and the study's output directory (every trial's weights and artifacts, which export,
    transfer and a resumed search read) must be at the same path on every node; on one machine they
    are. A trial that runs where they are not fails with this reason instead of a confusing one later.
    """
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise FileNotFoundError(
            f"{missing[0]} is not visible on {socket.gethostname()}: every node of the cluster must see the "
            "squeezefit home and the study's output directory at the same path (one shared directory)"
        )


def where_this_runs() -> dict:
    """This process's host name and, inside a Ray worker or driver, its Ray node id."""
    import ray

    place = {"host": socket.gethostname()}
    if ray.is_initialized():
        place["node"] = ray.get_runtime_context().get_node_id()
    return place
