"""A device on the node of a Ray cluster that owns it: "ray:ort-cpu", "ray:openvino-cpu:2", ...

A node that owns a device advertises it as a Ray custom resource, `device:<name>` (`ray start
... --resources '{"device:ort-cpu": 1}'`, or `squeezefit worker`). From any process connected
to that cluster (`ray.init(address=...)`), `RayDevice("ort-cpu")` runs every measurement as a
Ray task that asks for the whole unit of that resource (and no CPU: see `_placement`): the task
lands on the device's node (never elsewhere) and at most one runs at a time across the cluster,
whatever node fine-tuned the model. A node that should time without fine-tuning beside it joins
with `--num-cpus 0`. The artifacts travel as bytes through Ray's object store, not a shared file system;
the node writes them to a temporary folder and times them with its own device (its probe, its
fingerprint; never its latency cache: the caller's cache is the one cache, so a request the
caller did not find there is timed). Everything the device reports (precisions, INT8 recipe,
accuracy runtime, fingerprint) comes from that node too, by a task asking for a sliver of the
resource (it never waits for a measurement).

Each measurement's `session` names the node (`node`: Ray's node id, `host`) and its wall-clock
window, as timed there. No node holding the resource: `UserError` at once, rather than a task
that waits forever.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from collections.abc import Iterator
from pathlib import Path

from evaluators.base import LatencyMeasurement, PairedMeasurement, TimingSettings
from evaluators.registry import register_device
from evaluators.reported import ReportedDevice, device_info
from evaluators.vocabulary import DeviceUnavailable, UserError

RESOURCE_PREFIX = "device:"
# Seconds between checks that the device's node is still in the cluster while a measurement waits.
_RECHECK_S = 5.0
# What an information task asks of the resource: enough to land on the node, never enough to wait.
_INFO_SHARE = 0.001


def device_resource(device: str) -> str:
    """The Ray custom resource a node advertises for owning `device` (e.g. "device:ort-cpu")."""
    return f"{RESOURCE_PREFIX}{device}"


def check_cluster_has(device: str) -> None:
    """UserError unless this process is connected to a Ray cluster; DeviceUnavailable unless a node of it
    advertises `device_resource(device)`."""
    import ray

    if not ray.is_initialized():
        raise UserError(f"device ray:{device} needs a Ray cluster; pass --address.")
    resource = device_resource(device)
    if ray.cluster_resources().get(resource, 0) < 1:
        raise DeviceUnavailable(
            f"no node of the Ray cluster holds {resource!r}; start one on the device's machine with "
            f"`squeezefit worker --device {device} --address ADDRESS`."
        )


class RayDevice(ReportedDevice):
    """`device` (a local device name, e.g. "ort-cpu:2") measured on the cluster node that holds its resource."""

    def __init__(self, device: str, *, cache=None):
        super().__init__(f"ray:{device}", cache=cache)
        self.device = device
        self.resource = device_resource(device)
        self._info: dict | None = None

    def info(self) -> dict:
        """The node device's precisions, INT8 recipe, accuracy runtime and fingerprint, fetched once."""
        if self._info is None:
            import ray

            check_cluster_has(self.device)
            task = ray.remote(_device_info).options(**_placement(self.resource, _INFO_SHARE), max_retries=0)
            self._info = self._get(task.remote(self.device))
        return self._info

    def _measure(self, artifact_path: Path, settings: TimingSettings, inputs: dict) -> LatencyMeasurement:
        answer = self._run(_measure_on_node, [artifact_path.read_bytes()], settings)
        return dataclasses.replace(LatencyMeasurement.from_dict(answer[0]), device=self.name)

    def _measure_together(
        self, paths: list[Path], settings: TimingSettings, inputs: dict, reference_structure: str
    ) -> list[PairedMeasurement]:
        answer = self._run(_together_on_node, [p.read_bytes() for p in paths], settings)
        return [dataclasses.replace(PairedMeasurement.from_dict(m), device=self.name) for m in answer]

    def _run(self, function, files: list[bytes], settings: TimingSettings) -> list[dict]:
        import ray

        check_cluster_has(self.device)
        task = ray.remote(function).options(**_placement(self.resource, 1), max_retries=0)
        return self._get(task.remote(self.device, files, settings.to_dict()))  # large arguments: object store

    def _get(self, pending):
        """The result of the task `pending` on the device's node; DeviceUnavailable when that node leaves."""
        import ray

        try:
            # a task waiting for a node that has left would wait forever: look again every few seconds
            while not ray.wait([pending], timeout=_RECHECK_S)[0]:
                try:
                    check_cluster_has(self.device)
                except DeviceUnavailable:
                    ray.cancel(pending, force=True)
                    raise
            return ray.get(pending)
        except ray.exceptions.RayTaskError:
            raise  # the task itself failed there (a bad artifact): the trial's own error
        except ray.exceptions.RayError as exc:  # the node or its worker died meanwhile
            raise DeviceUnavailable(
                f"the node holding {self.resource!r} stopped while measuring ({type(exc).__name__})."
            ) from None


def _placement(resource: str, amount: float) -> dict:
    """Task options that put it on the node holding `resource`: no CPU of its own (a trial that waits for it
    on that node holds one already), and outside the calling trial's placement group (Ray Tune's trial
    bundles hold CPUs only, and capture their children)."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return {
        "resources": {resource: amount},
        "num_cpus": 0,
        "scheduling_strategy": PlacementGroupSchedulingStrategy(placement_group=None),
    }


# --- what runs on the device's node --------------------------------------------------------


def _device_info(device: str) -> dict:
    from evaluators.registry import get_device

    return device_info(get_device(device))


def _measure_on_node(device: str, files: list[bytes], settings: dict) -> list[dict]:
    from evaluators.registry import get_device

    with _written(files) as paths:  # the caller's cache is the one cache: the node times every request
        measured = get_device(device, cache=False).measure(paths[0], settings=TimingSettings.from_dict(settings))
        return [_on_this_node(measured).to_dict()]


def _together_on_node(device: str, files: list[bytes], settings: dict) -> list[dict]:
    from evaluators.registry import get_device

    with _written(files) as paths:
        measured = get_device(device, cache=False).measure_together(paths, settings=TimingSettings.from_dict(settings))
        return [_on_this_node(m).to_dict() for m in measured]


def _on_this_node(measurement):
    import ray

    node = ray.get_runtime_context().get_node_id()
    return dataclasses.replace(measurement, session={**measurement.session, "node": node})


@contextlib.contextmanager
def _written(files: list[bytes]) -> Iterator[list[Path]]:
    """The uploaded artifacts as files in a temporary folder (removed on exit)."""
    with tempfile.TemporaryDirectory(prefix="squeezefit-ray-") as folder:
        paths = [Path(folder) / f"artifact-{index}.onnx" for index in range(len(files))]
        for path, data in zip(paths, files, strict=True):
            path.write_bytes(data)
        yield paths


def _ray_available() -> tuple[bool, str]:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False, "Ray is not installed."
    return True, ""


def _factory(arg, **options):
    if not arg:
        raise UserError("a device on a Ray cluster is named ray:DEVICE, e.g. ray:ort-cpu.")
    return RayDevice(arg, **options)


register_device("ray", _factory, _ray_available, usage="ray:DEVICE (on the Ray cluster node holding device:DEVICE)")
