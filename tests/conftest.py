"""Fixtures shared by the test packages."""

from collections.abc import Callable

import pytest

from lowcomm.cli import main


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tokenizer cache shared by every ``lowcomm train`` run of the session (each BPE is trained once)."""
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> Callable[[list[str]], tuple[int, str, str]]:
    """Runs ``lowcomm ARGV`` in this process: (exit code, stdout, stderr), argparse's exits included."""

    def run(argv: list[str]) -> tuple[int, str, str]:
        try:
            code = main(argv)
        except SystemExit as exit:
            code = exit.code
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run
