"""Record chain runs as traces for distillation, fully offline.

    python examples/collect_traces.py                          # three built-in questions
    python examples/collect_traces.py --task gsm8k --limit 20  # GSM8K train from ../shared/data

Each run becomes one ``Trace`` in ``traces.jsonl``: the sub-questions, the solution,
the extracted answer, each node's prompt, output, tokens and latency, and a score
against the gold answer passed as the run's ``reference`` metadata. The embedded
decomposer and the embedded model as the solver stand in for a real teacher; in use,
pass the teacher's models to ``create_divconq_chain``. Then:

    divconq dataset --store traces.jsonl --variant SD-R --out data/sd-r
    divconq distill --config sd_r --dataset data/sd-r

``divconq collect`` does the same at scale (resumable, concurrent).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from langchain_divconq import TraceRecorder, create_divconq_chain

QUESTIONS = [
    (
        "Natalia sold clips to 48 of her friends in April, and then she sold half as many "
        "clips in May. How many clips did Natalia sell altogether in April and May?",
        "72",
    ),
    (
        "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of "
        "babysitting. How much did she earn?",
        "10",
    ),
    (
        "A robe takes 2 bolts of blue fiber and half that much white fiber. "
        "How many bolts in total does it take?",
        "3",
    ),
]


def record(chain: Any, examples: Sequence[tuple[Any, str]], store: str) -> TraceRecorder:
    """Run ``chain`` on (input, gold answer) pairs, one trace each into ``store``."""
    recorder = TraceRecorder(store)
    configs = [{"callbacks": [recorder], "metadata": {"reference": ref}} for _, ref in examples]
    # batch(): each stage runs as one batched generate call on local models.
    chain.batch([inputs for inputs, _ in examples], configs)
    return recorder


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Record chain runs as traces.")
    parser.add_argument("--store", default="traces.jsonl", help="traces.jsonl or sqlite:///t.db")
    parser.add_argument("--task", default=None, help="read questions from a task (e.g. gsm8k)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--limit", type=int, default=10)
    parser.add_argument("--data-dir", default=None, help="data root (default ../shared/data)")
    args = parser.parse_args(argv)

    examples: list[tuple[Any, str]] = list(QUESTIONS)
    if args.task:
        from langchain_divconq.tasks import load_task

        task = load_task(args.task, split=args.split, data_dir=args.data_dir)
        examples = [
            ({"question": ex.question, "context": ex.context}, ex.answer)
            for ex in task.examples[: args.limit]
        ]

    from langchain_divconq.local import load_decomposer, load_local_model

    decomposer = load_decomposer()
    chain = create_divconq_chain(decomposer, load_local_model(max_tokens=256))
    recorder = record(chain, examples, args.store)
    for trace in recorder.store.read():
        print(
            f"score {trace.score}  {len(trace.sub_questions)} sub-questions  {trace.question[:60]}"
        )
    print(f"{recorder.recorded} traces -> {args.store}")
    recorder.store.close()


if __name__ == "__main__":
    main()
