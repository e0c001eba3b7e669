"""What an import reports: the bad records it skipped (or stopped at) and its counts.

Every importer reads a file record by record. A record that cannot become a
trace is a :class:`BadRecord`, located the way a user finds it again: ``line 7``
(1-based) in a JSONL file, ``run 3 (index 2)`` in a JSON array (the third
element, ``data[2]``). Importers either stop at the first one, raising
:class:`BadRecordError` (a ``ValueError``), or, when handed a list, skip it and
note it there; :class:`ImportResult` is what
:func:`~langchain_divconq.tracing.importers.import_file` (``divconq import``)
returns.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_divconq.jsonl import TORN, iter_lines

__all__ = ["BadRecord", "BadRecordError", "ImportResult"]

logger = logging.getLogger(__name__)

_NAMESPACE = uuid.UUID("6f1d3c1e-5b8a-4c59-9f0e-3d1f7a2b9c44")
SHOWN_ERRORS = 5
"""How many bad records a summary lists; the rest are counted."""
_SHOWN_CHARS = 240


@dataclass(frozen=True)
class BadRecord:
    """One record of an imported file that could not become a trace.

    Example:
        >>> str(BadRecord.at_line(7, "not valid JSON"))
        'line 7: not valid JSON'
        >>> str(BadRecord.at_index(2, "not a run"))
        'run 3 (index 2): not a run'

    """

    where: str
    """Where it is, for people: ``line 7`` (JSONL, 1-based) or ``run 3 (index 2)`` (JSON array)."""
    message: str
    """What is wrong with it."""
    line: int | None = None
    """Its 1-based line number in a JSONL file."""
    index: int | None = None
    """Its 0-based position in a JSON array (the run is number ``index + 1``)."""
    hint: str | None = None
    """How to fix it, where that is the same for many records (a summary says it once)."""

    @classmethod
    def at_line(cls, line: int, message: str) -> BadRecord:
        """Locate a bad record on 1-based ``line`` of a JSONL file."""
        return cls(where=f"line {line}", message=message, line=line)

    @classmethod
    def at_index(cls, index: int, message: str, noun: str = "run") -> BadRecord:
        """Locate a bad element ``data[index]`` of a JSON array (``run 3 (index 2)``)."""
        return cls(where=f"{noun} {index + 1} (index {index})", message=message, index=index)

    @property
    def text(self) -> str:
        """The message and, if any, the hint."""
        return f"{self.message.rstrip('.')}. {self.hint}" if self.hint else self.message

    def located(self, path: str | os.PathLike[str]) -> str:
        """Return the text with its file: ``data.jsonl:7: ...`` or ``runs.json run 3 ...``."""
        if self.line is not None:
            return f"{os.fspath(path)}:{self.line}: {self.text}"
        return f"{os.fspath(path)} {self.where}: {self.text}"

    def with_message(self, message: str, hint: str | None = None) -> BadRecord:
        """Return the same place with another message (and hint)."""
        return BadRecord(self.where, message, line=self.line, index=self.index, hint=hint)

    def __str__(self) -> str:
        return f"{self.where}: {self.text}"


class BadRecordError(ValueError):
    """Raised by an importer at the first bad record when it was not asked to skip them.

    A ``ValueError`` (as importers raised before they could skip), with the
    structured :class:`BadRecord` in ``record`` and the file in ``path``.
    """

    def __init__(self, path: str | os.PathLike[str], record: BadRecord) -> None:
        super().__init__(record.located(path))
        self.path = os.fspath(path)
        self.record = record


def reject(
    path: str | os.PathLike[str], record: BadRecord, skipped: list[BadRecord] | None
) -> None:
    """Stop at ``record`` (``skipped is None``) or note it in ``skipped`` and go on.

    Raises:
        BadRecordError: When ``skipped`` is None.

    """
    if skipped is None:
        raise BadRecordError(path, record)
    # INFO, not WARNING: a file can have thousands; the caller prints a capped summary
    # and ``divconq -v`` shows every one.
    logger.info("skipped %s", record.located(path))
    skipped.append(record)


def check_limit(limit: int | None) -> None:
    """Reject a negative ``limit`` (``None`` means no limit)."""
    if limit is not None and limit < 0:
        msg = f"limit must be >= 0 or None, got {limit}."
        raise ValueError(msg)


def jsonl_records(
    path: str | os.PathLike[str], limit: int | None, skipped: list[BadRecord] | None
) -> Iterator[tuple[int, str, Any]]:
    """Yield ``(line number, raw line, parsed JSON)`` of a JSONL file, rejecting bad JSON.

    ``limit`` counts the records read, bad ones included (``--limit 100`` reads the
    first 100 non-blank lines).
    """
    check_limit(limit)
    file = Path(path)
    if not file.is_file():
        msg = f"No such file to import: {file}. Pass the path of a .jsonl file."
        raise FileNotFoundError(msg)
    for count, (number, line, where) in enumerate(iter_lines(file)):
        if limit is not None and count >= limit:
            return
        try:
            raw = line.decode("utf-8").strip()
            row = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            torn = TORN if where.endswith(TORN) else ""
            reject(file, BadRecord.at_line(number, f"not valid JSON ({exc}){torn}"), skipped)
            continue
        yield number, raw, row


def trace_id(source: str, raw: str) -> str:
    """Derive a stable trace id for an imported record (importing twice adds nothing)."""
    digest = hashlib.sha256(raw.encode("utf-8")).hexdigest()
    return uuid.uuid5(_NAMESPACE, f"{source}:{digest}").hex


@dataclass
class ImportResult:
    """What one import did: traces written, records already there, bad records.

    Example:
        >>> result = ImportResult("f.jsonl", imported=3, errors=[BadRecord.at_line(2, "bad")])
        >>> result.summary()
        'imported 3, skipped 1 (line 2: bad)'

    """

    path: str
    """The imported file."""
    imported: int = 0
    """Traces written to the store."""
    duplicates: int = 0
    """Good records not written because their trace was already in the store (or earlier
    in the file): importing a file twice adds nothing."""
    errors: list[BadRecord] = field(default_factory=list)
    """The bad records, in file order (with ``stopped``, only the one that stopped it)."""
    stopped: bool = False
    """A strict import met a bad record and wrote nothing (``imported`` is 0)."""

    @property
    def skipped(self) -> int:
        """How many records were bad."""
        return len(self.errors)

    @property
    def ok(self) -> bool:
        """True when every record was imported (or already there)."""
        return not self.errors

    def summary(self, max_errors: int = SHOWN_ERRORS, *, what: str = "") -> str:
        """Say it in one line: ``imported N, skipped M (line 7: ...; line 12: ...; and 3 more)``.

        Args:
            max_errors: List at most this many bad records (each cut to a few hundred
                characters); the rest are counted.
            what: Said after the count (``" traces into t.jsonl"``).

        """
        if self.stopped:
            first = self.errors[0]
            text = (
                f"stopped at {first.where} (strict): {_cut(first.message)}; nothing imported "
                "(a strict import writes a file whole or not at all)"
            )
            return f"{text}. {first.hint}" if first.hint else text
        text = f"imported {self.imported}{what}"
        if self.duplicates:
            text += f", {self.duplicates} already there"
        if not self.errors:
            return text
        shown = "; ".join(f"{e.where}: {_cut(e.message)}" for e in self.errors[:max_errors])
        more = len(self.errors) - max_errors
        if more > 0:
            shown += f"; and {more} more"
        line = f"{text}, skipped {len(self.errors)} ({shown})"
        hints = dict.fromkeys(e.hint for e in self.errors if e.hint)  # each once, in order
        return f"{line}. {' '.join(hints)}" if hints else line


def _cut(text: str) -> str:
    text = " ".join(text.split()).rstrip(".")
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def in_file_order(errors: list[BadRecord]) -> list[BadRecord]:
    """Sort bad records by where they are in the file (stable)."""
    return sorted(errors, key=lambda e: e.line if e.line is not None else (e.index or 0) + 1)
