"""Recording overhead of TraceRecorder and write throughput of the trace stores.

Part 1, chain overhead: the same DivConqChain over two instant fake chat models
(no model time, so only LangChain's and our overhead is measured) runs ``--runs``
questions with ``invoke`` one by one and with ``batch(max_concurrency=16)``,
without callbacks (the baseline), with a handler that does nothing (LangChain's
callback dispatch alone), and with a TraceRecorder writing to memory, to JSONL
and to SQLite. Rounds alternate between configurations, and the median
round is reported, so a busy machine skews all of them alike.

Part 2, store throughput: ``--records`` realistic traces (recorded from the chain
above, about 2 KB of JSON each) written one ``add`` at a time (what the
recorder does), and in one ``add_many``, to JSONL (with and without fsync) and
SQLite.

    python benchmarks/chain.py
    python benchmarks/chain.py --runs 500 --records 5000 --rounds 5

The last line printed is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models import FakeListChatModel

from langchain_divconq import TraceRecorder, create_divconq_chain
from langchain_divconq.tracing.store import JsonlTraceStore, SqliteTraceStore, TraceStore
from langchain_divconq.tracing.trace import Trace

DECOMPOSITION = "How many clips did Natalia sell in May?\nHow many clips did she sell in all?"
SOLUTION = "In May she sold 48 / 2 = 24 clips.\nIn all she sold 48 + 24 = 72.\nThe answer is: 72"


def _chain() -> Any:
    return create_divconq_chain(
        FakeListChatModel(responses=[DECOMPOSITION]), FakeListChatModel(responses=[SOLUTION])
    )


def _question(i: int) -> str:
    return (
        f"Natalia sold clips to {48 + i} of her friends in April, and half as many in May. Total?"
    )


def _time(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class _NoOp(BaseCallbackHandler):
    """A handler that does nothing: what LangChain's callback dispatch alone costs."""

    run_inline = True


def _handlers(name: str, store: TraceStore | None) -> list[BaseCallbackHandler]:
    if name == "no recorder":
        return []
    if name == "no-op handler":
        return [_NoOp()]
    return [TraceRecorder(store)]


def _chain_overhead(runs: int, rounds: int, folder: Path) -> dict[str, dict[str, float]]:
    chain = _chain()
    questions = [_question(i) for i in range(runs)]
    stores: dict[str, Callable[[int], TraceStore | None]] = {
        "no recorder": lambda r: None,
        "no-op handler": lambda r: None,
        "recorder, memory": lambda r: None,
        "recorder, jsonl": lambda r: JsonlTraceStore(folder / f"invoke-{r}.jsonl"),
        "recorder, sqlite": lambda r: SqliteTraceStore(folder / f"invoke-{r}.db"),
    }
    timings: dict[str, dict[str, list[float]]] = {
        name: {"invoke": [], "batch": []} for name in stores
    }
    for r in range(rounds):
        for name, make in stores.items():
            callbacks = _handlers(name, make(r))
            config: dict[str, Any] = {"callbacks": callbacks, "max_concurrency": 16}

            def loop(config: dict[str, Any] = config) -> None:
                for q in questions:
                    chain.invoke(q, config)

            timings[name]["invoke"].append(_time(loop))
            batch_callbacks = _handlers(name, make(r + 1000))
            batch_config: dict[str, Any] = {"callbacks": batch_callbacks, "max_concurrency": 16}
            timings[name]["batch"].append(_time(partial(chain.batch, questions, batch_config)))
            for handler in [*callbacks, *batch_callbacks]:
                if isinstance(handler, TraceRecorder):
                    assert handler.recorded == runs, "a trace went missing"
    return {
        name: {
            f"{mode}_us_per_run": statistics.median(values) / runs * 1e6
            for mode, values in modes.items()
        }
        for name, modes in timings.items()
    }


def _sample_trace() -> Trace:
    recorder = TraceRecorder()
    _chain().invoke(
        _question(0), {"callbacks": [recorder], "metadata": {"reference": "72", "task": "gsm8k"}}
    )
    return next(iter(recorder.store))


def _add_each(store: TraceStore, traces: list[Trace]) -> None:
    for trace in traces:
        store.add(trace)


def _throughput(records: int, folder: Path) -> dict[str, float]:
    sample = _sample_trace()
    traces = [sample.model_copy(update={"trace_id": f"t{i}"}) for i in range(records)]
    makers: dict[str, Callable[[str], TraceStore]] = {
        "jsonl": lambda tag: JsonlTraceStore(folder / f"{tag}.jsonl"),
        "jsonl+fsync": lambda tag: JsonlTraceStore(folder / f"{tag}.jsonl", fsync=True),
        "sqlite": lambda tag: SqliteTraceStore(folder / f"{tag}.db"),
    }
    results: dict[str, float] = {"record_bytes": float(len(sample.model_dump_json()))}
    for name, make in makers.items():
        n = records if name != "jsonl+fsync" else max(records // 10, 1)
        store = make(f"{name}-add")
        seconds = _time(partial(_add_each, store, traces[:n]))
        assert len(store) == n
        results[f"{name} add records/s"] = n / seconds
        if name == "jsonl+fsync":
            continue
        store = make(f"{name}-many")
        seconds = _time(partial(store.add_many, traces))
        assert len(store) == records
        results[f"{name} add_many records/s"] = records / seconds
        read = _time(partial(list, store))
        results[f"{name} read records/s"] = records / read
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=200, help="chain runs per configuration")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (the median is kept)")
    parser.add_argument("--records", type=int, default=2000, help="records per store test")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        overhead = _chain_overhead(args.runs, args.rounds, folder)
        throughput = _throughput(args.records, folder)

    base = overhead["no recorder"]
    print(f"Chain overhead, fake models, {args.runs} runs, median of {args.rounds} rounds")
    print(
        f"{'configuration':<20}{'invoke us/run':>15}{'extra':>10}{'batch us/run':>15}{'extra':>10}"
    )
    for name, row in overhead.items():
        extra_i = row["invoke_us_per_run"] - base["invoke_us_per_run"]
        extra_b = row["batch_us_per_run"] - base["batch_us_per_run"]
        print(
            f"{name:<20}{row['invoke_us_per_run']:>15.0f}{extra_i:>+10.0f}"
            f"{row['batch_us_per_run']:>15.0f}{extra_b:>+10.0f}"
        )
    print(f"\nStore throughput, {args.records} records of {throughput['record_bytes']:.0f} bytes")
    for name, value in throughput.items():
        if name != "record_bytes":
            print(f"  {name:<28}{value:>12,.0f}")
    print(
        json.dumps(
            {
                "benchmark": "chain_tracing",
                "runs": args.runs,
                "rounds": args.rounds,
                "records": args.records,
                "cpu_count": os.cpu_count(),
                "load_avg_1m": os.getloadavg()[0],
                "python": platform.python_version(),
                "overhead_us_per_run": overhead,
                "throughput": throughput,
            }
        )
    )


if __name__ == "__main__":
    main()
