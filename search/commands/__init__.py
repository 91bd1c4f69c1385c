"""The subcommands of `squeezefit` (one module each, see `search.cli`) and the arguments they share."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

DEFAULT_CONFIG = Path("studies/default.yaml")


def add_config_argument(parser: argparse.ArgumentParser, help: str = "study YAML") -> None:
    """The optional positional study YAML, `studies/default.yaml` when left out."""
    parser.add_argument(
        "config", type=Path, nargs="?", default=DEFAULT_CONFIG, help=f"{help} (default {DEFAULT_CONFIG})"
    )


def add_storage_argument(
    parser: argparse.ArgumentParser, help: str = "Optuna storage URL (default: SQLite under studies/)"
) -> None:
    """--storage: an Optuna RDB URL; `storage_url(args)` fills in the default."""
    parser.add_argument("--storage", help=help)


def add_study_arguments(parser: argparse.ArgumentParser, help: str = "study name") -> None:
    """--study (required) and --storage: a stored study that the command reads."""
    parser.add_argument("--study", required=True, help=help)
    add_storage_argument(parser)


def add_address_argument(parser: argparse.ArgumentParser) -> None:
    """--address: the Ray cluster that holds a `ray:` device (default: the one the study was searched on)."""
    parser.add_argument(
        "--address",
        help="the Ray cluster holding the device (HOST:PORT, or auto for RAY_ADDRESS); "
        "default: the one the study was searched on",
    )


def storage_url(args: argparse.Namespace) -> str:
    """The --storage given, or the default study storage (SQLite under the squeezefit home)."""
    from search.study import StudyConfig

    return args.storage or StudyConfig().storage_url


def config_overrides(args: argparse.Namespace) -> dict:
    """The flags named after a StudyConfig field (their `dest`), by field: they override the study file."""
    from search.study import StudyConfig

    return {f.name: getattr(args, f.name) for f in fields(StudyConfig) if hasattr(args, f.name)}
