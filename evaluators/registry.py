"""Devices by name: "ort-cpu", "ort-cpu:2", "openvino-cpu", "remote:http://host:port", ...

Each device file calls `register_device(prefix, factory, available, usage=...)` when it is
imported (`evaluators/__init__.py` imports the built-in ones), and a study file then says
`device: openvino-cpu`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from evaluators.base import Device
from evaluators.vocabulary import UserError


@dataclass(frozen=True)
class DeviceStatus:
    """One registered device kind: its name prefix, how to name it, whether it is usable here and why not."""

    prefix: str
    usage: str
    usable: bool
    reason: str = ""


@dataclass(frozen=True)
class _Entry:
    factory: Callable[..., Device]
    available: Callable[[], tuple[bool, str]]
    usage: str


_REGISTRY: dict[str, _Entry] = {}


def register_device(
    prefix: str,
    factory: Callable[..., Device],
    available: Callable[[], tuple[bool, str]] | None = None,
    *,
    usage: str | None = None,
) -> None:
    """Register a device kind.

    factory(arg, **options) -> Device, where arg is the text after the first ":" of the
    name (None without one) and options are `get_device`'s keyword arguments.
    available() -> (usable, reason): cheap to call; reason says what is missing.
    """
    _REGISTRY[prefix] = _Entry(factory, available or (lambda: (True, "")), usage or prefix)


def known_devices() -> tuple[str, ...]:
    """Usage strings of every registered device kind, e.g. "ort-cpu[:threads]"."""
    return tuple(entry.usage for entry in _REGISTRY.values())


def get_device(name: str, **options) -> Device:
    """Build the device `name`, e.g. "ort-cpu", "ort-cpu:2", "openvino-cpu", "remote:http://h:p".

    options are passed to the factory (e.g. cache=...). An unknown name, a bad argument
    or a device not usable on this machine raises `UserError`.
    """
    prefix, _, arg = name.partition(":")
    entry = _REGISTRY.get(prefix)
    if entry is None:
        raise UserError(f"unknown device {name!r}; known devices: {', '.join(known_devices())}.")
    usable, reason = entry.available()
    if not usable:
        raise UserError(f"device {name!r} is not usable on this machine: {reason}")
    return entry.factory(arg or None, **options)


def available_devices() -> tuple[DeviceStatus, ...]:
    """Every registered device kind, with whether it is usable here and why not."""
    return tuple(DeviceStatus(prefix, entry.usage, *entry.available()) for prefix, entry in _REGISTRY.items())


def parse_count(arg: str | None, *, what: str, device: str, default: int) -> int:
    """The positive integer after the colon of a device name (threads, GPU index)."""
    if arg is None:
        return default
    if not arg.isdigit() or (what == "threads" and int(arg) < 1):
        raise UserError(f"device {device}:{arg} needs a positive integer {what} after the colon.")
    return int(arg)
