"""Trace stores in, datasets on disk out: what ``divconq dataset`` and ``divconq distill`` read.

:func:`iter_traces` opens a store by its spec; :data:`DATASET_INFO_FILE` is written
next to a saved dataset so that ``distill`` knows which variant it holds.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from langchain_divconq.tracing.trace import Trace

__all__ = ["DATASET_INFO_FILE", "iter_traces"]

logger = logging.getLogger(__name__)

DATASET_INFO_FILE = "divconq_dataset.json"
"""Written next to a saved dataset: variant, part, counts and the source store."""


def iter_traces(spec: str | Path) -> Iterator[Trace]:
    """Yield the traces of a store: ``traces.jsonl``, ``sqlite:///traces.db`` or a ``.db`` path.

    Records that are not valid traces (a half-written last line after a crash)
    are skipped by the store with a warning, so they never stop a training run.
    """
    from langchain_divconq.tracing.store import open_store

    text = str(spec)
    if not text.startswith("sqlite:///") and not Path(text).exists():
        msg = f"Trace store {text!r} does not exist; record traces first (divconq collect)."
        raise FileNotFoundError(msg)
    with open_store(text) as store:
        yield from store
