"""Evaluate a chain on a task: accuracy, tokens and dollars per node, latency, failures.

:func:`evaluate` runs any chain built by this library (or any runnable taking
``{"question", "context"}`` and returning a dict with ``solution``, a message or
a string) over the first ``limit`` examples of a :class:`~langchain_divconq.tasks.Task`
in file order, so runs are comparable. Each question gets its own
:class:`~langchain_divconq.usage.NodeUsageCollector`, so tokens, model names and
latency are known per question and per node (decomposer / solver). A failing
question is recorded with its error and scored 0; it never stops the run.

With ``records_path`` every finished question is appended to a JSONL file as soon
as its batch ends; a later call with the same file skips the questions already
answered without error (resume after a crash or Ctrl-C). The file is created
owner-only (0600), and every record's model texts and error are scrubbed of
credentials first (:func:`~langchain_divconq.secrets.scrub_text`): an upstream
error quotes what it was sent, ``Authorization`` headers included.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from langchain_core.callbacks import BaseCallbackManager
from langchain_core.runnables import Runnable, RunnableConfig
from pydantic import BaseModel, Field, ValidationError

from langchain_divconq.evaluation.pricing import PriceTable
from langchain_divconq.jsonl import JsonlAppender, iter_lines
from langchain_divconq.progress import chunks, progress_bar
from langchain_divconq.prompts import extract_answer, message_text
from langchain_divconq.secrets import scrub_text
from langchain_divconq.tasks import Example, Task
from langchain_divconq.tracing.usage import NodeStats, NodeUsageCollector, TokenCounter

__all__ = [
    "EvalRecord",
    "EvalResult",
    "evaluate",
    "load_records",
    "percentile",
    "price_record",
    "summarize",
]

logger = logging.getLogger(__name__)

NODES = ("decomposer", "solver")
"""The two nodes whose costs are reported separately (decomposition vs solving)."""


class EvalRecord(BaseModel):
    """The outcome of one question."""

    id: str = Field(description="Example id (see :class:`~langchain_divconq.tasks.Example`).")
    question: str = Field(description="The question.")
    gold: str = Field(description="The gold answer.")
    prediction: str | None = Field(default=None, description="The answer the checker read.")
    marker: bool = Field(default=False, description="True when the solver wrote the marker.")
    score: float = Field(default=0.0, description="The task's headline score (0 on failure).")
    metrics: dict[str, float] = Field(default_factory=dict, description="Every task metric.")
    decomposition: str | None = Field(default=None, description="The decomposer's raw text.")
    sub_questions: list[str] = Field(default_factory=list, description="Parsed sub-questions.")
    solution: str | None = Field(default=None, description="The solver's text.")
    nodes: dict[str, NodeStats] = Field(
        default_factory=dict, description="Tokens, time and models per node for this question."
    )
    latency_s: float | None = Field(
        default=None,
        description="Wall time of the question's chain run; in a batched run this is the "
        "time of the batch it was part of.",
    )
    error: str | None = Field(default=None, description="Why the question failed, if it did.")


class EvalResult(BaseModel):
    """Summary of a chain on one task, with the per-question records."""

    name: str = Field(description="Name of the configuration that was evaluated.")
    decomposer: str = Field(description="Decomposer label ('-' for single-stage).")
    solver: str = Field(description="Solver label.")
    task: str = Field(description="Task name.")
    split: str = Field(description="Split name.")
    metric: str = Field(description="Name of the headline metric ('accuracy', 'f1').")
    n: int = Field(description="Questions evaluated (including failed ones).")
    accuracy: float = Field(description="Mean headline score over all n questions.")
    metrics: dict[str, float] = Field(description="Mean of every task metric over n.")
    failures: int = Field(description="Questions whose chain run raised.")
    marker_rate: float = Field(description="Share of solutions that wrote the answer marker.")
    mean_sub_questions: float = Field(description="Mean number of parsed sub-questions.")
    nodes: dict[str, NodeStats] = Field(description="Tokens, time and cost summed per node.")
    decomposition_cost_usd: float | None = Field(
        description="Dollars spent by the decomposer (None if a model was unpriced)."
    )
    solving_cost_usd: float | None = Field(description="Dollars spent by the solver.")
    cost_per_1k_usd: float | None = Field(description="Total dollars per 1,000 questions.")
    tokens_estimated: bool = Field(description="True when some token counts were estimated.")
    latency_p50_s: float | None = Field(description="Median per-question latency (seconds).")
    latency_p95_s: float | None = Field(description="95th percentile latency (seconds).")
    wall_time_s: float = Field(description="Wall time of this call (resumed work excluded).")
    records: list[EvalRecord] = Field(default_factory=list, description="One per question.")

    @property
    def total_cost_usd(self) -> float | None:
        """Decomposition plus solving cost; None when either is unpriced."""
        if self.decomposition_cost_usd is None or self.solving_cost_usd is None:
            return None
        return self.decomposition_cost_usd + self.solving_cost_usd


def percentile(values: Sequence[float], q: float) -> float | None:
    """Return the ``q``-th percentile (0-100) with linear interpolation, None when empty.

    Example:
        >>> percentile([1.0, 2.0, 3.0, 4.0], 50)
        2.5

    """
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def load_records(path: str | Path) -> list[EvalRecord]:
    """Read an evaluation records JSONL file; a torn last line (a crash mid-write) is skipped."""
    records = []
    for _, line, where in iter_lines(path) if Path(path).is_file() else ():
        try:
            records.append(EvalRecord.model_validate_json(line))
        except ValidationError:
            logger.warning("Skipping unreadable line %s", where)
    return records


def _encode_counter(encode: Callable[[str], Sequence[int]]) -> TokenCounter:
    def count(text: str) -> int:
        return len(encode(text))

    return count


def _node_counters(chain: Runnable[Any, Any]) -> dict[str, TokenCounter]:
    """Use each node model's own tokenizer for estimates when it has one."""
    counters: dict[str, TokenCounter] = {}
    for node in NODES:
        model = getattr(chain, node, None)
        tokenizer = getattr(model, "tokenizer", None)
        encode = getattr(tokenizer, "encode", None)
        if callable(encode):
            counters[node] = _encode_counter(encode)
    return counters


def _solution_of(output: Any) -> tuple[str, str | None, list[str]]:
    """Return ``(solution, decomposition, sub_questions)`` of any chain output."""
    if isinstance(output, Mapping):
        solution = output.get("solution")
        if solution is None:
            solution = output.get("answer") or output.get("output") or ""
        subs = [str(s) for s in output.get("sub_questions") or []]
        return message_text(solution), output.get("decomposition"), subs
    return message_text(output), None, []


def _scrubbed(record: EvalRecord) -> EvalRecord:
    """Return ``record`` with credentials scrubbed from the texts models and APIs wrote."""
    update: dict[str, Any] = {
        name: scrub_text(value)
        for name in ("error", "decomposition", "solution", "prediction")
        if isinstance(value := getattr(record, name), str)
    }
    update["sub_questions"] = [scrub_text(q) for q in record.sub_questions]
    return record.model_copy(update=update)


def _record(task: Task, example: Example, output: Any, collector: NodeUsageCollector) -> EvalRecord:
    """Score one chain output (scored on the raw text, returned scrubbed)."""
    return _scrubbed(_raw_record(task, example, output, collector))


def _raw_record(
    task: Task, example: Example, output: Any, collector: NodeUsageCollector
) -> EvalRecord:
    record = EvalRecord(
        id=example.id,
        question=example.question,
        gold=example.answer,
        nodes=dict(collector.nodes),
        latency_s=collector.latency_s,
    )
    if isinstance(output, BaseException):
        return record.model_copy(update={"error": f"{type(output).__name__}: {output}"})
    try:
        solution, decomposition, subs = _solution_of(output)
        metrics = task.metrics(solution, example)
        update = {
            "prediction": task.extract(solution),
            "marker": extract_answer(solution) is not None,
            "score": metrics[task.metric],
            "metrics": metrics,
            "decomposition": decomposition,
            "sub_questions": subs,
            "solution": solution,
        }
    except Exception as exc:  # a malformed output fails this question only
        update = {"error": f"{type(exc).__name__}: {exc}"}
    return record.model_copy(update=update)


def _with_handler(callbacks: Any, handler: NodeUsageCollector) -> Any:
    if isinstance(callbacks, BaseCallbackManager):
        manager = callbacks.copy()
        manager.add_handler(handler, inherit=True)
        return manager
    return [*(callbacks or []), handler]


def _run_chunk(
    chain: Runnable[Any, Any],
    task: Task,
    chunk: Sequence[Example],
    counters: TokenCounter | Mapping[str, TokenCounter],
    config: RunnableConfig | None,
    max_concurrency: int | None,
) -> list[EvalRecord]:
    collectors = [NodeUsageCollector(counters) for _ in chunk]
    configs: list[RunnableConfig] = []
    for collector in collectors:
        item = RunnableConfig(**(config or {}))
        item["callbacks"] = _with_handler(item.get("callbacks"), collector)
        if max_concurrency is not None:
            item["max_concurrency"] = max_concurrency
        configs.append(item)
    inputs = [{"question": e.question, "context": e.context} for e in chunk]
    start = time.perf_counter()
    try:
        outputs = chain.batch(inputs, configs, return_exceptions=True)
    except Exception as exc:  # a chain whose batch itself breaks fails this chunk only
        outputs = [exc] * len(chunk)
    elapsed = time.perf_counter() - start
    records = []
    for example, output, collector in zip(chunk, outputs, collectors, strict=True):
        if collector.latency_s is None:
            collector.latency_s = elapsed
        records.append(_record(task, example, output, collector))
    return records


def _label(records: Sequence[EvalRecord], node: str, chain: Runnable[Any, Any]) -> str:
    seen: dict[str, int] = {}
    for record in records:
        for model in record.nodes.get(node, NodeStats()).models:
            seen[model] = seen.get(model, 0) + 1
    if seen:
        return max(seen, key=lambda m: seen[m])
    if node == "decomposer" and getattr(chain, "decomposer", "") is None:
        return "-"
    return "?"


def price_record(record: EvalRecord, prices: PriceTable) -> EvalRecord:
    """Return the record with each node's ``cost_usd`` set from the price table."""
    priced = {}
    for node, stats in record.nodes.items():
        # A node normally runs one model; its tokens are priced at that model's rate.
        model = stats.models[0] if stats.models else None
        provider = stats.providers[0] if stats.providers else None
        cost = prices.cost(model, stats.input_tokens, stats.output_tokens, provider=provider)
        priced[node] = stats.model_copy(update={"cost_usd": cost})
    return record.model_copy(update={"nodes": priced})


def summarize(
    records: Sequence[EvalRecord],
    task: Task,
    *,
    name: str,
    decomposer: str,
    solver: str,
    prices: PriceTable | None = None,
    wall_time_s: float = 0.0,
) -> EvalResult:
    """Build an :class:`EvalResult` from records (also used to re-price saved records)."""
    prices = prices or PriceTable()
    priced_records = [price_record(record, prices) for record in records]
    nodes: dict[str, NodeStats] = {}
    for record in priced_records:
        for node, stats in record.nodes.items():
            nodes[node] = nodes[node].add(stats) if node in nodes else stats
    n = len(records)
    metric_names = sorted({k for r in records for k in r.metrics} | {task.metric})
    latencies = [r.latency_s for r in records if r.latency_s is not None]

    def node_cost(node: str) -> float | None:
        return nodes[node].cost_usd if node in nodes else 0.0

    decomposition, solving = node_cost("decomposer"), node_cost("solver")
    total = None if decomposition is None or solving is None else decomposition + solving
    return EvalResult(
        name=name,
        decomposer=decomposer,
        solver=solver,
        task=task.name,
        split=task.split,
        metric=task.metric,
        n=n,
        accuracy=sum(r.score for r in records) / n if n else 0.0,
        metrics={
            m: sum(r.metrics.get(m, 0.0) for r in records) / n if n else 0.0 for m in metric_names
        },
        failures=sum(r.error is not None for r in records),
        marker_rate=sum(r.marker for r in records) / n if n else 0.0,
        mean_sub_questions=sum(len(r.sub_questions) for r in records) / n if n else 0.0,
        nodes=nodes,
        decomposition_cost_usd=decomposition,
        solving_cost_usd=solving,
        cost_per_1k_usd=None if total is None or not n else total * 1000 / n,
        tokens_estimated=any(s.estimated for s in nodes.values()),
        latency_p50_s=percentile(latencies, 50),
        latency_p95_s=percentile(latencies, 95),
        wall_time_s=wall_time_s,
        records=priced_records,
    )


def evaluate(
    chain: Runnable[Any, Any],
    task: Task,
    *,
    limit: int | None = None,
    max_concurrency: int = 8,
    batch_size: int | None = None,
    name: str | None = None,
    decomposer: str | None = None,
    solver: str | None = None,
    prices: PriceTable | None = None,
    token_counter: TokenCounter | Mapping[str, TokenCounter] | None = None,
    records_path: str | Path | None = None,
    progress: bool = True,
    config: RunnableConfig | None = None,
    on_record: Callable[[EvalRecord], None] | None = None,
) -> EvalResult:
    """Run ``chain`` on the first ``limit`` examples of ``task`` and score it.

    Args:
        chain: A :class:`~langchain_divconq.chain.DivConqChain` or any runnable taking
            ``{"question", "context"}``.
        task: The task (see :func:`~langchain_divconq.tasks.load_task`).
        limit: Evaluate the first ``limit`` examples in file order (None: all).
        max_concurrency: Most questions in flight at once; also the default batch size.
            It is passed as the config's ``max_concurrency`` only when ``batch_size`` is
            larger, because that key makes a local model give up batched generation.
        batch_size: Questions sent to ``chain.batch`` at once (progress and the records
            file advance per batch).
        name: Configuration name for reports; defaults to ``"<decomposer> / <solver>"``.
        decomposer: Decomposer label; defaults to the model name the callbacks saw.
        solver: Solver label; defaults likewise.
        prices: The price table (default :class:`~langchain_divconq.pricing.PriceTable`).
        token_counter: Counts tokens when a model reports no usage (one counter, or one
            per node); defaults to the node model's tokenizer, else words x 4/3.
        records_path: JSONL file to append records to and resume from.
        progress: Show a tqdm progress bar when tqdm is installed.
        config: Extra runnable config (callbacks, tags, metadata) for every question.
        on_record: Called with each finished record (e.g. to log or stream them).

    Returns:
        The :class:`EvalResult`; ``records`` follow the file order of the examples.

    Example:
        >>> from langchain_divconq.tasks import load_task
        >>> result = evaluate(chain, load_task("gsm8k", split="test"), limit=50)  # doctest: +SKIP
        >>> result.accuracy, result.nodes["solver"].output_tokens  # doctest: +SKIP
        (0.62, 9120)

    """
    if limit is not None and limit < 0:
        msg = f"limit must be None or >= 0, got {limit}."
        raise ValueError(msg)
    if max_concurrency < 1:
        msg = f"max_concurrency must be >= 1, got {max_concurrency}."
        raise ValueError(msg)
    prices = prices or PriceTable()
    examples = task.examples[:limit] if limit is not None else list(task.examples)
    done: dict[str, EvalRecord] = {}
    if records_path is not None:
        wanted = {e.id for e in examples}
        for record in load_records(records_path):
            if record.id in wanted and record.error is None:
                done[record.id] = record
    todo = [e for e in examples if e.id not in done]
    counters = token_counter if token_counter is not None else _node_counters(chain)
    size = batch_size or max_concurrency
    fresh: dict[str, EvalRecord] = {}
    bar = progress_bar(
        len(examples), desc=f"{task.name}/{task.split}", enabled=progress, initial=len(done)
    )
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        out = JsonlAppender(records_path) if records_path is not None else None
        if out is not None:
            stack.callback(out.close)
        stack.callback(bar.close)
        for chunk in chunks(todo, size):
            limit_calls = max_concurrency if size > max_concurrency else None
            for record in _run_chunk(chain, task, chunk, counters, config, limit_calls):
                record = price_record(record, prices)
                fresh[record.id] = record
                if out is not None:
                    # One line per question, written at once: a crash loses at most the open batch.
                    out.append(record.model_dump_json().encode("utf-8") + b"\n")
                if on_record is not None:
                    on_record(record)
            bar.update(len(chunk))
    records = [fresh.get(e.id) or done[e.id] for e in examples]
    return summarize(
        records,
        task,
        name=name
        or f"{decomposer or _label(records, 'decomposer', chain)} / "
        f"{solver or _label(records, 'solver', chain)}",
        decomposer=decomposer or _label(records, "decomposer", chain),
        solver=solver or _label(records, "solver", chain),
        prices=prices,
        wall_time_s=time.perf_counter() - started,
    )
