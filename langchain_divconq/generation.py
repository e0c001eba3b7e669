"""A fast greedy decoding engine for Hugging Face causal language models.

The decomposer sits on every request's critical path, so this module decodes
faster than ``model.generate(do_sample=False)`` while returning the same tokens:

- **Self-speculative decoding with an int8 draft** (batch 1, CPU): an int8 copy
  of the model (:mod:`langchain_divconq.draft_model`, a quarter of the bytes to
  stream per step) proposes a run of tokens on the model's own KV cache, and the
  model checks the whole run in one forward pass. Only draft tokens that greedy
  decoding would have picked are kept, so the output is the model's greedy
  output; a pass that accepts ``m`` drafts yields ``m + 1`` tokens.
- **Prompt-lookup drafts**: n-grams of the prompt guess the next few tokens
  (sub-questions copy whole phrases from the question); the int8 drafter checks
  such guesses several at a time, and where there is no int8 kernel (CUDA, or
  ``draft="lookup"``) they are the drafts themselves.
- **Prompt-prefix reuse** (:mod:`langchain_divconq.prompt_cache`): the prompt
  pass starts from the cached keys and values of the longest prefix the model
  already ran (the decomposer's system prompt), which halves it for GSM8K.
- **CPU matrix products** (:mod:`langchain_divconq.cpu_kernels`): fp32 linear
  layers run on oneDNN with weights reordered once, 2-2.8x faster than the
  stock kernels at decoding shapes on the machine we measured (one extra copy
  of the weights in memory; ``fast_cpu_matmuls=False`` turns it off).
- **Draft length**: int8 runs are long (32 tokens, usually the whole
  decomposition, checked in one pass) and shrink after a rejection; for
  prompt-lookup drafts a :class:`DraftTuner` times each pass and keeps the
  length that gives the most tokens per second (CPU contention can make long,
  mostly rejected drafts a loss).
- **Early stop**: a ``stop_checker`` sees the tokens so far and ends the row the
  moment it returns ``True`` (see :func:`decomposer_stop`, which stops once the
  sentinel or enough sub-question lines are out).
- **Batches** decode together in one loop (left padding, the same masks and
  positions as ``generate``); finished rows leave the batch at once.
- **CUDA**: a static KV cache and ``torch.compile(mode="reduce-overhead")`` for
  the fixed-shape verify step (opt in with ``compile=True``; not measured here).

Why exact: greedy speculative decoding keeps a draft token only when it equals
the argmax at its position, so the result equals plain greedy decoding up to
floating-point rounding between kernels (a verify pass multiplies several rows
at once), which only matters for near ties of the top two logits. In fp32 none
flipped in about 100 GSM8K decompositions of the shipped decomposer and 25
outputs of the base model (``benchmarks/decode.py --check N``; the unit tests
compare token for token too). bf16 rounds far more coarsely: the same model in bf16 on CPU gave
11 of 12 outputs identical to bf16 ``generate``, with drafts from either source.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from langchain_divconq.prompts import NO_DECOMPOSITION, parse_sub_questions

if TYPE_CHECKING:
    import torch

    from langchain_divconq.draft_model import Drafter

__all__ = [
    "DraftKind",
    "DraftTuner",
    "FinishReason",
    "GenerationResult",
    "TokenStopChecker",
    "decomposer_stop",
    "generate_greedy",
    "stop_strings",
    "text_stop_checker",
]

DraftKind = Literal["auto", "int8", "lookup"]
"""Where batch-1 drafts come from (see :func:`generate_greedy`)."""

FinishReason = Literal["eos", "stop", "length"]
"""Why a row ended: an end-of-sequence token, the stop checker, or ``max_new_tokens``."""

TokenStopChecker = Callable[[Sequence[int]], bool]
"""Called with a row's new token ids so far; ``True`` ends that row there."""


@dataclass
class GenerationResult:
    """The new tokens of one row and why decoding stopped."""

    token_ids: list[int]
    """New token ids; ends with the end-of-sequence token when ``finish_reason == "eos"``."""

    finish_reason: FinishReason
    """``"eos"``, ``"stop"`` (the stop checker fired) or ``"length"`` (hit ``max_new_tokens``)."""

    forward_passes: int = 0
    """Model calls that produced this row's tokens (the prompt pass included); fewer
    than ``len(token_ids)`` means speculative drafts were accepted."""


# ---------------------------------------------------------------------------- stop checkers


def stop_strings(stops: Sequence[str]) -> Callable[[str], bool]:
    r"""Return a text checker that fires once any of ``stops`` occurs in the text.

    Example:
        >>> stop_strings(["\n\n"])("a\n\nb")
        True

    """
    wanted = [s for s in stops if s]

    def check(text: str) -> bool:
        return any(s in text for s in wanted)

    return check


def decomposer_stop(max_sub_questions: int) -> Callable[[str], bool]:
    r"""Return a text checker that ends a decomposition as soon as its plan is complete.

    It fires when the first line is the sentinel :data:`~langchain_divconq.prompts.NO_DECOMPOSITION`
    followed by a newline, or when the complete lines (those ended by a newline)
    hold ``max_sub_questions`` distinct sub-questions. Only complete lines count, so
    :func:`~langchain_divconq.prompts.parse_sub_questions` returns the same list
    for the cut text as for the full generation.

    Example:
        >>> stop = decomposer_stop(2)
        >>> stop("How many eggs?\n"), stop("How many eggs?\nHow much money?\n")
        (False, True)

    """
    if max_sub_questions < 1:
        msg = f"max_sub_questions must be at least 1, got {max_sub_questions}."
        raise ValueError(msg)

    def check(text: str) -> bool:
        if not text.endswith("\n"):
            return False  # the last line is still being written
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if lines and lines[0].strip(" .").upper() == NO_DECOMPOSITION:
            return True
        return len(parse_sub_questions(text, max_sub_questions=10_000)) >= max_sub_questions

    return check


def text_stop_checker(tokenizer: Any, check: Callable[[str], bool]) -> TokenStopChecker:
    """Adapt a text checker to token ids by decoding the new tokens (special tokens skipped).

    Example:
        >>> checker = text_stop_checker(tokenizer, decomposer_stop(3))  # doctest: +SKIP

    """

    def on_ids(token_ids: Sequence[int]) -> bool:
        return check(tokenizer.decode(list(token_ids), skip_special_tokens=True))

    return on_ids


# ---------------------------------------------------------------------------- drafting


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

    Its drafts are nearly always right (every one of 234 tokens on 8 GSM8K
    prompts with the shipped decomposer), and each verify pass has a fixed cost,
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


def _check_args(max_new_tokens: int, num_draft_tokens: int, max_ngram: int) -> None:
    if max_new_tokens < 1:
        msg = f"max_new_tokens must be at least 1, got {max_new_tokens}."
        raise ValueError(msg)
    if num_draft_tokens < 0 or max_ngram < 1:
        msg = (
            f"num_draft_tokens must be >= 0 and max_ngram >= 1, got {num_draft_tokens} and "
            f"{max_ngram}. Use num_draft_tokens=0 to turn speculation off."
        )
        raise ValueError(msg)


@dataclass(frozen=True)
class _Stop:
    """What ends a row: end-of-sequence tokens, a length limit and the stop checker."""

    eos: frozenset[int]
    max_new_tokens: int
    checker: TokenStopChecker | None


class _Row:
    """Bookkeeping of one row: its tokens and whether it has finished."""

    def __init__(self, prompt: Sequence[int]) -> None:
        self.prompt = list(prompt)
        self.new: list[int] = []
        self.finish: FinishReason | None = None
        self.passes = 0

    def push(self, token: int, stop: _Stop) -> bool:
        """Append one token; return ``True`` when the row has finished."""
        self.new.append(token)
        if token in stop.eos:
            self.finish = "eos"
        elif stop.checker is not None and stop.checker(self.new):
            self.finish = "stop"
        elif len(self.new) >= stop.max_new_tokens:
            self.finish = "length"
        return self.finish is not None

    def result(self) -> GenerationResult:
        return GenerationResult(
            token_ids=self.new, finish_reason=self.finish or "length", forward_passes=self.passes
        )


def generate_greedy(
    model: Any,
    input_ids_batch: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    eos_token_ids: Sequence[int] | int | None = None,
    stop_checker: TokenStopChecker | None = None,
    draft: DraftKind = "auto",
    num_draft_tokens: int | None = None,
    max_ngram: int = 3,
    adaptive_draft: bool = True,
    pad_token_id: int | None = None,
    fast_cpu_matmuls: bool = True,
    prompt_cache: bool = True,
    static_cache: bool = False,
    compile: bool = False,
) -> list[GenerationResult]:
    """Greedy-decode each prompt; the tokens match ``model.generate(do_sample=False)``.

    One prompt uses speculative decoding: drafts come from an int8 copy of the model
    (``draft="int8"``, see :mod:`langchain_divconq.draft_model`) or from n-grams of
    the text (``draft="lookup"``), and the model keeps only the draft tokens it
    would have picked itself. Several prompts decode as one left-padded batch, each
    row leaving the batch when it ends.

    Args:
        model: A causal LM (``transformers`` ``PreTrainedModel`` or a ``peft`` wrapper).
        input_ids_batch: The prompts, as token id lists (chat template already applied).
        max_new_tokens: The most new tokens per prompt.
        eos_token_ids: Tokens that end a row (kept in the output, as ``generate`` does);
            defaults to the model's ``generation_config.eos_token_id``.
        stop_checker: Called with a row's new tokens after each token; ``True`` ends
            the row there (see :func:`text_stop_checker`, :func:`decomposer_stop`).
        draft: Where batch-1 drafts come from: ``"int8"`` (an int8 copy of the
            model; CPU only), ``"lookup"`` (n-grams of the prompt and output) or
            ``"auto"`` (int8 where supported, else lookup).
        num_draft_tokens: The most draft tokens verified per step (0 turns
            speculation off); defaults to 32 with the int8 draft and 4 with lookup.
        max_ngram: The longest n-gram looked up in the text for drafts.
        adaptive_draft: Adapt the draft length: int8 runs shrink after a
            rejection and grow back after full acceptance; lookup drafts use a
            per-model :class:`DraftTuner` that picks the length from measured
            speed (CPU contention can make long drafts a loss). False always
            drafts the most.
        pad_token_id: Padding for batches (any id works: padded slots are masked).
        fast_cpu_matmuls: On CPU, run fp32 linear layers on oneDNN with
            reordered weights (see :mod:`langchain_divconq.cpu_kernels`; keeps a
            reordered copy of the weights).
        prompt_cache: At batch 1, start from the cached keys and values of the
            longest prefix this model already ran in an earlier prompt (see
            :mod:`langchain_divconq.prompt_cache`).
        static_cache: At batch 1, keep keys and values in a preallocated
            ``StaticCache`` and feed a fixed ``num_draft_tokens + 1`` tokens per step
            (fixed shapes, which CUDA graphs need).
        compile: On CUDA, also compile the verify step with
            ``torch.compile(mode="reduce-overhead")`` (CUDA graphs); implies
            ``static_cache``. Ignored on other devices.

    Returns:
        One :class:`GenerationResult` per prompt, in order.

    Example:
        >>> out = generate_greedy(model, [tok("Hi").input_ids], max_new_tokens=8)  # doctest: +SKIP
        >>> out[0].token_ids, out[0].finish_reason  # doctest: +SKIP

    """
    import torch

    kind = _draft_kind(model, draft, static_cache or compile)
    if num_draft_tokens is None:
        num_draft_tokens = 32 if kind == "int8" else 4
    _check_args(max_new_tokens, num_draft_tokens, max_ngram)
    if not input_ids_batch:
        return []
    if any(len(p) == 0 for p in input_ids_batch):
        msg = (
            "Every prompt needs at least one token; got an empty prompt. "
            "Apply the chat template first."
        )
        raise ValueError(msg)
    eos = _eos_set(model, eos_token_ids)
    device = next(model.parameters()).device
    drafter = None
    if len(input_ids_batch) == 1 and kind == "int8" and num_draft_tokens > 0:
        from langchain_divconq.draft_model import drafter_for

        drafter = drafter_for(model)  # built before the matmul patch below touches the model
    patch: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if fast_cpu_matmuls and device.type == "cpu":
        from langchain_divconq.cpu_kernels import fast_cpu_linears

        patch = fast_cpu_linears(model)
    rows = [_Row(p) for p in input_ids_batch]
    stop = _Stop(eos, max_new_tokens, stop_checker)
    with torch.inference_mode(), patch:
        if len(rows) > 1:
            pad = pad_token_id if pad_token_id is not None else min(eos, default=0)
            _decode_batch(model, rows, device, stop, pad)
        elif static_cache or compile:
            _speculate_static(
                model,
                rows[0],
                device,
                stop,
                num_draft_tokens,
                max_ngram,
                compile and device.type == "cuda",
            )
        else:
            cache, logits = _prefill(model, rows[0], device, prompt_cache)
            if not rows[0].push(int(logits[0, -1].argmax()), stop):
                if drafter is not None:
                    _speculate_drafted(
                        model, drafter, cache, rows[0], device, stop, num_draft_tokens,
                        max_ngram, adaptive_draft,
                    )  # fmt: skip
                else:
                    tuner = None
                    if adaptive_draft and num_draft_tokens > 2:
                        tuner = _tuner_for(model, num_draft_tokens)
                    _speculate(
                        model, cache, rows[0], device, stop, num_draft_tokens, max_ngram, tuner
                    )
    return [row.result() for row in rows]


def _draft_kind(model: Any, draft: str, fixed_shapes: bool) -> DraftKind:
    if draft not in ("auto", "int8", "lookup"):
        msg = f"draft must be 'auto', 'int8' or 'lookup', got {draft!r}."
        raise ValueError(msg)
    if draft == "lookup" or fixed_shapes:
        return "lookup"
    from langchain_divconq.draft_model import supports_int8_draft

    if supports_int8_draft(model):
        return "int8"
    if draft == "int8":
        from langchain_divconq.draft_model import int8_draft

        int8_draft(model)  # raises the explanatory error
    return "lookup"


def _eos_set(model: Any, eos_token_ids: Sequence[int] | int | None) -> frozenset[int]:
    if eos_token_ids is None:
        config = getattr(model, "generation_config", None)
        eos_token_ids = getattr(config, "eos_token_id", None)
    if eos_token_ids is None:
        return frozenset()
    if isinstance(eos_token_ids, int):
        return frozenset([eos_token_ids])
    return frozenset(int(t) for t in eos_token_ids)


def _cache_kwarg(model: Any) -> str:
    """Name of the forward argument that takes the KV cache (renamed in transformers 5.2x)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(type(base).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _new_cache(model: Any) -> Any:
    from transformers import DynamicCache

    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else None
    return DynamicCache(config=config) if config is not None else DynamicCache()


def _prefill(
    model: Any, row: _Row, device: torch.device, use_prompt_cache: bool
) -> tuple[Any, torch.Tensor]:
    """Run the prompt (from the longest cached prefix, if any); return the cache and logits."""
    import torch
    from transformers.cache_utils import DynamicLayer

    cache = _new_cache(model)
    kw = _cache_kwarg(model)
    store = None
    done = 0
    if use_prompt_cache:
        from langchain_divconq.prompt_cache import prompt_cache_for

        store = prompt_cache_for(model)
        done, layers = store.longest_prefix(row.prompt)
        for i, (keys, values) in enumerate(layers or []):
            cache.update(keys, values, i)
    rest = torch.tensor([row.prompt[done:]], device=device)
    logits = model(input_ids=rest, **{kw: cache}, use_cache=True, logits_to_keep=1).logits
    row.passes += 1
    # Layers that are not plain growing caches (sliding windows) cannot be sliced.
    if store is not None and all(type(layer) is DynamicLayer for layer in cache.layers):
        store.store(row.prompt, [(layer.keys, layer.values) for layer in cache.layers])
    return cache, logits


def _verify(
    model: Any, cache: Any, row: _Row, device: torch.device, draft: list[int], stop: _Stop
) -> int:
    """Check ``draft`` in one pass, keep what greedy decoding agrees with; return drafts kept.

    The cache must hold every token but the row's last; it is left the same way.
    """
    import torch

    fed = [row.new[-1], *draft]
    step = torch.tensor([fed], device=device)
    kw = _cache_kwarg(model)
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
    row: _Row,
    device: torch.device,
    stop: _Stop,
    num_draft: int,
    max_ngram: int,
    tuner: DraftTuner | None = None,
) -> None:
    """Decode one row with prompt-lookup drafts verified against the model's argmax."""
    import time

    while row.finish is None:
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
    row: _Row,
    device: torch.device,
    stop: _Stop,
    num_draft: int,
    max_ngram: int,
    adaptive: bool = True,
) -> None:
    """Decode one row with drafts from a cheap copy of the model (see ``draft_model``).

    The drafter runs on the model's own cache: it appends its keys, proposes a run
    of tokens, and its entries are cropped again before the model verifies the run,
    so the verified cache only ever holds keys the model computed itself.
    """
    run = _RunLength(num_draft)
    while row.finish is None:
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
    row: _Row,
    stop: _Stop,
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
        draft.extend(int(t) for t in best[: ok + 1])
        hit = [i for i, t in enumerate(draft) if t in stop.eos]
        if hit:
            return draft[: hit[0] + 1], added
        if stop.checker is not None and stop.checker(row.new + draft):
            break  # the row would end inside this run; drafting on is wasted work
    return draft[:budget], added


def _decode_batch(
    model: Any,
    rows: list[_Row],
    device: torch.device,
    stop: _Stop,
    pad: int,
) -> None:
    """Decode several rows at once with left padding, as ``generate`` lays a batch out."""
    import torch

    width = max(len(r.prompt) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long, device=device)
    mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    for i, r in enumerate(rows):
        ids[i, width - len(r.prompt) :] = torch.tensor(r.prompt, device=device)
        mask[i, width - len(r.prompt) :] = 1
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    cache = _new_cache(model)
    kw = _cache_kwarg(model)
    live = list(range(len(rows)))
    logits = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=positions,
        **{kw: cache},
        use_cache=True,
        logits_to_keep=1,
    ).logits
    last_pos = positions[:, -1:]
    while True:
        for j in live:
            rows[j].passes += 1
        tokens = logits[:, -1].argmax(dim=-1)
        keep = [
            j for j, token in enumerate(tokens.tolist()) if not rows[live[j]].push(int(token), stop)
        ]
        if not keep:
            return
        if len(keep) < len(live):
            index = torch.tensor(keep, device=device)
            cache.batch_select_indices(index)
            tokens, mask, last_pos = tokens[index], mask[index], last_pos[index]
            live = [live[j] for j in keep]
        mask = torch.cat([mask, mask.new_ones((len(live), 1))], dim=-1)
        last_pos = last_pos + 1
        logits = model(
            input_ids=tokens[:, None],
            attention_mask=mask,
            position_ids=last_pos,
            **{kw: cache},
            use_cache=True,
            logits_to_keep=1,
        ).logits


_compiled: Any = None  # weakref.WeakKeyDictionary[model, compiled forward], made on first use


def _compiled_forward(model: Any) -> Callable[..., Any]:
    import weakref

    import torch

    global _compiled
    if _compiled is None:
        _compiled = weakref.WeakKeyDictionary()
    if model not in _compiled:
        _compiled[model] = torch.compile(model.forward, mode="reduce-overhead", fullgraph=False)
    forward: Callable[..., Any] = _compiled[model]
    return forward


def _speculate_static(
    model: Any,
    row: _Row,
    device: torch.device,
    stop: _Stop,
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
    kw = _cache_kwarg(model)
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
