"""The ``lowcomm`` command line: ``lowcomm <command> [flags]``.

Each command lives in its own module, registered in :data:`COMMANDS`, which provides
``add_arguments(parser)`` and ``run(args) -> int`` (the exit code). A module is imported only when
its command runs. Bad input ends a command with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from lowcomm.exit_codes import USAGE_ERROR


@dataclass(frozen=True)
class Command:
    module: str
    help: str


COMMANDS: dict[str, Command] = {
    "train": Command("lowcomm.cli.train", "train a model with one algorithm on N workers"),
    "bench": Command("lowcomm.cli.bench", "compare algorithms side by side: time to DDP's loss, plots, report"),
    "project": Command("lowcomm.cli.project", "project recorded runs onto other bandwidths and worker counts"),
    "regime-map": Command("lowcomm.cli.regime_map", "map speedups over DDP across benchmarks' batches and bandwidths"),
    "advise": Command("lowcomm.cli.advise", "recommend an algorithm, H and p for a link, from a short DDP run"),
    "plot": Command("lowcomm.cli.plot", "plot runs side by side: eval loss against step, time, tokens, bytes"),
    "export": Command("lowcomm.cli.export", "write a run's model as a Hugging Face model directory"),
}


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (no usage block) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message}\n")


def usage_error(command: str, message: str) -> int:
    """Report bad input the way every command does; return the exit code."""
    print(f"lowcomm {command}: error: {message}", file=sys.stderr)
    return USAGE_ERROR


def check_out_directory(out: Path) -> None:
    """Refuse an ``--out`` that exists and is not a directory (a command's outputs go inside it)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out: {out} exists and is not a directory")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = OneLineParser(prog="lowcomm", description="Communication-efficient data-parallel training.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in COMMANDS.items():
        subparser = commands.add_parser(name, help=command.help, description=command.help)
        if argv and argv[0] == name:
            importlib.import_module(command.module).add_arguments(subparser)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return USAGE_ERROR
    return importlib.import_module(COMMANDS[args.command].module).run(args)
