"""The llama.cpp engine's row handling (cancel, completion, joining) on a stand-in llama_cpp.

llama-cpp-python is optional and not installed in CI, so a stand-in module plays
llama.cpp: a "model" whose next token is a function of every token in the sequence
so far (read back from the stand-in's KV cells, so a wrong position, a missing prefix
copy or a stale cell changes the output). Each row must produce exactly what it
produces alone, however rows come and go.
"""

from __future__ import annotations

import ctypes
import importlib
import sys
import threading
import types
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("numpy")

from langchain_divconq.local.engine.rows import NewRow

VOCAB = 50
EOS = 49


class _Batch:
    def __init__(self, n: int) -> None:
        self.token = [0] * n
        self.pos = [0] * n
        self.n_seq_id = [0] * n
        self.seq_id = [[0] for _ in range(n)]
        self.logits = [False] * n
        self.n_tokens = 0


class FakeLlama:
    """The stand-in's state: KV cells per sequence and the logits of the last decode."""

    def __init__(self) -> None:
        self.cells: dict[int, dict[int, int]] = {}
        self.out: dict[int, Any] = {}
        self.decodes = 0

    @staticmethod
    def next_token(tokens: Sequence[int]) -> int:
        h = 7
        for t in tokens:
            h = (h * 31 + t) % 1_000_003
        return h % VOCAB

    def decode(self, ctx: Any, batch: _Batch) -> int:
        self.decodes += 1
        self.out = {}
        for i in range(batch.n_tokens):
            seq, pos = batch.seq_id[i][0], batch.pos[i]
            cells = self.cells.setdefault(seq, {})
            cells[pos] = batch.token[i]
            if batch.logits[i]:
                assert sorted(cells) == list(range(pos + 1)), f"seq {seq} has holes: {cells}"
                logits = (ctypes.c_float * VOCAB)()
                logits[self.next_token([cells[p] for p in range(pos + 1)])] = 1.0
                self.out[i] = logits
        return 0

    def seq_rm(self, mem: Any, seq: int, p0: int, p1: int) -> bool:
        cells = self.cells.setdefault(seq, {})
        hi = float("inf") if p1 < 0 else p1
        for p in [p for p in cells if p >= max(p0, 0) and p < hi]:
            del cells[p]
        return True

    def seq_cp(self, mem: Any, src: int, dst: int, p0: int, p1: int) -> None:
        cells = self.cells.setdefault(dst, {})
        for p, t in self.cells.get(src, {}).items():
            if p0 <= p < p1:
                cells[p] = t

    def module(self) -> types.ModuleType:
        lc = types.ModuleType("llama_cpp")
        params = types.SimpleNamespace
        lc.llama_backend_init = lambda: None  # type: ignore[attr-defined]
        lc.llama_model_default_params = lambda: params()  # type: ignore[attr-defined]
        lc.llama_model_load_from_file = lambda path, p: object()  # type: ignore[attr-defined]
        lc.llama_context_default_params = lambda: params()  # type: ignore[attr-defined]
        lc.llama_init_from_model = lambda model, p: object()  # type: ignore[attr-defined]
        lc.llama_model_get_vocab = lambda model: object()  # type: ignore[attr-defined]
        lc.llama_vocab_n_tokens = lambda vocab: VOCAB  # type: ignore[attr-defined]
        lc.llama_get_memory = lambda ctx: object()  # type: ignore[attr-defined]
        lc.llama_batch_init = lambda n, embd, seqs: _Batch(n)  # type: ignore[attr-defined]
        lc.llama_decode = self.decode  # type: ignore[attr-defined]
        lc.llama_get_logits_ith = lambda ctx, i: self.out[i]  # type: ignore[attr-defined]
        lc.llama_memory_seq_rm = self.seq_rm  # type: ignore[attr-defined]
        lc.llama_memory_seq_cp = self.seq_cp  # type: ignore[attr-defined]
        for name in ("llama_batch_free", "llama_free", "llama_model_free"):
            setattr(lc, name, lambda *a: None)
        return lc


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[tuple[FakeLlama, Any]]:
    llama = FakeLlama()
    monkeypatch.setitem(sys.modules, "llama_cpp", llama.module())
    monkeypatch.delitem(sys.modules, "langchain_divconq.local.llamacpp_backend", raising=False)
    backend = importlib.import_module("langchain_divconq.local.llamacpp_backend")
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    yield llama, backend.LlamaCppEngine(gguf, max_rows=4, n_threads=1)
    monkeypatch.delitem(sys.modules, "langchain_divconq.local.llamacpp_backend", raising=False)


SYSTEM = [3, 4, 5, 6, 7, 8]
PROMPTS = [[*SYSTEM, 10, 11], [*SYSTEM, 12], [*SYSTEM, 13, 15], [*SYSTEM, 16, 17], [20, 21]]


def alone(prompt: Sequence[int], n: int) -> list[int]:
    tokens, out = list(prompt), []
    for _ in range(n):
        out.append(FakeLlama.next_token(tokens))
        tokens.append(out[-1])
        if out[-1] == EOS:
            break
    return out


def test_cancelled_row_stops_at_next_step_and_others_match_alone(fake: Any) -> None:
    _, engine = fake
    gone = threading.Event()

    def checker(ids: Sequence[int]) -> bool:
        if list(ids) == alone(PROMPTS[1], 2):
            gone.set()
        return False

    out = engine.generate(
        PROMPTS[:3], max_new_tokens=12, eos_token_ids=[EOS], stop_checker=checker,
        cancels=[None, gone, None],
    )  # fmt: skip
    assert out[1].token_ids == alone(PROMPTS[1], 3)
    assert out[1].finish_reason == "cancelled"
    assert out[0].token_ids == alone(PROMPTS[0], 12)
    assert out[2].token_ids == alone(PROMPTS[2], 12)


def test_rows_join_and_are_reported_as_they_end(fake: Any) -> None:
    _, engine = fake
    asked = 0

    class Source:
        rows = [NewRow(PROMPTS[3]), NewRow(PROMPTS[4])]

        def waiting(self) -> bool:
            return bool(self.rows)

        def take(self, limit: int) -> list[NewRow]:
            nonlocal asked
            asked += 1
            if asked < 3:  # join after a few steps
                return []
            out, self.rows = self.rows[:limit], self.rows[limit:]
            return out

    lengths = [3, 12, 6]
    stops = {i: alone(p, n) for i, (p, n) in enumerate(zip(PROMPTS, lengths, strict=False))}
    done: list[int] = []
    out = engine.generate(
        PROMPTS[:3],
        max_new_tokens=12,
        eos_token_ids=[EOS],
        stop_checker=lambda ids: any(list(ids) == v for v in stops.values()),
        source=Source(),
        max_rows=3,
        on_finish=lambda i, o: done.append(i),
    )
    assert [o.token_ids for o in out[:3]] == [stops[0], stops[1], stops[2]]
    assert [o.token_ids for o in out[3:]] == [alone(PROMPTS[3], 12), alone(PROMPTS[4], 12)]
    assert done[0] == 0  # the shortest row answered first, while the others ran
    assert sorted(done) == [0, 1, 2, 3, 4]


def test_rows_beyond_max_rows_take_free_slots(fake: Any) -> None:
    _, engine = fake
    out = engine.generate(PROMPTS, max_new_tokens=8, eos_token_ids=[EOS], max_rows=2)
    assert [o.token_ids for o in out] == [alone(p, 8) for p in PROMPTS]
