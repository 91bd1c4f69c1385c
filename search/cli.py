"""`squeezefit ...`: the command-line entry point.

Each subcommand is one module in `search/commands/` exposing `HELP` (one line),
`add_arguments(parser)` and `run(args) -> int`. A `UserError` anywhere below becomes one
sentence on stderr and exit code 2; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from evaluators.environment import ensure_offline
from evaluators.vocabulary import UserError

# Order is the order `squeezefit --help` lists them in.
COMMANDS = (
    "data",
    "baseline",
    "sparsify",
    "sensitivity",
    "search",
    "front",
    "recover",
    "export",
    "transfer",
    "measure",
    "agent",
    "worker",
    "bench",
)


def _available_commands() -> dict:
    modules = {}
    for name in COMMANDS:
        try:
            modules[name] = importlib.import_module(f"search.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"search.commands.{name}":
                raise
    return modules


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="squeezefit",
        description="Find the most accurate compression of a YOLO detector that fits a device's latency budget.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in _available_commands().items():
        command = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    ensure_offline()  # the one entry point: before anything imports Ultralytics
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except UserError as exc:
        print(f"squeezefit {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"squeezefit {args.command}: interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
