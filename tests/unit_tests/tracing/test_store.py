"""Trace stores: round trips, filters, torn lines, a SIGKILLed writer, several processes."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from langchain_divconq.tracing.store import (
    JsonlTraceStore,
    MemoryTraceStore,
    SqliteTraceStore,
    TraceStore,
    open_store,
)
from langchain_divconq.tracing.trace import NodeCall, Trace

ROOT = Path(__file__).resolve().parents[3]


def _traces() -> list[Trace]:
    return [
        Trace(
            question="Q1?",
            tags=["teacher", "gsm8k"],
            metadata={"task": "gsm8k", "split": "train"},
            decomposer=NodeCall(model_name="gpt-a"),
            solver=NodeCall(model_name="gpt-b"),
            score=1.0,
        ),
        Trace(
            question="Q2?",
            tags=["teacher"],
            metadata={"task": "gsm8k", "split": "test"},
            solver=NodeCall(model_name="gpt-b"),
            score=0.0,
        ),
        Trace(question="Q3?", source="gsm8k-socratic", score=1.0),
        Trace(question="Q4?", error="RuntimeError: boom"),
    ]


StoreFactory = Callable[[Path], TraceStore]
FACTORIES: dict[str, StoreFactory] = {
    "jsonl": lambda d: JsonlTraceStore(d / "t.jsonl"),
    "sqlite": lambda d: SqliteTraceStore(d / "t.db"),
    "memory": lambda d: MemoryTraceStore(),
}


@pytest.fixture(params=sorted(FACTORIES))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> TraceStore:
    made = FACTORIES[request.param](tmp_path)
    made.add(_traces()[0])
    made.add_many(_traces()[1:])
    return made


def _questions(traces: object) -> list[str]:
    return [t.question for t in traces]  # type: ignore[attr-defined]


def test_round_trip_keeps_order_and_values(store: TraceStore) -> None:
    loaded = list(store)
    assert _questions(loaded) == ["Q1?", "Q2?", "Q3?", "Q4?"]
    assert len(store) == 4
    assert loaded[0].decomposer == NodeCall(model_name="gpt-a")
    assert loaded[0].metadata == {"task": "gsm8k", "split": "train"}
    assert len(store.trace_ids()) == 4


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"tags": ["teacher"]}, ["Q1?", "Q2?"]),
        ({"tags": ["teacher", "gsm8k"]}, ["Q1?"]),
        ({"metadata": {"split": "test"}}, ["Q2?"]),
        ({"model": "gpt-a"}, ["Q1?"]),
        ({"model": "gpt-b"}, ["Q1?", "Q2?"]),
        ({"source": "gsm8k-socratic"}, ["Q3?"]),
        ({"source": ["recorded", "gsm8k-socratic"]}, ["Q1?", "Q2?", "Q3?", "Q4?"]),
        ({"correct": True}, ["Q1?", "Q3?"]),
        ({"correct": False}, ["Q2?"]),
        ({"ok": False}, ["Q4?"]),
        ({"correct": True, "source": "recorded", "tags": ["teacher"]}, ["Q1?"]),
    ],
)
def test_filters(store: TraceStore, filters: dict[str, object], expected: list[str]) -> None:
    assert _questions(store.filter(**filters)) == expected


def test_jsonl_torn_last_line_is_skipped_and_appending_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "t.jsonl"
    store = JsonlTraceStore(path)
    store.add_many(_traces()[:2])
    whole = _traces()[2].model_dump_json().encode()
    with path.open("ab") as handle:  # what a crash in the middle of write() leaves
        handle.write(whole[: len(whole) // 2])
    with caplog.at_level(logging.WARNING):
        assert _questions(JsonlTraceStore(path)) == ["Q1?", "Q2?"]
    assert "torn last line" in caplog.text
    after = JsonlTraceStore(path)
    after.add(Trace(question="after the crash?"))
    assert _questions(JsonlTraceStore(path)) == ["Q1?", "Q2?", "after the crash?"]
    assert len(JsonlTraceStore(path)) == 3


def test_jsonl_skips_records_of_a_newer_schema(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "t.jsonl"
    newer = Trace(question="future?").model_dump(mode="json") | {"schema_version": 99}
    path.write_text(
        json.dumps(newer) + "\n" + Trace(question="now?").model_dump_json() + "\n",
        encoding="utf-8",
    )
    with caplog.at_level(logging.WARNING):
        assert _questions(JsonlTraceStore(path)) == ["now?"]
    assert "schema version 99" in caplog.text


def test_missing_jsonl_file_is_an_empty_store(tmp_path: Path) -> None:
    assert len(JsonlTraceStore(tmp_path / "none.jsonl")) == 0


def test_sqlite_same_trace_id_replaces(tmp_path: Path) -> None:
    store = SqliteTraceStore(tmp_path / "t.db")
    trace = Trace(question="Q?")
    store.add(trace)
    store.add(trace.model_copy(update={"score": 1.0}))
    assert len(store) == 1 and next(iter(store)).score == 1.0
    store.close()


def test_sqlite_pages_through_large_stores(tmp_path: Path) -> None:
    store = SqliteTraceStore(tmp_path / "t.db")
    store.add_many(Trace(question=f"Q{i}?", score=float(i % 2)) for i in range(1234))
    assert _questions(store)[-1] == "Q1233?" and len(list(store)) == 1234
    assert len(list(store.filter(correct=True))) == 617


def test_open_store_picks_the_kind(tmp_path: Path) -> None:
    assert isinstance(open_store(tmp_path / "a.jsonl"), JsonlTraceStore)
    assert isinstance(open_store(f"sqlite:///{tmp_path}/b.db"), SqliteTraceStore)
    assert isinstance(open_store(str(tmp_path / "c.sqlite")), SqliteTraceStore)
    memory = MemoryTraceStore()
    assert open_store(memory) is memory
    with pytest.raises(ValueError, match="sqlite:///"):
        open_store(tmp_path / "traces.csv")


@pytest.mark.parametrize("spec", ["sqlite:///{d}/sub/t.db", "{d}/t.sqlite", "{d}/t.jsonl"])
def test_opening_a_missing_store_for_reading_creates_nothing(tmp_path: Path, spec: str) -> None:
    text = spec.format(d=tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist") as caught:
        open_store(text, create=False)
    assert f"divconq collect --task TASK --store {text}" in str(caught.value)
    assert f"divconq import gsm8k-socratic FILE --store {text}" in str(caught.value)
    assert list(tmp_path.iterdir()) == []  # neither the file nor its folder
    with open_store(text) as store:  # a writer creates it
        store.add(Trace(question="Q?"))
    with open_store(text, create=False) as store:
        assert _questions(store) == ["Q?"]


def test_sqlite_store_for_reading_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SqliteTraceStore(tmp_path / "t.db", create=False)
    assert not (tmp_path / "t.db").exists()


def test_cli_dataset_from_a_missing_store_says_so_and_creates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from langchain_divconq.cli.router import main

    monkeypatch.chdir(tmp_path)
    for spec in ("sqlite:///missing.db", "missing.jsonl"):
        argv = ["dataset", "--store", spec, "--variant", "SD-R", "--out", "ds"]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"Trace store '{spec}' does not exist" in err and "divconq collect" in err
    assert list(tmp_path.iterdir()) == []


def _run_script(code: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )


_RECORDING_WRITER = """
    import sys
    from langchain_core.language_models import FakeListChatModel
    from langchain_divconq import TraceRecorder, create_divconq_chain
    from langchain_divconq.tracing.store import JsonlTraceStore

    recorder = TraceRecorder(JsonlTraceStore(sys.argv[1]))
    chain = create_divconq_chain(
        FakeListChatModel(responses=["How many in May?\\nHow many in all?"]),
        FakeListChatModel(responses=["24 in May.\\nThe answer is: 72"]),
    )
    padding = "x" * 20000  # big records, so the kill often lands inside a write
    i = 0
    while True:
        chain.invoke(
            {"question": f"Question {i}?", "context": padding},
            {"callbacks": [recorder], "metadata": {"i": i}},
        )
        print(i, flush=True)  # the run returned, so its trace was written
        i += 1
"""


def test_sigkilled_writer_leaves_every_earlier_record(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    writer = _run_script(_RECORDING_WRITER, str(path))
    assert writer.stdout is not None
    acked: list[int] = []
    deadline = time.monotonic() + 120
    while len(acked) < 150 and time.monotonic() < deadline:
        line = writer.stdout.readline()
        if not line:
            break
        acked.append(int(line))
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(timeout=30)
    assert writer.returncode == -signal.SIGKILL
    assert len(acked) == 150, "the writer stopped before recording 150 runs"
    traces = list(JsonlTraceStore(path))
    recorded = [t.metadata["i"] for t in traces]
    # Every run that returned before the kill is there, whole and in order.
    assert recorded[: len(acked)] == acked
    assert len(recorded) in (len(acked), len(acked) + 1)
    for trace in traces:
        assert trace.solution == "24 in May.\nThe answer is: 72"
        assert trace.sub_questions == ["How many in May?", "How many in all?"]
    # A new writer appends cleanly after whatever the kill left.
    JsonlTraceStore(path).add(Trace(question="after?"))
    assert _questions(JsonlTraceStore(path))[-1] == "after?"


_PARALLEL_WRITER = """
    import os, sys, time
    from langchain_divconq.tracing.store import open_store
    from langchain_divconq.tracing.trace import Trace

    spec, worker, count, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    store = open_store(spec)
    print("ready", flush=True)
    while not os.path.exists(go):
        time.sleep(0.005)
    for k in range(count):
        store.add(Trace(trace_id=f"w{worker}-{k}", question=f"worker {worker} item {k}?"))
    print("done", flush=True)
"""


@pytest.mark.parametrize("kind", ["sqlite", "jsonl"])
def test_four_processes_writing_at_once_lose_nothing(tmp_path: Path, kind: str) -> None:
    spec = f"sqlite:///{tmp_path}/t.db" if kind == "sqlite" else str(tmp_path / "t.jsonl")
    go = tmp_path / "go"
    count = 200
    writers = [_run_script(_PARALLEL_WRITER, spec, str(w), str(count), str(go)) for w in range(4)]
    for writer in writers:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
    go.touch()  # all four start writing at the same moment
    for writer in writers:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "done"
        assert writer.wait(timeout=120) == 0
    store = open_store(spec)
    expected = {f"w{w}-{k}" for w in range(4) for k in range(count)}
    assert len(store) == 4 * count
    assert store.trace_ids() == expected
    # Each writer's records stay in its own order.
    for w in range(4):
        mine = [t.trace_id for t in store if t.trace_id.startswith(f"w{w}-")]
        assert mine == [f"w{w}-{k}" for k in range(count)]


# --------------------------------------------------------------------- a full disk
class _FullDisk:
    """Makes the next ``os.write`` to ``path`` write ``keep(payload)`` bytes, then fail (ENOSPC)."""

    def __init__(self, path: Path, keep: Callable[[int], int]) -> None:
        self.path = path
        self.keep = keep
        self.armed = False
        self.real = os.write

    def __call__(self, fd: int, data: bytes | memoryview) -> int:
        if self.armed and self.path.exists() and os.path.samestat(os.fstat(fd), self.path.stat()):
            self.armed = False
            part = self.keep(len(data))
            if part:
                self.real(fd, bytes(data)[:part])
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.real(fd, data)


_SPLITS: dict[str, Callable[[int], int]] = {
    "half": lambda n: n // 2,
    "all-but-newline": lambda n: n - 1,  # a complete JSON object without its newline
    "nothing": lambda n: 0,
    "one-byte": lambda n: 1,
}


@pytest.mark.parametrize("split", sorted(_SPLITS))
def test_jsonl_recorder_count_matches_readable_after_a_failed_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, split: str
) -> None:
    from langchain_core.language_models import FakeListChatModel

    from langchain_divconq import create_divconq_chain
    from langchain_divconq.tracing.recorder import TraceRecorder

    path = tmp_path / "t.jsonl"
    recorder = TraceRecorder(JsonlTraceStore(path))
    chain = create_divconq_chain(
        FakeListChatModel(responses=["How many?"]),
        FakeListChatModel(responses=["The answer is: 4"]),
    )
    full = _FullDisk(path, _SPLITS[split])
    monkeypatch.setattr(os, "write", full)
    config: dict[str, object] = {"callbacks": [recorder]}
    chain.invoke("Q0?", config)  # type: ignore[arg-type]
    full.armed = True
    chain.invoke("Q-lost?", config)  # type: ignore[arg-type]  # the disk is full
    assert not full.armed
    for i in range(1, 6):
        chain.invoke(f"Q{i}?", config)  # type: ignore[arg-type]
    assert recorder.write_errors == 1
    readable = _questions(JsonlTraceStore(path))
    assert readable == ["Q0?", "Q1?", "Q2?", "Q3?", "Q4?", "Q5?"]
    assert recorder.recorded == len(readable) == len(JsonlTraceStore(path))


@pytest.mark.parametrize("split", sorted(_SPLITS))
def test_jsonl_add_many_after_a_failed_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, split: str
) -> None:
    path = tmp_path / "t.jsonl"
    store = JsonlTraceStore(path)
    store.add(Trace(question="before?"))
    full = _FullDisk(path, _SPLITS[split])
    monkeypatch.setattr(os, "write", full)
    full.armed = True
    with pytest.raises(OSError, match="No space"):
        store.add_many([Trace(question="lost 1?"), Trace(question="lost 2?")])
    store.add_many([Trace(question=f"after {i}?") for i in range(3)])
    store.add(Trace(question="last?"))
    expected = ["before?", "after 0?", "after 1?", "after 2?", "last?"]
    assert _questions(JsonlTraceStore(path)) == expected
    assert len(JsonlTraceStore(path)) == 5


def test_jsonl_failed_write_that_cannot_be_cut_back_is_never_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "t.jsonl"
    store = JsonlTraceStore(path)
    store.add(Trace(question="before?"))
    full = _FullDisk(path, _SPLITS["all-but-newline"])
    monkeypatch.setattr(os, "write", full)

    def no_truncate(fd: int, length: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "ftruncate", no_truncate)
    full.armed = True
    with caplog.at_level(logging.WARNING), pytest.raises(OSError, match="No space"):
        store.add(Trace(question="lost?"))
    assert "failed write" in caplog.text
    store.add(Trace(question="after?"))
    assert _questions(JsonlTraceStore(path)) == ["before?", "after?"]
