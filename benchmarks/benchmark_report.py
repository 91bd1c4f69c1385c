"""How a benchmark script records its result: the command that produced it, and the report printed and written.

Imported by the scripts beside it (run as `python benchmarks/<script>.py`, their folder is on the path).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path


def command_line(script: str, argv: list[str] | None) -> str:
    """`python benchmarks/<script's file name> ARGS` (argv None: this process's own arguments)."""
    return shlex.join(["python", f"benchmarks/{Path(script).name}", *(argv if argv is not None else sys.argv[1:])])


def publish(lines: list[str], output: Path | None) -> None:
    """Print the report made of `lines`, one per line, and write it to `output` when one is given."""
    text = "\n".join(lines) + "\n"
    print(text)
    if output:
        output.write_text(text)
