"""The one JSONL reader and writers: traces, evaluation records, task data and exports.

Every file written here is created owner-only (:data:`PRIVATE_FILE_MODE`) unless the
caller asks otherwise: these files hold prompts, model outputs and error texts.

One rule for torn and malformed lines everywhere: a last line without its
newline is what a crash (or a full disk) mid-write leaves behind, and every
message about it says so. Files people hand us (task data, imports) are read
``strict``: a bad line is an error naming the file and line. Files the library
appends to itself (trace stores, evaluation records) are read leniently: a bad
line is skipped with a warning and every record around it loads. Appenders
start a fresh line after a torn tail, so a record is never glued onto a fragment.

Example:
    >>> rows = [{"question": "2 + 2?", "answer": "4"}]
    >>> write_jsonl("/tmp/qa.jsonl", rows)  # doctest: +SKIP
    1
    >>> [row for _, row in read_jsonl("/tmp/qa.jsonl")]  # doctest: +SKIP
    [{'question': '2 + 2?', 'answer': '4'}]

"""

from __future__ import annotations

import json
import logging
import os
import threading
import weakref
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "FAILED_WRITE_MARK",
    "PRIVATE_FILE_MODE",
    "TORN",
    "JsonlAppender",
    "ends_torn",
    "iter_lines",
    "read_jsonl",
    "write_jsonl",
    "write_text_file",
]

logger = logging.getLogger(__name__)

TORN = " (torn last line, probably a crash mid-write)"
"""Appended to a line's ``where`` by :func:`iter_lines` when the line lacks its newline."""

FAILED_WRITE_MARK = b" <- a failed write\n"
"""Ends the fragment of a failed write that could not be removed: no JSON value ends in it."""

PRIVATE_FILE_MODE = 0o600
"""Permission bits of the files these writers create: they hold model I/O (prompts, outputs,
upstream error texts), which is nobody else's business on a shared machine."""


@contextmanager
def _locked(fd: int) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``fd`` (a no-op where ``fcntl`` is missing)."""
    if fcntl is None:
        yield
        return
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def ends_torn(path: str | os.PathLike[str]) -> bool:
    """Tell whether the file's last line lacks its newline (a write was cut off)."""
    try:
        with Path(path).open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell() == 0:
                return False
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) != b"\n"
    except FileNotFoundError:
        return False


def iter_lines(path: str | os.PathLike[str]) -> Iterator[tuple[int, bytes, str]]:
    """Yield ``(line number, raw line, where)`` for the non-blank lines of a file.

    ``where`` is ``"file:line"`` for messages, with a note when the line is torn.
    A torn last line is yielded too (callers decide); see :func:`read_jsonl`.
    """
    file = Path(path)
    with file.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{file}:{number}"
            if not line.endswith(b"\n"):
                where += TORN
            yield number, line, where


def read_jsonl(
    path: str | os.PathLike[str], *, strict: bool = True, missing_ok: bool = False
) -> Iterator[tuple[int, Any]]:
    """Yield ``(line number, parsed JSON)`` for every readable line of a JSONL file.

    Args:
        path: The file.
        strict: Raise ``ValueError`` (naming file and line) on a malformed or
            torn line; with ``False`` log a warning and skip it.
        missing_ok: Yield nothing for a missing file instead of raising.

    Raises:
        FileNotFoundError: The file does not exist (and ``missing_ok`` is false).
        ValueError: A malformed line in strict mode.

    """
    file = Path(path)
    if not file.is_file():
        if missing_ok:
            return
        msg = f"No such JSONL file: {file}. Pass the path of an existing .jsonl file."
        raise FileNotFoundError(msg)
    for number, line, where in iter_lines(file):
        try:
            yield number, json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            if strict:
                msg = f"{where} is not valid JSON ({exc}); is the file truncated or not JSONL?"
                raise ValueError(msg) from exc
            logger.warning("%s: skipping a line that is not valid JSON (%s)", where, exc)


@contextmanager
def _replacing(path: str | os.PathLike[str], mode: int) -> Iterator[Any]:
    """Yield a text handle whose content replaces ``path`` whole when the block ends.

    Written to a hidden temporary name first and renamed, so a crash never leaves
    half a file behind. The file gets ``mode``, also when it replaces a file (or a
    leftover temporary one) that had other bits.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    # A leftover partial file keeps its old bits (os.open applies mode only on creation).
    os.fchmod(fd, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        yield handle
    os.replace(partial, target)


def write_jsonl(
    path: str | os.PathLike[str],
    rows: Iterable[Mapping[str, Any]],
    *,
    mode: int = PRIVATE_FILE_MODE,
) -> int:
    """Write ``rows`` to ``path`` as JSONL, replacing it whole; return the row count.

    Atomic (a crash never leaves half a file), and owner-only unless ``mode`` says otherwise.
    """
    count = 0
    with _replacing(path, mode) as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def write_text_file(
    path: str | os.PathLike[str], text: str, *, mode: int = PRIVATE_FILE_MODE
) -> Path:
    """Write ``text`` to ``path``, replacing it whole, and return the path.

    For reports that hold model I/O (a JSON dump of records): atomic, and
    owner-only unless ``mode`` says otherwise, as :func:`write_jsonl`.
    """
    with _replacing(path, mode) as handle:
        handle.write(text)
    return Path(path)


class JsonlAppender:
    """Append whole lines to a JSONL file: one ``write`` per call on an ``O_APPEND`` file.

    Safe for several threads (a lock) and for several processes appending to the
    same file (each append also holds an advisory ``flock`` on the file, where the
    platform has one). Before the first write it checks the file's tail and
    starts a fresh line if the last one is torn (a crash mid-write).

    A write that fails (a full disk, an ``fsync`` error, an interrupt) leaves no
    record behind: the file is cut back to where that write began, so what the
    caller was told failed is never read later, and what it was told succeeded
    always is. Where the cut itself fails, the next write ends the fragment with
    :data:`FAILED_WRITE_MARK`, which keeps it from ever parsing as a record.

    Args:
        path: The file; created (with its folder) on the first write.
        fsync: Also ``fsync`` after every write (survives a power loss, slower).
        mode: Permission bits for a file this creates (owner-only by default).

    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fsync: bool = False,
        mode: int = PRIVATE_FILE_MODE,
    ) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self.mode = mode
        self._lock = threading.Lock()
        self._fd: int | None = None
        # Closes the descriptor when the appender is collected, or at interpreter
        # exit before modules are torn down (a __del__ could then find ``os`` gone).
        self._closer: weakref.finalize[[int], JsonlAppender] | None = None
        self._check_tail = True
        self._poison_tail = False

    def append(self, payload: bytes) -> None:
        """Write ``payload`` (one or more complete lines, each ending in a newline).

        Raises:
            OSError: The write failed; nothing of ``payload`` is left readable.

        """
        with self._lock:
            if self._fd is None or self._closer is None or not self._closer.alive:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, self.mode)
                self._fd, self._closer = fd, weakref.finalize(self, os.close, fd)
            fd = self._fd
            with _locked(fd):
                if self._check_tail:
                    if ends_torn(self.path):
                        payload = (FAILED_WRITE_MARK if self._poison_tail else b"\n") + payload
                    self._check_tail = self._poison_tail = False
                start = os.fstat(fd).st_size
                try:
                    view = memoryview(payload)
                    while view:
                        written = os.write(fd, view)
                        view = view[written:]
                    if self.fsync:
                        os.fsync(fd)
                except BaseException:
                    self._undo(fd, start)
                    raise

    def _undo(self, fd: int, start: int) -> None:
        """Cut the file back to ``start`` after a failed write (the file lock is held)."""
        self._check_tail = True
        try:
            if os.fstat(fd).st_size > start:
                os.ftruncate(fd, start)
                if self.fsync:
                    os.fsync(fd)
        except OSError as exc:
            self._poison_tail = True
            logger.warning(
                "%s: could not remove the fragment of a failed write (%s); the next write "
                "marks it so that it is never read as a record",
                self.path,
                exc,
            )

    def append_json(self, rows: Iterable[Any]) -> int:
        """Append each row as one JSON line in a single write; return how many."""
        lines = [json.dumps(row, ensure_ascii=False).encode("utf-8") + b"\n" for row in rows]
        if lines:
            self.append(b"".join(lines))
        return len(lines)

    def close(self) -> None:
        """Close the file descriptor (a later write reopens it)."""
        with self._lock:
            if self._closer is not None:
                self._closer()  # closes the descriptor once, however often it is called
            self._fd = self._closer = None
