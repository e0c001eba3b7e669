"""A fast greedy decoding engine for Hugging Face causal language models.

The decomposer sits on every request's critical path, so this module decodes
faster than ``model.generate(do_sample=False)`` while returning the same tokens:

- **Self-speculative decoding with an int8 draft** (batch 1, CPU): an int8 copy
  of the model (:mod:`langchain_divconq.local.engine.draft_model`, a quarter of the bytes to
  stream per step) proposes a run of tokens on the model's own KV cache, and the
  model checks the whole run in one forward pass. Only draft tokens that greedy
  decoding would have picked are kept, so the output is the model's greedy
  output; a pass that accepts ``m`` drafts yields ``m + 1`` tokens.
- **Prompt-lookup drafts**: n-grams of the prompt guess the next few tokens
  (sub-questions copy whole phrases from the question); the int8 drafter checks
  such guesses several at a time, and where there is no int8 kernel (CUDA, or
  ``draft="lookup"``) they are the drafts themselves.
- **Prompt-prefix reuse** (:mod:`langchain_divconq.local.engine.prompt_cache`): the prompt
  pass starts from the cached keys and values of the longest prefix the model
  already ran (the decomposer's system prompt), which halves it for GSM8K.
- **CPU matrix products** (:mod:`langchain_divconq.local.engine.cpu_kernels`): fp32 linear
  layers run on oneDNN with weights reordered once, 2-2.8x faster than the
  stock kernels at decoding shapes on the machine we measured (one extra copy
  of the weights in memory; ``fast_cpu_matmuls=False`` turns it off).
- **Draft length**: int8 runs are long (32 tokens, usually the whole
  decomposition, checked in one pass) and shrink after a rejection; for
  prompt-lookup drafts a :class:`~langchain_divconq.speculation.DraftTuner`
  times each pass and keeps the length that gives the most tokens per second
  (CPU contention can make long, mostly rejected drafts a loss). The loops live
  in :mod:`langchain_divconq.local.engine.speculation`.
- **Early stop**: a ``stop_checker`` sees the tokens so far and ends the row the
  moment it returns ``True`` (see :func:`decomposer_stop`, which stops once the
  sentinel or enough sub-question lines are out).
- **Batches** decode together in one loop (left padding, the same masks and
  positions as ``generate``); finished rows leave the batch at once and are reported
  through ``on_finish`` before the call returns, a row whose cancel event is set
  leaves at its next step, and waiting rows (a ``source``) join between steps
  (continuous batching, :mod:`langchain_divconq.local.engine.live`).
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
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from langchain_divconq.local.engine.rows import (
    FinishReason,
    GreedyResult,
    NewRow,
    Row,
    RowDone,
    RowSource,
    RowStop,
    cache_kwarg,
    new_cache,
)
from langchain_divconq.local.engine.stopping import (
    TokenStopChecker,
    decomposer_stop,
    repeated_line_start,
    stop_strings,
    text_stop_checker,
)

if TYPE_CHECKING:
    import torch

__all__ = [
    "DraftKind",
    "FinishReason",
    "GreedyResult",
    "NewRow",
    "RowDone",
    "RowSource",
    "TokenStopChecker",
    "decomposer_stop",
    "generate_greedy",
    "repeated_line_start",
    "stop_strings",
    "text_stop_checker",
]

_NO_LIMIT = 1 << 30

DraftKind = Literal["auto", "int8", "lookup"]
"""Where batch-1 drafts come from (see :func:`generate_greedy`)."""

# ---------------------------------------------------------------------------- decoding


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
    rows_one_by_one_up_to: int = 4,
    static_cache: bool = False,
    compile: bool = False,
    cancels: Sequence[threading.Event | None] | None = None,
    on_finish: RowDone | None = None,
    source: RowSource | None = None,
    max_rows: int | None = None,
) -> list[GreedyResult]:
    """Greedy-decode each prompt; the tokens match ``model.generate(do_sample=False)``.

    One prompt uses speculative decoding: drafts come from an int8 copy of the model
    (``draft="int8"``, see :mod:`langchain_divconq.local.engine.draft_model`) or from n-grams of
    the text (``draft="lookup"``), and the model keeps only the draft tokens it
    would have picked itself. Several prompts decode as one left-padded batch, each
    row leaving the batch when it ends, except that with int8 drafts up to
    ``rows_one_by_one_up_to`` prompts decode one after another, each speculatively.

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
            per-model :class:`~langchain_divconq.speculation.DraftTuner` that
            picks the length from measured speed (CPU contention can make long
            drafts a loss). False always drafts the most.
        pad_token_id: Padding for batches (any id works: padded slots are masked).
        fast_cpu_matmuls: On CPU, run fp32 linear layers on oneDNN with
            reordered weights (see :mod:`langchain_divconq.local.engine.cpu_kernels`; keeps a
            reordered copy of the weights).
        rows_one_by_one_up_to: With int8 drafts, batches of up to this many
            prompts decode one prompt at a time (each speculatively) instead of
            as one padded batch; 0 always batches. On a 2-core CPU that was
            1.2-1.75x faster at 2-4 prompts and a wash at 8-32 (within +-10%,
            either way); with many cores a padded batch may win sooner. Rows wait for the
            ones before them, so a caller that wants each row answered in its own time
            passes 0 (``ChatLocalModel`` does when its callers can leave, as a server's do).
        prompt_cache: At batch 1, start from the cached keys and values of the
            longest prefix this model already ran in an earlier prompt (see
            :mod:`langchain_divconq.local.engine.prompt_cache`).
        static_cache: At batch 1, keep keys and values in a preallocated
            ``StaticCache`` and feed a fixed ``num_draft_tokens + 1`` tokens per step
            (fixed shapes, which CUDA graphs need).
        compile: On CUDA, also compile the verify step with
            ``torch.compile(mode="reduce-overhead")`` (CUDA graphs); implies
            ``static_cache``. Ignored on other devices.
        cancels: One event (or None) per prompt; once set, that row ends at its next
            step with ``finish_reason="cancelled"`` while the others go on.
        on_finish: Called with ``(index, result)`` the moment each row ends, so its
            caller can be answered before the whole call returns.
        source: Rows that join while the call runs (continuous batching): asked for
            more whenever a slot is free, also during batch-1 speculation, which then
            hands its row over to the padded batch loop. Joined rows are numbered after
            the inputs, in the order taken, and are in the returned list too.
        max_rows: Most rows decoded at once (default: no limit); the other inputs wait
            for a free slot, ahead of the ``source``.

    Returns:
        One :class:`GreedyResult` per prompt, in order (then the joined rows).

    Example:
        >>> out = generate_greedy(model, [tok("Hi").input_ids], max_new_tokens=8)  # doctest: +SKIP
        >>> out[0].token_ids, out[0].finish_reason  # doctest: +SKIP

    """
    import torch

    from langchain_divconq.local.engine.speculation import _tuner_for

    fixed_shapes = static_cache or compile
    kind = _draft_kind(model, draft, fixed_shapes)
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
    if rows_one_by_one_up_to < 0:
        msg = f"rows_one_by_one_up_to must be >= 0, got {rows_one_by_one_up_to}."
        raise ValueError(msg)
    _forget_if_weights_changed(model)
    speculative = kind == "int8" and num_draft_tokens > 0
    one_by_one = len(input_ids_batch) == 1 or (
        speculative and len(input_ids_batch) <= rows_one_by_one_up_to
    )
    drafter = None
    if one_by_one and speculative:
        from langchain_divconq.local.engine.draft_model import drafter_for

        drafter = drafter_for(model)  # built before the matmul patch below touches the model
    tuner = None
    if drafter is None and adaptive_draft and num_draft_tokens > 2 and not fixed_shapes:
        tuner = _tuner_for(model, num_draft_tokens)
    patch: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if fast_cpu_matmuls and device.type == "cpu":
        from langchain_divconq.local.engine.cpu_kernels import fast_cpu_linears

        patch = fast_cpu_linears(model)
    if cancels is not None and len(cancels) != len(input_ids_batch):
        msg = (
            f"cancels has {len(cancels)} events for {len(input_ids_batch)} prompts; "
            "pass one event (or None) per prompt."
        )
        raise ValueError(msg)
    from langchain_divconq.local.engine.live import Feed

    events = list(cancels) if cancels is not None else [None] * len(input_ids_batch)
    rows = [Row(p, e) for p, e in zip(input_ids_batch, events, strict=True)]
    limit = max_rows or (max(len(rows), 1) if source is None else _NO_LIMIT)
    feed = Feed(rows, limit, source, on_finish)
    stop = RowStop(eos, max_new_tokens, stop_checker)
    pad = pad_token_id if pad_token_id is not None else min(eos, default=0)
    with torch.inference_mode(), patch:
        if not one_by_one:
            _decode_batch(model, feed, device, stop, pad)
        else:
            speculate = _Speculation(
                model, drafter, tuner, num_draft_tokens, max_ngram,
                adaptive_draft, prompt_cache, fixed_shapes, compile,
            )  # fmt: skip
            while not speculate(feed, device, stop, pad) and feed.waiting():
                pass
    return [row.result() for row in feed.rows]


class _Speculation:
    """Batch-1 decoding of the feed's rows one at a time, each speculatively.

    A row hands over to the padded batch loop as soon as other rows wait (except with
    fixed shapes, whose static cache cannot take rows: those wait for the row to end).
    """

    def __init__(
        self,
        model: Any,
        drafter: Any,
        tuner: Any,
        num_draft: int,
        max_ngram: int,
        adaptive: bool,
        prompt_cache: bool,
        fixed_shapes: bool,
        compile: bool,
    ) -> None:
        self.model, self.drafter, self.tuner = model, drafter, tuner
        self.num_draft, self.max_ngram, self.adaptive = num_draft, max_ngram, adaptive
        self.prompt_cache, self.fixed_shapes, self.compile = prompt_cache, fixed_shapes, compile

    def __call__(self, feed: Any, device: torch.device, stop: RowStop, pad: int) -> bool:
        """Decode the next waiting row; return True once the batch loop took over (all done)."""
        from langchain_divconq.local.engine.live import decode_live, single_row_batch
        from langchain_divconq.local.engine.speculation import (
            _speculate,
            _speculate_drafted,
            _speculate_static,
        )

        admitted = feed.admit(1)
        if not admitted:
            return True
        index = admitted[0]
        row = feed.rows[index]
        model = self.model
        if self.fixed_shapes:
            cuda_graphs = self.compile and device.type == "cuda"
            _speculate_static(model, row, device, stop, self.num_draft, self.max_ngram, cuda_graphs)
            feed.finished(index)
            return False
        cache, logits = _prefill(model, row, device, self.prompt_cache)
        if row.push(int(logits[0, -1].argmax()), stop):
            feed.finished(index)
            return False
        # Only rows from outside interrupt (the call's own inputs wait for their turn);
        # then the call's waiting inputs join the padded batch too.
        source = feed.source
        interrupt: Callable[[], bool] | None = source.waiting if source is not None else None
        while True:
            if self.drafter is not None:
                _speculate_drafted(
                    model, self.drafter, cache, row, device, stop, self.num_draft,
                    self.max_ngram, self.adaptive, interrupt,
                )  # fmt: skip
            else:
                _speculate(model, cache, row, device, stop, self.num_draft, self.max_ngram,
                           self.tuner, interrupt)  # fmt: skip
            if row.finish is not None:
                feed.finished(index)
                return False
            # Others wait: go on as a padded batch that they join, and take the row back
            # (at batch 1, speculatively) once it is alone again.
            start = single_row_batch(index, row, cache, device)
            batch = decode_live(model, feed, device, stop, pad, start, hand_back=True)
            if batch is None:
                return True
            index = batch.rows[0]
            row = feed.rows[index]
            cache = batch.single_cache()


_fingerprints: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
"""The last weight sample of each model (see :func:`_forget_if_weights_changed`)."""


def _forget_if_weights_changed(model: Any) -> None:
    """Drop what was derived from the weights if they changed since the last call.

    That is the prompt cache, the int8 copy and the oneDNN weight copies. A
    sample of every parameter (64 evenly spaced values) is compared, not the
    version counters: ``weight.data += delta``, how peft merges an adapter, does
    not bump them. About 2 ms per call for SmolLM2-135M.
    """
    import torch

    with torch.no_grad():
        sample = [
            p.detach().reshape(-1)[:: max(1, p.numel() // 64)].float().sum()
            for p in model.parameters()
        ]
        now = torch.stack(sample).cpu() if sample else torch.zeros(0)
    before = _fingerprints.get(model)
    _fingerprints[model] = now
    if before is None or (before.shape == now.shape and torch.equal(before, now)):
        return
    from langchain_divconq.local.engine.cpu_kernels import forget_packed
    from langchain_divconq.local.engine.draft_model import forget_drafts
    from langchain_divconq.local.engine.prompt_cache import prompt_cache_for

    prompt_cache_for(model).clear()
    forget_drafts(model)
    forget_packed(model)


def _draft_kind(model: Any, draft: str, fixed_shapes: bool) -> DraftKind:
    if draft not in ("auto", "int8", "lookup"):
        msg = f"draft must be 'auto', 'int8' or 'lookup', got {draft!r}."
        raise ValueError(msg)
    if draft == "lookup" or fixed_shapes:
        return "lookup"
    from langchain_divconq.local.engine.draft_model import supports_int8_draft

    if supports_int8_draft(model):
        return "int8"
    if draft == "int8":
        from langchain_divconq.local.engine.draft_model import int8_draft

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


def _prefill(
    model: Any, row: Row, device: torch.device, use_prompt_cache: bool
) -> tuple[Any, torch.Tensor]:
    """Run the prompt (from the longest cached prefix, if any); return the cache and logits."""
    import torch
    from transformers.cache_utils import DynamicLayer

    cache = new_cache(model)
    kw = cache_kwarg(model)
    store = None
    done = 0
    if use_prompt_cache:
        from langchain_divconq.local.engine.prompt_cache import prompt_cache_for

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


def _decode_batch(model: Any, feed: Any, device: torch.device, stop: RowStop, pad: int) -> None:
    """Decode the feed's rows at once with left padding, as ``generate`` lays a batch out."""
    from langchain_divconq.local.engine.live import decode_live

    decode_live(model, feed, device, stop, pad)
