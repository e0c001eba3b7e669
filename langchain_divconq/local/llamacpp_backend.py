"""An optional llama.cpp engine for :class:`~langchain_divconq.local.ChatLocalModel` (greedy).

When ``llama-cpp-python`` is installed, the local model can run on llama.cpp
instead of torch: the same weights written as GGUF
(:func:`~langchain_divconq.local.gguf_export.merged_decomposer_gguf`, q8_0 by
default), the same token ids in (our tokenizer and chat template), greedy
decoding out. What this module adds over calling ``llama_cpp.Llama`` once per
prompt:

- **Batches decode together**: all rows of a batch are sequences of one llama.cpp
  context, so each step is one ``llama_decode`` over every active row (the weights
  are read once per step, not once per row).
- **The shared prompt prefix is computed once** and copied to every row (the
  decomposer's system prompt), and kept between calls.
- **Rows come and go independently**: each row has its own cancel event (a set event
  ends it at the next step), is reported through ``on_finish`` the moment it ends,
  and frees its sequence for a waiting row (the call's rows beyond ``max_rows``, then a
  :class:`~langchain_divconq.local.engine.rows.RowSource`), which joins between steps
  (continuous batching).
- **Prompt-lookup drafts at batch 1** (off by default; they did not pay on a 2-core
  CPU): n-grams of the prompt propose a few tokens,
  one ``llama_decode`` checks them all and the argmax decides what is kept (the
  rejected keys and values are dropped from the cache). Greedy decoding keeps
  only tokens the model itself chose, so the text is what one-token steps give,
  up to kernel rounding between batch shapes.

The output is the GGUF model's greedy output: with q8_0 weights it can differ from
the fp32 torch model where two tokens are nearly tied; ``backend="torch"`` keeps
the exact fp32 path.

Import this module lazily: it imports ``llama_cpp`` (and numpy) at import time.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import llama_cpp as lc
import numpy as np

if TYPE_CHECKING:
    from langchain_divconq.local.engine.rows import RowSource

__all__ = ["LlamaCppEngine", "LlamaCppOutput"]

logger = logging.getLogger(__name__)

_backend_lock = threading.Lock()
_backend_ready = False


@dataclass
class LlamaCppOutput:
    """One row's result: new token ids (eos included when hit) and why it ended."""

    token_ids: list[int]
    finish_reason: str  # "eos", "stop" (stop_checker), "length" or "cancelled"
    forward_passes: int = 0


def _init_backend(verbose: bool) -> None:
    global _backend_ready
    with _backend_lock:
        if not _backend_ready:
            lc.llama_backend_init()
            _backend_ready = True
    # llama.cpp logs every load to stderr through llama-cpp-python's logger.
    logging.getLogger("llama-cpp-python").setLevel(logging.DEBUG if verbose else logging.ERROR)


class LlamaCppEngine:
    """Greedy, batched decoding of token ids on one llama.cpp context.

    Args:
        model_path: A GGUF file.
        n_threads: CPU threads (default: torch's thread count if torch is loaded,
            else the CPU count).
        max_rows: Most sequences decoded at once (llama.cpp's ``n_seq_max``; one
            more is kept for the shared prefix).
        n_ctx: Context cells shared by all rows (prompt + output of every row).
        n_batch: Most tokens per ``llama_decode`` call.
        lookup_tokens: Most prompt-lookup draft tokens per step at batch 1 (0: off, the
            default). On a 2-core x86 CPU a llama.cpp pass over 4-9 tokens cost about as
            much as the 1.6-2.1 tokens it accepted on average: +2% for the decomposer
            with 3 draft tokens, -17% for the base model's longer free text.
        kv_unified: One key/value buffer for all rows (needed to copy the shared
            prefix between rows; llama.cpp refuses the copy otherwise).
        verbose: Let llama.cpp log to stderr.

    Example:
        >>> engine = LlamaCppEngine("decomposer.q8_0.gguf")  # doctest: +SKIP
        >>> engine.generate([[1, 2, 3]], max_new_tokens=8, eos_token_ids=[2])  # doctest: +SKIP

    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        n_threads: int | None = None,
        max_rows: int = 16,
        n_ctx: int = 8192,
        n_batch: int = 2048,
        lookup_tokens: int = 0,
        kv_unified: bool = True,
        verbose: bool = False,
    ) -> None:
        path = Path(model_path)
        if not path.is_file():
            msg = f"GGUF file not found: {str(path)!r}."
            raise FileNotFoundError(msg)
        _init_backend(verbose)
        self.path = path
        self.max_rows = max_rows
        self.lookup_tokens = lookup_tokens
        self.n_batch = n_batch
        threads = n_threads or _default_threads()
        mparams = lc.llama_model_default_params()
        self._model = lc.llama_model_load_from_file(str(path).encode(), mparams)
        if not self._model:
            msg = f"llama.cpp could not load {str(path)!r}."
            raise ValueError(msg)
        cparams = lc.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = n_batch
        cparams.n_ubatch = min(n_batch, 512)
        cparams.n_seq_max = max_rows + 1
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        cparams.kv_unified = kv_unified
        self._ctx = lc.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            lc.llama_model_free(self._model)
            msg = f"llama.cpp could not create a context for {str(path)!r}."
            raise ValueError(msg)
        self.n_threads = threads
        self.n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(self._model))
        self._mem = lc.llama_get_memory(self._ctx)
        self._batch = lc.llama_batch_init(n_batch, 0, 1)
        self._prefix_seq = max_rows  # the sequence that keeps the shared prefix
        self._prefix: list[int] = []
        self._lock = threading.Lock()

    def close(self) -> None:
        """Free the llama.cpp context and model (also done on garbage collection)."""
        if getattr(self, "_ctx", None):
            lc.llama_batch_free(self._batch)
            lc.llama_free(self._ctx)
            lc.llama_model_free(self._model)
            self._ctx = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    # ------------------------------------------------------------------ low level
    def _decode(self, items: Sequence[tuple[int, int, int, bool]]) -> None:
        """Run ``(token, position, sequence, wants_logits)`` items, n_batch at a time."""
        for start in range(0, len(items), self.n_batch):
            chunk = items[start : start + self.n_batch]
            batch = self._batch
            for i, (token, pos, seq, logits) in enumerate(chunk):
                batch.token[i] = token
                batch.pos[i] = pos
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = seq
                batch.logits[i] = logits
            batch.n_tokens = len(chunk)
            status = lc.llama_decode(self._ctx, batch)
            if status != 0:
                msg = (
                    f"llama_decode failed with status {status} (context full? {len(items)} "
                    "tokens); use fewer rows per batch or a larger n_ctx."
                )
                raise RuntimeError(msg)

    def _argmax(self, index: int) -> int:
        pointer = lc.llama_get_logits_ith(self._ctx, index)
        logits = np.ctypeslib.as_array(
            ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), shape=(self.n_vocab,)
        )
        return int(logits.argmax())

    def _share_prefix(self, rows: Sequence[Sequence[int]]) -> int:
        """Keep the rows' common prefix in the prefix sequence and copy it to each row.

        The prefix sequence keeps what it held before as far as it matches (one
        prompt alone leaves all but its last token there), so the next call starts
        from the longest prefix both share, as llama-cpp-python does for one prompt.
        """
        common = list(rows[0][:-1])
        for row in rows[1:]:
            common = common[: _common_length(common, row[:-1])]
        kept = _common_length(self._prefix, common)
        lc.llama_memory_seq_rm(self._mem, self._prefix_seq, kept, -1)
        self._decode([(t, kept + i, self._prefix_seq, False) for i, t in enumerate(common[kept:])])
        self._prefix = common
        for seq in range(len(rows)):
            lc.llama_memory_seq_rm(self._mem, seq, -1, -1)
            if common:
                lc.llama_memory_seq_cp(self._mem, self._prefix_seq, seq, 0, len(common))
        return len(common)

    # ------------------------------------------------------------------ generation
    def generate(
        self,
        rows: Sequence[Sequence[int]],
        *,
        max_new_tokens: int,
        eos_token_ids: Sequence[int],
        stop_checker: Callable[[Sequence[int]], bool] | None = None,
        cancels: Sequence[threading.Event | None] | None = None,
        on_finish: Callable[[int, LlamaCppOutput], None] | None = None,
        source: RowSource | None = None,
        max_rows: int | None = None,
    ) -> list[LlamaCppOutput]:
        """Greedy-decode every row (prompt token ids); at most ``max_rows`` rows at once.

        Args:
            rows: The prompts, as token ids.
            max_new_tokens: The most new tokens per row.
            eos_token_ids: Tokens that end a row (kept in its output).
            stop_checker: Called with a row's new tokens after each one; True ends it.
            cancels: One event (or None) per row; once set, the row ends at its next
                step with ``finish_reason="cancelled"``.
            on_finish: Told ``(index, output)`` the moment each row ends.
            source: Rows that join while the call runs, numbered after ``rows``
                (their outputs follow in the returned list).
            max_rows: Most rows at once (at most the engine's ``max_rows``).

        """
        if not rows and source is None:
            return []
        if any(not r for r in rows):
            msg = "Every prompt needs at least one token."
            raise ValueError(msg)
        if cancels is not None and len(cancels) != len(rows):
            msg = f"cancels has {len(cancels)} events for {len(rows)} rows; pass one per row."
            raise ValueError(msg)
        limit = min(max_rows or self.max_rows, self.max_rows)
        run = _LiveRows(
            [list(r) for r in rows],
            list(cancels) if cancels is not None else [None] * len(rows),
            max_new_tokens,
            frozenset(eos_token_ids),
            stop_checker,
            on_finish,
            source,
        )
        with self._lock:
            self._generate_live(run, limit)
        return run.outputs

    def _admit(self, run: _LiveRows, seqs: list[int], limit: int) -> list[int]:
        """Start waiting rows on free sequences; return the indices of those that started.

        Each one's prompt is decoded but for its last token, which the next step feeds.
        """
        started = []
        for index in run.admit(limit):
            seq = seqs.pop()
            run.seq[index] = seq
            prompt = run.prompts[index]
            lc.llama_memory_seq_rm(self._mem, seq, -1, -1)
            shared = min(_common_length(self._prefix, prompt), len(prompt) - 1)
            if shared:
                lc.llama_memory_seq_cp(self._mem, self._prefix_seq, seq, 0, shared)
            self._decode([(t, i, seq, False) for i, t in enumerate(prompt[:-1]) if i >= shared])
            run.positions[index] = len(prompt) - 1
            run.pending[index] = prompt[-1]
            started.append(index)
        return started

    def _generate_live(self, run: _LiveRows, limit: int) -> None:
        first = run.admit_first(limit)
        active: list[int] = []
        logit_index: dict[int, int] = {}
        if first:
            shared = self._share_prefix([run.prompts[i] for i in first])
            # The prompts' tokens first, then every row's last token in one call, so
            # that all rows' logits come from that one call.
            items: list[tuple[int, int, int, bool]] = []
            for seq, index in enumerate(first):
                run.seq[index] = seq
                items += [(t, i, seq, False) for i, t in enumerate(run.prompts[index][:-1])
                          if i >= shared]  # fmt: skip
            self._decode(items)
            step = []
            for k, index in enumerate(first):
                prompt = run.prompts[index]
                step.append((prompt[-1], len(prompt) - 1, k, True))
                run.positions[index] = len(prompt)
                logit_index[index] = k
            self._decode(step)
            active = list(first)
        free = [seq for seq in range(self.max_rows - 1, -1, -1) if seq >= len(first)]
        while True:
            following: list[int] = []
            for index in active:
                if run.push(index, self._argmax(logit_index[index])):
                    # free its cells now: joined rows share the context's n_ctx cells
                    lc.llama_memory_seq_rm(self._mem, run.seq[index], -1, -1)
                    free.append(run.seq[index])
                else:
                    following.append(index)
            active = following
            room = limit - len(active)
            if len(active) == 1 and self.lookup_tokens > 0 and not (room > 0 and run.waiting()):
                self._finish_with_lookup(run, active[0])
                lc.llama_memory_seq_rm(self._mem, run.seq[active[0]], -1, -1)
                free.append(run.seq[active[0]])
                active = []
                room = limit
            taken = run.taken
            joined = self._admit(run, free, room) if room > 0 else []
            if not active and not joined:
                if run.taken > taken and run.waiting():
                    continue  # every row taken was cancelled while it waited; take more
                return
            step = []
            for k, index in enumerate(active):
                token = run.outputs[index].token_ids[-1]
                step.append((token, run.positions[index], run.seq[index], True))
                run.positions[index] += 1
                logit_index[index] = k
                run.outputs[index].forward_passes += 1
            for index in joined:
                logit_index[index] = len(step)
                step.append((run.pending[index], run.positions[index], run.seq[index], True))
                run.positions[index] += 1
            self._decode(step)
            active += joined

    def _finish_with_lookup(self, run: _LiveRows, index: int) -> None:
        """Decode one row to the end, checking prompt-lookup drafts in each step."""
        from langchain_divconq.local.engine.speculation import _prompt_lookup

        output = run.outputs[index]
        ids = output.token_ids
        prompt, seq = run.prompts[index], run.seq[index]
        while True:
            room = run.max_new - len(ids)
            draft = _prompt_lookup(prompt + ids, 3, min(self.lookup_tokens, room - 1))
            feed = [ids[-1], *draft]
            pos = run.positions[index]
            self._decode([(t, pos + i, seq, True) for i, t in enumerate(feed)])
            output.forward_passes += 1
            accepted = 0
            finished = False
            for i in range(len(feed)):
                token = self._argmax(i)
                accepted = i + 1
                finished = run.push(index, token, report=False)
                if finished or i == len(draft) or draft[i] != token:
                    break
            run.positions[index] = pos + accepted
            lc.llama_memory_seq_rm(self._mem, seq, run.positions[index], -1)  # rejected drafts
            if finished:
                run.finished(index)
                return


class _LiveRows:
    """The rows of one ``generate`` call: prompts, outputs, sequences, waiting rows."""

    def __init__(
        self,
        prompts: list[list[int]],
        cancels: list[threading.Event | None],
        max_new: int,
        eos: frozenset[int],
        stop_checker: Callable[[Sequence[int]], bool] | None,
        on_finish: Callable[[int, LlamaCppOutput], None] | None,
        source: RowSource | None,
    ) -> None:
        self.prompts, self.cancels = prompts, cancels
        self.max_new, self.eos, self.stop_checker = max_new, eos, stop_checker
        self.on_finish, self.source = on_finish, source
        self.outputs = [LlamaCppOutput([], "length", 1) for _ in prompts]
        self.seq: dict[int, int] = {}
        self.positions: dict[int, int] = {}
        self.pending: dict[int, int] = {}
        self._queued: deque[int] = deque(range(len(prompts)))
        self.taken = 0
        """Rows taken from the wait so far (started or cancelled there)."""

    def waiting(self) -> bool:
        return bool(self._queued) or (self.source is not None and self.source.waiting())

    def admit_first(self, limit: int) -> list[int]:
        """Return the call's own waiting rows that start now (up to ``limit``)."""
        out: list[int] = []
        while self._queued and len(out) < limit:
            self._start(self._queued.popleft(), out)
        return out

    def admit(self, limit: int) -> list[int]:
        """Up to ``limit`` waiting rows (the call's own first, then the source's)."""
        out = self.admit_first(limit)
        if self.source is not None and len(out) < limit:
            for new in self.source.take(limit - len(out)):
                if not new.prompt:
                    msg = "A row that joins a batch needs at least one prompt token."
                    raise ValueError(msg)
                self.prompts.append(list(new.prompt))
                self.cancels.append(new.cancel)
                self.outputs.append(LlamaCppOutput([], "length", 1))
                self._start(len(self.prompts) - 1, out)
        return out

    def _start(self, index: int, started: list[int]) -> None:
        """Take row ``index``: into ``started``, or straight to finished if already cancelled."""
        self.taken += 1
        if self._cancelled(index):
            self.outputs[index].forward_passes = 0
            self.finished(index)
        else:
            started.append(index)

    def _cancelled(self, index: int) -> bool:
        cancel = self.cancels[index]
        if cancel is not None and cancel.is_set():
            self.outputs[index].finish_reason = "cancelled"
            return True
        return False

    def push(self, index: int, token: int, *, report: bool = True) -> bool:
        """Append the row's next token; return True (and report it) when the row ends."""
        output = self.outputs[index]
        output.token_ids.append(token)
        if token in self.eos:
            output.finish_reason = "eos"
        elif self._cancelled(index):
            pass
        elif self.stop_checker is not None and self.stop_checker(output.token_ids):
            output.finish_reason = "stop"
        elif len(output.token_ids) < self.max_new:
            return False
        if report:
            self.finished(index)
        return True

    def finished(self, index: int) -> None:
        if self.on_finish is not None:
            self.on_finish(index, self.outputs[index])


def _common_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _default_threads() -> int:
    import sys

    torch = sys.modules.get("torch")
    if torch is not None:
        return int(torch.get_num_threads())
    return max(1, os.cpu_count() or 1)
