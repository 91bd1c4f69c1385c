"""A device measured by another process (a remote agent, a Ray cluster's device node), and what it reports.

The measuring side describes its device with `device_info(device)`: name, precisions, INT8
recipe, accuracy runtime and fingerprint, as JSON-ready values. The calling side subclasses
`ReportedDevice`, implements `info()` (that dict, fetched once however it travels) and the
measurement hooks; precisions, recipe, accuracy runtime and fingerprint then read from it, so
the search sees the far device exactly as it sees itself.
"""

from __future__ import annotations

from abc import abstractmethod

from evaluators.base import Device, Fingerprint
from evaluators.vocabulary import Int8Recipe


def device_info(device: Device) -> dict:
    """What the measuring side tells a client about `device`."""
    fingerprint = device.fingerprint()
    recipe = device.int8_recipe
    return {
        "device": device.name,
        "precisions": list(device.precisions),
        "int8_recipe": recipe.to_dict() if recipe else None,
        "accuracy_runtime": device.accuracy_runtime,
        "fingerprint": fingerprint.to_dict(),
        "fingerprint_hash": fingerprint.hash,
    }


class ReportedDevice(Device):
    """A device whose properties are the far device's `device_info`, as `info()` returns it."""

    @abstractmethod
    def info(self) -> dict:
        """The far device's `device_info` (plus whatever the transport adds), fetched once."""

    @property
    def precisions(self) -> tuple[str, ...]:
        return tuple(self.info()["precisions"])

    @property
    def int8_recipe(self) -> Int8Recipe | None:
        recipe = self.info()["int8_recipe"]
        return Int8Recipe.from_dict(recipe) if recipe else None

    @property
    def accuracy_runtime(self) -> str:
        return self.info().get("accuracy_runtime", "onnxruntime")

    def fingerprint(self) -> Fingerprint:
        return Fingerprint.from_dict(self.info()["fingerprint"])
