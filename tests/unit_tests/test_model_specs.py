"""Remote models built from specs get a request timeout and retries, overridable from the CLI."""

from __future__ import annotations

import argparse
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from langchain_divconq.cli.args import add_model_arguments, build_chain
from langchain_divconq.model_specs import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_REQUEST_TIMEOUT_S,
    build_decomposer,
    build_solver,
)

pytest.importorskip("langchain_openai")

URL = "http://127.0.0.1:9/v1"  # never contacted: building a model opens no connection


def test_remote_models_get_the_default_timeout_and_retries() -> None:
    decomposer = build_decomposer("openai:teacher", base_url=URL)
    solver = build_solver("openai:big", base_url=URL)
    for model in (decomposer, solver):
        assert model.request_timeout == DEFAULT_REQUEST_TIMEOUT_S  # type: ignore[attr-defined]
        assert model.max_retries == DEFAULT_MAX_RETRIES  # type: ignore[attr-defined]
        assert model.root_client.timeout == DEFAULT_REQUEST_TIMEOUT_S  # type: ignore[attr-defined]
    assert DEFAULT_REQUEST_TIMEOUT_S < 600  # the openai client's own default per try


def test_cli_flags_reach_both_remote_models() -> None:
    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    argv = ["--decomposer", "openai:teacher", "--decomposer-base-url", URL]
    argv += ["--solver", "openai:big", "--solver-base-url", URL]
    args = parser.parse_args([*argv, "--request-timeout", "7.5", "--max-retries", "0"])
    chain = build_chain(args)
    for model in (chain.decomposer, chain.solver):
        assert model.request_timeout == 7.5
        assert model.max_retries == 0


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"request_timeout": 0}, "positive number of seconds, got 0"),
        ({"request_timeout": float("nan")}, "positive number of seconds"),
        ({"max_retries": -1}, "0 or more, got -1"),
    ],
)
def test_bad_limits_are_clear_errors(options: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_decomposer("openai:teacher", base_url=URL, **options)  # type: ignore[arg-type]


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A local server that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}/v1"
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in held:
            conn.close()
        server.close()


def test_a_silent_remote_decomposer_fails_after_the_timeout(silent_server: str) -> None:
    import openai

    decomposer = build_decomposer(
        "openai:teacher", base_url=silent_server, request_timeout=0.5, max_retries=1
    )
    start = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        decomposer.invoke("How many clips?")
    elapsed = time.monotonic() - start
    # Two tries of 0.5 s and the client's short back-off, not 600 s.
    assert 1.0 <= elapsed < 10
