"""Traces: the record of a chain run, its recorder, stores, usage, scoring, importers and collect.

Light to import (langchain-core and pydantic only).

Example:
    >>> from langchain_divconq import create_divconq_chain
    >>> from langchain_divconq.tracing import TraceRecorder, open_store
    >>> recorder = TraceRecorder(open_store("traces.jsonl"))  # doctest: +SKIP
    >>> chain.invoke("2 + 2?", config={"callbacks": [recorder]})  # doctest: +SKIP

"""

from langchain_divconq.tracing.import_results import BadRecord, BadRecordError, ImportResult
from langchain_divconq.tracing.importers import import_file
from langchain_divconq.tracing.recorder import REDACTED, TraceRecorder, scrub_secrets
from langchain_divconq.tracing.store import (
    JsonlTraceStore,
    MemoryTraceStore,
    SqliteTraceStore,
    TraceStore,
    open_store,
)
from langchain_divconq.tracing.trace import SCHEMA_VERSION, NodeCall, TokenUsage, Trace

__all__ = [
    "REDACTED",
    "SCHEMA_VERSION",
    "BadRecord",
    "BadRecordError",
    "ImportResult",
    "JsonlTraceStore",
    "MemoryTraceStore",
    "NodeCall",
    "SqliteTraceStore",
    "TokenUsage",
    "Trace",
    "TraceRecorder",
    "TraceStore",
    "import_file",
    "open_store",
    "scrub_secrets",
]
