"""Trace stores in, datasets on disk out: what ``divconq dataset`` and ``divconq distill`` read.

:func:`iter_traces` opens a store by its spec; :data:`DATASET_INFO_FILE` is written
next to a saved dataset so that ``distill`` knows which variant it holds.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from langchain_divconq.tracing.trace import Trace

__all__ = ["DATASET_INFO_FILE", "describe_skipped", "iter_traces"]

logger = logging.getLogger(__name__)

DATASET_INFO_FILE = "divconq_dataset.json"
"""Written next to a saved dataset: variant, part, counts and the source store."""


def iter_traces(
    spec: str | Path, *, skipped: list[tuple[str, str]] | None = None
) -> Iterator[Trace]:
    """Yield the traces of a store: ``traces.jsonl``, ``sqlite:///traces.db`` or a ``.db`` path.

    Records that are not valid traces (a half-written last line after a crash)
    are skipped by the store with a warning, so they never stop a training run;
    pass a list as ``skipped`` to get one ``(where, reason)`` pair for each
    (:func:`describe_skipped` summarises them).

    Raises:
        FileNotFoundError: The store does not exist (nothing is created); the message
            says how to create one.

    """
    from langchain_divconq.tracing.store import open_store

    # Reading never creates a store: a mistyped path is an error, not an empty database.
    with open_store(str(spec), create=False) as store:
        yield from store.read(skipped)


def describe_skipped(skipped: list[tuple[str, str]]) -> str:
    """Summarise skipped records: how many, why, and where the first ones are.

    Example:
        >>> describe_skipped([("t.jsonl:1", "not valid JSON"), ("t.jsonl:4", "not valid JSON")])
        '2 lines skipped (2 not valid JSON; first at t.jsonl:1, t.jsonl:4)'

    """
    if not skipped:
        return "no lines skipped"
    reasons = Counter(reason for _, reason in skipped)
    why = ", ".join(f"{n} {reason}" for reason, n in reasons.most_common())
    first = ", ".join(where for where, _ in skipped[:3])
    more = ", ..." if len(skipped) > 3 else ""
    noun = "line" if len(skipped) == 1 else "lines"
    return f"{len(skipped)} {noun} skipped ({why}; first at {first}{more})"
