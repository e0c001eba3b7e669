"""Secrets stay out of traces (error texts and other free text), and trace files are private."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models import FakeListChatModel
from langchain_core.messages import BaseMessage
from langchain_core.runnables import RunnableLambda

from langchain_divconq import create_divconq_chain
from langchain_divconq.tracing.recorder import REDACTED, TraceRecorder, scrub_secrets, scrub_text
from langchain_divconq.tracing.store import JsonlTraceStore, SqliteTraceStore, open_store
from langchain_divconq.tracing.trace import Trace

SECRETS = [
    "sk-proj-FAKE0123456789abcdef",
    "FAKEbasicCREDENTIALS0123",
    "hunter2-FAKE-password",
    "FAKE-query-key-0123456789",
    "FAKE-url-password-01",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.FAKEsignature0123",
    "abcd1234efgh5678",
    "sk-ant-FAKE0123456789abcdef",
    "FAKE-header-key-0123",
]

UPSTREAM_ERROR = (
    "Error code: 401 - {'error': {'message': 'Incorrect API key provided: "
    f"Bearer {SECRETS[0]}. Authorization: Basic {SECRETS[1]}', 'password': '{SECRETS[2]}'}}}} "
    f"while calling https://api.example.com/v1/chat?api_key={SECRETS[3]}&model=gpt "
    f"via https://bob:{SECRETS[4]}@proxy.example.com:8080 with token {SECRETS[5]}; "
    f"retry token={SECRETS[6]} api_key={SECRETS[7]} x-api-key: {SECRETS[8]}"
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Bearer sk-abcdefghijklmn", REDACTED),
        ("Authorization: Basic dXNlcjpwYXNzd29yZA==", f"Authorization: {REDACTED}"),
        ('{"api_key": "abc123def456"}', f'{{"api_key": "{REDACTED}"}}'),
        ("x-api-key=abcd1234&y=2", f"x-api-key={REDACTED}&y=2"),
        ("password: hunter2!", f"password: {REDACTED}"),
        ("https://me:pa55word@host/x", f"https://{REDACTED}@host/x"),
        # Ordinary text is left alone.
        ("How many tokens: 5? The key is 42.", "How many tokens: 5? The key is 42."),
        ("sk-8 skis, Basic math, Bearer of news", "sk-8 skis, Basic math, Bearer of news"),
        ("https://example.com/a?b=c", "https://example.com/a?b=c"),
    ],
)
def test_scrub_text(text: str, expected: str) -> None:
    assert scrub_text(text) == expected
    assert scrub_secrets(text) == expected


def _failing_solver(messages: list[BaseMessage]) -> str:
    raise RuntimeError(UPSTREAM_ERROR)


@pytest.mark.parametrize("kind", ["jsonl", "sqlite"])
def test_upstream_error_texts_are_scrubbed_in_the_store(tmp_path: Path, kind: str) -> None:
    path = tmp_path / ("t.jsonl" if kind == "jsonl" else "t.db")
    recorder = TraceRecorder(path)
    chain = create_divconq_chain(
        FakeListChatModel(responses=["How many?"]), RunnableLambda(_failing_solver)
    )
    with pytest.raises(RuntimeError):
        chain.invoke("Q?", {"callbacks": [recorder]})
    chain = create_divconq_chain(
        FakeListChatModel(responses=[f"Use key {SECRETS[0]} for this?"]),
        FakeListChatModel(responses=[f"password={SECRETS[2]}\nThe answer is: 4"]),
    )
    chain.invoke(f"My key is {SECRETS[0]}, what is 2 + 2?", {"callbacks": [recorder]})
    assert recorder.recorded == 2
    failed, ok = open_store(path)
    assert failed.error is not None and failed.solver is not None
    assert failed.solver.error is not None and REDACTED in failed.error
    assert "RuntimeError" in failed.error and "api.example.com" in failed.error
    assert ok.solution is not None and ok.solution.endswith("The answer is: 4")
    stored = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    for secret in SECRETS:
        assert secret.encode() not in stored, secret


@pytest.mark.parametrize("kind", ["jsonl", "sqlite"])
def test_trace_files_are_created_private(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "runs" / ("t.jsonl" if kind == "jsonl" else "t.db")
    store: Any = JsonlTraceStore(path) if kind == "jsonl" else SqliteTraceStore(path)
    store.add(Trace(question="Q?"))
    made = [p for p in path.parent.iterdir()]
    assert path in made
    for file in made:
        assert stat.S_IMODE(file.stat().st_mode) == 0o600, file
    store.close()
