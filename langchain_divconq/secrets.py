"""The one scrubber of credentials: traces, evaluation records, HTTP error bodies and logs.

Upstream APIs quote what they were sent (``Authorization: Bearer sk-...``, a URL
with ``?key=...``), so any error text, prompt or model output may hold a key.
Everything the library writes down or sends back passes through
:func:`scrub_text` (free text) or :func:`scrub_secrets` (structured data), and
log records through :class:`SecretsFilter`.

Shapes caught: ``Bearer <token>``; named values (``api_key=``, ``api-key:``,
``apikey``, ``x-api-key:``, ``Authorization:``, ``password=``, ``client_secret=``,
and, when the value looks like a credential, ``token=`` and ``secret=``); keys
by their look (``sk-...``, ``sk-proj-...``, ``sk-ant-...``, ``hf_...``, ``ghp_...``,
AWS and Google keys, JWTs); secrets in URLs (``?key=...``, ``&access_token=...``,
``https://user:pass@host``).

Example:
    >>> scrub_text("401: Authorization: Bearer sk-proj-abcdefghij at https://u:pw@h/x?key=k123")
    '401: Authorization: [REDACTED] at https://[REDACTED]@h/x?key=[REDACTED]'

"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator, Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any
from uuid import UUID

from pydantic import BaseModel

__all__ = [
    "REDACTED",
    "SecretsFilter",
    "scrub_log_record",
    "scrub_secrets",
    "scrub_text",
    "scrubbed_logging",
]

REDACTED = "[REDACTED]"
"""What a secret is replaced with."""

# A mapping key that names a secret: its whole value goes, whatever it looks like.
_SECRET_KEY = re.compile(
    r"api[_-]?key|apikey|secret|passw|authoriz|(^|[_-])auth($|[_-])|credential|cookie|"
    r"bearer|(^|[_-])token$|access[_-]?token|refresh[_-]?token|session[_-]?(key|id)|"
    r"private[_-]?key|signature",
    re.IGNORECASE,
)
# Strings that are credentials by their look alone.
_SECRET_VALUE = re.compile(
    r"\b(?:sk|rk|pk)-[A-Za-z0-9_\-]{8,}|\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{8,}|"
    r"\bBearer\s+[A-Za-z0-9._~+/=\-]{8,}|"
    r"\bxox[abprs]-[A-Za-z0-9\-]{8,}|\bgh[pousr]_[A-Za-z0-9]{16,}|\bgithub_pat_\w{16,}|"
    r"\bglpat-[A-Za-z0-9_\-]{16,}|\bhf_[A-Za-z0-9]{16,}|"
    r"\bAKIA[0-9A-Z]{16}\b|\bAIza[0-9A-Za-z_\-]{20,}|"
    # A JWT. It starts only where a run of its characters starts: a start inside the
    # run would scan the rest of it again ("eyJ-eyJ-..." took quadratic time).
    r"(?<![A-Za-z0-9_\-])eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}",
)
# Where a named value ends: whitespace, quotes, separators and brackets (so JSON,
# Python reprs, headers and query strings keep their shape around the redaction).
_VALUE = r"[^\s\"'`,;&<>(){}\[\]]"
_SEPARATOR = r"(?P<sep>[\"']?\s*[:=]\s*[\"']?)"
# A secret named in free text: ``api_key=...``, ``"password": "..."``,
# ``Authorization: Basic ...``. The name and separator stay, the value goes. A name
# may follow an underscore (``OPENAI_API_KEY=``), not a letter or digit.
_SECRET_ASSIGNMENT = re.compile(
    r"(?P<name>(?<![A-Za-z0-9])(?:"
    r"(?:x-)?api[_-]?key|apikey|(?:access|refresh|auth|id|session|x-auth)[_-]?token|"
    r"client[_-]?secret|secret[_-]?(?:access[_-]?)?key|private[_-]?key|password|passwd|"
    r"(?:proxy-)?authorization))"
    rf"{_SEPARATOR}"
    rf"(?P<value>(?:(?:Basic|Bearer|Token|Digest)\s+)?{_VALUE}{{3,}})",
    re.IGNORECASE,
)
# ``token`` and ``secret`` are ordinary words too ("secret: practice"), so their
# value goes only when it looks like a credential (see _looks_like_credential).
_LOOSE_ASSIGNMENT = re.compile(
    rf"(?P<name>(?<![A-Za-z0-9])(?:token|secret)){_SEPARATOR}(?P<value>{_VALUE}{{8,}})",
    re.IGNORECASE,
)
# A URL query parameter whose name says it carries a credential: ``?key=...``,
# ``&access_token=...``, ``&sig=...``.
_URL_PARAMETER = re.compile(
    r"(?P<name>[?&](?:[A-Za-z0-9_.\-]{0,40}?"
    r"(?:key|token|secret|passw|pwd|sig(?:nature)?(?==)|auth(?!or)|credential)"
    r"[A-Za-z0-9_.\-]{0,40})=)(?P<value>[^\s&#\"'<>]+)",
    re.IGNORECASE,
)
# Credentials in a URL: ``https://user:password@host``. The scheme is short and starts
# a run of scheme characters: an unbounded one made "sk-sk-sk-..." take quadratic time.
_URL_CREDENTIALS = re.compile(
    r"(?P<scheme>(?<![a-z0-9+.\-])[a-z][a-z0-9+.\-]{0,31}://)[^\s/@:]+:[^\s/@]+@", re.I
)
_MAX_DEPTH = 8


@lru_cache(maxsize=4096)
def _is_secret_key(name: str) -> bool:
    return _SECRET_KEY.search(name) is not None


def _looks_like_credential(value: str) -> bool:
    """Tell a token (``abcd1234efgh5678``) from a word: letters and digits mixed, or long."""
    has_digit = any(c.isdigit() for c in value)
    has_letter = any(c.isalpha() for c in value)
    return (has_digit and has_letter) or len(value) >= 24


def _redact_loose(match: re.Match[str]) -> str:
    if not _looks_like_credential(match["value"]):
        return match[0]
    return f"{match['name']}{match['sep']}{REDACTED}"


def scrub_text(text: str) -> str:
    """Replace credentials inside free text (error messages, prompts, outputs) by :data:`REDACTED`.

    Catches key-shaped strings (``sk-...``, ``Bearer ...``, ``hf_...``, JWTs),
    values named as secrets (``api_key=...``, ``"password": "..."``,
    ``Authorization: Basic ...``, ``token=abcd1234...``), credentials in URL
    queries (``?key=...``) and passwords in URLs (``https://user:pw@host``).
    Runs in linear time, and scrubbing twice changes nothing more.

    Example:
        >>> scrub_text("401 for Authorization: Bearer sk-abcdefghijkl at https://u:pw@h/x")
        '401 for Authorization: [REDACTED] at https://[REDACTED]@h/x'

    """
    if not text:
        return text
    text = _SECRET_ASSIGNMENT.sub(lambda m: f"{m['name']}{m['sep']}{REDACTED}", text)
    text = _LOOSE_ASSIGNMENT.sub(_redact_loose, text)
    text = _URL_PARAMETER.sub(lambda m: f"{m['name']}{REDACTED}", text)
    text = _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{REDACTED}@", text)
    return _SECRET_VALUE.sub(REDACTED, text)


def scrub_secrets(value: Any, *, values: bool = True, _depth: int = 0) -> Any:
    """Return a JSON-safe copy of ``value`` with secrets replaced by :data:`REDACTED`.

    Keys that name a secret (``api_key``, ``Authorization``, ``hf_token``,
    ``password``, ...) have their values replaced; strings shaped like keys
    (``sk-...``, ``Bearer ...``, ``hf_...``) and named secrets inside text
    (``api_key=...``; see :func:`scrub_text`) are replaced wherever they are,
    unless ``values=False``.
    Objects that are not plain data become ``<TypeName>`` (never their repr,
    which can show a client's key).

    Example:
        >>> scrub_secrets({"api_key": "x", "max_tokens": 5, "h": "Bearer abc123xyz"})
        {'api_key': '[REDACTED]', 'max_tokens': 5, 'h': '[REDACTED]'}

    """
    if _depth > _MAX_DEPTH:
        return "<nested>"
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return scrub_text(value) if values else value
    if isinstance(value, UUID | datetime):
        return str(value)
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, Mapping):
        clean: dict[str, Any] = {}
        for key, item in value.items():
            name = str(key)
            if _is_secret_key(name) and item not in (None, "", [], {}):
                clean[name] = REDACTED
            else:
                clean[name] = scrub_secrets(item, values=values, _depth=_depth + 1)
        return clean
    if isinstance(value, list | tuple | set | frozenset):
        return [scrub_secrets(item, values=values, _depth=_depth + 1) for item in value]
    return f"<{type(value).__name__}>"


# ------------------------------------------------------------------------------ logs
_SCRUBBED_MARK = "_divconq_scrubbed"
_EXCEPTION_FORMATTER = logging.Formatter()


def _scrub_argument(value: Any) -> Any:
    """Return a log argument without secrets, its type kept where it held none (for ``%d``)."""
    if isinstance(value, str):
        return scrub_text(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    try:
        text = str(value)
    except Exception:
        return value
    clean = scrub_text(text)
    return value if clean == text else clean


def scrub_log_record(record: logging.LogRecord) -> logging.LogRecord:
    """Scrub a log record in place (message, arguments, traceback, stack) and return it.

    The message keeps its arguments when scrubbing them is enough (formatters
    such as uvicorn's access log unpack ``record.args``); otherwise the message
    is rendered, scrubbed and stored without arguments. The traceback is
    rendered and scrubbed into ``record.exc_text``, which formatters print
    instead of formatting the exception again. Scrubbing a record twice is a no-op.
    """
    if getattr(record, _SCRUBBED_MARK, False):
        return record
    setattr(record, _SCRUBBED_MARK, True)
    try:
        message = record.getMessage()
    except Exception:  # a bad format string: the handler reports it as usual
        message = None
    if message is not None and scrub_text(message) != message:
        args: Any = record.args
        if isinstance(args, Mapping):
            args = {key: _scrub_argument(item) for key, item in args.items()}
        elif isinstance(args, tuple):
            args = tuple(_scrub_argument(item) for item in args)
        msg = scrub_text(record.msg) if isinstance(record.msg, str) else scrub_text(str(record.msg))
        try:
            rendered = msg % args if args else msg
        except (TypeError, ValueError, KeyError):
            rendered = None
        if rendered is not None and scrub_text(rendered) == rendered:
            record.msg, record.args = msg, args
        else:
            record.msg, record.args = scrub_text(message), None
    if record.exc_info and not record.exc_text:
        record.exc_text = _EXCEPTION_FORMATTER.formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = scrub_text(record.exc_text)
    if record.stack_info:
        record.stack_info = scrub_text(record.stack_info)
    return record


class SecretsFilter(logging.Filter):
    """A logging filter that scrubs credentials out of every record it sees (never drops one).

    Put it on a handler to cover every logger that reaches the handler (a filter on
    a logger sees only that logger's own records, not its children's).

    Example:
        >>> handler = logging.StreamHandler()
        >>> handler.addFilter(SecretsFilter())

    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Scrub ``record`` in place; always keep it."""
        scrub_log_record(record)
        return True


@contextlib.contextmanager
def scrubbed_logging() -> Iterator[None]:
    """Scrub every log record made while the block runs, from any logger, then restore.

    Wraps the log record factory, so records of loggers and handlers created
    later (uvicorn's, set up when ``divconq serve`` starts) are scrubbed too.
    ``divconq`` runs every command inside this block.
    """
    previous = logging.getLogRecordFactory()
    if getattr(previous, _SCRUBBED_MARK, False):  # already inside such a block
        yield
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        return scrub_log_record(previous(*args, **kwargs))

    setattr(factory, _SCRUBBED_MARK, True)
    logging.setLogRecordFactory(factory)
    try:
        yield
    finally:
        if logging.getLogRecordFactory() is factory:
            logging.setLogRecordFactory(previous)
