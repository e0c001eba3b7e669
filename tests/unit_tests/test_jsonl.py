"""The JSONL writers: private files, and no noise at interpreter exit."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from langchain_divconq.jsonl import PRIVATE_FILE_MODE, JsonlAppender, read_jsonl, write_jsonl

ROOT = Path(__file__).resolve().parents[2]

# The recorder is kept alive by a module that is torn down after langchain_divconq.jsonl
# (logging), as an app's own module global would be: its clean-up then runs when the
# jsonl module's globals (``os``) are already None.
_EXIT_PROBE = """
import logging, sys
from langchain_divconq import TraceRecorder
from langchain_divconq.tracing.trace import Trace

recorder = TraceRecorder(sys.argv[1])
if sys.argv[2] == "write":
    recorder.store.add(Trace(question="2 + 2?"))
logging._kept_for_the_test = recorder
"""


@pytest.mark.parametrize("write", ["write", "no-write"])
def test_a_recorder_alive_at_interpreter_exit_closes_quietly(tmp_path: Path, write: str) -> None:
    path = tmp_path / "x.jsonl"
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_EXIT_PROBE), str(path), write],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    if write == "write":
        assert [row["question"] for _, row in read_jsonl(path)] == ["2 + 2?"]


def test_close_is_idempotent_and_a_later_append_reopens(tmp_path: Path) -> None:
    appender = JsonlAppender(tmp_path / "a.jsonl")
    appender.append_json([{"n": 1}])
    appender.close()
    appender.close()
    appender.append_json([{"n": 2}])
    del appender  # collected: its descriptor is closed by the finalizer, without a warning
    assert [row["n"] for _, row in read_jsonl(tmp_path / "a.jsonl")] == [1, 2]


def test_files_are_created_owner_only(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        JsonlAppender(tmp_path / "appended.jsonl").append_json([{"n": 1}])
        write_jsonl(tmp_path / "written.jsonl", [{"n": 1}])
        # A leftover partial file from a crash keeps no wider bits into the result.
        (tmp_path / ".replaced.jsonl.partial").write_text("")
        (tmp_path / ".replaced.jsonl.partial").chmod(0o644)
        write_jsonl(tmp_path / "replaced.jsonl", [{"n": 1}])
    finally:
        os.umask(old)
    for name in ("appended.jsonl", "written.jsonl", "replaced.jsonl"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == PRIVATE_FILE_MODE, name
