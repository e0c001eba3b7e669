"""Evaluation: run a chain over a task, score decompositions, price tokens, write the report.

Example:
    >>> from langchain_divconq.evaluation import evaluate
    >>> from langchain_divconq.tasks import load_task
    >>> result = evaluate(chain, load_task("gsm8k"), limit=20)  # doctest: +SKIP
    >>> result.accuracy  # doctest: +SKIP
    0.55

"""

from langchain_divconq.evaluation.evaluator import (
    EvalRecord,
    EvalResult,
    evaluate,
    load_records,
    percentile,
    price_record,
    summarize,
)
from langchain_divconq.evaluation.pricing import ModelPrice, PriceTable

__all__ = [
    "EvalRecord",
    "EvalResult",
    "ModelPrice",
    "PriceTable",
    "evaluate",
    "load_records",
    "percentile",
    "price_record",
    "summarize",
]
