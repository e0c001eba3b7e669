"""Batch-1 speculative decoding loops behind :func:`~langchain_divconq.generation.generate_greedy`.

Three ways to draft, one way to verify: the model checks a run of draft tokens
in one pass (:func:`_verify`) and keeps the ones greedy decoding would pick.

- :func:`_speculate`: drafts from n-grams of the prompt and output (prompt
  lookup), their length picked by a :class:`DraftTuner` from measured speed.
- :func:`_speculate_drafted`: drafts from a cheap copy of the model
  (:mod:`langchain_divconq.local.engine.draft_model`) running on the model's own KV cache.
- :func:`_speculate_static`: prompt lookup with a preallocated cache and fixed
  shapes, optionally compiled with CUDA graphs.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from langchain_divconq.local.engine.rows import Row, RowStop, cache_kwarg

if TYPE_CHECKING:
    import torch

    from langchain_divconq.local.engine.draft_model import Drafter

__all__ = ["DraftTuner"]


def _prompt_lookup(tokens: Sequence[int], max_ngram: int, num_draft: int) -> list[int]:
    """Propose the tokens that followed an earlier occurrence of the text's last n-gram.

    Longer n-grams are tried first; among their matches the most recent one with a
    full ``num_draft`` continuation wins (a match overlapping the tail of repetitive
    text has a short one), else the longest continuation found.
    """
    if num_draft <= 0:
        return []
    length = len(tokens)
    for n in range(min(max_ngram, length - 1), 0, -1):
        tail = list(tokens[length - n :])
        first = tail[0]
        best: list[int] = []
        for start in range(length - n - 1, -1, -1):
            if tokens[start] == first and list(tokens[start : start + n]) == tail:
                follow = list(tokens[start + n : start + n + num_draft])
                if len(follow) == num_draft:
                    return follow
                if len(follow) > len(best):
                    best = follow
        if best:
            return best
    return []


# ---------------------------------------------------------------------------- decoding


class DraftTuner:
    """Learns, per model, how many draft tokens per step pay off on this machine.

    A verify pass over ``k + 1`` tokens costs about one step on an idle, memory-bound
    CPU or a GPU, but up to twice that on a CPU whose cores are busy with other work,
    where long drafts that are mostly rejected slow decoding down. The tuner is a
    small bandit over draft lengths: it times each pass that had a draft available,
    keeps a running tokens-per-second figure per length, uses the best one and keeps
    trying the others now and then. Any choice gives the same tokens; only speed varies.
    """

    def __init__(self, lengths: Sequence[int], explore_every: int = 10) -> None:
        self.lengths = sorted(set(lengths))
        self.explore_every = explore_every
        self.rate: dict[int, float] = {}
        self.samples: dict[int, int] = dict.fromkeys(self.lengths, 0)
        self._turn = 0

    def choose(self) -> int:
        """Return the draft length to use for the next pass."""
        self._turn += 1
        untried = [k for k in self.lengths if self.samples[k] < 3]
        if untried:
            return untried[self._turn % len(untried)]
        if self._turn % self.explore_every == 0:
            return self.lengths[(self._turn // self.explore_every) % len(self.lengths)]
        return max(self.lengths, key=lambda k: self.rate[k])

    def record(self, length: int, tokens: int, seconds: float) -> None:
        """Record that a pass using ``length`` drafts gave ``tokens`` tokens in ``seconds``."""
        if length not in self.samples or seconds <= 0:
            return
        speed = tokens / seconds
        old = self.rate.get(length)
        self.rate[length] = speed if old is None else 0.8 * old + 0.2 * speed
        self.samples[length] += 1


_tuners: dict[tuple[int, int], DraftTuner] = {}


def _tuner_for(model: Any, num_draft: int) -> DraftTuner:
    key = (id(model), num_draft)
    tuner = _tuners.get(key)
    if tuner is None:
        tuner = _tuners[key] = DraftTuner([0, 1, 2, num_draft])
    return tuner


class _RunLength:
    """How many tokens the int8 drafter writes before the model checks them.

    Its drafts are nearly always right (2 rejections in 19 verify passes over 12
    GSM8K prompts with the shipped decomposer), and each verify pass has a fixed cost,
    so runs start long; a rejection shortens the next run to about twice the
    accepted stretch and full acceptance doubles it again, up to the cap.
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.length = cap

    def update(self, drafted: int, accepted: int) -> None:
        if accepted >= drafted:
            self.length = min(self.cap, max(4, 2 * self.length))
        else:
            self.length = max(4, min(self.cap, 2 * (accepted + 1)))


def _verify(
    model: Any, cache: Any, row: Row, device: torch.device, draft: list[int], stop: RowStop
) -> int:
    """Check ``draft`` in one pass, keep what greedy decoding agrees with; return drafts kept.

    The cache must hold every token but the row's last; it is left the same way.
    """
    import torch

    fed = [row.new[-1], *draft]
    step = torch.tensor([fed], device=device)
    kw = cache_kwarg(model)
    logits = model(input_ids=step, **{kw: cache}, use_cache=True, logits_to_keep=len(fed)).logits
    best = logits[0].argmax(dim=-1).tolist()
    row.passes += 1
    accepted = 0
    while accepted < len(draft) and draft[accepted] == best[accepted]:
        accepted += 1
    if accepted < len(draft):
        cache.crop(accepted - len(draft))  # forget the keys of rejected drafts
    for token in best[: accepted + 1]:
        if row.push(int(token), stop):
            break
    return accepted


def _speculate(
    model: Any,
    cache: Any,
    row: Row,
    device: torch.device,
    stop: RowStop,
    num_draft: int,
    max_ngram: int,
    tuner: DraftTuner | None = None,
    interrupt: Callable[[], bool] | None = None,
) -> None:
    """Decode one row with prompt-lookup drafts verified against the model's argmax.

    Returns early, the row unfinished, once ``interrupt()`` is true (other rows wait to
    join); the cache then holds every token of the row but its last.
    """
    while row.finish is None:
        if interrupt is not None and interrupt():
            return
        room = stop.max_new_tokens - len(row.new) - 1
        found = _prompt_lookup(row.prompt + row.new, max_ngram, min(num_draft, room))
        length = tuner.choose() if tuner is not None and found else num_draft
        draft = found[:length]
        start = time.perf_counter()
        accepted = _verify(model, cache, row, device, draft, stop)
        if tuner is not None and found:
            tuner.record(length, accepted + 1, time.perf_counter() - start)


def _speculate_drafted(
    model: Any,
    drafter: Drafter,
    cache: Any,
    row: Row,
    device: torch.device,
    stop: RowStop,
    num_draft: int,
    max_ngram: int,
    adaptive: bool = True,
    interrupt: Callable[[], bool] | None = None,
) -> None:
    """Decode one row with drafts from a cheap copy of the model (see ``draft_model``).

    The drafter runs on the model's own cache: it appends its keys, proposes a run
    of tokens, and its entries are cropped again before the model verifies the run,
    so the verified cache only ever holds keys the model computed itself. Returns
    early, as :func:`_speculate` does, once ``interrupt()`` is true.
    """
    run = _RunLength(num_draft)
    while row.finish is None:
        if interrupt is not None and interrupt():
            return
        room = stop.max_new_tokens - len(row.new) - 1
        length = run.length if adaptive else num_draft
        draft, added = _draft_run(drafter, cache, row, stop, min(length, room), max_ngram)
        if added:
            cache.crop(-added)
        accepted = _verify(model, cache, row, device, draft, stop)
        run.update(len(draft), accepted)


def _draft_run(
    drafter: Drafter,
    cache: Any,
    row: Row,
    stop: RowStop,
    budget: int,
    max_ngram: int,
) -> tuple[list[int], int]:
    """Greedy-decode up to ``budget`` tokens with the drafter; return them and its cache entries.

    Each drafter pass also checks an n-gram guess of the next few tokens (prompt
    lookup, here against the drafter's argmax), so a pass often drafts several.
    """
    draft: list[int] = []
    added = 0
    while len(draft) < budget:
        text = row.prompt + row.new + draft
        guess = _prompt_lookup(text, max_ngram, min(3, budget - len(draft) - 1))
        best = drafter.greedy([text[-1], *guess], cache)
        ok = 0
        while ok < len(guess) and guess[ok] == best[ok]:
            ok += 1
        if ok < len(guess):
            cache.crop(ok - len(guess))
        added += ok + 1
        for token in best[: ok + 1]:
            draft.append(int(token))
            if token in stop.eos:
                return draft, added
        if stop.checker is not None and stop.checker(row.new + draft):
            break  # the row would end inside this run; drafting on is wasted work
    return draft[:budget], added


_compiled: weakref.WeakKeyDictionary[Any, Callable[..., Any]] = weakref.WeakKeyDictionary()
"""Each model's compiled ``forward`` (CUDA graphs), made on first use."""


def _compiled_forward(model: Any) -> Callable[..., Any]:
    import torch

    if model not in _compiled:
        _compiled[model] = torch.compile(model.forward, mode="reduce-overhead", fullgraph=False)
    forward: Callable[..., Any] = _compiled[model]
    return forward


def _speculate_static(
    model: Any,
    row: Row,
    device: torch.device,
    stop: RowStop,
    num_draft: int,
    max_ngram: int,
    compile: bool = False,
) -> None:
    """:func:`_speculate` with a preallocated cache and a fixed step shape (for CUDA graphs).

    Each step feeds exactly ``num_draft + 1`` tokens; short drafts are padded by
    repeating their last token. A padded token that happens to equal the argmax is
    accepted like any draft, which keeps the output greedy.
    """
    import torch
    from transformers import StaticCache

    width = num_draft + 1
    cache = StaticCache(
        config=model.config, max_cache_len=len(row.prompt) + stop.max_new_tokens + width
    )
    kw = cache_kwarg(model)
    prompt = torch.tensor([row.prompt], device=device)
    # The prompt pass has a shape of its own, so it stays eager.
    logits = model(input_ids=prompt, **{kw: cache}, use_cache=True, logits_to_keep=1).logits
    row.passes += 1
    if row.push(int(logits[0, -1].argmax()), stop):
        return
    forward = _compiled_forward(model) if compile else model
    step = torch.empty((1, width), dtype=torch.long, device=device)
    position = torch.empty((1, width), dtype=torch.long, device=device)
    offsets = torch.arange(width, device=device)
    while True:
        done = len(row.prompt) + len(row.new) - 1  # tokens whose keys are cached
        draft = _prompt_lookup(row.prompt + row.new, max_ngram, num_draft)
        fed = [row.new[-1], *draft]
        fed += [fed[-1]] * (width - len(fed))
        step.copy_(torch.tensor([fed]))
        position.copy_(offsets + done)
        if compile:
            torch.compiler.cudagraph_mark_step_begin()
        out = forward(
            input_ids=step,
            position_ids=position,
            **{kw: cache},
            use_cache=True,
            logits_to_keep=width,
        )
        # Read the result before the next replay overwrites the graph's output buffer.
        best = out.logits[0].argmax(dim=-1).tolist()
        row.passes += 1
        accepted = 0
        while accepted < num_draft and fed[accepted + 1] == best[accepted]:
            accepted += 1
        if accepted < num_draft:
            cache.crop(accepted - num_draft)
        for token in best[: accepted + 1]:
            if row.push(int(token), stop):
                return
