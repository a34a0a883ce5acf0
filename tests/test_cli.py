"""The ``lowcomm`` command line: help without the trainer, and the usage-error convention."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lowcomm.cli import main

HEAVY = ("torch.utils.tensorboard", "lowcomm.training.trainer", "lowcomm.training.launch")

LOADED_AFTER_HELP = """
import runpy, sys
sys.argv = ["lowcomm", *sys.argv[1:]]
try:
    runpy.run_module("lowcomm", run_name="__main__")
except SystemExit:
    pass
print(" ".join(sorted(name for name in sys.modules if name in {heavy!r})))
"""


@pytest.mark.parametrize("arguments", [["--help"], ["train", "--help"], ["bench", "--help"], ["project", "--help"],
                                       ["regime-map", "--help"], ["plot", "--help"], ["export", "--help"]])
def test_help_loads_neither_the_trainer_nor_tensorboard(arguments: list[str]) -> None:
    result = subprocess.run([sys.executable, "-c", LOADED_AFTER_HELP.format(heavy=set(HEAVY)), *arguments],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    *help_text, loaded = result.stdout.splitlines() or [""]
    assert "usage: lowcomm" in "\n".join(help_text)
    assert loaded == ""


def test_no_command_prints_the_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "train" in capsys.readouterr().out


def test_an_unknown_command_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fly"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
