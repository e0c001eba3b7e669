"""Durable trace stores: append-only JSONL (the default) and SQLite (several writers).

Every store holds :class:`~langchain_divconq.trace.Trace` records, yields them
in write order when iterated, knows its ``len()`` and filters on tags,
metadata, model, source and correctness. Writers never rewrite what is already
there, so a crash can at worst lose the record being written:

* :class:`JsonlTraceStore` writes each record whole, as one line, in a single
  ``write()`` on an ``O_APPEND`` descriptor (optionally ``fsync``-ed). A torn
  last line left by a crash is skipped with a warning when reading.
* :class:`SqliteTraceStore` commits each record in its own WAL transaction
  with a busy timeout, so several processes can write one file at once.

Example:
    >>> from langchain_divconq.tracing.store import open_store
    >>> store = open_store("traces.jsonl")  # doctest: +SKIP
    >>> [t.question for t in store.filter(source="gsm8k-socratic", correct=True)]  # doctest: +SKIP

"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from pydantic import ValidationError

from langchain_divconq.jsonl import JsonlAppender, iter_lines
from langchain_divconq.tracing.trace import SCHEMA_VERSION, Trace

__all__ = [
    "SKIP_REASONS",
    "TRACE_FILE_MODE",
    "JsonlTraceStore",
    "MemoryTraceStore",
    "SqliteTraceStore",
    "TraceStore",
    "matches",
    "open_store",
]

logger = logging.getLogger(__name__)

TRACE_FILE_MODE = 0o600
"""Permission bits of trace files this package creates: traces hold prompts and outputs,
so only their owner may read them. Existing files keep their mode."""

_SQLITE_PREFIX = "sqlite:///"
_SQLITE_SUFFIXES = {".db", ".sqlite", ".sqlite3"}
_JSONL_SUFFIXES = {".jsonl", ".ndjson"}


def matches(
    trace: Trace,
    *,
    tags: Iterable[str] | None = None,
    metadata: Mapping[str, Any] | None = None,
    model: str | None = None,
    source: str | Collection[str] | None = None,
    correct: bool | None = None,
    ok: bool | None = None,
) -> bool:
    """Return True when a trace passes every filter that is set.

    Args:
        trace: The trace to test.
        tags: Every one of these tags must be on the trace.
        metadata: Every key must be in the trace's metadata with an equal value.
        model: The decomposer's or the solver's model name must equal this.
        source: The trace's source (``recorded``, ``gsm8k-socratic``, ...), or one of several.
        correct: True keeps runs scored correct, False runs scored wrong; unscored
            traces pass neither.
        ok: True keeps runs without an error, False only failed runs.

    Example:
        >>> t = Trace(question="Q?", tags=["a"], score=1.0)
        >>> matches(t, tags=["a"], correct=True), matches(t, correct=False)
        (True, False)

    """
    if tags is not None and not set(tags) <= set(trace.tags):
        return False
    if metadata is not None:
        for key, value in metadata.items():
            if key not in trace.metadata or trace.metadata[key] != value:
                return False
    if model is not None:
        names = {node.model_name for node in (trace.decomposer, trace.solver) if node is not None}
        if model not in names:
            return False
    if source is not None:
        allowed = {source} if isinstance(source, str) else set(source)
        if trace.source not in allowed:
            return False
    if correct is not None and trace.correct is not correct:
        return False
    return ok is None or (trace.error is None) is ok


class TraceStore(ABC):
    """A durable collection of traces: add, iterate in write order, filter, count.

    Stores are thread-safe and usable as context managers (``close`` on exit).
    """

    @abstractmethod
    def add(self, trace: Trace) -> None:
        """Write one trace durably (it is readable once this returns)."""

    def add_many(self, traces: Iterable[Trace]) -> int:
        """Write several traces; returns how many were written."""
        count = 0
        for trace in traces:
            self.add(trace)
            count += 1
        return count

    @abstractmethod
    def __iter__(self) -> Iterator[Trace]:
        """Yield every readable trace, oldest first."""

    def read(self, skipped: list[tuple[str, str]] | None = None) -> Iterator[Trace]:
        """Yield every readable trace, oldest first, noting the records that were not.

        Args:
            skipped: When given, gets one ``(where, reason)`` pair per stored record
                that was skipped (``"file:line"`` and one of :data:`SKIP_REASONS`).

        """
        yield from self

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def filter(self, **filters: Any) -> Iterator[Trace]:
        """Yield the traces that pass :func:`matches` with these keyword filters.

        Example:
            >>> store = MemoryTraceStore([Trace(question="Q?", source="strategyqa")])
            >>> len(list(store.filter(source="strategyqa")))
            1

        """
        for trace in self:
            if matches(trace, **filters):
                yield trace

    def trace_ids(self) -> set[str]:
        """Return the ids of every stored trace (importers use it to stay idempotent)."""
        return {trace.trace_id for trace in self}

    def close(self) -> None:  # noqa: B027 - optional hook, most stores hold nothing
        """Release files or connections; the store may be reopened by creating it again."""

    def __enter__(self) -> TraceStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class MemoryTraceStore(TraceStore):
    """Keep traces in a list (tests, notebooks); nothing survives the process.

    Example:
        >>> store = MemoryTraceStore()
        >>> store.add(Trace(question="Q?"))
        >>> len(store)
        1

    """

    def __init__(self, traces: Iterable[Trace] = ()) -> None:
        self._lock = threading.Lock()
        self.traces: list[Trace] = list(traces)

    def add(self, trace: Trace) -> None:
        """Append the trace."""
        with self._lock:
            self.traces.append(trace)

    def __iter__(self) -> Iterator[Trace]:
        with self._lock:
            snapshot = list(self.traces)
        return iter(snapshot)

    def __len__(self) -> int:
        return len(self.traces)


SKIP_REASONS = ("not valid JSON", "not a valid trace", "of a newer schema")
"""Why a stored record can be skipped when reading (see :meth:`TraceStore.read`)."""


def _parse_line(
    line: bytes, where: str, skipped: list[tuple[str, str]] | None = None
) -> Trace | None:
    try:
        trace = Trace.model_validate_json(line)
    except (ValidationError, ValueError) as exc:
        invalid_json = isinstance(exc, ValidationError) and any(
            error["type"] == "json_invalid" for error in exc.errors()
        )
        if skipped is not None:
            skipped.append((where, SKIP_REASONS[0] if invalid_json else SKIP_REASONS[1]))
        logger.warning("%s: skipping a record that is not a valid trace (%s)", where, exc)
        return None
    if trace.schema_version > SCHEMA_VERSION:
        if skipped is not None:
            skipped.append((where, SKIP_REASONS[2]))
        logger.warning(
            "%s: skipping a trace of schema version %d; this version reads <= %d "
            "(upgrade langchain-divconq)",
            where,
            trace.schema_version,
            SCHEMA_VERSION,
        )
        return None
    return trace


class JsonlTraceStore(TraceStore):
    """Append-only JSONL store: one trace per line, each written whole and flushed.

    Safe for several threads (a lock) and, because every record is one
    ``write()`` on an ``O_APPEND`` file, for several processes appending to the
    same file. Reading skips a torn line (a crash mid-write) with a warning and
    loads every record around it.

    Args:
        path: The ``.jsonl`` file; created (with its folder) on the first write.
        fsync: Also ``fsync`` after every record, so it survives a power loss,
            not only a process crash (slower).

    Example:
        >>> store = JsonlTraceStore("traces.jsonl")  # doctest: +SKIP
        >>> store.add(Trace(question="2 + 2?", answer="4"))  # doctest: +SKIP

    """

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = False) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self._file = JsonlAppender(self.path, fsync=fsync, mode=TRACE_FILE_MODE)

    def __repr__(self) -> str:
        return f"JsonlTraceStore({str(self.path)!r})"

    def add(self, trace: Trace) -> None:
        """Append one trace as a single line."""
        self._file.append(trace.model_dump_json().encode("utf-8") + b"\n")

    def add_many(self, traces: Iterable[Trace]) -> int:
        """Append several traces, each still a whole line (written in one call)."""
        lines = [trace.model_dump_json().encode("utf-8") + b"\n" for trace in traces]
        if lines:
            self._file.append(b"".join(lines))
        return len(lines)

    def __iter__(self) -> Iterator[Trace]:
        return self.read()

    def read(self, skipped: list[tuple[str, str]] | None = None) -> Iterator[Trace]:
        """Yield every readable trace; see :meth:`TraceStore.read`."""
        if not self.path.exists():
            return
        for _, line, where in iter_lines(self.path):
            trace = _parse_line(line, where, skipped)
            if trace is not None:
                yield trace

    def close(self) -> None:
        """Close the file descriptor (a later ``add`` reopens it)."""
        self._file.close()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS traces (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    trace_id TEXT NOT NULL UNIQUE,
    source TEXT NOT NULL,
    question TEXT NOT NULL,
    decomposer_model TEXT,
    solver_model TEXT,
    score REAL,
    error INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS traces_source ON traces (source);
"""


def _row(trace: Trace) -> tuple[Any, ...]:
    return (
        trace.trace_id,
        trace.source,
        trace.question,
        trace.decomposer.model_name if trace.decomposer else None,
        trace.solver.model_name if trace.solver else None,
        trace.score,
        int(trace.error is not None),
        trace.created_at.isoformat(),
        trace.model_dump_json(),
    )


class SqliteTraceStore(TraceStore):
    """SQLite store in WAL mode: several threads and processes can write at once.

    Each ``add`` is one short ``BEGIN IMMEDIATE`` transaction; writers wait for
    each other up to ``timeout_s`` (SQLite's busy timeout). Writing a trace id
    that is already stored replaces that record. Source, model and correctness
    filters run in SQL.

    Args:
        path: The database file (created with its folder), or ``:memory:``.
        timeout_s: How long a writer waits for a lock held by another process.
        synchronous: SQLite ``synchronous`` pragma: ``NORMAL`` (safe against
            process crashes in WAL mode) or ``FULL`` (also against power loss).
        create: Create the database when it is missing; with False (readers), a
            missing file raises ``FileNotFoundError`` and nothing is created.

    Example:
        >>> store = SqliteTraceStore("traces.db")  # doctest: +SKIP
        >>> len(store)  # doctest: +SKIP
        0

    """

    _PAGE = 500

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        timeout_s: float = 60.0,
        synchronous: str = "NORMAL",
        create: bool = True,
    ) -> None:
        if synchronous.upper() not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
            msg = f"synchronous must be NORMAL or FULL (or OFF/EXTRA), got {synchronous!r}."
            raise ValueError(msg)
        self.path = Path(path) if str(path) != ":memory:" else None
        if self.path is not None and not create and not self.path.is_file():
            raise FileNotFoundError(_missing_message(str(path), self.path))
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Create it private; SQLite gives its -wal and -shm files the same mode.
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, TRACE_FILE_MODE))
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(
            str(self.path) if self.path else ":memory:",
            timeout=timeout_s,
            isolation_level=None,
            check_same_thread=False,
        )
        self._conn.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
        self._retry(lambda: self._conn.execute("PRAGMA journal_mode = WAL"))
        self._conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        self._retry(lambda: self._conn.executescript(_SCHEMA))

    def __repr__(self) -> str:
        return f"SqliteTraceStore({str(self.path or ':memory:')!r})"

    def _retry(self, action: Any) -> Any:
        # Switching to WAL and creating the table take locks that the busy
        # handler does not always wait for when several processes start at once.
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                return action()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                if time.monotonic() > deadline:
                    msg = (
                        f"SQLite trace store {self.path} stayed locked for {self.timeout_s}s "
                        f"({exc}); another process holds it. Raise timeout_s or retry."
                    )
                    raise TimeoutError(msg) from exc
                time.sleep(0.01)

    def _insert(self, rows: list[tuple[Any, ...]]) -> None:
        def run() -> None:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(
                    "INSERT OR REPLACE INTO traces (trace_id, source, question, "
                    "decomposer_model, solver_model, score, error, created_at, data) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

        with self._lock:
            self._retry(run)

    def add(self, trace: Trace) -> None:
        """Insert one trace in its own transaction."""
        self._insert([_row(trace)])

    def add_many(self, traces: Iterable[Trace]) -> int:
        """Insert several traces in one transaction."""
        rows = [_row(trace) for trace in traces]
        if rows:
            self._insert(rows)
        return len(rows)

    def _select(
        self,
        where: str = "",
        params: tuple[Any, ...] = (),
        skipped: list[tuple[str, str]] | None = None,
    ) -> Iterator[Trace]:
        # Page by sequence number so no read transaction stays open while the
        # caller works, and writers are never blocked by a slow reader.
        last = 0
        clause = f" AND ({where})" if where else ""
        while True:
            with self._lock:
                rows = self._conn.execute(
                    f"SELECT seq, data FROM traces WHERE seq > ?{clause} "
                    f"ORDER BY seq LIMIT {self._PAGE}",
                    (last, *params),
                ).fetchall()
            for seq, data in rows:
                trace = _parse_line(data.encode("utf-8"), f"{self.path}#{seq}", skipped)
                if trace is not None:
                    yield trace
            if len(rows) < self._PAGE:
                return
            last = rows[-1][0]

    def __iter__(self) -> Iterator[Trace]:
        return self._select()

    def read(self, skipped: list[tuple[str, str]] | None = None) -> Iterator[Trace]:
        """Yield every readable trace; see :meth:`TraceStore.read`."""
        return self._select(skipped=skipped)

    def __len__(self) -> int:
        with self._lock:
            (count,) = self._conn.execute("SELECT COUNT(*) FROM traces").fetchone()
        return int(count)

    def trace_ids(self) -> set[str]:
        """Return the ids of every stored trace."""
        with self._lock:
            return {row[0] for row in self._conn.execute("SELECT trace_id FROM traces")}

    def filter(self, **filters: Any) -> Iterator[Trace]:
        """Like :meth:`TraceStore.filter`; source, model and correctness are filtered in SQL."""
        clauses: list[str] = []
        params: list[Any] = []
        source = filters.get("source")
        if source is not None:
            allowed = [source] if isinstance(source, str) else list(source)
            clauses.append(f"source IN ({', '.join('?' * len(allowed))})")
            params.extend(allowed)
        if filters.get("model") is not None:
            clauses.append("(decomposer_model = ? OR solver_model = ?)")
            params.extend([filters["model"]] * 2)
        if filters.get("correct") is True:
            clauses.append("score >= 1.0")
        elif filters.get("correct") is False:
            clauses.append("score < 1.0")
        for trace in self._select(" AND ".join(clauses), tuple(params)):
            if matches(trace, **filters):
                yield trace

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()


def _missing_message(spec: str, path: Path) -> str:
    msg = (
        f"Trace store {spec!r} does not exist (no file {path.absolute()}). Create one by "
        f"recording traces (divconq collect --task TASK --store {spec}) or importing them "
        f"(divconq import gsm8k-socratic FILE --store {spec})"
    )
    if spec.startswith(_SQLITE_PREFIX):
        msg += (
            "; in a SQLite URL the path follows 'sqlite:///' (sqlite:///traces.db is "
            "./traces.db, sqlite:////data/t.db is /data/t.db)"
        )
    return msg + "."


def open_store(
    spec: str | os.PathLike[str] | TraceStore, *, create: bool = True, **options: Any
) -> TraceStore:
    """Open a trace store from a path or URL.

    Args:
        spec: ``"traces.jsonl"`` (JSONL), ``"sqlite:///traces.db"`` or a ``.db``/
            ``.sqlite`` path (SQLite), or a store, returned as is.
        create: Writers leave it True (a JSONL file is created on the first write, a
            SQLite database at once). Readers pass False: a missing store is then a
            ``FileNotFoundError`` saying how to create one, and no file is created.
        **options: Passed to the store's constructor (``fsync=True``, ``timeout_s=...``).

    Returns:
        The store.

    Raises:
        ValueError: When the kind of store cannot be told from ``spec``.
        FileNotFoundError: ``create=False`` and the store does not exist.

    Example:
        >>> open_store("sqlite:///runs/traces.db")  # doctest: +SKIP
        SqliteTraceStore('runs/traces.db')

    """
    if isinstance(spec, TraceStore):
        return spec
    text = os.fspath(spec)
    path = text[len(_SQLITE_PREFIX) :] if text.startswith(_SQLITE_PREFIX) else text
    suffix = Path(path).suffix.lower()
    sqlite = text.startswith(_SQLITE_PREFIX) or suffix in _SQLITE_SUFFIXES
    if not sqlite and suffix not in _JSONL_SUFFIXES:
        msg = (
            f"Cannot tell which trace store {text!r} is. Use a '.jsonl' path for the JSONL "
            "store, or 'sqlite:///path.db' (or a '.db'/'.sqlite' path) for SQLite."
        )
        raise ValueError(msg)
    if not create and path != ":memory:" and not Path(path).is_file():
        raise FileNotFoundError(_missing_message(text, Path(path)))
    if sqlite:
        return SqliteTraceStore(path, create=create, **options)
    return JsonlTraceStore(path, **options)
