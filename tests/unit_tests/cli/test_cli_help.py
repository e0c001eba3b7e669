"""Every ``divconq`` command prints its help: argparse formats each flag's help text."""

from __future__ import annotations

import subprocess
import sys

import pytest

from langchain_divconq.cli import main

COMMANDS = ["ask", "collect", "import", "eval", "serve", "dataset", "distill"]


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_exits_zero(command: str | None, capsys: pytest.CaptureFixture[str]) -> None:
    # A stray "%" in a help string only fails when the help is formatted.
    argv = [command, "--help"] if command else ["--help"]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: divconq")
    for other in COMMANDS if command is None else [command]:
        assert other in out


def test_python_dash_m_cli_prints_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "langchain_divconq.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert out.stdout.startswith("usage: divconq")
