"""`squeezefit worker --device NAME --address ADDR`: join a Ray cluster as the node that owns a device.

It checks the device here first (a device this machine cannot run is one sentence and exit
code 2), then runs `ray start --address ADDR --resources '{"device:NAME": 1}' --block`: every
latency measurement of a search on that cluster (`squeezefit search --address`) runs on this
node, one at a time. `--num-cpus 0` keeps fine-tuning off this node, so nothing competes with
the timing; by default Ray offers its cores to trials too. Ctrl-C stops the node. The cluster's
token (RAY_AUTH_TOKEN, or the file `ray get-auth-token` writes) must be the head's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from evaluators.vocabulary import UserError

HELP = "join a Ray cluster as the node that owns a device: searches measure on it, one at a time"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="ort-cpu", help="the local device this node owns, e.g. ort-cpu:4")
    parser.add_argument("--address", required=True, help="the cluster's head, HOST:PORT (or auto for RAY_ADDRESS)")
    parser.add_argument("--num-cpus", type=int, help="CPUs this node offers to trials (0: only measure here)")


def ray_start_command(device: str, address: str, num_cpus: int | None) -> list[str]:
    """The `ray start` command line that joins `address` holding `device`'s resource, blocking."""
    from evaluators.ray_device import device_resource

    command = [str(Path(sys.executable).with_name("ray")), "start", "--address", address, "--block"]
    command += ["--resources", json.dumps({device_resource(device): 1}), "--disable-usage-stats"]
    if num_cpus is not None:
        if num_cpus < 0:
            raise UserError("--num-cpus must be zero or more.")
        command += ["--num-cpus", str(num_cpus)]
    return command


def run(args: argparse.Namespace) -> int:
    from evaluators.registry import get_device
    from search.cluster import resolve_address

    if args.device.startswith(("ray:", "remote:")):
        raise UserError(f"a worker owns a local device; {args.device!r} is not one.")
    command = ray_start_command(args.device, resolve_address(args.address), args.num_cpus)
    device = get_device(args.device)
    device.fingerprint()  # the runtime works here (and ort-cpu's probe is done) before the node is announced
    print(f"squeezefit worker: {device.name} joins the Ray cluster at {args.address}", file=sys.stderr, flush=True)
    try:
        return subprocess.run(command).returncode
    except KeyboardInterrupt:
        return 0
