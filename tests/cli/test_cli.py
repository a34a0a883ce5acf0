"""The ``lowcomm`` command line: help without the trainer, and the usage-error convention."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lowcomm.cli import main

HEAVY = {"torch.utils.tensorboard", "lowcomm.training.trainer", "lowcomm.launching.launch"}
HELP_COMMANDS = [["--help"], ["train", "--help"], ["bench", "--help"], ["project", "--help"], ["regime-map", "--help"],
                 ["plot", "--help"], ["export", "--help"]]
LAUNCHER_SPARES = {"lowcomm.training.trainer", "torch.utils.tensorboard", "matplotlib", "torch.distributed.fsdp",
                   "torch.distributed.checkpoint"}
"""What the process that starts the workers (and a worker before it builds its trainer) does not import."""

LOADED_AFTER_HELP = """
import runpy, sys
for arguments in {commands!r}:
    sys.argv = ["lowcomm", *arguments]
    try:
        runpy.run_module("lowcomm", run_name="__main__")
    except SystemExit:
        pass
    print(" ".join(arguments), "loaded:", *sorted(set(sys.modules) & {heavy!r}))
"""


def loaded_lines(script: str) -> list[str]:
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.splitlines()


def test_help_loads_neither_the_trainer_nor_tensorboard() -> None:
    """One interpreter runs every help in turn, each checked right after it."""
    lines = loaded_lines(LOADED_AFTER_HELP.format(commands=HELP_COMMANDS, heavy=HEAVY))
    assert sum("usage: lowcomm" in line for line in lines) == len(HELP_COMMANDS)
    assert [line for line in lines if " loaded:" in line] == [f"{' '.join(a)} loaded:" for a in HELP_COMMANDS]


def test_the_launcher_loads_neither_the_trainer_nor_fsdp() -> None:
    """Neither the restart mode's launcher nor the live one (whose group processes import the trainer)."""
    launchers = "lowcomm.launching.launch, lowcomm.launching.worker, lowcomm.launching.live"
    script = f"import sys, {launchers}; print(*sorted(set(sys.modules) & {LAUNCHER_SPARES!r}))"
    assert loaded_lines(script) == [""]


def test_no_command_prints_the_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "train" in capsys.readouterr().out


def test_an_unknown_command_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fly"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
